//! Encrypted inference, split by trust side:
//!
//! | module | side | what |
//! |---|---|---|
//! | [`model`] | both | the encrypted model as protected, its public facts, the result ciphertext |
//! | [`edge`] | board | the inference engine a bundle expands into, encrypted features |
//! | `encrypt` | backend (feature `backend`) | encrypting a quantised model under the secret keys |
//! | `decrypt` | backend (feature `backend`) | decodings, secret check outputs, refusals, decryption |
//!
//! The boards' build (`--no-default-features`) compiles neither backend module: it cannot
//! encrypt a model or read a result (`scripts/check-edge-symbols.sh` checks the binary).
//!
//! Single-threaded by design: no rayon pool is ever touched on the inference path, and every
//! buffer is sized by the model, so memory is bounded.

use crate::crypto::error::CryptoError;
use crate::files::IoError;
use crate::input::RejectKind;
use crate::model::ModelError;
use serde::{Deserialize, Serialize};

#[cfg(any(feature = "backend", test))]
mod decrypt;
pub mod edge;
#[cfg(any(feature = "backend", test))]
mod encrypt;
pub mod model;
#[cfg(all(feature = "test-support", feature = "backend"))]
pub mod synthetic;

#[cfg(any(feature = "backend", test))]
pub use decrypt::{
    decode, decrypt, phase_check_limit, phases, CheckMethod, Decoding, Decrypted, Refusal,
    ResultChecks, ACT_CHECK_SIGMAS,
};
pub use edge::{EdgeEngine, EncryptedFeatures};
pub use model::{
    first_layer_hidden, EncryptedModel, ModelInfo, PartShape, PlainLayer, ResultCiphertext,
    ResultShape, Wire, CHECK_BITS, CHECK_ROWS, NOACT_CHECK_ROWS,
};

/// The engine's errors: inputs it refuses, keys that do not match, models or results whose
/// parts do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("key mismatch: {0}")]
    KeyMismatch(String),
    /// An encrypted model or result whose parts do not fit together.
    #[error("malformed {0}")]
    Malformed(String),
    /// Encrypted features that do not fit this engine.
    #[error("bad encrypted features: {0}")]
    Features(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Io(#[from] IoError),
}

impl EngineError {
    /// What kind of rejected input this is.
    pub fn kind(&self) -> RejectKind {
        match self {
            EngineError::KeyMismatch(_) => RejectKind::KeyMismatch,
            EngineError::Malformed(_) => RejectKind::Malformed,
            EngineError::Features(_) | EngineError::Crypto(CryptoError::Features(_)) => {
                RejectKind::BadEncryptedFeatures
            }
            EngineError::Crypto(_) => RejectKind::BadCiphertext,
            EngineError::Model(e) => e.kind(),
            EngineError::Io(_) => RejectKind::Io,
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Where the features come from: plaintext on the edge (only the model is secret), or
/// encrypted with the bundle's public key before inference (`enc`: on the edge, inside the
/// inference, or at a data source that sends encrypted frames).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum FeatureMode {
    #[default]
    Plain,
    Enc,
}

impl FeatureMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Enc => "enc",
        }
    }
}
