//! What the edge and the backend share to talk over MQTT: the broker connection.

pub mod connection;

pub use connection::{Backoff, Connection};
