//! What the board runs and ran, in the state directory (`deploy/`): the bundle a deployment
//! installed (`active.json`, confirmed once it has inferred), the one it replaced
//! (`previous.json`, what a rollback returns to), and each finished deployment's outcome
//! (`outcomes/<id>.json`), so a restart runs the deployed bundle and a retained offer is not
//! fetched twice. Fetched files live in `bundles/`; those no record names are removed.

use crate::bundle::{BundleError, Opened};
use crate::files::{write_atomic, IoError};
use crate::transport::deploy::Report;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a running bundle comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundleRef {
    /// A full bundle, or a model update.
    pub file: PathBuf,
    /// For a model update: the full bundle whose keys it runs under.
    pub base: Option<PathBuf>,
    /// The deployment that installed it (None: the configured bundle).
    pub deployment: Option<u64>,
}

impl BundleRef {
    pub fn configured(path: &Path) -> Self {
        Self {
            file: path.to_path_buf(),
            base: None,
            deployment: None,
        }
    }

    /// Read and verify it against `trusted`.
    pub fn open(&self, trusted: &VerifyingKey) -> Result<Opened, BundleError> {
        match &self.base {
            None => crate::bundle::open(&self.file, trusted),
            Some(base) => crate::bundle::open_update(&self.file, base, trusted),
        }
    }

    /// The full bundle that holds its keys.
    pub(crate) fn key_bundle(&self) -> &Path {
        self.base.as_deref().unwrap_or(&self.file)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Active {
    pub bundle: BundleRef,
    /// It has inferred at least once (its epoch is then the board's newest).
    pub confirmed: bool,
    /// Daemon starts while it was not yet confirmed (a bundle that brings the board down
    /// before its first result is rolled back after a few).
    #[serde(default)]
    pub starts: u32,
}

pub struct Installed {
    dir: PathBuf,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            log::error!("{}: unreadable, ignored: {e}", path.display());
            None
        }
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), IoError> {
    let bytes = serde_json::to_vec_pretty(value).expect("serialising to a Vec cannot fail");
    write_atomic(path, &bytes, 0o600)
}

impl Installed {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("deploy"),
        }
    }

    pub(crate) fn partial_dir(&self) -> PathBuf {
        self.dir.join("partial")
    }

    /// Where a fetched payload goes.
    pub(crate) fn payload_path(&self, deployment: u64, bundle_id: &str, update: bool) -> PathBuf {
        let ext = if update { "update" } else { "bundle" };
        self.dir
            .join("bundles")
            .join(format!("{deployment}-{bundle_id}.{ext}"))
    }

    /// What to run: the deployed bundle if one is installed, else the configured one.
    pub(crate) fn source_or(&self, configured: &Path) -> BundleRef {
        self.active()
            .map_or_else(|| BundleRef::configured(configured), |a| a.bundle)
    }

    pub fn active(&self) -> Option<Active> {
        read_json(&self.dir.join("active.json"))
    }

    pub fn previous(&self) -> Option<BundleRef> {
        read_json(&self.dir.join("previous.json"))
    }

    /// `new` replaces `previous` (not yet confirmed).
    pub fn install(&self, new: &BundleRef, previous: &BundleRef) -> Result<(), IoError> {
        crate::files::create_dir_all(&self.dir)?;
        write_json(&self.dir.join("previous.json"), previous)?;
        write_json(
            &self.dir.join("active.json"),
            &Active {
                bundle: new.clone(),
                confirmed: false,
                starts: 0,
            },
        )
    }

    /// One more start with the active bundle unconfirmed: how many so far.
    pub(crate) fn count_start(&self) -> Result<u32, IoError> {
        let Some(mut active) = self.active() else {
            return Ok(0);
        };
        active.starts += 1;
        write_json(&self.dir.join("active.json"), &active)?;
        Ok(active.starts)
    }

    /// The active bundle has inferred: it stays.
    pub(crate) fn confirm(&self) -> Result<(), IoError> {
        if let Some(mut active) = self.active() {
            active.confirmed = true;
            write_json(&self.dir.join("active.json"), &active)?;
        }
        self.prune();
        Ok(())
    }

    /// Back to `previous` (the configured bundle when no deployment installed it).
    pub(crate) fn roll_back(&self, previous: &BundleRef) -> Result<(), IoError> {
        let active = self.dir.join("active.json");
        if previous.deployment.is_some() {
            write_json(
                &active,
                &Active {
                    bundle: previous.clone(),
                    confirmed: true,
                    starts: 0,
                },
            )?;
        } else if active.exists() {
            std::fs::remove_file(&active).map_err(|e| IoError::new(&active, e))?;
        }
        let _ = std::fs::remove_file(self.dir.join("previous.json"));
        self.prune();
        Ok(())
    }

    /// The highest epoch of an offer the board took (0: none).
    pub(crate) fn offered_epoch(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("offered-epoch"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    pub(crate) fn set_offered_epoch(&self, epoch: u64) -> Result<(), IoError> {
        if epoch <= self.offered_epoch() {
            return Ok(());
        }
        crate::files::create_dir_all(&self.dir)?;
        write_atomic(
            &self.dir.join("offered-epoch"),
            format!("{epoch}\n").as_bytes(),
            0o600,
        )
    }

    pub(crate) fn outcome(&self, deployment: u64) -> Option<Report> {
        read_json(&self.dir.join("outcomes").join(format!("{deployment}.json")))
    }

    pub(crate) fn record_outcome(&self, report: &Report) -> Result<(), IoError> {
        let dir = self.dir.join("outcomes");
        crate::files::create_dir_all(&dir)?;
        write_json(&dir.join(format!("{}.json", report.deployment)), report)
    }

    /// Remove fetched files that neither the active nor the previous bundle needs.
    fn prune(&self) {
        let mut keep: Vec<PathBuf> = Vec::new();
        let refs = self
            .active()
            .map(|a| a.bundle)
            .into_iter()
            .chain(self.previous());
        for r in refs {
            keep.extend(r.base.clone());
            keep.push(r.file);
        }
        let Ok(entries) = std::fs::read_dir(self.dir.join("bundles")) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // `<deployment>-<bundle>.<ext>`: a deployment not yet decided may still need it.
            let pending = entry
                .file_name()
                .to_string_lossy()
                .split('-')
                .next()
                .and_then(|d| d.parse::<u64>().ok())
                .is_some_and(|d| self.outcome(d).is_none());
            if !keep.contains(&path) && !pending {
                log::info!("removing {} (no longer needed)", path.display());
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::deploy::DeployState;

    #[test]
    fn install_confirm_roll_back_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let i = Installed::new(dir.path());
        assert!(i.active().is_none());
        let configured = BundleRef::configured(Path::new("/etc/model.bundle"));
        let first = i.payload_path(1, "aa", false);
        let second = i.payload_path(2, "bb", true);
        let stale = i.payload_path(0, "zz", false);
        let pending = i.payload_path(3, "cc", false);
        for p in [&first, &second, &stale, &pending] {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let decided = |deployment, state| Report {
            device: "b".into(),
            deployment,
            state,
            received: 0,
            total: 0,
            running: "aa".into(),
            reason: None,
            at_ms: 0,
        };
        i.record_outcome(&decided(0, DeployState::Failed)).unwrap();
        i.record_outcome(&decided(2, DeployState::Cancelled))
            .unwrap();
        assert_eq!(i.outcome(2).unwrap().state, DeployState::Cancelled);
        let one = BundleRef {
            file: first.clone(),
            base: None,
            deployment: Some(1),
        };
        i.install(&one, &configured).unwrap();
        assert_eq!(
            i.active().unwrap(),
            Active {
                bundle: one.clone(),
                confirmed: false,
                starts: 0
            }
        );
        assert_eq!(i.count_start().unwrap(), 1);
        assert_eq!(i.offered_epoch(), 0);
        i.set_offered_epoch(4).unwrap();
        i.set_offered_epoch(2).unwrap(); // never goes down
        assert_eq!(i.offered_epoch(), 4);
        i.confirm().unwrap();
        assert!(i.active().unwrap().confirmed);
        // Decided and unreferenced: removed; a deployment still to be decided keeps its file.
        assert!(!stale.exists() && first.exists() && !second.exists() && pending.exists());
        i.record_outcome(&decided(1, DeployState::Active)).unwrap();
        // A model update on the first's keys, rolled back.
        std::fs::write(&second, b"x").unwrap();
        let two = BundleRef {
            file: second.clone(),
            base: Some(first.clone()),
            deployment: Some(2),
        };
        assert_eq!(two.key_bundle(), first.as_path());
        i.install(&two, &one).unwrap();
        i.roll_back(&one).unwrap();
        assert_eq!(i.active().unwrap().bundle, one);
        assert!(i.previous().is_none());
        assert!(first.exists() && !second.exists());
        // Back to the configured bundle: no record left.
        i.roll_back(&configured).unwrap();
        assert!(i.active().is_none());
    }
}
