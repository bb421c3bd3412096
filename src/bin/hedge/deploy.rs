use anyhow::{bail, Context, Result};
use hedge::backend::deploy::{self, DEFAULT_CHUNK};
use hedge::backend::keys;
use hedge::backend::registry::Registry;
use hedge::transport::message::now_ms;
use hedge::transport::mqtt::MqttArgs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub create: Create,
    /// The key directory: the signing key, and the registry (or --registry).
    #[arg(long, global = true, default_value = "keys")]
    pub keys: PathBuf,
}

/// Offer a bundle to boards.
#[derive(clap::Args)]
pub struct Create {
    /// The signed bundle (from `hedge protect` with these keys).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Target boards (repeatable).
    #[arg(long = "device", value_name = "ID")]
    devices: Vec<String>,
    /// Every board of a group (`hedge device add … --group G`).
    #[arg(long, conflicts_with = "devices")]
    group: Option<String>,
    /// HOST:PORT of the broker the boards use.
    #[arg(long)]
    broker: Option<String>,
    /// Bytes per chunk.
    #[arg(long, default_value_t = DEFAULT_CHUNK)]
    chunk_size: u32,
    /// Send the whole bundle even to boards that hold its key set.
    #[arg(long)]
    full: bool,
    #[command(flatten)]
    mqtt: MqttArgs,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// The deployment agent: serve the boards' chunk requests and record their reports.
    Serve {
        #[arg(long)]
        broker: String,
        /// Stop after this many seconds (default: run until stopped).
        #[arg(long = "for", value_name = "SECONDS")]
        duration: Option<u64>,
        /// Send chunks at most this fast, in bytes per second for all boards together.
        #[arg(long, value_name = "BYTES_PER_S")]
        rate: Option<u64>,
        #[command(flatten)]
        mqtt: MqttArgs,
    },
    /// Where each deployment stands on each board (from the registry).
    Status {
        /// One deployment only.
        #[arg(long)]
        deployment: Option<u64>,
    },
    /// Withdraw a deployment: boards still fetching it stop and drop what they fetched.
    Cancel {
        deployment: u64,
        #[arg(long)]
        broker: String,
        #[command(flatten)]
        mqtt: MqttArgs,
    },
}

pub fn run(a: Args, registry: &Path) -> Result<()> {
    let r = Registry::open(registry)?;
    match a.command {
        None => create(a.create, &a.keys, &r),
        Some(Command::Serve {
            broker,
            duration,
            rate,
            mqtt,
        }) => {
            let config = mqtt.config_for(&broker).context("--broker")?;
            // SIGTERM/SIGINT: stop serving and exit cleanly (boards ask again later).
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, stop.clone()).context("signal handler")?;
            }
            let duration = duration.map(Duration::from_secs);
            let served = deploy::serve(&config, &r, duration, rate, &stop)?;
            println!(
                "served {} chunk(s), {} bytes; {} report(s) recorded, {} message(s) ignored",
                served.chunks, served.bytes, served.reports, served.refused
            );
            Ok(())
        }
        Some(Command::Status { deployment }) => status(&r, deployment),
        Some(Command::Cancel {
            deployment,
            broker,
            mqtt,
        }) => {
            let config = mqtt.config_for(&broker).context("--broker")?;
            let signer = keys::load_signing(&a.keys)?;
            let offers = deploy::cancel(&r, &config, &signer, deployment)?;
            deploy::publish(&config, &offers)?;
            println!(
                "deployment {deployment} cancelled on {} board(s)",
                offers.len()
            );
            Ok(())
        }
    }
}

fn create(c: Create, keys_dir: &Path, r: &Registry) -> Result<()> {
    let (Some(bundle), Some(broker)) = (&c.bundle, &c.broker) else {
        bail!("hedge deploy needs --bundle and --broker (or a subcommand: serve, status, cancel)");
    };
    let devices = match &c.group {
        Some(g) => {
            let d = r.group(g)?;
            if d.is_empty() {
                bail!("group {g} has no devices (hedge device add ID --key K --group {g})");
            }
            d
        }
        None if c.devices.is_empty() => bail!("name the targets: --device ID or --group G"),
        None => c.devices.clone(),
    };
    let config = c.mqtt.config_for(broker).context("--broker")?;
    let signer = keys::load_signing(keys_dir)?;
    let created = deploy::create(r, &config, &signer, bundle, &devices, c.chunk_size, c.full)?;
    deploy::publish(&config, &created.offers)?;
    println!(
        "deployment {}: bundle {} offered to {} board(s)",
        created.deployment,
        created.bundle,
        created.offers.len()
    );
    for o in &created.offers {
        println!(
            "  {:<16} {:<13} {:>12} bytes",
            o.device,
            o.payload.name(),
            o.size
        );
    }
    Ok(())
}

fn status(r: &Registry, deployment: Option<u64>) -> Result<()> {
    let now = now_ms();
    println!(
        "{:>10} {:<16} {:<13} {:>12} {:<12} {:>6} {:<18} {:>7}  reason",
        "deployment", "device", "payload", "bytes", "state", "done", "running", "s ago"
    );
    for t in r.targets(deployment)? {
        let cancelled = r
            .deployment(t.deployment)?
            .is_some_and(|d| d.cancelled && !matches!(t.state.as_str(), "active" | "rolled_back"));
        println!(
            "{:>10} {:<16} {:<13} {:>12} {:<12} {:>5.0}% {:<18} {:>7}  {}",
            t.deployment,
            t.device,
            t.payload,
            t.size,
            if cancelled {
                "cancelled"
            } else {
                t.state.as_str()
            },
            if t.size == 0 {
                0.0
            } else {
                t.received as f64 * 100.0 / t.size as f64
            },
            t.running.as_deref().unwrap_or("-"),
            now.saturating_sub(t.updated_ms) / 1000,
            t.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
