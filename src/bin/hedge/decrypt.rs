use anyhow::{bail, Context, Result};
use hedge::backend::decryptor::{self, SubscribeOptions};
use hedge::backend::keys;
use hedge::crypto::keys::SecretKeys;
use hedge::transport::mqtt::MqttArgs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    keys: PathBuf,
    /// Subscribe to BROKER (HOST:PORT) instead of reading files. With --client-id the
    /// session is persistent: the broker queues results while the decryptor is away.
    #[arg(long, value_name = "BROKER")]
    subscribe: Option<String>,
    /// Topic filter; a shared subscription ($share/GROUP/…) splits the load.
    #[arg(long, default_value = "hedge/+/results")]
    topic: String,
    #[arg(long)]
    client_id: Option<String>,
    #[command(flatten)]
    mqtt: MqttArgs,
    /// Stop after this many distinct results.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this many seconds without a message.
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Write JSON lines here instead of stdout.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Result files written by hedged (`out_dir`).
    results: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let secret = keys::load_secret(&a.keys).context("loading secret key")?;
    // One JSON line per result, the same fields in both modes.
    let mut out: Box<dyn Write> = match &a.output {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| path.display().to_string())?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    match &a.subscribe {
        Some(broker) => subscribe(&a, broker, &secret, &mut out),
        None => files(&a, &secret, &mut out),
    }
}

fn subscribe(a: &Args, broker: &str, secret: &SecretKeys, out: &mut dyn Write) -> Result<()> {
    let config = a.mqtt.config_for(broker).context("--subscribe")?;
    // SIGTERM/SIGINT: finish the message in hand, then exit cleanly.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("signal handler")?;
    }
    let opts = SubscribeOptions {
        mqtt: config,
        persistent: a.client_id.is_some(),
        client_id: a
            .client_id
            .clone()
            .unwrap_or_else(|| format!("hedge-decrypt-{}", std::process::id())),
        filter: a.topic.clone(),
        count: a.count,
        idle_timeout: a.idle_timeout.map(std::time::Duration::from_secs),
        ready: None,
        stop,
    };
    let stats = decryptor::run(secret, &opts, out)?;
    log::info!(
        "{} results, {} duplicates dropped, {} rejected",
        stats.results,
        stats.duplicates,
        stats.rejected
    );
    Ok(())
}

fn files(a: &Args, secret: &SecretKeys, out: &mut dyn Write) -> Result<()> {
    if a.results.is_empty() {
        bail!("name result files, or --subscribe HOST:PORT");
    }
    let mut failed = 0;
    for path in &a.results {
        let outcome = hedge::files::read(path)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(decryptor::decrypt_message(&b, secret)?));
        match outcome {
            Ok(mut line) => {
                line["file"] = path.display().to_string().into();
                writeln!(out, "{line}").context("writing the output")?;
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e:#}", path.display());
            }
        }
    }
    if failed > 0 {
        bail!("{failed} result(s) could not be decrypted");
    }
    Ok(())
}
