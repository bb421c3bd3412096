use anyhow::{bail, Context, Result};
use hedge::backend::decryptor::{
    self, Decryptor, Outcome, Output, Policy, Reveal, SubscribeOptions,
};
use hedge::backend::keys;
use hedge::backend::metrics::{self, AgentMetrics};
use hedge::backend::output::{self, Repair};
use hedge::backend::registry::Registry;
use hedge::transport::mqtt::MqttArgs;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub keys: PathBuf,
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
    /// What a line shows: the class (default), also the scores, or also noise measurements
    /// (diagnostics, for the vendor's own bench: never for consumers the boards can reach).
    #[arg(long, value_enum, default_value = "class")]
    reveal: Reveal,
    /// Enrol unknown devices with the key their first result is signed with (trust on first
    /// use: only while provisioning on a trusted network).
    #[arg(long)]
    enrol: bool,
    /// Quarantine a device after this many refused results it signed.
    #[arg(long, default_value_t = 10)]
    quarantine_after: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464): results by
    /// outcome and refusal reason, per device, acknowledgement and registry latency, queue
    /// depth. For the monitoring network only, never where boards reach.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Result files written by hedged (`out_dir`).
    results: Vec<PathBuf>,
}

pub fn run(a: Args, registry: &std::path::Path) -> Result<()> {
    let secret = keys::load_secret(&a.keys).context("loading secret key")?;
    keys::harden(&secret);
    let registry = Registry::open(registry)?;
    let mut decryptor = Decryptor::new(
        registry,
        secret,
        Policy {
            reveal: a.reveal,
            enrol: a.enrol,
            quarantine_after: a.quarantine_after,
        },
    );
    if let Some(addr) = &a.metrics_listen {
        let metrics = Arc::new(Mutex::new(AgentMetrics::default()));
        decryptor.export(metrics.clone());
        let bound = metrics::serve_shared(addr, metrics, AgentMetrics::render)?;
        log::info!("metrics at http://{bound}/metrics");
    }
    // One JSON line per result, the same fields in both modes.
    let mut out: Box<dyn Output> = match &a.output {
        Some(path) => {
            let (file, repair) = output::open(path, decryptor.registry())
                .with_context(|| format!("--output {}", path.display()))?;
            report_repair(path, &repair);
            decryptor.track_output(file.name, file.end);
            Box::new(file.file)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    match &a.subscribe {
        Some(broker) => subscribe(&a, broker, &mut decryptor, &mut out),
        None => files(&a, &mut decryptor, &mut out),
    }
}

fn report_repair(path: &std::path::Path, repair: &Repair) {
    let path = path.display();
    match repair {
        Repair::Clean => {}
        Repair::Uncommitted { bytes, lines } => log::warn!(
            "{path}: removed {bytes} bytes ({lines} whole line(s)) written after the last \
             commit: the agent stopped between writing and committing; those results are \
             decrypted again when the broker redelivers them"
        ),
        Repair::TornLine { bytes } => {
            log::warn!("{path}: removed a torn last line ({bytes} bytes) left by a crash")
        }
        Repair::Shorter { recorded, found } => log::warn!(
            "{path}: {found} bytes, shorter than the {recorded} recorded (rotated?): \
             appending from here"
        ),
    }
}

fn subscribe(
    a: &Args,
    broker: &str,
    decryptor: &mut Decryptor,
    out: &mut Box<dyn Output>,
) -> Result<()> {
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
        ack_key: Some(
            keys::load_signing(&a.keys).context("the signing key (for acknowledgements)")?,
        ),
    };
    let stats = decryptor::run(decryptor, &opts, out)?;
    log::info!(
        "{} results, {} duplicates dropped, {} refused, {} withheld",
        stats.results,
        stats.duplicates,
        stats.refused,
        stats.withheld
    );
    Ok(())
}

fn files(a: &Args, decryptor: &mut Decryptor, out: &mut Box<dyn Output>) -> Result<()> {
    if a.results.is_empty() {
        bail!("name result files, or --subscribe HOST:PORT");
    }
    let mut failed = 0;
    for path in &a.results {
        let bytes = hedge::files::read(path)?;
        match decryptor.handle(None, &bytes, out)? {
            Outcome::Recorded { .. } => {}
            Outcome::Duplicate { device, seq } => {
                eprintln!("{}: {device}#{seq} was decrypted before", path.display())
            }
            Outcome::Withheld { device, kept, .. } => {
                failed += 1;
                let then = if kept {
                    "kept to decrypt once an operator runs `hedge device clear`"
                } else {
                    "not kept (too many waiting)"
                };
                eprintln!(
                    "error: {}: withheld: device {device} is quarantined; {then}",
                    path.display()
                );
            }
            Outcome::Refused {
                reason, claimed, ..
            } => {
                failed += 1;
                let name = claimed
                    .map(|(device, seq)| format!(" {device}#{seq}"))
                    .unwrap_or_default();
                eprintln!("error: {}:{name} refused: {reason}", path.display());
            }
        }
    }
    if failed > 0 {
        bail!("{failed} result(s) could not be decrypted");
    }
    Ok(())
}
