//! The library's error type: every failure on outside input is one of these, never a panic.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    // The cause is part of the message (logs print errors with `{}`), so it is not also
    // exposed as `source()`, which would print it twice in an error chain.
    #[error("I/O error on {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("malformed input: {0}")]
    Malformed(String),
    #[error("bad feature vector: {0}")]
    BadFeatures(String),
    #[error("bundle rejected: {0}")]
    Bundle(String),
    #[error("key mismatch: {0}")]
    KeyMismatch(String),
    #[error("model import failed: {0}")]
    Model(String),
    #[error("quantisation failed: {0}")]
    Quantisation(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<std::path::Path>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            cause,
        }
    }
}
