//! Where results go: result files in a directory (no broker), or the spool and the MQTT
//! publisher. Both write the one result format ([`ResultMessage`]), numbered by a durable
//! sequence.

use super::error::EdgeError;
use super::publisher::Publisher;
use super::settings::SinkSettings;
use super::spool::{Sequence, Spool};
use crate::files::{write_atomic, IoError};
use crate::transport::message::ResultMessage;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub enum Sink {
    Files {
        dir: PathBuf,
        sequence: Sequence,
    },
    Broker {
        spool: Arc<Spool>,
        publisher: Publisher,
    },
}

impl Sink {
    pub fn open(settings: &SinkSettings, device: &str) -> Result<Self, EdgeError> {
        match settings {
            SinkSettings::Broker { mqtt, spool } => {
                let spool = Arc::new(Spool::open(&spool.dir, spool.max_files, spool.max_bytes)?);
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
                let publisher =
                    Publisher::start(mqtt, &client_id, mqtt.topic_for(device), spool.clone())?;
                Ok(Sink::Broker { spool, publisher })
            }
            SinkSettings::Files { out_dir } => {
                crate::files::create_dir_all(out_dir)?;
                Ok(Sink::Files {
                    // Hidden, so that `hedge decrypt DIR/*` takes only results.
                    sequence: Sequence::open(&out_dir.join(".next-seq"), 0)?,
                    dir: out_dir.clone(),
                })
            }
        }
    }

    /// Number and store one result (`message` builds it for its sequence number). A spool
    /// that cannot be written (disk full, I/O error) holds up the scheduler, retrying every
    /// 5 s, rather than lose the result; `Err(StoppedUnspooled)` if a stop comes first.
    pub fn deliver(
        &self,
        message: impl Fn(u64) -> ResultMessage,
        stop: &AtomicBool,
    ) -> Result<String, EdgeError> {
        match self {
            Sink::Files { dir, sequence } => {
                let seq = sequence.next()?;
                let path = dir.join(format!("result-{seq:06}.bin"));
                write_atomic(&path, &message(seq).encode(), 0o644)?;
                Ok(format!("#{seq} → {}", path.display()))
            }
            Sink::Broker { spool, publisher } => {
                let seq = spool_with_retry(spool, stop, message)?;
                publisher.notify();
                Ok(format!("#{seq} spooled ({} pending)", spool.len()))
            }
        }
    }

    /// Deliver what is spooled, then stop: at the end of the input as long as it takes, on a
    /// stop signal for 10 s (the rest stays spooled). Returns what is left in the spool.
    pub fn close(self, stopping: bool, stop: &AtomicBool) -> usize {
        match self {
            Sink::Broker { publisher, spool } => {
                let timeout = if stopping {
                    Duration::from_secs(10)
                } else {
                    Duration::from_secs(u64::MAX / 4)
                };
                publisher.shutdown_when(timeout, || stop.load(Ordering::Relaxed));
                spool.len()
            }
            Sink::Files { .. } => 0,
        }
    }
}

/// Number and spool one result, retrying every 5 s while the spool cannot be written.
fn spool_with_retry(
    spool: &Spool,
    stop: &AtomicBool,
    message: impl Fn(u64) -> ResultMessage,
) -> Result<u64, EdgeError> {
    let mut seq = None;
    let mut complained = false;
    loop {
        let attempt = (|| {
            let s = match seq {
                Some(s) => s,
                None => *seq.insert(spool.next_seq()?),
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
    use crate::crypto::keys::KeyKind;
    use crate::engine::ResultCiphertext;

    #[test]
    fn an_unwritable_spool_pauses_instead_of_losing_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let spool = Spool::open(&path, 10, 1 << 20).unwrap();
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
                key: KeyKind::Wide,
                poly_size: 0,
                delta_out: 1,
                out_scale: 1.0,
                parts: Vec::new(),
            },
        };
        let stop = AtomicBool::new(false);
        let seq = spool_with_retry(&spool, &stop, message).expect("saved once writable");
        restore.join().unwrap();
        assert_eq!(seq, 1);
        assert_eq!(spool.len(), 1);
        // With a stop request and a spool that stays unwritable, it gives up.
        std::fs::remove_dir_all(&path).unwrap();
        std::fs::write(&path, "x").unwrap();
        stop.store(true, Ordering::Relaxed);
        assert!(matches!(
            spool_with_retry(&spool, &stop, message),
            Err(EdgeError::StoppedUnspooled)
        ));
    }
}
