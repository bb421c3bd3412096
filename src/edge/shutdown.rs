//! The one shutdown value the daemon's parts share: set by SIGTERM/SIGINT (stop) and SIGHUP
//! (reload), read by the scheduler, the sink and the watchdog.

use super::error::EdgeError;
use crate::files::IoError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Shutdown {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl Shutdown {
    /// Flags set by the signal handlers.
    pub(crate) fn from_signals() -> Result<Arc<Self>, EdgeError> {
        let s = Self::default();
        let register = |signal, flag: &Arc<AtomicBool>| {
            signal_hook::flag::register(signal, flag.clone())
                .map(|_| ())
                .map_err(|e| IoError::new("signal handler", e))
        };
        register(signal_hook::consts::SIGTERM, &s.stop)?;
        register(signal_hook::consts::SIGINT, &s.stop)?;
        register(signal_hook::consts::SIGHUP, &s.reload)?;
        Ok(Arc::new(s))
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The stop flag itself, for loops that poll it.
    pub(crate) fn stop_flag(&self) -> &AtomicBool {
        &self.stop
    }

    /// Whether a reload was asked for since the last call.
    pub(crate) fn take_reload(&self) -> bool {
        self.reload.swap(false, Ordering::Relaxed)
    }
}
