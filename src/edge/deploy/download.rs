//! One deployment's transfer: which chunks the board has, which to ask for next, and the
//! partial file they go into. No MQTT here (the publisher moves the bytes), so the rules are
//! unit-tested on their own.
//!
//! Resume: the partial file is the only progress record. On (re)start every chunk-sized piece
//! of it is hashed against the offer's digests, and those that match count as fetched — so a
//! transfer cut by SIGKILL, a reboot or a broker outage goes on from where it was, and a piece
//! half-written at the crash is simply fetched again.

use crate::files::IoError;
use crate::transport::deploy::Offer;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A chunk whose bytes fail their digest in this many requests in a row fails the deployment
/// (the backend's store is bad). Counted once per request: a forger cannot run the count up
/// faster than the board asks, and the genuine chunk, which comes too, is still taken.
pub(crate) const MAX_BAD_CHUNKS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DownloadError {
    #[error("chunk {index} did not match its digest {times} times")]
    BadChunk { index: u32, times: u32 },
    #[error("the whole payload does not match the offer's SHA-256")]
    Digest,
    #[error(transparent)]
    Io(#[from] IoError),
}

/// What one arriving chunk did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    Stored,
    /// Had it already (a redelivery).
    Duplicate,
    /// Its bytes are not the offered ones: dropped, asked for again.
    Refused,
    /// Not one of this offer's chunks.
    Unknown,
}

pub(crate) struct Download {
    pub offer: Offer,
    part: PathBuf,
    file: File,
    have: Vec<bool>,
    received: u64,
    /// Asked for and not yet come, with when.
    asked: HashMap<u32, Instant>,
    bad: HashMap<u32, u32>,
    /// Chunks already counted bad for their current request.
    bad_this_request: std::collections::HashSet<u32>,
    window: usize,
    timeout: Duration,
    /// Chunks found in the partial file at start (resumed, not fetched).
    pub resumed: u64,
}

impl Download {
    /// Start, or resume from the partial file in `dir`.
    pub fn resume(
        offer: Offer,
        dir: &Path,
        window: usize,
        timeout: Duration,
    ) -> Result<Self, DownloadError> {
        crate::files::create_dir_all(dir)?;
        let part = dir.join(format!("{}.part", offer.deployment));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&part)
            .map_err(|e| IoError::new(&part, e))?;
        let io = |e| IoError::new(&part, e);
        let on_disk = file.metadata().map_err(io)?.len();
        let mut have = vec![false; offer.chunks.len()];
        let mut received = 0;
        let mut buf = Vec::new();
        for (i, digest) in offer.chunks.iter().enumerate() {
            let len = offer.chunk_len(i as u32);
            let start = i as u64 * offer.chunk_size as u64;
            if start + len as u64 > on_disk {
                break;
            }
            buf.resize(len, 0);
            file.seek(SeekFrom::Start(start)).map_err(io)?;
            file.read_exact(&mut buf).map_err(io)?;
            if Sha256::digest(&buf)[..] == digest[..] {
                have[i] = true;
                received += len as u64;
            }
        }
        let resumed = have.iter().filter(|h| **h).count() as u64;
        Ok(Self {
            offer,
            part,
            file,
            have,
            received,
            asked: HashMap::new(),
            bad: HashMap::new(),
            bad_this_request: Default::default(),
            window: window.max(1),
            timeout,
            resumed,
        })
    }

    pub fn progress(&self) -> (u64, u64) {
        (self.received, self.offer.size)
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.have.iter().all(|h| *h)
    }

    /// Forget what was asked (a new connection: nothing asked on the old one will come).
    pub(crate) fn reconnected(&mut self) {
        self.asked.clear();
    }

    /// Runs of chunks to ask for now: those asked too long ago again, then the first missing
    /// ones, while fewer than the window are outstanding.
    pub fn requests(&mut self, now: Instant) -> Vec<(u32, u32)> {
        let timeout = self.timeout;
        self.asked.retain(|_, at| now.duration_since(*at) < timeout);
        let mut wanted = Vec::new();
        for (i, have) in self.have.iter().enumerate() {
            if self.asked.len() + wanted.len() >= self.window {
                break;
            }
            let i = i as u32;
            if !*have && !self.asked.contains_key(&i) {
                wanted.push(i);
            }
        }
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for i in wanted {
            self.asked.insert(i, now);
            self.bad_this_request.remove(&i);
            match runs.last_mut() {
                Some((first, count)) if *first + *count == i => *count += 1,
                _ => runs.push((i, 1)),
            }
        }
        runs
    }

    /// Store an arriving chunk if its bytes are the offered ones.
    pub fn arrived(&mut self, index: u32, bytes: &[u8]) -> Result<Arrival, DownloadError> {
        let Some(digest) = self.offer.chunks.get(index as usize) else {
            return Ok(Arrival::Unknown);
        };
        if self.have[index as usize] {
            return Ok(Arrival::Duplicate);
        }
        if bytes.len() != self.offer.chunk_len(index) || Sha256::digest(bytes)[..] != digest[..] {
            // The request stays open (the genuine chunk may be on its way); asked again at
            // the timeout.
            if self.asked.contains_key(&index) && self.bad_this_request.insert(index) {
                let times = self.bad.entry(index).or_insert(0);
                *times += 1;
                if *times >= MAX_BAD_CHUNKS {
                    return Err(DownloadError::BadChunk {
                        index,
                        times: *times,
                    });
                }
            }
            return Ok(Arrival::Refused);
        }
        let io = |e| IoError::new(&self.part, e);
        self.file
            .seek(SeekFrom::Start(index as u64 * self.offer.chunk_size as u64))
            .map_err(io)?;
        self.file.write_all(bytes).map_err(io)?;
        self.have[index as usize] = true;
        self.asked.remove(&index);
        self.received += bytes.len() as u64;
        Ok(Arrival::Stored)
    }

    /// The complete payload, checked whole, moved to `dest` (durably).
    pub fn finish(mut self, dest: &Path) -> Result<PathBuf, DownloadError> {
        let io = |e| IoError::new(&self.part, e);
        self.file.set_len(self.offer.size).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut self.file, &mut hasher).map_err(io)?;
        if hasher.finalize()[..] != self.offer.digest[..] {
            let _ = std::fs::remove_file(&self.part);
            return Err(DownloadError::Digest);
        }
        if let Some(dir) = dest.parent() {
            crate::files::create_dir_all(dir)?;
        }
        std::fs::rename(&self.part, dest).map_err(|e| IoError::new(dest, e))?;
        if let Some(dir) = dest.parent() {
            crate::files::sync_dir(dir);
        }
        Ok(dest.to_path_buf())
    }

    /// Drop the partial file (cancelled or failed).
    pub(crate) fn discard(self) {
        let _ = std::fs::remove_file(&self.part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::deploy::Payload;

    fn offer_for(data: &[u8], chunk: u32) -> Offer {
        Offer {
            deployment: 9,
            device_id: "b".into(),
            bundle_id: "aa".into(),
            payload: Payload::Bundle,
            epoch: 1,
            size: data.len() as u64,
            chunk_size: chunk,
            chunks: data
                .chunks(chunk as usize)
                .map(|c| Sha256::digest(c).into())
                .collect(),
            digest: Sha256::digest(data).into(),
            cancelled: false,
            issued_ms: 0,
        }
    }

    fn chunk(data: &[u8], size: usize, i: u32) -> &[u8] {
        let start = i as usize * size;
        &data[start..(start + size).min(data.len())]
    }

    #[test]
    fn a_window_of_requests_resent_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut d = Download::resume(
            offer_for(&data, 1024),
            dir.path(),
            4,
            Duration::from_secs(5),
        )
        .unwrap();
        let t0 = Instant::now();
        assert_eq!(d.requests(t0), vec![(0, 4)]);
        assert_eq!(d.requests(t0), vec![]);
        assert_eq!(
            d.arrived(1, chunk(&data, 1024, 1)).unwrap(),
            Arrival::Stored
        );
        assert_eq!(d.requests(t0), vec![(4, 1)]);
        // Nothing came for 5 s: asked again.
        assert_eq!(
            d.requests(t0 + Duration::from_secs(6)),
            vec![(0, 1), (2, 3)]
        );
        d.reconnected();
        assert_eq!(
            d.requests(t0 + Duration::from_secs(6)),
            vec![(0, 1), (2, 3)]
        );
    }

    #[test]
    fn forged_chunks_are_refused_and_a_persistent_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![5u8; 3000];
        let timeout = Duration::from_secs(5);
        let mut d = Download::resume(offer_for(&data, 1024), dir.path(), 4, timeout).unwrap();
        // Unasked: refused, not counted.
        for _ in 0..5 {
            assert_eq!(d.arrived(0, &[6u8; 1024]).unwrap(), Arrival::Refused);
        }
        let t0 = Instant::now();
        assert_eq!(d.requests(t0), vec![(0, 3)]);
        // A flood of forgeries counts once per request, and the genuine chunk is still taken.
        for _ in 0..10 {
            assert_eq!(d.arrived(1, &[6u8; 1024]).unwrap(), Arrival::Refused);
        }
        assert_eq!(d.arrived(1, &[5u8; 10]).unwrap(), Arrival::Refused);
        assert_eq!(d.arrived(1, &data[1024..2048]).unwrap(), Arrival::Stored);
        assert_eq!(d.arrived(7, &[5u8; 1024]).unwrap(), Arrival::Unknown);
        // Chunk 0 bad in three requests in a row: the store is bad.
        assert_eq!(d.arrived(0, &[6u8; 1024]).unwrap(), Arrival::Refused);
        assert_eq!(d.requests(t0 + timeout), vec![(0, 1), (2, 1)]);
        assert_eq!(d.arrived(0, &[6u8; 1024]).unwrap(), Arrival::Refused);
        assert_eq!(d.requests(t0 + timeout * 2), vec![(0, 1), (2, 1)]);
        assert!(matches!(
            d.arrived(0, &[6u8; 1024]),
            Err(DownloadError::BadChunk { index: 0, times: 3 })
        ));
        assert_eq!(d.progress(), (1024, 3000));
    }

    #[test]
    fn an_interrupted_transfer_resumes_from_what_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let offer = offer_for(&data, 1024);
        let mut d = Download::resume(offer.clone(), dir.path(), 8, Duration::from_secs(5)).unwrap();
        for i in [0, 1, 3] {
            d.arrived(i, chunk(&data, 1024, i)).unwrap();
        }
        drop(d); // killed
                 // A crash tore chunk 3.
        let part = dir.path().join("9.part");
        let mut bytes = std::fs::read(&part).unwrap();
        bytes[3 * 1024 + 5] ^= 1;
        std::fs::write(&part, bytes).unwrap();
        let mut d = Download::resume(offer, dir.path(), 8, Duration::from_secs(5)).unwrap();
        assert_eq!(d.resumed, 2);
        assert_eq!(d.progress().0, 2048);
        assert_eq!(d.requests(Instant::now()), vec![(2, 3)]);
        for i in [2, 3, 4] {
            assert_eq!(
                d.arrived(i, chunk(&data, 1024, i)).unwrap(),
                Arrival::Stored
            );
        }
        assert_eq!(
            d.arrived(4, chunk(&data, 1024, 4)).unwrap(),
            Arrival::Duplicate
        );
        assert!(d.is_complete());
        let dest = dir.path().join("out/x.bundle");
        d.finish(&dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert!(!part.exists());
    }
}
