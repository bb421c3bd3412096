//! Input files: feature vectors one per line and images (IDX, PGM, PNG), as data sources
//! hand them to the edge and the backend reads them for calibration and evaluation.

pub mod images;
pub mod vectors;

use crate::files::IoError;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("label {0:?} is neither a class index nor one of the model's class names")]
    BadLabel(String),
    #[error("empty vector")]
    EmptyVector,
    /// A bad line of a vector file.
    #[error("{file}:{line}: {cause}")]
    Line {
        file: String,
        line: usize,
        cause: Box<InputError>,
    },
    /// An image file or IDX file that does not decode.
    #[error("{what}: {why}")]
    Image { what: String, why: String },
    #[error(transparent)]
    Io(#[from] IoError),
}

impl InputError {
    /// What kind of rejected input this is.
    pub fn kind(&self) -> RejectKind {
        match self {
            InputError::NotANumber(_) => RejectKind::NotANumber,
            InputError::BadLabel(_) => RejectKind::BadLabel,
            InputError::EmptyVector => RejectKind::EmptyVector,
            InputError::Line { cause, .. } => cause.kind(),
            InputError::Image { .. } => RejectKind::BadImage,
            InputError::Io(_) => RejectKind::Io,
        }
    }
}

/// Why the edge rejected an input, for its counts (`rejected` in the metrics, by
/// [`RejectKind::name`]) and its logs (the first of each kind). Each layer that can refuse an
/// input names its kind with one of these (`kind()` on its error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectKind {
    // Lines and images.
    NotANumber,
    BadLabel,
    EmptyVector,
    BadImage,
    /// An image file in a watched directory that does not decode.
    BadImageFile,
    NotUtf8,
    /// A vector line longer than the source admits.
    Oversized,
    /// A vector line whose width is not the running bundle's.
    Width,
    // Socket frames.
    Truncated,
    EmptyFrame,
    UnknownFrameKind,
    Ragged,
    ConnectionLimit,
    // Features and inference.
    WrongLength,
    NotFinite,
    OutOfRange,
    NoExtractor,
    FeatureExtractor,
    KeyMismatch,
    BadEncryptedFeatures,
    BadCiphertext,
    Malformed,
    ModelImport,
    Quantisation,
    Io,
}

impl RejectKind {
    /// Its name in the metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            RejectKind::NotANumber => "not a number",
            RejectKind::BadLabel => "bad label",
            RejectKind::EmptyVector => "empty vector",
            RejectKind::BadImage => "bad image",
            RejectKind::BadImageFile => "bad image file",
            RejectKind::NotUtf8 => "utf-8",
            RejectKind::Oversized => "oversized",
            RejectKind::Width => "width",
            RejectKind::Truncated => "truncated",
            RejectKind::EmptyFrame => "empty",
            RejectKind::UnknownFrameKind => "unknown kind",
            RejectKind::Ragged => "ragged",
            RejectKind::ConnectionLimit => "connection limit",
            RejectKind::WrongLength => "wrong length",
            RejectKind::NotFinite => "not finite",
            RejectKind::OutOfRange => "out of range",
            RejectKind::NoExtractor => "no extractor",
            RejectKind::FeatureExtractor => "feature extractor",
            RejectKind::KeyMismatch => "key mismatch",
            RejectKind::BadEncryptedFeatures => "bad encrypted features",
            RejectKind::BadCiphertext => "bad ciphertext",
            RejectKind::Malformed => "malformed",
            RejectKind::ModelImport => "model import",
            RejectKind::Quantisation => "quantisation",
            RejectKind::Io => "io",
        }
    }
}

pub type Result<T, E = InputError> = std::result::Result<T, E>;
