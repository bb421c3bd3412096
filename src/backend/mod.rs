//! The vendor's side (trusted): the key directory, protection of a classifier into a signed
//! edge bundle, the decryption agent, and the embedded MQTT broker of the demo. Its
//! measurements ([`crate::report`]) share its error type.

pub mod broker;
pub mod decryptor;
pub mod deploy;
pub mod fleet;
pub mod keys;
pub mod loadgen;
pub mod metrics;
pub mod output;
pub mod protect;
pub mod registry;

use crate::bundle::BundleError;
use crate::engine::{EngineError, Refusal};
use crate::files::IoError;
use crate::input::InputError;
use crate::model::ModelError;
use crate::transport::TransportError;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A key file that is missing a part, undecodable, or from another key generation.
    #[error("keys: {0}")]
    KeyFile(String),
    #[error("registry: {0}")]
    Registry(String),
    /// The broker cannot be reached (or dropped the connection).
    #[error("broker connection: {0}")]
    Connection(String),
    /// The embedded broker could not start.
    #[error("embedded broker: {0}")]
    Broker(String),
    /// Measurement inputs that do not fit together (image and label counts, results files).
    #[error("{0}")]
    Data(String),
    #[error("plot: {0}")]
    Plot(String),
    /// Protection would change the vendor's model without being asked to.
    #[error("{0}")]
    ModelChange(String),
    /// An accuracy target or setting for variant `act` that cannot be met.
    #[error("act accuracy: {0}")]
    Accuracy(String),
    /// A model whose integer form would disagree with the float model it stands for.
    #[error("{0}")]
    Agreement(String),
    /// Quantisation widths (`--bits`) the variant or its noise budget cannot take.
    #[error("--bits: {0}")]
    Widths(String),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A result refused by the checks before decryption (bench and eval: their own results).
    #[error("result refused: {0}")]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Io(#[from] IoError),
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;
