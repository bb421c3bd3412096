//! The edge daemon's parts (`hedged`): configuration, the acquisition queue, the spool and
//! the MQTT publisher.

pub mod config;
pub mod message;
pub mod publish;
pub mod queue;
pub mod spool;
