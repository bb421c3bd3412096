//! The board's sequence numbers: a durable counter in its state directory, so numbers never
//! repeat across restarts — the backend refuses a (device, sequence) it has accepted before.

use crate::files::{write_atomic, IoError};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A durable counter (a file holding the next number, written with fsync before a number is
/// used), so numbers never repeat across restarts (the backend refuses a sequence number it
/// has seen).
pub(crate) struct Sequence {
    path: PathBuf,
    next: Mutex<u64>,
}

impl Sequence {
    /// Continue the counter in file `path`, and at least after `floor`.
    pub fn open(path: &Path, floor: u64) -> Result<Self, IoError> {
        let path = path.to_path_buf();
        let stored: u64 = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1);
        Ok(Self {
            path,
            next: Mutex::new(stored.max(floor + 1)),
        })
    }

    /// Reserve the next number, durably.
    pub fn next(&self) -> Result<u64, IoError> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let seq = *next;
        write_atomic(&self.path, format!("{}\n", seq + 1).as_bytes(), 0o600)?;
        *next = seq + 1;
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_increasing_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("next-seq");
        let s = Sequence::open(&path, 0).unwrap();
        assert_eq!((s.next().unwrap(), s.next().unwrap()), (1, 2));
        drop(s);
        let s = Sequence::open(&path, 0).unwrap();
        assert_eq!(s.next().unwrap(), 3);
        drop(s);
        // Above whatever is still spooled, whatever the file says.
        assert_eq!(Sequence::open(&path, 10).unwrap().next().unwrap(), 11);
    }
}
