//! hedge: homomorphically encrypted deep neural networks at the edge.
//!
//! The backend (`hedge`) generates keys, quantises and encrypts a classifier into an edge
//! bundle that holds only public material; the edge (`hedged`) runs encrypted inference on it;
//! the backend decrypts the results. See README.md and docs/CRYPTO.md.

pub mod backend;
pub mod bench;
pub mod broker;
pub mod bundle;
pub mod cpu;
pub mod crypto;
pub mod data;
pub mod decryptor;
pub mod demo;
pub mod edge;
pub mod engine;
pub mod error;
pub mod eval;
pub mod images;
pub mod model;
pub mod network;
pub mod transport;

pub use error::{Error, Result};
