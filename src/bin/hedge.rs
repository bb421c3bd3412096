//! `hedge`: the backend and admin CLI.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hedge::backend;
use hedge::bench::{self, BenchOptions, FeatureMode};
use hedge::bundle::{bundle_id, EdgeBundle};
use hedge::crypto::lut::Activation;
use hedge::crypto::params::{ParameterSet, SecurityLevel};
use hedge::data::format_sample;
use hedge::edge::mqtt::MqttConfig;
use hedge::engine::{decrypt, hex};
use hedge::model::quant::Variant;
use hedge::model::{onnx, synth};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "hedge",
    version,
    about = "Homomorphically encrypted DNNs at the edge: backend CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn parse_security(s: &str) -> Result<SecurityLevel, String> {
    s.parse::<u32>()
        .ok()
        .and_then(SecurityLevel::from_bits)
        .ok_or_else(|| format!("security must be 128, 192 or 256, not {s}"))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ActivationArg {
    Relu,
    Square,
}

impl From<ActivationArg> for Activation {
    fn from(a: ActivationArg) -> Self {
        match a {
            ActivationArg::Relu => Activation::Relu,
            ActivationArg::Square => Activation::Square,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Generate keys: secret and signing keys (0600) and the public material for the edge.
    Keygen {
        #[arg(long, value_parser = parse_security, default_value = "128")]
        security: SecurityLevel,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a parameter set's security and noise figures.
    Params {
        #[arg(long, value_parser = parse_security, default_value = "128")]
        security: SecurityLevel,
    },
    /// Write the fixed-seed classifier as ONNX with calibration and test vectors.
    Synth {
        #[arg(long)]
        out: PathBuf,
        /// in,hidden,classes
        #[arg(long, default_value = "2304,512,10")]
        shape: String,
        /// Drop the hidden activation (the paper's no-activation model).
        #[arg(long)]
        no_activation: bool,
        #[arg(long, default_value_t = 200)]
        calibration: usize,
        #[arg(long, default_value_t = 100)]
        test: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Quantise and encrypt a model into a signed edge bundle.
    Protect {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        keys: PathBuf,
        #[arg(long, value_enum)]
        variant: Variant,
        /// Calibration inputs for the quantisation: vectors, one per line, or an IDX image file
        /// (a CNN's images go through its feature extractor).
        #[arg(long)]
        calibration: PathBuf,
        /// Use at most this many calibration inputs.
        #[arg(long, default_value = "1000")]
        calibration_count: usize,
        /// Where the encrypted classifier starts: the first dense layer of its head (a node
        /// name, or the tensor it reads). Layers before it ship in plaintext and run on the
        /// edge with tract. Default: the start of the trailing dense layers.
        #[arg(long)]
        encrypt_from: Option<String>,
        /// Override the model's activation (variant act): the paper's square, for comparison.
        #[arg(long, value_enum)]
        activation: Option<ActivationArg>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "model")]
        name: String,
    },
    /// Verify a bundle and summarise it.
    Inspect {
        bundle: PathBuf,
        /// Key directory holding verifying.key (and public.key to check the key id).
        #[arg(long)]
        keys: Option<PathBuf>,
        #[arg(long)]
        verifying_key: Option<PathBuf>,
    },
    /// Encrypt feature vectors with a bundle's public key, for hedged's encrypted-features
    /// mode: writes frames (see `hedge::edge::frame`) for hedged's socket or a frames: input.
    EncryptFeatures {
        /// The edge bundle the features are for (its public key, input scaling and, for the
        /// `last` variant, the plaintext first layer).
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        keys: Option<PathBuf>,
        #[arg(long)]
        verifying_key: Option<PathBuf>,
        /// Vectors, one per line ("-": stdin), or an IDX image file for a bundle with a
        /// feature extractor.
        #[arg(long, default_value = "-")]
        input: String,
        /// Frames go here ("-": stdout).
        #[arg(long, default_value = "-")]
        out: String,
    },
    /// Decrypt result files, or subscribe to results over MQTT: one JSON line each.
    Decrypt {
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
        mqtt: hedge::edge::mqtt::MqttArgs,
        /// Stop after this many distinct results.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this many seconds without a message.
        #[arg(long)]
        idle_timeout: Option<u64>,
        /// Write JSON lines here instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
        results: Vec<PathBuf>,
    },
    /// Accuracy of a trained network on labelled images: float model, integer reference (every
    /// test image), encrypted path (a fixed-seed sample), per variant and quantisation width.
    Eval {
        /// The network with its hidden ReLU (variants last and act).
        #[arg(long)]
        model: PathBuf,
        /// The same network trained without the hidden activation (variant noact).
        #[arg(long)]
        noact_model: Option<PathBuf>,
        /// The same network trained with a square activation (an extra act case).
        #[arg(long)]
        square_model: Option<PathBuf>,
        /// A directory with the Fashion-MNIST IDX files (train-* for calibration, t10k-* for test).
        #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
        data: PathBuf,
        /// Override the test images / labels / calibration images of --data.
        #[arg(long)]
        test_images: Option<PathBuf>,
        #[arg(long)]
        test_labels: Option<PathBuf>,
        #[arg(long)]
        calibration: Option<PathBuf>,
        #[arg(long, default_value_t = 1000)]
        calibration_count: usize,
        #[arg(long, value_enum, num_args = 1.., value_delimiter = ',')]
        variant: Vec<Variant>,
        /// Encrypted inferences per linear variant, and per act case.
        #[arg(long, default_value_t = 1000)]
        encrypted: usize,
        #[arg(long, default_value_t = 200)]
        encrypted_act: usize,
        #[arg(long, value_parser = parse_security, default_value = "128")]
        security: SecurityLevel,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Quantisation widths for the reference sweep.
        #[arg(long, num_args = 0.., value_delimiter = ',', default_value = "3,4,5,6,8,10")]
        widths: Vec<u32>,
        #[arg(long)]
        encrypt_from: Option<String>,
        /// Write the accuracy plot here.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// One JSON object per case instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Redraw the accuracy plot from `hedge eval --json` outputs (several runs in one figure).
    Plot {
        /// JSON-lines files written by `hedge eval --json`.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the paper's evaluation grid.
    Bench {
        #[arg(long, value_enum, num_args = 1.., value_delimiter = ',')]
        variant: Vec<Variant>,
        #[arg(long, value_enum, num_args = 1.., value_delimiter = ',')]
        features: Vec<FeatureMode>,
        #[arg(long, value_parser = parse_security, num_args = 1.., value_delimiter = ',')]
        security: Vec<SecurityLevel>,
        #[arg(long)]
        json: bool,
        /// Also time the same classifier unencrypted.
        #[arg(long)]
        plaintext: bool,
        /// Inputs per cell (last, noact).
        #[arg(long, default_value_t = 20)]
        inputs: usize,
        /// Inputs per act cell.
        #[arg(long, default_value_t = 2)]
        act_inputs: usize,
        /// An ONNX model instead of the fixed-seed one (needs --calibration).
        #[arg(long, requires = "calibration")]
        model: Option<PathBuf>,
        #[arg(long)]
        calibration: Option<PathBuf>,
        /// in,hidden,classes of the fixed-seed model.
        #[arg(long, default_value = "2304,512,10")]
        shape: String,
        #[arg(long, default_value = "target/bench")]
        work_dir: PathBuf,
    },
    /// Run the whole system on this machine: keys, model, protection, edge, decryption.
    Demo {
        #[arg(long, default_value = "target/demo")]
        dir: PathBuf,
        #[arg(long, value_parser = parse_security, default_value = "128")]
        security: SecurityLevel,
        #[arg(long, value_enum, default_value = "plain")]
        features: FeatureMode,
        #[arg(long, value_enum, num_args = 1.., value_delimiter = ',')]
        variant: Vec<Variant>,
        /// Vectors per variant (last, noact).
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Vectors for the act variant (about 12 s each at 128 bits).
        #[arg(long, default_value_t = 2)]
        act_count: usize,
        #[arg(long, default_value = "2304,512,10")]
        shape: String,
        /// Use this MQTT broker (HOST:PORT) instead of the embedded one.
        #[arg(long)]
        broker: Option<String>,
    },
    /// (internal) The edge side of one bench cell.
    #[command(hide = true)]
    BenchEdge {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        verifying_key: PathBuf,
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long, value_enum)]
        features: FeatureMode,
        #[arg(long)]
        results: PathBuf,
    },
}

fn parse_shape(s: &str) -> Result<(usize, usize, usize)> {
    let v: Vec<usize> = s
        .split(',')
        .map(|t| t.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("shape {s:?}"))?;
    match v.as_slice() {
        [a, b, c] if *a > 0 && *b > 0 && *c > 1 => Ok((*a, *b, *c)),
        _ => bail!("shape must be in,hidden,classes (positive, at least 2 classes)"),
    }
}

fn main() {
    hedge::cpu::require_build_features();
    env_logger::Builder::from_env(
        env_logger::Env::default()
            .default_filter_or("info,rumqttd=off,tracing=off,hedge::decryptor=warn"),
    )
    .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { security, out } => {
            let params = ParameterSet::for_level(security);
            let t = std::time::Instant::now();
            let set = backend::keygen(params, &out)
                .with_context(|| format!("writing keys to {}", out.display()))?;
            println!(
                "keys for {}-bit security in {} (key id {}, {:.1} s)",
                security,
                out.display(),
                hex(&set.secret.key_id),
                t.elapsed().as_secs_f64()
            );
            println!(
                "  backend only: {}, {}",
                backend::SECRET_KEY,
                backend::SIGNING_KEY
            );
            println!(
                "  for the edge: {}, {}, {} (trust anchor)",
                backend::PUBLIC_KEY,
                backend::EVALUATION_KEY,
                backend::VERIFYING_KEY
            );
        }
        Command::Params { security } => {
            print!("{}", ParameterSet::for_level(security).noise_report())
        }
        Command::Synth {
            out,
            shape,
            no_activation,
            calibration,
            test,
            seed,
        } => {
            let (i, h, c) = parse_shape(&shape)?;
            std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
            let task = synth::Task::new(seed, i, c);
            let act = (!no_activation).then_some(Activation::Relu);
            let model = synth::classifier(seed, &task, h, act);
            backend::write_atomic(
                &out.join("model.onnx"),
                &onnx::to_bytes(&model, false),
                0o644,
            )?;
            for (name, stream, count) in [
                ("calibration.txt", synth::CALIBRATION_STREAM, calibration),
                ("test.txt", synth::BENCH_STREAM, test),
            ] {
                let text: String = task
                    .samples(seed + stream, count)
                    .iter()
                    .map(|(x, l)| format_sample(Some(*l), x) + "\n")
                    .collect();
                backend::write_atomic(&out.join(name), text.as_bytes(), 0o644)?;
            }
            println!(
                "wrote model.onnx ({i}→{h}→{c}), calibration.txt, test.txt to {}",
                out.display()
            );
        }
        Command::Protect {
            model,
            keys,
            variant,
            calibration,
            calibration_count,
            encrypt_from,
            activation,
            out,
            name,
        } => {
            let network = hedge::network::Network::load(&model, encrypt_from.as_deref())
                .with_context(|| format!("importing {}", model.display()))?;
            let calib = network
                .read_inputs(&calibration, calibration_count)
                .with_context(|| format!("calibration from {}", calibration.display()))?;
            let backend_keys = backend::BackendKeys::load(&keys)
                .with_context(|| format!("loading keys from {}", keys.display()))?;
            let t = std::time::Instant::now();
            let p = backend::protect(
                &backend_keys,
                &network.head,
                variant,
                activation.map(Into::into),
                &calib,
                &name,
                network.extractor.map(|(plain, _)| plain),
            )?;
            backend::write_atomic(&out, &p.bytes, 0o644)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "protected {} ({:?}) into {}: {} bytes, encrypted weights {} bytes, {:.1} s",
                model.display(),
                variant,
                out.display(),
                p.bytes.len(),
                p.bundle.model.encrypted_bytes(),
                t.elapsed().as_secs_f64()
            );
        }
        Command::EncryptFeatures {
            bundle,
            keys,
            verifying_key,
            input,
            out,
        } => {
            use std::io::Write;
            let trusted = backend::trusted_key(verifying_key.as_deref(), keys.as_deref())?;
            let (b, _) = EdgeBundle::load(&bundle, &trusted)
                .with_context(|| format!("{} rejected", bundle.display()))?;
            let mut engine = b.engine()?;
            let extractor = b.extractor.as_ref().map(|e| e.prepare()).transpose()?;
            // Model inputs (IDX images, or vectors one per line), through the plaintext
            // extractor when the bundle has one.
            let inputs = hedge::network::read_inputs(
                std::path::Path::new(&input),
                extractor.as_ref(),
                usize::MAX,
            )
            .with_context(|| format!("reading {input}"))?;
            let mut writer: Box<dyn Write> = if out == "-" {
                Box::new(std::io::stdout().lock())
            } else {
                Box::new(std::io::BufWriter::new(
                    std::fs::File::create(&out).with_context(|| out.clone())?,
                ))
            };
            let (mut count, mut bytes) = (0usize, 0usize);
            for (i, x) in inputs.iter().enumerate() {
                // Streamed: a full classifier's frame is hundreds of MB.
                bytes += hedge::edge::frame::write_encrypted(&mut writer, &mut engine, x)
                    .with_context(|| format!("{input}: input {}", i + 1))?;
                count += 1;
            }
            writer.flush().context("writing frames")?;
            log::info!(
                "{count} vector(s) encrypted, {} bytes per frame",
                bytes.checked_div(count).unwrap_or(0)
            );
        }
        Command::Inspect {
            bundle,
            keys,
            verifying_key,
        } => {
            let trusted = backend::trusted_key(verifying_key.as_deref(), keys.as_deref())?;
            let (b, bytes) = EdgeBundle::load(&bundle, &trusted)
                .with_context(|| format!("{} rejected", bundle.display()))?;
            if let Some(k) = &keys {
                if let Ok(public) = backend::load_public(k) {
                    if hedge::crypto::keys::key_id(&public) != b.header.key_id {
                        bail!(
                            "{} was encrypted for other keys than {}",
                            bundle.display(),
                            k.display()
                        );
                    }
                }
            }
            let m = &b.header.model;
            println!(
                "bundle      {} (id {})",
                bundle.display(),
                bundle_id(&bytes)
            );
            println!(
                "verified    signature ok, checksum ok, format v{}",
                hedge::bundle::FORMAT_VERSION
            );
            println!("name        {}", b.header.name);
            println!("variant     {}", m.variant.name());
            println!(
                "shape       {} → {} → {}",
                m.input.dim, m.hidden_dim, m.out_dim
            );
            println!(
                "security    {}-bit (key id {})",
                b.header.params.security,
                hex(&b.header.key_id)
            );
            println!("bundle      {} bytes", bytes.len());
            println!("weights     {} bytes encrypted", b.model.encrypted_bytes());
            match &b.extractor {
                Some(e) => println!(
                    "extractor   plaintext ONNX, {} bytes, input {:?}, pixels ×{}",
                    e.onnx.len(),
                    e.input_shape,
                    e.pixel_scale
                ),
                None => println!("extractor   none (the bundle takes feature vectors)"),
            }
            println!(
                "keys        public {} bytes, evaluation {} bytes",
                b.keys.public.wide.byte_len() + b.keys.public.pbs.byte_len(),
                b.keys
                    .evaluation
                    .as_ref()
                    .map(|e| e.byte_len())
                    .unwrap_or(0)
            );
        }
        Command::Decrypt {
            keys,
            subscribe: Some(broker),
            topic,
            client_id,
            mqtt,
            count,
            idle_timeout,
            output,
            ..
        } => {
            let secret = backend::load_secret(&keys).context("loading secret key")?;
            let (host, port) = MqttConfig::parse_addr(&broker).context("--subscribe")?;
            // SIGTERM/SIGINT: finish the message in hand, then exit cleanly.
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, stop.clone()).context("signal handler")?;
            }
            let mut config = MqttConfig::new(host, port);
            mqtt.apply(&mut config)?;
            let opts = hedge::decryptor::SubscribeOptions {
                mqtt: config,
                persistent: client_id.is_some(),
                client_id: client_id
                    .unwrap_or_else(|| format!("hedge-decrypt-{}", std::process::id())),
                filter: topic,
                count,
                idle_timeout: idle_timeout.map(std::time::Duration::from_secs),
                ready: None,
                stop,
            };
            let stats = match output {
                Some(path) => {
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .with_context(|| path.display().to_string())?;
                    hedge::decryptor::run(&secret, &opts, &mut f)?
                }
                None => hedge::decryptor::run(&secret, &opts, &mut std::io::stdout().lock())?,
            };
            log::info!(
                "{} results, {} duplicates dropped, {} rejected",
                stats.results,
                stats.duplicates,
                stats.rejected
            );
        }
        Command::Decrypt { keys, results, .. } => {
            if results.is_empty() {
                bail!("name result files, or --subscribe HOST:PORT");
            }
            let secret = backend::load_secret(&keys).context("loading secret key")?;
            let mut failed = 0;
            for path in results {
                let outcome = std::fs::read(&path)
                    .map_err(anyhow::Error::from)
                    .and_then(|b| Ok(backend::decode_result(&b)?))
                    .and_then(|r| Ok(decrypt(&r, &secret)?));
                match outcome {
                    Ok(d) => println!(
                        "{}",
                        serde_json::json!({
                            "file": path.display().to_string(),
                            "class": d.class,
                            "scores": d.float_scores,
                            "noise_margin_bits": (d.noise_margin_bits * 10.0).round() / 10.0,
                        })
                    ),
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: {}: {e:#}", path.display());
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} result(s) could not be decrypted");
            }
        }
        Command::Eval {
            model,
            noact_model,
            square_model,
            data,
            test_images,
            test_labels,
            calibration,
            calibration_count,
            variant,
            encrypted,
            encrypted_act,
            security,
            seed,
            widths,
            encrypt_from,
            plot,
            json,
        } => {
            use hedge::eval::{Case, EvalOptions};
            let in_data = |stem: &str| {
                let plain = data.join(stem);
                let gz = data.join(format!("{stem}.gz"));
                if plain.exists() {
                    plain
                } else {
                    gz
                }
            };
            let variants = if variant.is_empty() {
                Variant::ALL.to_vec()
            } else {
                variant
            };
            let mut cases = Vec::new();
            for v in variants {
                let (network, count) = match v {
                    Variant::Last => (model.clone(), encrypted),
                    Variant::Noact => (
                        noact_model.clone().unwrap_or_else(|| model.clone()),
                        encrypted,
                    ),
                    Variant::Act => (model.clone(), encrypted_act),
                };
                cases.push(Case {
                    label: None,
                    network,
                    variant: v,
                    activation: None,
                    encrypted: count,
                });
                if v == Variant::Act {
                    if let Some(square) = &square_model {
                        cases.push(Case {
                            label: None,
                            network: square.clone(),
                            variant: v,
                            activation: None,
                            encrypted: encrypted_act,
                        });
                    }
                }
            }
            let opts = EvalOptions {
                cases,
                test_images: test_images.unwrap_or_else(|| in_data("t10k-images-idx3-ubyte")),
                test_labels: test_labels.unwrap_or_else(|| in_data("t10k-labels-idx1-ubyte")),
                calibration: calibration.unwrap_or_else(|| in_data("train-images-idx3-ubyte")),
                calibration_count,
                params: ParameterSet::for_level(security),
                seed,
                widths,
                encrypt_from,
            };
            if !json {
                println!(
                    "{:<14} {:>7} {:>9} {:>9} {:>10} {:>9} {:>9} {:>10} {:>10}",
                    "case",
                    "images",
                    "float",
                    "integer",
                    "encrypted",
                    "sample",
                    "agree",
                    "enc ms",
                    "extract ms"
                );
            }
            let reports = hedge::eval::run(&opts, &mut |r| {
                if json {
                    println!("{}", serde_json::to_string(r).expect("serialisable"));
                } else {
                    println!(
                        "{:<14} {:>7} {:>8.2}% {:>8.2}% {:>9.2}% {:>9} {:>8.1}% {:>10.1} {:>10.2}",
                        r.case,
                        r.test_images,
                        100.0 * r.float_accuracy,
                        100.0 * r.reference_accuracy,
                        100.0 * r.encrypted_accuracy,
                        r.encrypted_images,
                        100.0 * r.encrypted_agreement,
                        r.encrypted_ms_mean,
                        r.extractor_ms_mean
                    );
                    println!(
                        "    beyond the noise bounds: {} of {} sampled images, {:.1}% agree",
                        r.decided_images,
                        r.encrypted_images,
                        100.0 * r.decided_agreement
                    );
                    if let (Some([all_low, all_high]), Some([low, high])) =
                        (r.expected_agreement, r.expected_disagreements)
                    {
                        println!(
                            "    noise model: expected agreement {:.2}–{:.2}% on all {} images, \
                             {:.2}–{:.2} disagreements on the sample (measured {})",
                            100.0 * all_low,
                            100.0 * all_high,
                            r.test_images,
                            low,
                            high,
                            r.disagreements.len()
                        );
                    }
                    for d in &r.disagreements {
                        println!(
                            "    image {}: reference class {}, encrypted {}; reference margin {} \
                             within the bound {:.0}: {}",
                            d.image,
                            d.reference_class,
                            d.encrypted_class,
                            d.reference_margin,
                            d.bound,
                            (d.reference_margin as f64) <= d.bound
                        );
                    }
                }
            })?;
            if let Some(path) = plot {
                hedge::eval::plot(&reports, &path)?;
                log::info!("plot written to {}", path.display());
            }
        }
        Command::Plot { reports, out } => {
            let mut all = Vec::new();
            for path in &reports {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                for (i, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    all.push(
                        serde_json::from_str::<hedge::eval::CaseReport>(line)
                            .with_context(|| format!("{}:{}", path.display(), i + 1))?,
                    );
                }
            }
            hedge::eval::plot(&all, &out)?;
            println!("{} case(s) plotted to {}", all.len(), out.display());
        }
        Command::Bench {
            variant,
            features,
            security,
            json,
            plaintext,
            inputs,
            act_inputs,
            model,
            calibration,
            shape,
            work_dir,
        } => {
            let opts = BenchOptions {
                variants: if variant.is_empty() {
                    Variant::ALL.to_vec()
                } else {
                    variant
                },
                features: if features.is_empty() {
                    vec![FeatureMode::Plain, FeatureMode::Enc]
                } else {
                    features
                },
                security: if security.is_empty() {
                    SecurityLevel::ALL.to_vec()
                } else {
                    security
                },
                json,
                plaintext,
                inputs,
                act_inputs,
                model: model.zip(calibration),
                shape: parse_shape(&shape)?,
                work_dir,
            };
            let cells = bench::run(&opts)?;
            if cells.iter().any(|c| !c.correct) {
                bail!("some cells did not meet their correctness criterion");
            }
        }
        Command::Demo {
            dir,
            security,
            features,
            variant,
            count,
            act_count,
            shape,
            broker,
        } => {
            let opts = hedge::demo::DemoOptions {
                dir,
                security,
                features,
                variants: if variant.is_empty() {
                    Variant::ALL.to_vec()
                } else {
                    variant
                },
                count,
                act_count,
                shape: parse_shape(&shape)?,
                broker,
            };
            hedge::demo::run(&opts)?;
            println!("demo finished: every result decrypted and checked");
        }
        Command::BenchEdge {
            bundle,
            verifying_key,
            inputs,
            features,
            results,
        } => {
            let report = bench::run_edge(&bundle, &verifying_key, &inputs, features, &results)?;
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}
