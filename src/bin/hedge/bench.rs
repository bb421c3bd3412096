use crate::args::{parse_security, parse_shape};
use crate::progress::Ui;
use anyhow::{bail, Context, Result};
use hedge::crypto::params::SecurityLevel;
use hedge::engine::FeatureMode;
use hedge::model::quant::Variant;
use hedge::report::bench::{self, BenchOptions, Cell, EdgeReport};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
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
}

/// The edge side of one cell, run as a child process exactly as on a board: it loads and
/// verifies the bundle, encrypts the features when asked, infers and writes the results; its
/// peak RSS is the cell's.
#[derive(clap::Args)]
pub struct EdgeArgs {
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
}

pub fn run_edge(a: EdgeArgs) -> Result<()> {
    let report = bench::run_edge(
        &a.bundle,
        &a.verifying_key,
        &a.inputs,
        a.features,
        &a.results,
    )?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

pub fn run(a: Args, ui: &Ui) -> Result<()> {
    let opts = BenchOptions {
        variants: if a.variant.is_empty() {
            Variant::ALL.to_vec()
        } else {
            a.variant
        },
        features: if a.features.is_empty() {
            vec![FeatureMode::Plain, FeatureMode::Enc]
        } else {
            a.features
        },
        security: if a.security.is_empty() {
            SecurityLevel::ALL.to_vec()
        } else {
            a.security
        },
        plaintext: a.plaintext,
        inputs: a.inputs,
        act_inputs: a.act_inputs,
        model: a.model.zip(a.calibration),
        shape: parse_shape(&a.shape)?,
        work_dir: a.work_dir,
    };
    if !a.json {
        println!(
            "{:<6} {:<5} {:>4} {:>10} {:>9} {:>7} {:>9} {:>10} {:>7} {:>10} {:>9} {:>8}  correct",
            "var",
            "feat",
            "sec",
            "infer ms",
            "peak MB",
            "margin",
            "result B",
            "model KB",
            "×float",
            "enc ms",
            "dec ms",
            "inputs"
        );
    }
    let cells_total = opts.security.len() * opts.variants.len() * opts.features.len();
    let bar = ui.bar(cells_total as u64, "benchmark cells");
    let bench = bench::Bench::new(&opts)?;
    let mut all_correct = true;
    for &level in &opts.security {
        bar.set_message(format!("keys, {}-bit", level.bits()));
        let keys = bench.keys(level)?;
        for &variant in &opts.variants {
            bar.set_message(format!(
                "protecting {} {}-bit",
                variant.name(),
                level.bits()
            ));
            let setup = bench.setup(&keys, level, variant)?;
            for &mode in &opts.features {
                bar.set_message(format!(
                    "{} {} {}-bit",
                    variant.name(),
                    mode.name(),
                    level.bits()
                ));
                let results = opts.work_dir.join("results.bin");
                let report = edge_child(
                    &setup.bundle_path,
                    &keys.verifying_path,
                    &setup.inputs_path,
                    mode,
                    &results,
                )?;
                let cell = bench.evaluate(&setup, &keys, mode, &report, &results)?;
                all_correct &= cell.correct;
                bar.suspend(|| print_cell(&cell, a.json));
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    if !all_correct {
        bail!("some cells did not meet their correctness criterion");
    }
    Ok(())
}

/// `hedge bench-edge` in a child process; its report.
fn edge_child(
    bundle: &Path,
    verifying_key: &Path,
    inputs: &Path,
    mode: FeatureMode,
    results: &Path,
) -> Result<EdgeReport> {
    let exe = std::env::current_exe().context("current executable")?;
    let output = std::process::Command::new(&exe)
        .arg("bench-edge")
        .arg("--bundle")
        .arg(bundle)
        .arg("--verifying-key")
        .arg(verifying_key)
        .arg("--inputs")
        .arg(inputs)
        .arg("--features")
        .arg(mode.name())
        .arg("--results")
        .arg(results)
        .output()
        .with_context(|| exe.display().to_string())?;
    if !output.status.success() {
        bail!(
            "edge process failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("edge report")
}

fn print_cell(c: &Cell, json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string(c).unwrap_or_default());
    } else {
        let _ = writeln!(
            out,
            "{:<6} {:<5} {:>4} {:>10.1} {:>9.1} {:>7.1} {:>9} {:>10.1} {:>7.2} {:>10.1} {:>9.2} {:>8}  {}",
            c.variant,
            c.features,
            c.security,
            c.infer_ms,
            c.peak_rss_mb,
            c.noise_margin_bits,
            c.result_bytes,
            c.model_bytes as f64 / 1024.0,
            c.model_ratio,
            c.encrypt_model_ms,
            c.decrypt_ms,
            c.inputs,
            if c.correct { "yes" } else { "NO" }
        );
    }
    let _ = out.flush();
}
