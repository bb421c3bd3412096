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
    /// A short name for counting rejected inputs by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            InputError::NotANumber(_) => "not a number",
            InputError::BadLabel(_) => "bad label",
            InputError::EmptyVector => "empty vector",
            InputError::Line { cause, .. } => cause.kind(),
            InputError::Image { .. } => "bad image",
            InputError::Io(_) => "io",
        }
    }
}

pub type Result<T, E = InputError> = std::result::Result<T, E>;
