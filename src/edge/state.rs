//! The board's state directory, held by one daemon at a time: an exclusive lock (flock) so two
//! daemons can never share a spool or a sequence, and the highest bundle epoch accepted, so an
//! older bundle — a rollback to a superseded model — is refused at start-up and on reload.

use super::error::EdgeError;
use crate::files::{write_atomic, IoError};
use nix::fcntl::{Flock, FlockArg};
use std::path::{Path, PathBuf};

pub struct State {
    dir: PathBuf,
    /// Held for the daemon's life; released when the process ends, however it ends.
    _lock: Flock<std::fs::File>,
}

impl State {
    /// Take the directory (created if need be), or say that another daemon has it.
    pub fn open(dir: &Path) -> Result<Self, EdgeError> {
        crate::files::create_dir_all(dir)?;
        let path = dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| IoError::new(&path, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            EdgeError::Settings(format!(
                "{}: the state directory is in use by another hedged ({e})",
                dir.display()
            ))
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn epoch_path(&self) -> PathBuf {
        self.dir.join("epoch")
    }

    /// The newest bundle epoch this board accepted (0: none yet).
    pub fn epoch(&self) -> u64 {
        std::fs::read_to_string(self.epoch_path())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Refuse a bundle older than the newest accepted.
    pub(crate) fn check_epoch(&self, epoch: u64) -> Result<(), EdgeError> {
        let newest = self.epoch();
        if epoch < newest {
            return Err(EdgeError::Rollback { epoch, newest });
        }
        Ok(())
    }

    /// Record that a bundle of `epoch` runs now (durably, before it is used).
    pub(crate) fn accept_epoch(&self, epoch: u64) -> Result<(), EdgeError> {
        if epoch > self.epoch() {
            write_atomic(&self.epoch_path(), format!("{epoch}\n").as_bytes(), 0o600)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_daemon_per_directory_and_no_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let e = State::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("in use by another hedged"), "{e}");
        assert_eq!(state.epoch(), 0);
        state.check_epoch(3).unwrap();
        state.accept_epoch(3).unwrap();
        state.accept_epoch(2).unwrap(); // never goes down
        assert_eq!(state.epoch(), 3);
        assert!(matches!(
            state.check_epoch(2),
            Err(EdgeError::Rollback {
                epoch: 2,
                newest: 3
            })
        ));
        state.check_epoch(3).unwrap();
        drop(state);
        // Released with its holder; the epoch stays.
        let again = State::open(dir.path()).unwrap();
        assert_eq!(again.epoch(), 3);
    }
}
