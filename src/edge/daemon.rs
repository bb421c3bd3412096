//! hedged's main loop: the acquisition source feeds the bounded queue; this thread is the
//! scheduler (one encrypted inference at a time, no thread pool); results go to the spool and
//! the MQTT publisher, or to result files when no broker is configured.
//!
//! Signals: SIGTERM/SIGINT stop taking input, finish the inference in flight, give the broker
//! 10 s to take what is spooled (the rest stays spooled for the next start) and return.
//! SIGHUP re-reads the configuration and loads the bundle it names on a helper thread; once
//! that bundle verifies and its engine is ready, the scheduler switches to it between two
//! inferences (results name the bundle that produced them). A bundle that fails to load
//! leaves the old one running. The bundle, verifying key and feature mode are reloadable;
//! other settings need a restart (a reload that changes them says so).
//!
//! systemd (Type=notify): READY=1 once the bundle is loaded and the source is open, STATUS=
//! lines, WATCHDOG=1 at half the WatchdogSec while the scheduler is responsive (idle, or inside
//! an inference younger than `watchdog_max_inference_s`), STOPPING=1 on a stop signal.

use super::config::{Config, DEFAULT_MAX_FRAME, DEFAULT_QUEUE_BYTES};
use super::frame::Input;
use super::message::{now_ms, ResultMessage};
use super::notify::Notifier;
use super::publish::Publisher;
use super::queue::{BoundedQueue, Pop, QueuePolicy};
use super::source::{self, Rejects, Source};
use super::spool::Spool;
use crate::backend;
use crate::bench::FeatureMode;
use crate::bundle::{bundle_id, EdgeBundle};
use crate::engine::{EdgeEngine, ResultCiphertext};
use crate::error::{Error, Result};
use crate::model::split::Extractor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Re-reads the configuration for a SIGHUP (the file, with the command line's overrides).
pub type Reloader = Box<dyn Fn() -> Result<Config> + Send + Sync>;

/// A verified bundle, expanded and ready.
struct Loaded {
    engine: EdgeEngine,
    /// The plaintext feature extractor, for bundles split from a CNN.
    extractor: Option<Extractor>,
    bundle_id: String,
    features: FeatureMode,
}

fn load(config: &Config) -> Result<Loaded> {
    let path = Config::require(&config.bundle, "bundle")?;
    let trusted =
        backend::load_verifying(Config::require(&config.verifying_key, "verifying-key")?)?;
    let (bundle, bytes) = EdgeBundle::load(path, &trusted).map_err(|e| match e {
        Error::Bundle(why) => Error::Bundle(format!("{}: {why}", path.display())),
        other => other,
    })?;
    Ok(Loaded {
        engine: bundle.engine()?,
        extractor: bundle.extractor.as_ref().map(|e| e.prepare()).transpose()?,
        bundle_id: bundle_id(&bytes),
        features: config.features.unwrap_or(FeatureMode::Plain),
    })
}

impl Loaded {
    fn describe(&self) -> String {
        format!(
            "bundle {} ({} variant, {}-bit, {} features{})",
            self.bundle_id,
            self.engine.info.variant.name(),
            self.engine.params.security,
            match self.features {
                FeatureMode::Plain => "plaintext",
                FeatureMode::Enc => "encrypted",
            },
            match &self.extractor {
                Some(e) => format!(", plaintext extractor {:?} → {}", e.input_shape, e.out_dim),
                None => String::new(),
            }
        )
    }

    /// The result, and the time spent in the plaintext feature extractor.
    fn infer(&mut self, input: &Input) -> Result<(ResultCiphertext, Duration)> {
        let started = Instant::now();
        let extracted;
        let features: &[f32] = match (input, &self.extractor) {
            (Input::Encrypted(f), _) => {
                return Ok((self.engine.infer_encrypted(f)?, Duration::ZERO));
            }
            (Input::Plain(x), None) => x,
            (Input::Plain(x), Some(e)) => {
                extracted = e.run(x)?;
                &extracted
            }
            (Input::Image(image), Some(e)) => {
                extracted = e.run_image(image)?;
                &extracted
            }
            (Input::Image(_), None) => {
                return Err(Error::BadFeatures(
                    "an image, but this bundle has no feature extractor".into(),
                ))
            }
        };
        let extract = started.elapsed();
        let result = match self.features {
            FeatureMode::Plain => self.engine.infer_plain(features),
            FeatureMode::Enc => self.engine.infer_encrypting(features),
        }?;
        Ok((result, extract))
    }
}

/// Where results go.
enum Sink {
    Files(PathBuf),
    Broker {
        spool: Arc<Spool>,
        publisher: Publisher,
    },
}

/// What the watchdog looks at: when the scheduler last went round its loop, and since when it
/// has been inside an inference (0: it is not).
#[derive(Default)]
struct Heartbeat {
    beat_ms: AtomicU64,
    busy_since_ms: AtomicU64,
}

impl Heartbeat {
    fn alive(&self, max_inference: Duration) -> bool {
        let now = now_ms();
        match self.busy_since_ms.load(Ordering::Relaxed) {
            0 => now.saturating_sub(self.beat_ms.load(Ordering::Relaxed)) < 30_000,
            since => now.saturating_sub(since) < max_inference.as_millis() as u64,
        }
    }
}

/// Signal flags.
struct Signals {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let reload = Arc::new(AtomicBool::new(false));
        let register = |signal, flag: &Arc<AtomicBool>| {
            signal_hook::flag::register(signal, flag.clone())
                .map(|_| ())
                .map_err(|e| Error::io("signal handler", e))
        };
        register(signal_hook::consts::SIGTERM, &stop)?;
        register(signal_hook::consts::SIGINT, &stop)?;
        register(signal_hook::consts::SIGHUP, &reload)?;
        Ok(Self { stop, reload })
    }
}

pub fn run(config: Config, reloader: Reloader) -> Result<()> {
    let notifier = Arc::new(Notifier::from_env());
    let signals = Signals::install()?;
    let mut loaded = load(&config)?;
    let device = config.device_id.clone().unwrap_or_else(|| "edge".into());
    log::info!("device {device}: {}", loaded.describe());

    let sink = open_sink(&config, &device)?;
    let queue = Arc::new(BoundedQueue::new(
        config.queue_capacity.unwrap_or(64),
        config.queue_max_bytes.unwrap_or(DEFAULT_QUEUE_BYTES),
        config.queue_policy.unwrap_or(QueuePolicy::Block),
    ));
    let rejects = Arc::new(Rejects::default());
    let input = Source::parse(config.input.as_deref().unwrap_or("-"));
    let _acquisition = source::start(
        &input,
        queue.clone(),
        rejects.clone(),
        config.max_frame_bytes.unwrap_or(DEFAULT_MAX_FRAME),
    )?;

    let heartbeat = Arc::new(Heartbeat::default());
    heartbeat.beat_ms.store(now_ms(), Ordering::Relaxed);
    if let Some(interval) = Notifier::watchdog_interval() {
        let max_inference = Duration::from_secs(config.watchdog_max_inference_s.unwrap_or(600));
        let (notifier, heartbeat, stop) =
            (notifier.clone(), heartbeat.clone(), signals.stop.clone());
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || loop {
                if heartbeat.alive(max_inference) || stop.load(Ordering::Relaxed) {
                    notifier.send("WATCHDOG=1");
                } else {
                    log::error!("scheduler unresponsive: no longer feeding the watchdog");
                }
                std::thread::sleep(interval);
            })
            .map_err(|e| Error::io("watchdog thread", e))?;
    }
    notifier.send(&format!("READY=1\nSTATUS=running {}", loaded.describe()));

    let reloader = Arc::new(reloader);
    let mut pending_reload: Option<mpsc::Receiver<Result<(Config, Loaded)>>> = None;
    let mut current_config = config;
    let mut done = 0u64;
    let mut stopping = false;
    loop {
        heartbeat.beat_ms.store(now_ms(), Ordering::Relaxed);
        if signals.stop.load(Ordering::Relaxed) {
            stopping = true;
            notifier.send("STOPPING=1\nSTATUS=draining");
            break;
        }
        if signals.reload.swap(false, Ordering::Relaxed) && pending_reload.is_none() {
            log::info!("SIGHUP: reloading the configuration");
            pending_reload = Some(start_reload(reloader.clone())?);
        }
        if let Some(rx) = &pending_reload {
            match rx.try_recv() {
                Ok(Ok((new_config, new))) => {
                    let changed = current_config.restart_only_changes(&new_config);
                    if !changed.is_empty() {
                        log::warn!(
                            "reload: {} changed but take effect only on a restart",
                            changed.join(", ")
                        );
                    }
                    log::info!("reloaded: {} replaces {}", new.describe(), loaded.bundle_id);
                    loaded = new;
                    current_config = new_config;
                    notifier.send(&format!("STATUS=running {}", loaded.describe()));
                    pending_reload = None;
                }
                Ok(Err(e)) => {
                    log::error!(
                        "reload refused, still running bundle {}: {e}",
                        loaded.bundle_id
                    );
                    pending_reload = None;
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => pending_reload = None,
            }
        }
        let input = match queue.pop(Duration::from_millis(200)) {
            Pop::Item(v) => v,
            Pop::Empty => continue,
            Pop::Closed => break,
        };
        let started = Instant::now();
        heartbeat.busy_since_ms.store(now_ms(), Ordering::Relaxed);
        let result = loaded.infer(&input);
        heartbeat.busy_since_ms.store(0, Ordering::Relaxed);
        let (result, extract) = match result {
            Ok(r) => r,
            Err(e) => {
                let text = e.to_string();
                let kind = text.split(':').take(2).collect::<Vec<_>>().join(":");
                rejects.reject(&kind, format_args!("an input: {e}"));
                continue;
            }
        };
        let ms = (started.elapsed() - extract).as_secs_f64() * 1e3;
        let extract_ms = extract.as_secs_f64() * 1e3;
        done += 1;
        match &sink {
            Sink::Files(dir) => {
                let path = dir.join(format!("result-{done:06}.bin"));
                backend::write_atomic(&path, &backend::encode_result(&result), 0o644)?;
                log::info!(
                    "#{done}: extractor {extract_ms:.1} ms, encrypted {ms:.1} ms → {}",
                    path.display()
                );
            }
            Sink::Broker { spool, publisher } => {
                let message = |seq| ResultMessage {
                    device_id: device.clone(),
                    bundle_id: loaded.bundle_id.clone(),
                    seq,
                    timestamp_ms: now_ms(),
                    infer_us: (ms * 1e3) as u64,
                    extract_us: extract.as_micros() as u64,
                    result: result.clone(),
                };
                let Some(seq) = spool_with_retry(spool, &signals.stop, message) else {
                    return Err(Error::Malformed(
                        "stopped while the spool could not be written: the result in flight is lost"
                            .into(),
                    ));
                };
                publisher.notify();
                log::info!(
                    "#{seq}: extractor {extract_ms:.1} ms, encrypted {ms:.1} ms, spooled ({} pending)",
                    spool.len()
                );
            }
        }
    }
    stopping |= signals.stop.load(Ordering::Relaxed);
    let left = match sink {
        Sink::Broker { publisher, spool } => {
            // At the end of the input, wait for the broker to take everything (as long as it
            // takes); on a signal, give it 10 s and leave the rest spooled.
            let timeout = if stopping {
                Duration::from_secs(10)
            } else {
                Duration::from_secs(u64::MAX / 4)
            };
            publisher.shutdown_when(timeout, || signals.stop.load(Ordering::Relaxed));
            spool.len()
        }
        Sink::Files(_) => 0,
    };
    log::info!(
        "{}: {done} result(s), {} rejected, {} dropped by the queue, {} left in the spool",
        if stopping {
            "stopped"
        } else {
            "input finished"
        },
        rejects.count(),
        queue.dropped(),
        left
    );
    Ok(())
}

fn open_sink(config: &Config, device: &str) -> Result<Sink> {
    match &config.mqtt {
        Some(mqtt) => {
            let dir = Config::require(&config.spool_dir, "spool-dir")?;
            let spool = Arc::new(Spool::open(
                dir,
                config.spool_max_files.unwrap_or(10_000),
                config.spool_max_bytes.unwrap_or(1 << 30),
            )?);
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
        None => {
            let dir = Config::require(&config.out_dir, "out-dir")?.clone();
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            Ok(Sink::Files(dir))
        }
    }
}

/// Load the reloaded configuration's bundle on a helper thread, so inference goes on meanwhile.
fn start_reload(reloader: Arc<Reloader>) -> Result<mpsc::Receiver<Result<(Config, Loaded)>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            let result = reloader().and_then(|c| load(&c).map(|l| (c, l)));
            let _ = tx.send(result);
        })
        .map_err(|e| Error::io("reload thread", e))?;
    Ok(rx)
}

/// Number and spool one result. A spool that cannot be written (disk full, I/O error) holds up
/// the scheduler, retrying every 5 s, rather than lose the result; `None` if a stop signal
/// comes first.
fn spool_with_retry(
    spool: &Spool,
    stop: &AtomicBool,
    message: impl Fn(u64) -> ResultMessage,
) -> Option<u64> {
    let mut seq = None;
    let mut complained = false;
    loop {
        let attempt = (|| {
            let s = match seq {
                Some(s) => s,
                None => *seq.insert(spool.next_seq()?),
            };
            spool.put(s, &message(s).encode())?;
            Ok::<_, Error>(s)
        })();
        match attempt {
            Ok(s) => {
                if complained {
                    log::info!("spool writable again: result #{s} saved");
                }
                return Some(s);
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
                        return None;
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
        assert_eq!(spool_with_retry(&spool, &stop, message), None);
    }
}
