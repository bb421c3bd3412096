//! `hedge`: the backend and admin CLI. Each subcommand is a module with its arguments and its
//! `run`; the library does the work and returns values, the modules present them.

mod args;
mod bench;
mod decrypt;
mod demo;
mod deploy;
mod device;
mod encrypt_features;
mod eval;
mod fleet;
mod inspect;
mod keygen;
mod loadgen;
mod params;
mod plot;
mod progress;
mod protect;
mod synth;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hedge",
    version,
    about = "Homomorphically encrypted DNNs at the edge: backend CLI"
)]
struct Cli {
    /// No progress bars (they are shown only on a terminal anyway).
    #[arg(long, global = true)]
    quiet: bool,
    /// The backend registry (key sets, bundles, devices): one SQLite file, created on first
    /// use. Default: registry.sqlite in the key directory (--keys, or keygen's --out).
    #[arg(long, global = true, env = "HEDGE_REGISTRY")]
    registry: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate keys: secret and signing keys (0600) and the public material for the edge.
    Keygen(keygen::Args),
    /// Print a parameter set's security and noise figures.
    Params(params::Args),
    /// Write the fixed-seed classifier as ONNX with calibration and test vectors.
    Synth(synth::Args),
    /// Quantise and encrypt a model into a signed edge bundle.
    Protect(protect::Args),
    /// Verify a bundle and summarise it.
    Inspect(inspect::Args),
    /// Encrypt feature vectors with a bundle's public key, for hedged's encrypted-features
    /// mode: writes frames (see `hedge::transport::frame`) for hedged's socket or a frames: input.
    EncryptFeatures(encrypt_features::Args),
    /// Decrypt result files, or subscribe to results over MQTT: one JSON line each.
    Decrypt(decrypt::Args),
    /// The boards the backend accepts results from.
    Device(device::Args),
    /// The boards' health: online state (retained status, last will), running bundle, latest
    /// metrics — taken from the broker into the registry, then listed.
    Fleet(fleet::Args),
    /// Deliver a protected bundle to boards over MQTT (`hedge deploy --bundle B --device D
    /// --broker H:P`), serve the transfers (`serve`), follow (`status`) or cancel them.
    Deploy(deploy::Args),
    /// Accuracy of a trained network on labelled images: float model, integer reference (every
    /// test image), encrypted path (a fixed-seed sample), per variant and quantisation width.
    Eval(eval::Args),
    /// Redraw the accuracy plot from `hedge eval --json` outputs (several runs in one figure).
    Plot(plot::Args),
    /// Simulate a fleet of boards speaking the real protocol to measure the backend: ends
    /// with one JSON line (sent, acknowledged, lost, duplicates, results/s, latencies).
    Loadgen(loadgen::Args),
    /// Run the paper's evaluation grid.
    Bench(bench::Args),
    /// Run the whole system on this machine: keys, model, protection, edge, decryption.
    Demo(demo::Args),
    /// (internal) The edge side of one bench cell.
    #[command(hide = true)]
    BenchEdge(bench::EdgeArgs),
}

fn main() {
    hedge::cpu::require_build_features();
    env_logger::Builder::from_env(
        env_logger::Env::default()
            .default_filter_or("info,rumqttd=off,tracing=off,hedge::backend::decryptor=warn"),
    )
    // tract's operator-set warning comes on every parse; the extractor says once what it
    // means (model::split::Extractor).
    .filter_module("tract_onnx::model", log::LevelFilter::Error)
    .init();
    let cli = Cli::parse();
    let ui = progress::Ui::new(cli.quiet);
    let result = match cli.command {
        Command::Keygen(a) => {
            let registry = args::registry(&cli.registry, Some(&a.out));
            keygen::run(a, &registry, &ui)
        }
        Command::Params(a) => params::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Protect(a) => {
            let registry = args::registry(&cli.registry, Some(&a.keys));
            protect::run(a, &registry, &ui)
        }
        Command::Inspect(a) => inspect::run(a),
        Command::EncryptFeatures(a) => encrypt_features::run(a),
        Command::Decrypt(a) => {
            let registry = args::registry(&cli.registry, Some(&a.keys));
            decrypt::run(a, &registry)
        }
        Command::Fleet(f) => {
            let registry = args::registry(&cli.registry, f.keys.as_deref());
            fleet::run(f, &registry)
        }
        Command::Deploy(d) => {
            let registry = args::registry(&cli.registry, Some(&d.keys));
            deploy::run(d, &registry)
        }
        Command::Device(d) => {
            let registry = args::registry(&cli.registry, d.keys.as_deref());
            device::run(d.command, &registry)
        }
        Command::Loadgen(a) => {
            let registry = args::registry(&cli.registry, Some(&a.keys));
            loadgen::run(a, &registry)
        }
        Command::Eval(a) => eval::run(a, &ui),
        Command::Plot(a) => plot::run(a),
        Command::Bench(a) => bench::run(a, &ui),
        Command::Demo(a) => demo::run(a, &ui),
        Command::BenchEdge(a) => bench::run_edge(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
