//! Where results go: result files in a directory (no broker), or the spool and the MQTT
//! publisher. Both write the one result format ([`ResultMessage`]), numbered by the board's
//! durable [`Sequence`] and signed with its identity key.

use super::error::EdgeError;
use super::publisher::{Identity, Publisher};
use super::sequence::Sequence;
use super::settings::{Settings, SinkSettings};
use super::spool::Spool;
use crate::files::{write_atomic, IoError};
use crate::transport::message::ResultMessage;
use ed25519_dalek::SigningKey;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct Sink {
    /// Every result is signed with the board's identity key.
    identity: Arc<SigningKey>,
    sequence: Sequence,
    to: To,
}

enum To {
    Files {
        dir: PathBuf,
    },
    Broker {
        spool: Arc<Spool>,
        publisher: Publisher,
    },
}

impl Sink {
    /// `health`: what the publisher reports as the board's status and metrics.
    /// `deployments`: fetched by the publisher over the same connection.
    pub fn open(
        settings: &Settings,
        health: Arc<super::health::Health>,
        deployments: Arc<super::deploy::Deployments>,
        trust: &super::trust::TrustAnchor,
    ) -> Result<Self, EdgeError> {
        let start = &settings.start_up;
        let identity = Arc::new(super::identity::load_or_create(&start.identity_key)?);
        let mut floor = 0;
        let device = &start.device_id;
        let to = match &start.sink {
            SinkSettings::Broker { mqtt, spool } => {
                let spool = Arc::new(Spool::open(&spool.dir, spool.max_files, spool.max_bytes)?);
                floor = spool.last().unwrap_or(0);
                if !spool.is_empty() {
                    log::info!(
                        "{} spooled result(s) from a previous run will be published",
                        spool.len()
                    );
                }
                let client_id = mqtt
                    .client_id
                    .clone()
                    .unwrap_or_else(|| format!("hedged-{device}"));
                let identity = Identity {
                    device: device.clone(),
                    key: identity.clone(),
                    backend: trust.clone(),
                };
                let publisher = Publisher::start(
                    mqtt,
                    &client_id,
                    identity,
                    spool.clone(),
                    health,
                    deployments,
                )?;
                To::Broker { spool, publisher }
            }
            SinkSettings::Files { out_dir } => {
                crate::files::create_dir_all(out_dir)?;
                To::Files {
                    dir: out_dir.clone(),
                }
            }
        };
        crate::files::create_dir_all(&start.state_dir)?;
        let sequence = Sequence::open(&start.state_dir.join("next-seq"), floor)?;
        Ok(Self {
            identity,
            sequence,
            to,
        })
    }

    /// Number, sign and store one result (`message` builds it for its sequence number). A
    /// spool that cannot be written (disk full, I/O error) holds up the scheduler, retrying
    /// every 5 s, rather than lose the result; `Err(StoppedUnspooled)` if a stop comes first.
    pub fn deliver(
        &self,
        message: impl Fn(u64) -> ResultMessage,
        stop: &AtomicBool,
    ) -> Result<String, EdgeError> {
        let message = |seq| {
            let mut m = message(seq);
            m.sign(&self.identity);
            m
        };
        match &self.to {
            To::Files { dir } => {
                let seq = self.sequence.next()?;
                let path = dir.join(format!("result-{seq:06}.bin"));
                write_atomic(&path, &message(seq).encode(), 0o644)?;
                Ok(format!("#{seq} → {}", path.display()))
            }
            To::Broker { spool, publisher } => {
                let seq = spool_with_retry(spool, &self.sequence, stop, message)?;
                publisher.notify();
                Ok(format!("#{seq} spooled ({} pending)", spool.len()))
            }
        }
    }

    /// Deliver what is spooled, then stop: at the end of the input as long as it takes, on a
    /// stop signal for 10 s (the rest stays spooled). Returns what is left in the spool.
    pub fn close(self, stopping: bool, stop: &AtomicBool) -> usize {
        match self.to {
            To::Broker { publisher, spool } => {
                let timeout = if stopping {
                    Duration::from_secs(10)
                } else {
                    Duration::from_secs(u64::MAX / 4)
                };
                publisher.shutdown_when(timeout, || stop.load(Ordering::Relaxed));
                spool.len()
            }
            To::Files { .. } => 0,
        }
    }
}

/// Number and spool one result, retrying every 5 s while the spool cannot be written.
fn spool_with_retry(
    spool: &Spool,
    sequence: &Sequence,
    stop: &AtomicBool,
    message: impl Fn(u64) -> ResultMessage,
) -> Result<u64, EdgeError> {
    let mut seq = None;
    let mut complained = false;
    loop {
        let attempt = (|| {
            let s = match seq {
                Some(s) => s,
                None => *seq.insert(sequence.next()?),
            };
            spool.put(s, &message(s).encode())?;
            Ok::<_, IoError>(s)
        })();
        match attempt {
            Ok(s) => {
                if complained {
                    log::info!("spool writable again: result #{s} saved");
                }
                return Ok(s);
            }
            Err(e) => {
                if !complained {
                    log::error!(
                        "cannot spool a result ({e}); inference paused, retrying every 5 s"
                    );
                    complained = true;
                }
                for _ in 0..25 {
                    if stop.load(Ordering::Relaxed) {
                        return Err(EdgeError::StoppedUnspooled);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ResultCiphertext;

    #[test]
    fn an_unwritable_spool_pauses_instead_of_losing_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let spool = Spool::open(&path, 10, 1 << 20).unwrap();
        let sequence = Sequence::open(&dir.path().join("next-seq"), 0).unwrap();
        // The spool directory disappears (as good as a full disk for the writes).
        std::fs::rename(&path, dir.path().join("away")).unwrap();
        std::fs::write(&path, "not a directory").unwrap();
        let restore = {
            let (path, away) = (path.clone(), dir.path().join("away"));
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                std::fs::remove_file(&path).unwrap();
                std::fs::rename(away, path).unwrap();
            })
        };
        let message = |seq| ResultMessage {
            device_id: "d".into(),
            bundle_id: "b".into(),
            seq,
            timestamp_ms: 0,
            infer_us: 0,
            extract_us: 0,
            result: ResultCiphertext {
                key_id: [0; 16],
                bits: 64,
                parts: Vec::new(),
            },
            signed: None,
        };
        let stop = AtomicBool::new(false);
        let seq = spool_with_retry(&spool, &sequence, &stop, message).expect("saved once writable");
        restore.join().unwrap();
        assert_eq!(seq, 1);
        assert_eq!(spool.len(), 1);
        // With a stop request and a spool that stays unwritable, it gives up.
        std::fs::remove_dir_all(&path).unwrap();
        std::fs::write(&path, "x").unwrap();
        stop.store(true, Ordering::Relaxed);
        assert!(matches!(
            spool_with_retry(&spool, &sequence, &stop, message),
            Err(EdgeError::StoppedUnspooled)
        ));
    }
}
