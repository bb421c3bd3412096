//! `hedged`: the edge daemon. See `hedge::edge::daemon` for the loop, signals and systemd
//! notifications, `hedge::edge::source` for the data sources, config/hedged.toml for settings.

use anyhow::{Context, Result};
use clap::Parser;
use hedge::bench::FeatureMode;
use hedge::edge::config::Config;
use hedge::edge::mqtt::{MqttArgs, MqttConfig};
use std::path::PathBuf;

#[derive(Clone, Parser)]
#[command(
    name = "hedged",
    version,
    about = "hedge edge daemon: encrypted inference on feature vectors"
)]
struct Cli {
    /// TOML configuration (see config/hedged.toml); flags override it. SIGHUP re-reads it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// The backend's verifying key (trust anchor for bundles).
    #[arg(long)]
    verifying_key: Option<PathBuf>,
    /// Data source: `-` (stdin lines), a file of lines, `frames:PATH` or `unix:PATH`.
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
    /// Largest accepted frame or line, in bytes.
    #[arg(long)]
    max_frame_bytes: Option<usize>,
    /// Publish to this broker (HOST:PORT), overriding the config's [mqtt] host and port.
    #[arg(long)]
    broker: Option<String>,
    #[command(flatten)]
    mqtt: MqttArgs,
}

fn main() {
    hedge::cpu::require_build_features();
    let cli = Cli::parse();
    let config = load_config(&cli);
    let level = config
        .as_ref()
        .ok()
        .and_then(|c| c.log_level.clone())
        .unwrap_or_else(|| "info".into());
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = config.and_then(|config| {
        let reload_cli = cli.clone();
        hedge::edge::daemon::run(
            config,
            Box::new(move || {
                load_config(&reload_cli)
                    .map_err(|e| hedge::error::Error::Malformed(format!("{e:#}")))
            }),
        )
        .map_err(anyhow::Error::from)
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The config file (if any) under the command line's flags.
fn load_config(cli: &Cli) -> Result<Config> {
    let mut flags = Config {
        bundle: cli.bundle.clone(),
        verifying_key: cli.verifying_key.clone(),
        input: cli.input.clone(),
        max_frame_bytes: cli.max_frame_bytes,
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
    let mut mqtt = file.mqtt.clone();
    if let Some(broker) = &cli.broker {
        let (host, port) = MqttConfig::parse_addr(broker).context("--broker")?;
        let base = mqtt.unwrap_or_else(|| MqttConfig::new("", 0));
        mqtt = Some(MqttConfig { host, port, ..base });
    }
    match &mut mqtt {
        Some(m) => cli.mqtt.apply(m)?,
        None if cli.mqtt.username.is_some() || cli.mqtt.ca_file.is_some() => {
            anyhow::bail!("broker credentials or TLS given, but no broker (--broker or [mqtt])")
        }
        None => {}
    }
    flags.mqtt = mqtt;
    Ok(flags.or(file))
}
