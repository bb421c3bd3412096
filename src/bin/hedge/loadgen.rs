use anyhow::{bail, Context, Result};
use hedge::backend::keys;
use hedge::backend::loadgen::{self, Load, Template};
use hedge::backend::registry::Registry;
use hedge::transport::mqtt::MqttArgs;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The key directory: its verifying key checks the acknowledgements, its registry (unless
    /// --registry) enrols the simulated boards.
    #[arg(long)]
    pub keys: PathBuf,
    /// The protected bundle the boards run (one honest result is made from it and re-signed
    /// in every message).
    #[arg(long)]
    bundle: PathBuf,
    /// The broker (HOST:PORT) the decryption agents subscribe to.
    #[arg(long)]
    broker: String,
    #[command(flatten)]
    mqtt: MqttArgs,
    /// Simulated boards, each with its own connection, identity and sequence numbers.
    #[arg(long, default_value_t = 100)]
    boards: usize,
    /// Results per board (or --duration).
    #[arg(long, required_unless_present = "duration")]
    results: Option<u64>,
    /// Seconds to make results for.
    #[arg(long)]
    duration: Option<u64>,
    /// Results per second, all boards together (default: as fast as the acknowledgements
    /// allow, each board within its window).
    #[arg(long)]
    rate: Option<f64>,
    /// Results each board keeps waiting for the backend's acknowledgement (hedged's
    /// e2e_window).
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Seconds without an acknowledgement before a board sends its results again (hedged's
    /// e2e_timeout_s).
    #[arg(long, default_value_t = 10)]
    resend_after: u64,
    /// Seconds a board waits for its last acknowledgements before they count as lost.
    #[arg(long, default_value_t = 60)]
    grace: u64,
    /// Board ids are PREFIX-0, PREFIX-1, … (default: lg-<random>, new boards every run).
    #[arg(long)]
    prefix: Option<String>,
}

pub fn run(a: Args, registry: &std::path::Path) -> Result<()> {
    if a.boards == 0 {
        bail!("--boards must be at least 1");
    }
    if a.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of results per second");
    }
    raise_open_files(a.boards)?;
    let mqtt = a.mqtt.config_for(&a.broker).context("--broker")?;
    let trusted = keys::trusted_key(None, Some(&a.keys))?;
    eprintln!("making one honest result of {}", a.bundle.display());
    let template = Template::from_bundle(&a.bundle, &trusted).context("--bundle")?;
    let prefix = a
        .prefix
        .unwrap_or_else(|| format!("lg-{:06x}", rand::random::<u32>() & 0xff_ffff));
    let boards = loadgen::identities(&prefix, a.boards);
    let registry = Registry::open(registry)?;
    loadgen::enrol(&registry, &template.bundle_id, &boards)?;
    eprintln!(
        "enrolled {} boards {prefix}-* in {}; sending {}",
        a.boards,
        registry.path().display(),
        match (a.results, a.duration) {
            (Some(r), _) => format!("{r} results each"),
            (None, Some(d)) => format!("for {d} s"),
            (None, None) => unreachable!("clap requires one"),
        }
    );
    drop(registry);
    let load = Load {
        results: a.results,
        duration: a.duration.map(Duration::from_secs),
        rate: a.rate,
        window: a.window,
        resend_after: Duration::from_secs(a.resend_after),
        grace: Duration::from_secs(a.grace),
    };
    let mut last_acked = 0;
    let report = loadgen::run(&mqtt, boards, template, trusted, load, |p, t| {
        let acked = p.acknowledged.load(Ordering::Relaxed);
        eprintln!(
            "{:>5.0} s  {} connected  {} sent  {} acknowledged  ({}/s)",
            t.as_secs_f64(),
            p.connected.load(Ordering::Relaxed),
            p.sent.load(Ordering::Relaxed),
            acked,
            acked - last_acked
        );
        last_acked = acked;
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// One connection per board: lift the soft open-file limit to the hard one if it is short.
fn raise_open_files(boards: usize) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("open-file limit")?;
    let need = boards as u64 + 64;
    if soft < need {
        if hard < need {
            bail!(
                "{boards} boards need {need} open files; the hard limit is {hard} \
                 (raise it with `ulimit -Hn` as root, or simulate fewer boards per process)"
            );
        }
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising the open-file limit")?;
    }
    Ok(())
}
