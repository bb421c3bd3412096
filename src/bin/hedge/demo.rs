//! `hedge demo`: the whole system on one machine with no set-up — keys, the fixed-seed model
//! exported to ONNX and imported back, signed bundles, an MQTT broker (embedded rumqttd unless
//! `--broker` names one), `hedged` on a replayed test set publishing encrypted results, the
//! decryption agent subscribed to them, and a summary per variant.

use crate::args::{parse_security, parse_shape};
use crate::progress::{Shown, Ui};
use anyhow::{anyhow, bail, Context, Result};
use hedge::backend::decryptor::{self, Decryptor, Policy, SubscribeOptions};
use hedge::backend::registry::Registry;
use hedge::backend::{keys as backend_keys, protect};
use hedge::crypto::params::{ParameterSet, SecurityLevel};
use hedge::engine::FeatureMode;
use hedge::files::write_atomic;
use hedge::input::vectors::format_sample;
use hedge::model::quant::Variant;
use hedge::model::{argmax, onnx, synth, Classifier};
use hedge::transport::mqtt::MqttConfig;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
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
    /// Vectors for the act variant (about 7 s each at 128 bits).
    #[arg(long, default_value_t = 2)]
    act_count: usize,
    #[arg(long, default_value = "2304,512,10")]
    shape: String,
    /// Use this MQTT broker (HOST:PORT) instead of the embedded one.
    #[arg(long)]
    broker: Option<String>,
}

/// Summary of one variant's run.
struct Summary {
    results: usize,
    classes: Vec<usize>,
    agree_float: usize,
    mean_infer_ms: f64,
}

pub fn run(a: Args, ui: &Ui) -> Result<()> {
    let variants = if a.variant.is_empty() {
        Variant::ALL.to_vec()
    } else {
        a.variant.clone()
    };
    let shape = parse_shape(&a.shape)?;
    let opts = &a;
    let keys = opts.dir.join("keys");
    let registry = opts.dir.join("registry.sqlite");
    // Fresh keys and a fresh registry: the demo's boards are new every time.
    let _ = std::fs::remove_dir_all(&keys);
    for stale in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{stale}", registry.display()));
    }
    let t = Instant::now();
    let spinner = Shown(ui.spinner("generating keys"));
    let set = backend_keys::keygen(ParameterSet::for_level(opts.security), &keys, &spinner)?;
    spinner.0.finish_and_clear();
    backend_keys::record(&set, &keys, &registry)?;
    println!(
        "1. keys ({}-bit) in {} [{:.1} s]",
        opts.security,
        keys.display(),
        t.elapsed().as_secs_f64()
    );
    let (host, port) = match &opts.broker {
        Some(b) => {
            let (h, p) = MqttConfig::parse_addr(b).context("--broker")?;
            println!("2. broker: {h}:{p} (external)");
            (h, p)
        }
        None => {
            let p = hedge::backend::broker::start_embedded(0)?;
            println!("2. broker: embedded rumqttd on 127.0.0.1:{p}");
            ("127.0.0.1".to_string(), p)
        }
    };
    let hedged = std::env::current_exe()
        .context("current executable")?
        .with_file_name("hedged");
    if !hedged.exists() {
        bail!(
            "{} not found: build both binaries (cargo build --release)",
            hedged.display()
        );
    }
    let (i, h, c) = shape;
    let task = synth::Task::new(42, i, c);
    let test = task.samples(42 + synth::BENCH_STREAM, opts.count.max(opts.act_count));
    let calib: Vec<Vec<f32>> = task
        .samples(42 + synth::CALIBRATION_STREAM, 200)
        .into_iter()
        .map(|s| s.0)
        .collect();
    for &variant in &variants {
        let name = variant.name();
        let act = (variant != Variant::Noact).then_some(hedge::model::activation::Activation::Relu);
        let model_path = opts.dir.join(format!("model-{name}.onnx"));
        write_atomic(
            &model_path,
            &onnx::to_bytes(&synth::classifier(42, &task, h, act), false),
            0o644,
        )?;
        let model: Classifier = onnx::load(&model_path)?;
        let t = Instant::now();
        let p = protect::protect(
            &set,
            &model,
            variant,
            protect::HiddenActivation::AsTrained,
            protect::ActSettings::default(),
            &calib,
            "demo",
            None,
            protect::next_epoch(&registry)?,
            None,
            &hedge::progress::Silent,
        )?;
        let bundle_path = protect::default_bundle_path(&opts.dir, variant);
        write_atomic(&bundle_path, &p.bytes, 0o644)?;
        protect::record(&p, &set, &keys, &registry)?;
        println!(
            "3. {name}: {i}→{h}→{c} model protected into {} ({:.1} MB, {:.1} s)",
            bundle_path.display(),
            p.bytes.len() as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        let count = if variant == Variant::Act {
            opts.act_count
        } else {
            opts.count
        };
        let inputs: Vec<&Vec<f32>> = test.iter().take(count).map(|(x, _)| x).collect();
        let input_path = opts.dir.join(format!("vectors-{name}.txt"));
        let text: String = inputs
            .iter()
            .map(|x| format_sample(None, x) + "\n")
            .collect();
        write_atomic(&input_path, text.as_bytes(), 0o644)?;
        let spool = opts.dir.join(format!("spool-{name}"));
        let _ = std::fs::remove_dir_all(&spool);
        let device = format!("demo-{name}");
        let hedged_args = |c: &mut std::process::Command| {
            c.args(["--bundle", &bundle_path.to_string_lossy()])
                .args([
                    "--verifying-key",
                    &keys.join(backend_keys::VERIFYING_KEY).to_string_lossy(),
                ])
                .args(["--input", &input_path.to_string_lossy()])
                .args(["--features", opts.features.name()])
                .args(["--broker", &format!("{host}:{port}")])
                .args(["--spool-dir", &spool.to_string_lossy()])
                .args(["--device-id", &device])
                .args(["--log-level", "warn"]);
        };
        // Enrol the board: it makes its identity key, the backend records the public half.
        let identity = enrol(&hedged, &hedged_args, &Registry::open(&registry)?, &device)?;
        println!(
            "4. {name}: device {device} enrolled (identity key {}…)",
            &identity[..16]
        );
        // The decryption agent on the backend side, subscribed before the edge starts.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sub = SubscribeOptions {
            mqtt: MqttConfig::new(host.clone(), port),
            client_id: format!("demo-decryptor-{name}-{}", std::process::id()),
            filter: format!("hedge/{device}/results"),
            count: Some(count),
            idle_timeout: Some(Duration::from_secs(300)),
            persistent: false,
            ready: Some(ready_tx),
            stop: Default::default(),
            ack_key: Some(set.signer.clone()),
        };
        let mut agent = Decryptor::new(
            Registry::open(&registry)?,
            backend_keys::load_secret(&keys)?,
            Policy::default(),
        );
        let (stats, lines, status) = std::thread::scope(|scope| -> Result<_> {
            let agent = scope.spawn(move || {
                let mut lines = Vec::new();
                decryptor::run(&mut agent, &sub, &mut lines).map(|s| (s, lines))
            });
            ready_rx
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| anyhow!("the decryptor could not subscribe"))?;
            // The edge daemon, as a separate process, replaying the vectors.
            let mut command = std::process::Command::new(&hedged);
            hedged_args(&mut command);
            let mut child = command
                .spawn()
                .with_context(|| hedged.display().to_string())?;
            println!(
                "5. {name}: hedged (pid {}) replays {count} vectors with {} features",
                child.id(),
                opts.features.name()
            );
            let status = child.wait().with_context(|| hedged.display().to_string())?;
            let (stats, lines) = agent
                .join()
                .map_err(|_| anyhow!("decryptor thread panicked"))??;
            Ok((stats, lines, status))
        })?;
        if !status.success() {
            bail!("hedged exited with {status}");
        }
        let mut summary = Summary {
            results: stats.results,
            classes: vec![0; c],
            agree_float: 0,
            mean_infer_ms: 0.0,
        };
        for line in String::from_utf8_lossy(&lines).lines() {
            let v: serde_json::Value = serde_json::from_str(line).context("a decrypted line")?;
            let (Some(seq), Some(class)) = (v["seq"].as_u64(), v["class"].as_u64()) else {
                continue;
            };
            summary.classes[class as usize % c] += 1;
            summary.mean_infer_ms += v["infer_ms"].as_f64().unwrap_or(0.0);
            if let Some(x) = inputs.get(seq as usize - 1) {
                summary.agree_float += (class as usize == argmax(&model.forward(x))) as usize;
            }
        }
        summary.mean_infer_ms /= summary.results.max(1) as f64;
        println!(
            "6. {name}: decrypted {} signed results over MQTT ({} duplicates dropped, {} refused); class counts {:?}; \
             agree with the plaintext model {}/{}; {:.1} ms per encrypted inference on the edge",
            stats.results, stats.duplicates, stats.refused, summary.classes, summary.agree_float, summary.results, summary.mean_infer_ms
        );
        if summary.results != count || summary.agree_float * 100 < summary.results * 90 {
            bail!("{name}: results missing or disagreeing with the plaintext model");
        }
    }
    let rollout_variant = [Variant::Last, Variant::Noact, Variant::Act]
        .into_iter()
        .find(|v| variants.contains(v))
        .expect("at least one variant");
    rollout(
        &Rollout {
            dir: &opts.dir,
            keys: &keys,
            registry: &registry,
            broker: (&host, port),
            hedged: &hedged,
            variant: rollout_variant,
            count: opts.count.clamp(2, test.len()),
        },
        &set,
        &task,
        h,
        &calib,
        &test,
    )?;
    println!("demo finished: every result decrypted and checked");
    Ok(())
}

/// Where the rollout step runs.
struct Rollout<'a> {
    dir: &'a std::path::Path,
    keys: &'a std::path::Path,
    registry: &'a std::path::Path,
    broker: (&'a str, u16),
    hedged: &'a std::path::Path,
    variant: Variant,
    count: usize,
}

/// A second model deployed to a running board over MQTT: results switch bundle id between two
/// inferences, none lost. The board holds the key set already, so it takes the model alone.
fn rollout(
    r: &Rollout,
    set: &backend_keys::BackendKeys,
    task: &synth::Task,
    hidden: usize,
    calib: &[Vec<f32>],
    test: &[(Vec<f32>, usize)],
) -> Result<()> {
    use hedge::backend::{deploy, fleet};
    use std::io::Write;
    let name = r.variant.name();
    let act = (r.variant != Variant::Noact).then_some(hedge::model::activation::Activation::Relu);
    let protect_seeded = |seed: u64, file: &str| -> Result<(PathBuf, String)> {
        let model = synth::classifier(seed, task, hidden, act);
        let p = protect::protect(
            set,
            &model,
            r.variant,
            protect::HiddenActivation::AsTrained,
            protect::ActSettings::default(),
            calib,
            "demo",
            None,
            protect::next_epoch(r.registry)?,
            None,
            &hedge::progress::Silent,
        )?;
        let path = r.dir.join(file);
        write_atomic(&path, &p.bytes, 0o644)?;
        protect::record(&p, set, r.keys, r.registry)?;
        Ok((path, hedge::bundle::bundle_id(&p.bytes)))
    };
    let (first, first_id) = protect_seeded(42, &format!("rollout-{name}-1.bundle"))?;
    let device = format!("demo-rollout-{name}");
    let spool = r.dir.join(format!("spool-rollout-{name}"));
    let _ = std::fs::remove_dir_all(&spool);
    let config = MqttConfig::new(r.broker.0, r.broker.1);
    let args = |c: &mut std::process::Command| {
        c.args(["--bundle", &first.to_string_lossy()])
            .args([
                "--verifying-key",
                &r.keys.join(backend_keys::VERIFYING_KEY).to_string_lossy(),
            ])
            .args(["--input", "-"])
            .args(["--broker", &format!("{}:{}", r.broker.0, r.broker.1)])
            .args(["--spool-dir", &spool.to_string_lossy()])
            .args(["--device-id", &device])
            .args(["--log-level", "warn"]);
    };
    let registry = Registry::open(r.registry)?;
    enrol(r.hedged, &args, &registry, &device)?;

    let half = r.count / 2;
    let lines: Vec<String> = test
        .iter()
        .take(r.count)
        .map(|(x, _)| format_sample(None, x) + "\n")
        .collect();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sub = SubscribeOptions {
        mqtt: config.clone(),
        client_id: format!("demo-decryptor-rollout-{}", std::process::id()),
        filter: format!("hedge/{device}/results"),
        count: Some(r.count),
        idle_timeout: Some(Duration::from_secs(300)),
        persistent: false,
        ready: Some(ready_tx),
        stop: Default::default(),
        ack_key: Some(set.signer.clone()),
    };
    let mut decryptor = Decryptor::new(
        Registry::open(r.registry)?,
        backend_keys::load_secret(r.keys)?,
        Policy::default(),
    );
    let stop_agent = std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|scope| -> Result<Vec<u8>> {
        let results = scope.spawn(move || {
            let mut out = Vec::new();
            decryptor::run(&mut decryptor, &sub, &mut out).map(|_| out)
        });
        let agent_registry = Registry::open(r.registry)?;
        let (agent_config, stop) = (config.clone(), &stop_agent);
        let agent =
            scope.spawn(move || deploy::serve(&agent_config, &agent_registry, None, None, stop));
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow!("the decryptor could not subscribe"))?;
        let mut command = std::process::Command::new(r.hedged);
        args(&mut command);
        let mut board = command.stdin(std::process::Stdio::piped()).spawn()?;
        let mut stdin = board.stdin.take().context("hedged's stdin")?;
        stdin.write_all(lines[..half].concat().as_bytes())?;
        stdin.flush()?;
        let wait = |what: &str, done: &dyn Fn() -> Result<bool>| -> Result<()> {
            let t = Instant::now();
            while !done()? {
                if t.elapsed() > Duration::from_secs(120) {
                    bail!("timed out waiting for {what}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        };
        let accepted =
            || -> Result<u64> { Ok(registry.device(&device)?.map_or(0, |d| d.accepted)) };
        wait("the first results", &|| Ok(accepted()? >= half as u64))?;
        println!("7. rollout: device {device} runs bundle {first_id}; {half} results decrypted");
        // The registry learns what the board runs (its retained status): same key set.
        fleet::listen(&config, &registry, Duration::from_secs(1))?;
        let (second, second_id) = protect_seeded(43, &format!("rollout-{name}-2.bundle"))?;
        let created = deploy::create(
            &registry,
            &config,
            &set.signer,
            &second,
            std::slice::from_ref(&device),
            deploy::DEFAULT_CHUNK,
            false,
        )?;
        deploy::publish(&config, &created.offers)?;
        let offered = &created.offers[0];
        println!(
            "8. rollout: deployment {} offers bundle {second_id} as a {} of {} bytes (the \
             bundle is {} bytes)",
            created.deployment,
            offered.payload.name(),
            offered.size,
            std::fs::metadata(&second)?.len()
        );
        wait("the board to switch", &|| {
            Ok(registry
                .targets(Some(created.deployment))?
                .iter()
                .any(|t| t.state == "active"))
        })?;
        stdin.write_all(lines[half..].concat().as_bytes())?;
        drop(stdin);
        let status = board.wait()?;
        if !status.success() {
            bail!("hedged exited with {status}");
        }
        let out = results
            .join()
            .map_err(|_| anyhow!("decryptor thread panicked"))??;
        stop_agent.store(true, std::sync::atomic::Ordering::Relaxed);
        agent
            .join()
            .map_err(|_| anyhow!("deployment agent panicked"))??;
        Ok(out)
    })?;
    let mut by_bundle: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for line in String::from_utf8_lossy(&out).lines() {
        let v: serde_json::Value = serde_json::from_str(line).context("a decrypted line")?;
        by_bundle
            .entry(v["bundle"].as_str().unwrap_or("?").to_string())
            .or_default()
            .push(v["seq"].as_u64().unwrap_or(0));
    }
    let mut seqs: Vec<u64> = by_bundle.values().flatten().copied().collect();
    seqs.sort();
    let before = by_bundle.get(&first_id).map_or(0, Vec::len);
    println!(
        "9. rollout: {} results: {before} by bundle {first_id}, {} by bundle {}; none lost or \
         repeated",
        seqs.len(),
        seqs.len() - before,
        by_bundle
            .keys()
            .find(|k| **k != first_id)
            .map_or("-", String::as_str)
    );
    if seqs != (1..=r.count as u64).collect::<Vec<_>>() || before != half {
        bail!("rollout: results lost, repeated or from the wrong bundle: {by_bundle:?}");
    }
    Ok(())
}

/// Enrol a demo board: `hedged --print-identity` (with the board's own flags, `args`) makes its
/// identity key, and the registry records the public half, which is returned (hex).
fn enrol(
    hedged: &std::path::Path,
    args: &dyn Fn(&mut std::process::Command),
    registry: &Registry,
    device: &str,
) -> Result<String> {
    let mut print = std::process::Command::new(hedged);
    args(&mut print);
    let printed = print
        .arg("--print-identity")
        .output()
        .with_context(|| hedged.display().to_string())?;
    if !printed.status.success() {
        bail!(
            "hedged --print-identity: {}",
            String::from_utf8_lossy(&printed.stderr)
        );
    }
    let identity = String::from_utf8_lossy(&printed.stdout).trim().to_string();
    let identity_key: [u8; 32] = (0..32)
        .map(|i| {
            identity
                .get(2 * i..2 * i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("hedged printed {identity:?}"))?;
    registry.add_device(device, &identity_key)?;
    Ok(identity)
}
