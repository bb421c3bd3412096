//! SIGHUP: re-read the settings and load the bundle they name on a helper thread, so
//! inference goes on meanwhile; the scheduler switches between two inferences once the new
//! bundle verifies. A bundle that fails leaves the old one running; start-up settings that
//! changed are named and keep their old value.

use super::error::EdgeError;
use super::inference::Inference;
use super::settings::Settings;
use super::state::State;
use crate::files::IoError;
use std::sync::mpsc;
use std::sync::Arc;

/// Re-reads the settings for a SIGHUP (the file, with the command line's overrides).
pub type Reloader = Box<dyn Fn() -> Result<Settings, EdgeError> + Send + Sync>;

pub struct Reload {
    reloader: Arc<Reloader>,
    state: Arc<State>,
    pending: Option<mpsc::Receiver<Result<(Settings, Inference), EdgeError>>>,
}

impl Reload {
    pub fn new(reloader: Reloader, state: Arc<State>) -> Self {
        Self {
            reloader: Arc::new(reloader),
            state,
            pending: None,
        }
    }

    /// Start a reload unless one is under way.
    pub fn start(&mut self) -> Result<(), EdgeError> {
        if self.pending.is_some() {
            return Ok(());
        }
        log::info!("SIGHUP: reloading the configuration");
        let (tx, rx) = mpsc::channel();
        let (reloader, state) = (self.reloader.clone(), self.state.clone());
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                let result =
                    reloader().and_then(|s| Inference::load(&s.reloadable, &state).map(|i| (s, i)));
                let _ = tx.send(result);
            })
            .map_err(|e| IoError::new("reload thread", e))?;
        self.pending = Some(rx);
        Ok(())
    }

    /// Apply a finished reload to `settings` and `inference`; true if it switched.
    pub fn apply(&mut self, settings: &mut Settings, inference: &mut Inference) -> bool {
        let Some(rx) = &self.pending else {
            return false;
        };
        let outcome = match rx.try_recv() {
            Err(mpsc::TryRecvError::Empty) => return false,
            Err(mpsc::TryRecvError::Disconnected) => None,
            Ok(outcome) => Some(outcome),
        };
        self.pending = None;
        match outcome {
            Some(Ok((new_settings, new))) => {
                if let Err(e) = self.state.accept_epoch(new.epoch) {
                    log::error!(
                        "reload refused, still running bundle {}: {e}",
                        inference.bundle_id
                    );
                    return false;
                }
                let changed = settings.restart_only_changes(&new_settings);
                if !changed.is_empty() {
                    log::warn!(
                        "reload: {} changed but take effect only on a restart",
                        changed.join(", ")
                    );
                }
                log::info!(
                    "reloaded: {} replaces {}",
                    new.describe(),
                    inference.bundle_id
                );
                settings.reloadable = new_settings.reloadable;
                *inference = new;
                true
            }
            Some(Err(e)) => {
                log::error!(
                    "reload refused, still running bundle {}: {e}",
                    inference.bundle_id
                );
                false
            }
            None => false,
        }
    }
}
