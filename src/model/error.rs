//! The model layer's errors: importing and splitting a network, quantising it, and feature
//! vectors it refuses.

use crate::files::IoError;
use crate::input::{InputError, RejectKind};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The ONNX file cannot be imported or split as asked.
    #[error("model import failed: {0}")]
    Import(String),
    #[error("quantisation failed: {0}")]
    Quantisation(String),
    /// A feature vector the model refuses.
    #[error("bad feature vector: {0}")]
    Features(FeatureFault),
    /// The plaintext feature extractor failed on an input.
    #[error("feature extractor: {0}")]
    Extractor(String),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Io(#[from] IoError),
}

impl ModelError {
    /// What kind of rejected input this is.
    pub fn kind(&self) -> RejectKind {
        match self {
            ModelError::Import(_) => RejectKind::ModelImport,
            ModelError::Quantisation(_) => RejectKind::Quantisation,
            ModelError::Features(f) => f.kind(),
            ModelError::Extractor(_) => RejectKind::FeatureExtractor,
            ModelError::Input(e) => e.kind(),
            ModelError::Io(_) => RejectKind::Io,
        }
    }
}

/// What is wrong with a refused feature vector.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FeatureFault {
    #[error("expected {expected} features, got {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("the feature extractor takes {expected} values ({shape:?}), got {got}")]
    ExtractorInput {
        expected: usize,
        shape: Vec<usize>,
        got: usize,
    },
    #[error("feature {index} is {value}")]
    NotFinite { index: usize, value: f32 },
    #[error("feature {index} = {value} is out of range (|x| <= {limit})")]
    OutOfRange {
        index: usize,
        value: f32,
        limit: f32,
    },
    #[error("an image, but this network has no feature extractor")]
    NoExtractor,
}

impl FeatureFault {
    pub fn kind(&self) -> RejectKind {
        match self {
            FeatureFault::WrongLength { .. } | FeatureFault::ExtractorInput { .. } => {
                RejectKind::WrongLength
            }
            FeatureFault::NotFinite { .. } => RejectKind::NotFinite,
            FeatureFault::OutOfRange { .. } => RejectKind::OutOfRange,
            FeatureFault::NoExtractor => RejectKind::NoExtractor,
        }
    }
}

impl From<FeatureFault> for ModelError {
    fn from(f: FeatureFault) -> Self {
        ModelError::Features(f)
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
