//! `hedged`: the edge daemon. See `hedge::edge` for its parts, config/hedged.toml for settings.

use anyhow::{Context, Result};
use clap::Parser;
use hedge::edge::settings::Settings;
use hedge::edge::source::SCHEMES;
use hedge::engine::FeatureMode;
use hedge::transport::mqtt::{MqttArgs, MqttConfig};
use std::path::PathBuf;

/// Every flag overrides the configuration key of the same name.
#[derive(Clone, Parser)]
#[command(
    name = "hedged",
    version,
    about = "hedge edge daemon: encrypted inference on feature vectors and images"
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
    #[arg(long, help = format!("Data source: {SCHEMES}"))]
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
    /// Print this board's public identity key (created on first use) for `hedge device add`,
    /// and exit.
    #[arg(long)]
    print_identity: bool,
}

fn main() {
    hedge::cpu::require_build_features();
    let cli = Cli::parse();
    if cli.print_identity {
        // Only the state directory is needed: a board prints its identity before it has a
        // bundle or the backend's key.
        let printed = flags(&cli).and_then(|flags| {
            let path = Settings::identity_key_path(cli.config.as_deref(), flags)?;
            let key = hedge::edge::identity::load_or_create(&path)?;
            println!("{}", hedge::hex::hex(key.verifying_key().as_bytes()));
            Ok(())
        });
        if let Err(e) = printed {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let settings = load(&cli);
    let level = settings
        .as_ref()
        .map(|s| s.start_up.log_level.clone())
        .unwrap_or_else(|_| "info".into());
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        // tract's operator-set warning was shown, where it applies, when `hedge protect` ran
        // the extractor on the calibration set; not again on every start of every board.
        .filter_module("tract_onnx::model", log::LevelFilter::Error)
        .init();
    let result = settings.and_then(|settings| {
        let reload_cli = cli.clone();
        let summary = hedge::edge::run(
            settings,
            Box::new(move || {
                load(&reload_cli).map_err(|e| hedge::edge::EdgeError::Settings(format!("{e:#}")))
            }),
        )?;
        log::info!(
            "{}: {} result(s), {} rejected, {} dropped by the queue, {} left in the spool",
            if summary.stopped {
                "stopped"
            } else {
                "input finished"
            },
            summary.results,
            summary.rejected,
            summary.dropped_by_queue,
            summary.left_in_spool
        );
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The config file (if any) under the command line's flags, resolved.
fn load(cli: &Cli) -> Result<Settings> {
    Ok(Settings::load(cli.config.as_deref(), flags(cli)?)?)
}

/// The command line's flags as configuration keys.
fn flags(cli: &Cli) -> Result<toml::Table> {
    let mut flags = toml::Table::new();
    let mut set = |key: &str, value: Option<toml::Value>| {
        if let Some(v) = value {
            flags.insert(key.into(), v);
        }
    };
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string().into());
    set("bundle", path(&cli.bundle));
    set("verifying_key", path(&cli.verifying_key));
    set("input", cli.input.clone().map(Into::into));
    set("features", cli.features.map(|f| f.name().into()));
    set("out_dir", path(&cli.out_dir));
    set("log_level", cli.log_level.clone().map(Into::into));
    set("device_id", cli.device_id.clone().map(Into::into));
    set("spool_dir", path(&cli.spool_dir));
    set(
        "max_frame_bytes",
        cli.max_frame_bytes.map(|b| (b as i64).into()),
    );
    let mut mqtt = toml::Table::new();
    if let Some(broker) = &cli.broker {
        let (host, port) = MqttConfig::parse_addr(broker).context("--broker")?;
        mqtt.insert("host".into(), host.into());
        mqtt.insert("port".into(), i64::from(port).into());
    }
    mqtt.extend(cli.mqtt.overrides());
    if !mqtt.is_empty() {
        flags.insert("mqtt".into(), mqtt.into());
    }
    Ok(flags)
}
