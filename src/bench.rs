//! `hedge bench`: the paper's evaluation grid, variant × feature mode × security level.
//!
//! The backend part (key generation, protection, decryption, checks) runs in this process.
//! The edge part of each cell runs in a child process (`hedge bench-edge`, hidden), exactly as
//! on a board: it loads and verifies the bundle, encrypts the features when asked, infers and
//! writes the results; its peak RSS (VmHWM) is the cell's `peak_rss_mb`.

use crate::backend::{self, decode_result};
use crate::bundle::EdgeBundle;
use crate::crypto::lut::Activation;
use crate::crypto::params::{ParameterSet, SecurityLevel};
use crate::data::{format_sample, read_samples};
use crate::engine::decrypt;
use crate::error::{Error, Result};
use crate::model::quant::{float_reference, Variant};
use crate::model::{argmax, synth, Classifier};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Feature mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FeatureMode {
    Plain,
    Enc,
}

impl FeatureMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Enc => "enc",
        }
    }
}

/// Options of a bench run.
pub struct BenchOptions {
    pub variants: Vec<Variant>,
    pub features: Vec<FeatureMode>,
    pub security: Vec<SecurityLevel>,
    pub json: bool,
    pub plaintext: bool,
    /// Inputs per cell for the linear variants and for `act`.
    pub inputs: usize,
    pub act_inputs: usize,
    /// A model and calibration set instead of the fixed-seed one.
    pub model: Option<(PathBuf, PathBuf)>,
    pub shape: (usize, usize, usize),
    pub work_dir: PathBuf,
}

/// One cell of the grid.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    pub variant: String,
    pub features: String,
    pub security: u32,
    pub inputs: usize,
    pub infer_ms: f64,
    pub infer_ms_min: f64,
    pub infer_ms_max: f64,
    pub load_ms: f64,
    pub peak_rss_mb: f64,
    pub noise_margin_bits: f64,
    pub model_bytes: usize,
    pub float_model_bytes: usize,
    pub model_ratio: f64,
    pub bundle_bytes: usize,
    pub result_bytes: usize,
    pub encrypt_model_ms: f64,
    pub decrypt_ms: f64,
    pub exact: bool,
    pub score_bound: f64,
    pub reference_agreement: f64,
    pub float_agreement: f64,
    pub correct: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext_ms: Option<f64>,
}

/// What the edge child reports.
#[derive(Serialize, Deserialize)]
pub struct EdgeReport {
    pub load_ms: f64,
    pub infer_ms: Vec<f64>,
    pub peak_rss_mb: f64,
}

/// Peak resident set of this process, from /proc (MB).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The edge side of a cell (run in a child process).
pub fn run_edge(
    bundle: &Path,
    verifying: &Path,
    inputs: &Path,
    mode: FeatureMode,
    results: &Path,
) -> Result<EdgeReport> {
    let trusted = backend::load_verifying(verifying)?;
    let samples = read_samples(inputs)?;
    let t = Instant::now();
    let (b, _) = EdgeBundle::load(bundle, &trusted)?;
    let mut engine = b.engine()?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut out = Vec::new();
    let mut times = Vec::new();
    for s in &samples {
        let t = Instant::now();
        let r = match mode {
            FeatureMode::Plain => engine.infer_plain(&s.values)?,
            FeatureMode::Enc => engine.infer_encrypting(&s.values)?,
        };
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let bytes = backend::encode_result(&r);
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    backend::write_atomic(results, &out, 0o644)?;
    Ok(EdgeReport {
        load_ms,
        infer_ms: times,
        peak_rss_mb: peak_rss_mb(),
    })
}

fn read_results(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u64::from_le_bytes(
            bytes
                .get(at..at + 8)
                .ok_or_else(|| Error::Malformed("truncated results file".into()))?
                .try_into()
                .expect("8 bytes"),
        ) as usize;
        at += 8;
        out.push(
            bytes
                .get(at..at + len)
                .ok_or_else(|| Error::Malformed("truncated results file".into()))?
                .to_vec(),
        );
        at += len;
    }
    Ok(out)
}

fn model_for(
    variant: Variant,
    opts: &BenchOptions,
    task: &synth::Task,
) -> Result<(Classifier, Vec<Vec<f32>>)> {
    match &opts.model {
        Some((model, calibration)) => {
            let m = crate::model::onnx::load(model)?;
            let calib = read_samples(calibration)?
                .into_iter()
                .map(|s| s.values)
                .collect();
            let m = if variant == Variant::Noact {
                Classifier {
                    activation: None,
                    ..m
                }
            } else {
                m
            };
            Ok((m, calib))
        }
        None => {
            let act = (variant != Variant::Noact).then_some(Activation::Relu);
            let m = synth::classifier(42, task, opts.shape.1, act);
            let calib = task
                .samples(42 + synth::CALIBRATION_STREAM, 200)
                .into_iter()
                .map(|s| s.0)
                .collect();
            Ok((m, calib))
        }
    }
}

/// Run the grid; prints rows as cells finish and returns them.
pub fn run(opts: &BenchOptions) -> Result<Vec<Cell>> {
    std::fs::create_dir_all(&opts.work_dir).map_err(|e| Error::io(&opts.work_dir, e))?;
    let (in_dim, _, classes) = opts.shape;
    let task = synth::Task::new(42, in_dim, classes);
    let bench_inputs: Vec<Vec<f32>> = match &opts.model {
        Some(_) => Vec::new(),
        None => task
            .samples(42 + synth::BENCH_STREAM, opts.inputs.max(opts.act_inputs))
            .into_iter()
            .map(|s| s.0)
            .collect(),
    };
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    let mut cells = Vec::new();
    if !opts.json {
        println!(
            "{:<6} {:<5} {:>4} {:>10} {:>9} {:>7} {:>10} {:>7} {:>10} {:>9} {:>8}  correct",
            "var",
            "feat",
            "sec",
            "infer ms",
            "peak MB",
            "margin",
            "model KB",
            "×float",
            "enc ms",
            "dec ms",
            "inputs"
        );
    }
    for &level in &opts.security {
        let params = ParameterSet::for_level(level);
        let key_dir = opts.work_dir.join(format!("keys-{}", level.bits()));
        let t = Instant::now();
        let ks = backend::keygen(params, &key_dir)?;
        log::info!(
            "keygen {}-bit: {:.1} s",
            level.bits(),
            t.elapsed().as_secs_f64()
        );
        for &variant in &opts.variants {
            let (model, calib) = model_for(variant, opts, &task)?;
            let inputs: Vec<Vec<f32>> = if bench_inputs.is_empty() {
                calib.clone()
            } else {
                bench_inputs.clone()
            };
            let count = if variant == Variant::Act {
                opts.act_inputs
            } else {
                opts.inputs
            }
            .min(inputs.len());
            let inputs = &inputs[..count];
            let t = Instant::now();
            let protected = backend::protect(&ks, &model, variant, None, &calib, "bench", None)?;
            log::info!(
                "{} {}-bit: z bound 2^{:.1}, delta_out 2^{:.1}",
                variant.name(),
                level.bits(),
                (protected.quant.z_bound as f64).log2(),
                (protected.quant.delta_out as f64).log2()
            );
            let encrypt_model_ms = t.elapsed().as_secs_f64() * 1e3;
            let bundle_path = backend::default_bundle_path(&opts.work_dir, variant);
            backend::write_atomic(&bundle_path, &protected.bytes, 0o644)?;
            let inputs_path = opts.work_dir.join("inputs.txt");
            let text: String = inputs
                .iter()
                .map(|x| format_sample(None, x) + "\n")
                .collect();
            backend::write_atomic(&inputs_path, text.as_bytes(), 0o644)?;
            let q = &protected.quant;
            let float_model = float_reference(&model, variant);
            let float_model_bytes = match variant {
                Variant::Last => 4 * (model.output.w.len() + model.output.b.len()),
                _ => model.float_bytes(),
            };
            let plaintext_ms = opts.plaintext.then(|| {
                let t = Instant::now();
                for x in inputs {
                    std::hint::black_box(float_model.forward(x));
                }
                t.elapsed().as_secs_f64() * 1e3 / inputs.len().max(1) as f64
            });
            for &mode in &opts.features {
                let results_path = opts.work_dir.join("results.bin");
                let output = std::process::Command::new(&exe)
                    .arg("bench-edge")
                    .arg("--bundle")
                    .arg(&bundle_path)
                    .arg("--verifying-key")
                    .arg(key_dir.join(backend::VERIFYING_KEY))
                    .arg("--inputs")
                    .arg(&inputs_path)
                    .arg("--features")
                    .arg(mode.name())
                    .arg("--results")
                    .arg(&results_path)
                    .output()
                    .map_err(|e| Error::io(&exe, e))?;
                if !output.status.success() {
                    return Err(Error::Malformed(format!(
                        "edge process failed: {}",
                        String::from_utf8_lossy(&output.stderr)
                    )));
                }
                let report: EdgeReport = serde_json::from_slice(&output.stdout)
                    .map_err(|e| Error::Malformed(format!("edge report: {e}")))?;
                let results = read_results(&results_path)?;
                let bound = q.act_score_bound(&params);
                let exact = variant != Variant::Act;
                let mut decrypt_ms = 0.0;
                let (mut within, mut ref_agree, mut float_agree) = (true, 0usize, 0usize);
                let mut margin = f64::INFINITY;
                let mut result_bytes = 0;
                for (x, bytes) in inputs.iter().zip(&results) {
                    result_bytes = bytes.len();
                    let t = Instant::now();
                    let r = decode_result(bytes)?;
                    let d = decrypt(&r, &ks.secret)?;
                    decrypt_ms += t.elapsed().as_secs_f64() * 1e3;
                    let reference = q.reference(&q.input.quantize(x)?);
                    let delta = q.delta_out as f64;
                    for (j, (&phase, &z)) in d.phases.iter().zip(&reference.scores).enumerate() {
                        let err = phase.wrapping_sub((z as u64).wrapping_mul(q.delta_out)) as i64;
                        let tolerance = if exact { 0.5 } else { bound[j] };
                        let m =
                            (tolerance * delta).log2() - (err.unsigned_abs().max(1) as f64).log2();
                        margin = margin.min(m);
                        if exact {
                            within &= d.scores[j] == z;
                        } else {
                            within &= ((d.scores[j] - z) as f64).abs() <= bound[j];
                        }
                    }
                    ref_agree += (d.class == argmax(&reference.scores)) as usize;
                    float_agree += (d.class == argmax(&float_model.forward(x))) as usize;
                }
                let n = results.len().max(1) as f64;
                let reference_agreement = ref_agree as f64 / n;
                let float_agreement = float_agree as f64 / n;
                let correct = results.len() == inputs.len()
                    && within
                    && if exact {
                        reference_agreement == 1.0
                    } else {
                        reference_agreement >= 0.995
                    }
                    && float_agreement >= 0.99;
                let times = &report.infer_ms;
                let cell = Cell {
                    variant: variant.name().into(),
                    features: mode.name().into(),
                    security: level.bits(),
                    inputs: results.len(),
                    infer_ms: times.iter().sum::<f64>() / n,
                    infer_ms_min: times.iter().copied().fold(f64::INFINITY, f64::min),
                    infer_ms_max: times.iter().copied().fold(0.0, f64::max),
                    load_ms: report.load_ms,
                    peak_rss_mb: report.peak_rss_mb,
                    noise_margin_bits: margin,
                    model_bytes: protected.bundle.model.encrypted_bytes(),
                    float_model_bytes,
                    model_ratio: protected.bundle.model.encrypted_bytes() as f64
                        / float_model_bytes as f64,
                    bundle_bytes: protected.bytes.len(),
                    result_bytes,
                    encrypt_model_ms,
                    decrypt_ms: decrypt_ms / n,
                    exact,
                    score_bound: if exact {
                        0.5
                    } else {
                        bound.iter().copied().fold(0.0, f64::max)
                    },
                    reference_agreement,
                    float_agreement,
                    correct,
                    plaintext_ms,
                };
                print_cell(&cell, opts.json);
                cells.push(cell);
            }
        }
    }
    Ok(cells)
}

fn print_cell(c: &Cell, json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string(c).unwrap_or_default());
    } else {
        let _ = writeln!(
            out,
            "{:<6} {:<5} {:>4} {:>10.1} {:>9.1} {:>7.1} {:>10.1} {:>7.2} {:>10.1} {:>9.2} {:>8}  {}",
            c.variant,
            c.features,
            c.security,
            c.infer_ms,
            c.peak_rss_mb,
            c.noise_margin_bits,
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
