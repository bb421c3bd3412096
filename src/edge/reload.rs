//! Bundle swaps: a SIGHUP (re-read the settings) or a fetched deployment. The new bundle is
//! verified and loaded on a helper thread, so inference goes on meanwhile; the scheduler
//! switches between two inferences once it is ready. A bundle that fails leaves the old one
//! running; start-up settings that changed are named and keep their old value.

use super::deploy::installed::BundleRef;
use super::deploy::{Candidate, Deployments};
use super::error::EdgeError;
use super::inference::Inference;
use super::settings::Settings;
use super::state::State;
use super::trust::TrustAnchor;
use crate::files::IoError;
use crate::transport::deploy::Payload;
use ed25519_dalek::VerifyingKey;
use std::sync::mpsc;
use std::sync::Arc;

/// Re-reads the settings for a SIGHUP (the file, with the command line's overrides).
pub(crate) type Reloader = Box<dyn Fn() -> Result<Settings, EdgeError> + Send + Sync>;

/// A finished load: for a SIGHUP the new settings and the key they name, which becomes the
/// board's trust anchor only if the bundle verified under it.
type Loaded = Result<(Option<(Settings, VerifyingKey)>, Inference), EdgeError>;

struct Pending {
    /// None: a SIGHUP.
    deployment: Option<u64>,
    rx: mpsc::Receiver<Loaded>,
}

/// What [`Reload::apply`] did.
pub(crate) enum Applied {
    Nothing,
    /// A SIGHUP switched bundle or settings.
    Reloaded,
    /// A deployment's bundle runs now; `previous` is kept until it proves itself.
    Deployed {
        deployment: u64,
        previous: Box<Inference>,
    },
    /// A deployment's bundle failed verification or its test load.
    Refused {
        deployment: u64,
        why: String,
    },
}

pub(crate) struct Reload {
    reloader: Arc<Reloader>,
    state: Arc<State>,
    deployments: Arc<Deployments>,
    pending: Option<Pending>,
    trust: TrustAnchor,
}

impl Reload {
    pub fn new(
        reloader: Reloader,
        state: Arc<State>,
        deployments: Arc<Deployments>,
        trust: TrustAnchor,
    ) -> Self {
        Self {
            reloader: Arc::new(reloader),
            state,
            deployments,
            pending: None,
            trust,
        }
    }

    fn spawn(
        &mut self,
        deployment: Option<u64>,
        load: impl FnOnce() -> Loaded + Send + 'static,
    ) -> Result<(), EdgeError> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                let _ = tx.send(load());
            })
            .map_err(|e| IoError::new("reload thread", e))?;
        self.pending = Some(Pending { deployment, rx });
        Ok(())
    }

    /// A SIGHUP: start a reload unless one is under way. A deployed bundle stays the bundle
    /// (the configured one is where the board started from).
    pub fn start(&mut self) -> Result<(), EdgeError> {
        if self.pending.is_some() {
            return Ok(());
        }
        log::info!("SIGHUP: reloading the configuration");
        let (reloader, state) = (self.reloader.clone(), self.state.clone());
        let deployments = self.deployments.clone();
        self.spawn(None, move || {
            let settings = reloader()?;
            let trusted = TrustAnchor::read(&settings.reloadable.verifying_key)?;
            let source = deployments.installed.source_or(&settings.reloadable.bundle);
            let inference = Inference::load(&source, &trusted, &settings.reloadable, &state)?;
            Ok((Some((settings, trusted)), inference))
        })
    }

    /// No load under way.
    pub(crate) fn is_idle(&self) -> bool {
        self.pending.is_none()
    }

    /// Verify and load a fetched deployment (the caller waits until [`Self::is_idle`]). A model
    /// update runs under the keys of the bundle running now.
    pub(crate) fn start_deployment(
        &mut self,
        candidate: Candidate,
        settings: &Settings,
        running: &BundleRef,
    ) -> Result<(), EdgeError> {
        let source = BundleRef {
            file: candidate.file,
            base: (candidate.payload == Payload::ModelUpdate)
                .then(|| running.key_bundle().to_path_buf()),
            deployment: Some(candidate.deployment),
        };
        let (reloadable, state) = (settings.reloadable.clone(), self.state.clone());
        let trusted = self.trust.key();
        self.spawn(Some(candidate.deployment), move || {
            Ok((
                None,
                Inference::load(&source, &trusted, &reloadable, &state)?,
            ))
        })
    }

    /// Record that a bundle of `epoch` runs (see [`State::accept_epoch`]).
    pub(crate) fn accept_epoch(&self, epoch: u64) -> Result<(), EdgeError> {
        self.state.accept_epoch(epoch)
    }

    /// Apply a finished load to `settings` and `inference`.
    pub fn apply(&mut self, settings: &mut Settings, inference: &mut Inference) -> Applied {
        let Some(pending) = &self.pending else {
            return Applied::Nothing;
        };
        let outcome = match pending.rx.try_recv() {
            Err(mpsc::TryRecvError::Empty) => return Applied::Nothing,
            Err(mpsc::TryRecvError::Disconnected) => Err(EdgeError::Settings(
                "the loading thread ended without a result".into(),
            )),
            Ok(outcome) => outcome,
        };
        let deployment = pending.deployment;
        self.pending = None;
        let refused = |e: &dyn std::fmt::Display| {
            log::error!(
                "{} refused, still running bundle {}: {e}",
                deployment.map_or("reload".into(), |d| format!("deployment {d}")),
                inference.bundle_id
            );
        };
        let (new_settings, new) = match outcome {
            Ok(loaded) => loaded,
            Err(e) => {
                refused(&e);
                return match deployment {
                    Some(deployment) => Applied::Refused {
                        deployment,
                        why: e.to_string(),
                    },
                    None => Applied::Nothing,
                };
            }
        };
        if let Some(deployment) = deployment {
            if let Err(e) = self
                .deployments
                .installed
                .install(&new.source, &inference.source)
            {
                refused(&e);
                return Applied::Refused {
                    deployment,
                    why: e.to_string(),
                };
            }
            log::info!(
                "deployment {deployment}: {} replaces {} (kept until the new one infers)",
                new.describe(),
                inference.bundle_id
            );
            let previous = Box::new(std::mem::replace(inference, new));
            return Applied::Deployed {
                deployment,
                previous,
            };
        }
        // A deployed bundle still on probation keeps running through a SIGHUP, but its epoch
        // becomes the board's only once it has inferred (or a rollback could not go back).
        let on_probation = new.source.deployment.is_some()
            && self
                .deployments
                .installed
                .active()
                .is_some_and(|a| !a.confirmed);
        if !on_probation {
            if let Err(e) = self.state.accept_epoch(new.epoch) {
                refused(&e);
                return Applied::Nothing;
            }
        }
        if let Some((new_settings, trusted)) = new_settings {
            // The bundle verified under this key: bundles, offers and acknowledgements are
            // checked against it from now on, all three at once.
            self.trust.replace(trusted);
            let changed = settings.restart_only_changes(&new_settings);
            if !changed.is_empty() {
                log::warn!(
                    "reload: {} changed but take effect only on a restart",
                    changed.join(", ")
                );
            }
            settings.reloadable = new_settings.reloadable;
        }
        log::info!(
            "reloaded: {} replaces {}",
            new.describe(),
            inference.bundle_id
        );
        *inference = new;
        Applied::Reloaded
    }
}
