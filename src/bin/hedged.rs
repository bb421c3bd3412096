//! `hedged`: the edge daemon. This first version runs the engine on a stream of feature
//! vectors (a file or stdin, one per line) and writes one result file per vector; MQTT
//! publishing, the spool and the systemd lifecycle come with the daemon proper.

use anyhow::{Context, Result};
use clap::Parser;
use hedge::backend;
use hedge::bench::FeatureMode;
use hedge::bundle::{bundle_id, EdgeBundle};
use hedge::data::parse_line;
use std::io::BufRead;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "hedged",
    version,
    about = "hedge edge daemon: encrypted inference on feature vectors"
)]
struct Cli {
    /// The signed edge bundle.
    #[arg(long)]
    bundle: PathBuf,
    /// The backend's verifying key (trust anchor for bundles).
    #[arg(long)]
    verifying_key: PathBuf,
    /// Feature vectors, one per line; `-` for stdin.
    #[arg(long, default_value = "-")]
    input: String,
    /// Encrypt features with the public key before inference.
    #[arg(long, value_enum, default_value = "plain")]
    features: FeatureMode,
    /// Directory for result files (result-NNNNNN.bin).
    #[arg(long)]
    out_dir: PathBuf,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let trusted = backend::load_verifying(&cli.verifying_key)?;
    let (bundle, bytes) = EdgeBundle::load(&cli.bundle, &trusted)
        .with_context(|| format!("refusing to start: {}", cli.bundle.display()))?;
    let mut engine = bundle.engine()?;
    log::info!(
        "loaded bundle {} ({} variant, {}-bit)",
        bundle_id(&bytes),
        engine.info.variant.name(),
        engine.params.security
    );
    std::fs::create_dir_all(&cli.out_dir).with_context(|| cli.out_dir.display().to_string())?;
    let reader: Box<dyn BufRead> = if cli.input == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&cli.input).with_context(|| cli.input.clone())?,
        ))
    };
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
        let result = match cli.features {
            FeatureMode::Plain => engine.infer_plain(&sample.values),
            FeatureMode::Enc => engine.infer_encrypting(&sample.values),
        };
        match result {
            Ok(r) => {
                seq += 1;
                let path = cli.out_dir.join(format!("result-{seq:06}.bin"));
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
