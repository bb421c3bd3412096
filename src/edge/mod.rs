//! The edge daemon's parts (`hedged`).

pub mod config;
