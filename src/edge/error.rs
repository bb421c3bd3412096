//! The edge daemon's errors: what stops hedged from starting or running. A bad input is not
//! one of these: it is rejected, counted and logged by kind, and the daemon goes on.

use crate::bundle::BundleError;
use crate::engine::EngineError;
use crate::files::IoError;
use crate::transport::TransportError;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The configuration file or the flags.
    #[error("settings: {0}")]
    Settings(String),
    /// A source that cannot be opened (a socket path in use, …).
    #[error("input source: {0}")]
    Source(String),
    #[error(transparent)]
    Io(#[from] IoError),
    /// The bundle a setting names is refused.
    #[error("{path}: {cause}")]
    BundleFile { path: String, cause: BundleError },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("stopped while the spool could not be written: the result in flight is lost")]
    StoppedUnspooled,
    /// A bundle older than the newest this board accepted.
    #[error(
        "bundle epoch {epoch} is older than epoch {newest}, which this board already ran: \
         refused (a rollback)"
    )]
    Rollback { epoch: u64, newest: u64 },
}
