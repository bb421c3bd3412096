//! The wire: what crosses between machines. MQTT broker settings (credentials, TLS) and the
//! connection driver, the one versioned result message, and the frames a data source sends
//! to hedged's socket.

pub mod ack;
pub mod connection;
pub mod deploy;
pub mod frame;
pub mod message;
pub mod mqtt;
pub mod sealed;

pub use connection::{Backoff, Connection};
pub use message::{MessageError, ResultMessage};

use crate::files::IoError;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Broker settings that cannot work: the address, credentials, TLS files.
    #[error("mqtt settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error(transparent)]
    Io(#[from] IoError),
}

pub type Result<T, E = TransportError> = std::result::Result<T, E>;
