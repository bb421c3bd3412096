//! Store and forward: every result is written here (fsync, atomic rename) before it is
//! published, and removed only after the broker's PUBACK. A crash, SIGKILL or power loss
//! between the two leaves the file, which is published again at the next start: delivery is
//! at least once, and the decryptor drops duplicates by (device, sequence).
//!
//! Files are `<seq, 20 digits>.msg`, numbered by the board's [`super::sequence::Sequence`].
//!
//! **Bound.** At most `max_files` files and `max_bytes` bytes; when a new result would exceed
//! either, the *oldest* spooled results are dropped (and counted), on the grounds that a
//! recent result is worth more to the operator than a stale one. Temporary files left by a
//! crash (`.tmp-*`) are removed at start.

use crate::files::{write_atomic, IoError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct Spool {
    dir: PathBuf,
    max_files: usize,
    max_bytes: u64,
    state: Mutex<State>,
}

struct State {
    /// seq → file size
    entries: BTreeMap<u64, u64>,
    bytes: u64,
    dropped: u64,
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.msg")
}

impl Spool {
    /// Open (and recover) a spool directory.
    pub fn open(dir: &Path, max_files: usize, max_bytes: u64) -> Result<Self, IoError> {
        std::fs::create_dir_all(dir).map_err(|e| IoError::new(dir, e))?;
        let mut entries = BTreeMap::new();
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir).map_err(|e| IoError::new(dir, e))? {
            let entry = entry.map_err(|e| IoError::new(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp") {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if let Some(seq) = name
                .strip_suffix(".msg")
                .and_then(|s| s.parse::<u64>().ok())
            {
                let size = entry
                    .metadata()
                    .map_err(|e| IoError::new(entry.path(), e))?
                    .len();
                entries.insert(seq, size);
                bytes += size;
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            max_files: max_files.max(1),
            max_bytes,
            state: Mutex::new(State {
                entries,
                bytes,
                dropped: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The highest sequence number spooled (numbers go on above it).
    pub fn last(&self) -> Option<u64> {
        self.lock().entries.keys().next_back().copied()
    }

    /// Store a message durably; drops the oldest entries if the bound requires it.
    pub(crate) fn put(&self, seq: u64, bytes: &[u8]) -> Result<(), IoError> {
        let size = bytes.len() as u64;
        let mut st = self.lock();
        while !st.entries.is_empty()
            && (st.entries.len() + 1 > self.max_files || st.bytes + size > self.max_bytes)
        {
            let (&old, &old_size) = st.entries.iter().next().expect("not empty");
            let _ = std::fs::remove_file(self.dir.join(file_name(old)));
            st.entries.remove(&old);
            st.bytes -= old_size;
            st.dropped += 1;
            log::warn!(
                "spool full: dropped result #{old} (oldest first; {} dropped so far)",
                st.dropped
            );
        }
        write_atomic(&self.dir.join(file_name(seq)), bytes, 0o600)?;
        st.entries.insert(seq, size);
        st.bytes += size;
        Ok(())
    }

    /// The oldest pending sequence numbers, at most `limit`, skipping those `<= after`.
    pub(crate) fn pending_after(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
        let st = self.lock();
        let range = match after {
            Some(a) => st.entries.range(a + 1..),
            None => st.entries.range(0..),
        };
        range.take(limit).map(|(s, _)| *s).collect()
    }

    pub fn read(&self, seq: u64) -> Result<Vec<u8>, IoError> {
        let path = self.dir.join(file_name(seq));
        std::fs::read(&path).map_err(|e| IoError::new(path, e))
    }

    /// Forget a message the broker acknowledged.
    pub fn remove(&self, seq: u64) {
        let mut st = self.lock();
        if let Some(size) = st.entries.remove(&seq) {
            st.bytes -= size;
            let _ = std::fs::remove_file(self.dir.join(file_name(seq)));
        }
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Bytes of the spooled results.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 10, 1 << 20).unwrap();
        let (a, b) = (1, 2);
        s.put(a, b"first").unwrap();
        s.put(b, b"second").unwrap();
        s.remove(a);
        std::fs::write(dir.path().join(".x.tmp123"), b"torn").unwrap();
        drop(s);
        let s = Spool::open(dir.path(), 10, 1 << 20).unwrap();
        assert_eq!(s.pending_after(None, 10), vec![b]);
        assert_eq!(s.read(b).unwrap(), b"second");
        assert_eq!(s.last(), Some(b));
        assert!(!dir.path().join(".x.tmp123").exists());
    }

    #[test]
    fn bound_drops_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 3, 1 << 20).unwrap();
        for q in 1..=5 {
            s.put(q, b"x").unwrap();
        }
        assert_eq!(s.pending_after(None, 10), vec![3, 4, 5]);
        assert_eq!(s.dropped(), 2);
        let dir2 = tempfile::tempdir().unwrap();
        let s2 = Spool::open(dir2.path(), 100, 10).unwrap();
        s2.put(1, b"123456").unwrap();
        s2.put(2, b"123456").unwrap();
        assert_eq!(s2.pending_after(None, 10), vec![2]);
    }
}
