//! `hedged`: the edge daemon. This version runs the engine on a stream of feature vectors (a
//! file or stdin, one per line) and writes one result file per vector; MQTT publishing, the
//! spool and the systemd lifecycle come with the daemon proper.

use anyhow::{Context, Result};
use clap::Parser;
use hedge::backend;
use hedge::bench::FeatureMode;
use hedge::bundle::{bundle_id, EdgeBundle};
use hedge::data::parse_line;
use hedge::edge::config::Config;
use std::io::BufRead;
use std::path::PathBuf;

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
    /// The signed edge bundle.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// The backend's verifying key (trust anchor for bundles).
    #[arg(long)]
    verifying_key: Option<PathBuf>,
    /// Feature vectors, one per line; `-` for stdin.
    #[arg(long)]
    input: Option<String>,
    /// Encrypt features with the public key before inference.
    #[arg(long, value_enum)]
    features: Option<FeatureMode>,
    /// Directory for result files (result-NNNNNN.bin).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    #[arg(long)]
    log_level: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let flags = Config {
        bundle: cli.bundle,
        verifying_key: cli.verifying_key,
        input: cli.input,
        features: cli.features,
        out_dir: cli.out_dir,
        log_level: cli.log_level,
    };
    let config = match &cli.config {
        Some(path) => Config::load(path).map(|file| flags.or(file)),
        None => Ok(flags),
    };
    let level = config
        .as_ref()
        .ok()
        .and_then(|c| c.log_level.clone())
        .unwrap_or_else(|| "info".into());
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    if let Err(e) = config.map_err(anyhow::Error::from).and_then(run) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(config: Config) -> Result<()> {
    let bundle_path = Config::require(&config.bundle, "bundle")?;
    let out_dir = Config::require(&config.out_dir, "out-dir")?;
    let trusted =
        backend::load_verifying(Config::require(&config.verifying_key, "verifying-key")?)?;
    let (bundle, bytes) = EdgeBundle::load(bundle_path, &trusted)
        .with_context(|| format!("refusing to start: {}", bundle_path.display()))?;
    let mut engine = bundle.engine()?;
    log::info!(
        "loaded bundle {} ({} variant, {}-bit)",
        bundle_id(&bytes),
        engine.info.variant.name(),
        engine.params.security
    );
    std::fs::create_dir_all(out_dir).with_context(|| out_dir.display().to_string())?;
    let input = config.input.clone().unwrap_or_else(|| "-".into());
    let reader: Box<dyn BufRead> = if input == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&input).with_context(|| input.clone())?,
        ))
    };
    let features = config.features.unwrap_or(FeatureMode::Plain);
    let (mut seq, mut rejected) = (0u64, 0u64);
    for (i, line) in reader.lines().enumerate() {
        let line = line.context("reading input")?;
        let sample = match parse_line(&line) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                rejected += 1;
                log::warn!("line {}: rejected: {e}", i + 1);
                continue;
            }
        };
        let t = std::time::Instant::now();
        let result = match features {
            FeatureMode::Plain => engine.infer_plain(&sample.values),
            FeatureMode::Enc => engine.infer_encrypting(&sample.values),
        };
        match result {
            Ok(r) => {
                seq += 1;
                let path = out_dir.join(format!("result-{seq:06}.bin"));
                backend::write_atomic(&path, &backend::encode_result(&r), 0o644)?;
                log::info!(
                    "#{seq} in {:.1} ms → {}",
                    t.elapsed().as_secs_f64() * 1e3,
                    path.display()
                );
            }
            Err(e) => {
                rejected += 1;
                log::warn!("line {}: rejected: {e}", i + 1);
            }
        }
    }
    log::info!("done: {seq} results, {rejected} rejected");
    Ok(())
}
