//! The vendor's measurements: the paper's benchmark grid and the accuracy evaluation of a
//! trained network, returned as values (the CLI presents them), and the accuracy plot. Errors
//! are the backend's ([`BackendError`]).

pub mod bench;
pub mod eval;
pub mod plot;

pub use crate::backend::{BackendError, Result};
