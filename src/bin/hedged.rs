//! `hedged`: the edge daemon.
//!
//! acquisition thread (file or stdin, one vector per line) → bounded queue → single-threaded
//! scheduler (one encrypted inference at a time) → spool (fsync) → MQTT publisher (QoS 1), or
//! result files when no broker is configured. SIGTERM/SIGINT: stop taking input, finish the
//! inference in flight, flush what the broker will take (10 s at most, the rest stays
//! spooled) and exit 0.

use anyhow::{Context, Result};
use clap::Parser;
use hedge::backend;
use hedge::bench::FeatureMode;
use hedge::bundle::{bundle_id, EdgeBundle};
use hedge::data::parse_line;
use hedge::edge::config::Config;
use hedge::edge::message::{now_ms, ResultMessage};
use hedge::edge::publish::{MqttConfig, Publisher};
use hedge::edge::queue::{BoundedQueue, Pop, QueuePolicy};
use hedge::edge::spool::Spool;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "hedged",
    version,
    about = "hedge edge daemon: encrypted inference on feature vectors"
)]
struct Cli {
    /// TOML configuration (see config/hedged.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// The backend's verifying key (trust anchor for bundles).
    #[arg(long)]
    verifying_key: Option<PathBuf>,
    /// Feature vectors, one per line; `-` for stdin.
    #[arg(long)]
    input: Option<String>,
    #[arg(long, value_enum)]
    features: Option<FeatureMode>,
    /// Result files go here when no broker is configured.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    #[arg(long)]
    log_level: Option<String>,
    #[arg(long)]
    device_id: Option<String>,
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Publish to this broker (HOST:PORT), overriding the config's [mqtt] host and port.
    #[arg(long)]
    broker: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let config = load_config(&cli);
    let level = config
        .as_ref()
        .ok()
        .and_then(|c| c.log_level.clone())
        .unwrap_or_else(|| "info".into());
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    if let Err(e) = config.and_then(run) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn load_config(cli: &Cli) -> Result<Config> {
    let mut flags = Config {
        bundle: cli.bundle.clone(),
        verifying_key: cli.verifying_key.clone(),
        input: cli.input.clone(),
        features: cli.features,
        out_dir: cli.out_dir.clone(),
        log_level: cli.log_level.clone(),
        device_id: cli.device_id.clone(),
        spool_dir: cli.spool_dir.clone(),
        ..Default::default()
    };
    let file = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(broker) = &cli.broker {
        let (host, port) = broker
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .context("--broker must be HOST:PORT")?;
        let base = file.mqtt.clone().unwrap_or(MqttConfig {
            host: String::new(),
            port: 0,
            topic: "hedge/{device}/results".into(),
            client_id: None,
            username: None,
            password: None,
            keep_alive_s: 30,
        });
        flags.mqtt = Some(MqttConfig { host, port, ..base });
    }
    Ok(flags.or(file))
}

/// Where results go.
enum Sink {
    Files(PathBuf),
    Broker {
        spool: Arc<Spool>,
        publisher: Publisher,
    },
}

fn run(config: Config) -> Result<()> {
    let bundle_path = Config::require(&config.bundle, "bundle")?;
    let trusted =
        backend::load_verifying(Config::require(&config.verifying_key, "verifying-key")?)?;
    let (bundle, bytes) = EdgeBundle::load(bundle_path, &trusted)
        .with_context(|| format!("refusing to start: {}", bundle_path.display()))?;
    let bundle_name = bundle_id(&bytes);
    let mut engine = bundle.engine()?;
    let device = config.device_id.clone().unwrap_or_else(|| "edge".into());
    log::info!(
        "device {device}: bundle {bundle_name} ({} variant, {}-bit)",
        engine.info.variant.name(),
        engine.params.security
    );

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }

    let (sink, spool) = match &config.mqtt {
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
            let publisher = Publisher::start(
                mqtt.clone(),
                client_id,
                mqtt.topic_for(&device),
                spool.clone(),
            )?;
            (
                Sink::Broker {
                    spool: spool.clone(),
                    publisher,
                },
                Some(spool),
            )
        }
        None => {
            let dir = Config::require(&config.out_dir, "out-dir")?.clone();
            std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
            (Sink::Files(dir), None)
        }
    };

    // Acquisition thread: parse lines, count and report rejects once per kind.
    let queue = Arc::new(BoundedQueue::new(
        config.queue_capacity.unwrap_or(64),
        config.queue_policy.unwrap_or(QueuePolicy::Block),
    ));
    let input = config.input.clone().unwrap_or_else(|| "-".into());
    let reader: Box<dyn BufRead + Send> = if input == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&input).with_context(|| input.clone())?,
        ))
    };
    let rejected = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let (queue, rejected) = (queue.clone(), rejected.clone());
        std::thread::Builder::new()
            .name("acquire".into())
            .spawn(move || {
                let mut kinds = std::collections::HashSet::new();
                for (i, line) in reader.lines().enumerate() {
                    let Ok(line) = line else { break };
                    match parse_line(&line) {
                        Ok(Some(sample)) => {
                            if !queue.push(sample.values) {
                                break;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            rejected.fetch_add(1, Ordering::Relaxed);
                            let kind = e.to_string().split(':').next().unwrap_or("").to_string();
                            if kinds.insert(kind) {
                                log::warn!("line {}: rejected: {e}", i + 1);
                            }
                        }
                    }
                }
                queue.close();
            })?;
    }

    // Scheduler: one inference at a time on this thread.
    let features = config.features.unwrap_or(FeatureMode::Plain);
    let mut done = 0u64;
    let mut bad_kinds = std::collections::HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        let values = match queue.pop(Duration::from_millis(200)) {
            Pop::Item(v) => v,
            Pop::Empty => continue,
            Pop::Closed => break,
        };
        let t = std::time::Instant::now();
        let result = match features {
            FeatureMode::Plain => engine.infer_plain(&values),
            FeatureMode::Enc => engine.infer_encrypting(&values),
        };
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                rejected.fetch_add(1, Ordering::Relaxed);
                let kind = e
                    .to_string()
                    .split(':')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(":");
                if bad_kinds.insert(kind) {
                    log::warn!("vector rejected: {e}");
                }
                continue;
            }
        };
        let ms = t.elapsed().as_secs_f64() * 1e3;
        match &sink {
            Sink::Files(dir) => {
                done += 1;
                let path = dir.join(format!("result-{done:06}.bin"));
                backend::write_atomic(&path, &backend::encode_result(&result), 0o644)?;
                log::info!("#{done} in {ms:.1} ms → {}", path.display());
            }
            Sink::Broker { spool, publisher } => {
                let seq = spool.next_seq()?;
                let message = ResultMessage {
                    device_id: device.clone(),
                    bundle_id: bundle_name.clone(),
                    seq,
                    timestamp_ms: now_ms(),
                    infer_us: (ms * 1e3) as u64,
                    result,
                };
                spool.put(seq, &message.encode())?;
                publisher.notify();
                done += 1;
                log::info!("#{seq} in {ms:.1} ms, spooled ({} pending)", spool.len());
            }
        }
    }
    let stopping = stop.load(Ordering::Relaxed);
    if let Sink::Broker { publisher, .. } = sink {
        // At the end of the input, wait for the broker to take everything (as long as it
        // takes); on a signal, give it 10 s and leave the rest spooled.
        let timeout = if stopping {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(u64::MAX / 4)
        };
        publisher.shutdown_when(timeout, || stop.load(Ordering::Relaxed));
    }
    log::info!(
        "{}: {done} result(s), {} rejected, {} dropped by the queue, {} left in the spool",
        if stopping {
            "stopped"
        } else {
            "input finished"
        },
        rejected.load(Ordering::Relaxed),
        queue.dropped(),
        spool.map_or(0, |s| s.len())
    );
    Ok(())
}
