//! The cryptography layer's errors: stored keys or ciphertexts that do not fit their
//! parameters (a corrupt or foreign file or bundle), features that do not fit a layer, and
//! shapes the packing cannot express.

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Keys or ciphertexts whose sizes do not match their parameter set.
    #[error("malformed key or ciphertext: {0}")]
    Shape(String),
    /// Encrypted features (or a feature vector) that do not fit the layer.
    #[error("bad features: {0}")]
    Features(String),
    #[error("not a hedge secret key file: {0}")]
    SecretKeyFile(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

pub type Result<T, E = CryptoError> = std::result::Result<T, E>;
