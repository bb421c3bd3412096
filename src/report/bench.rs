//! `hedge bench`: the paper's evaluation grid, variant × feature mode × security level.
//!
//! The backend part of a cell (key generation, protection, decryption, checks) runs in the
//! calling process; its edge part ([`run_edge`]) runs in a child process exactly as on a board
//! (it loads and verifies the bundle, encrypts the features when asked, infers and writes the
//! results), so that its peak RSS (VmHWM) is the edge's own. The CLI launches the child and
//! presents the cells; this module prepares and evaluates them.

use super::{BackendError, Result};
use crate::backend::keys::{keygen, BackendKeys, VERIFYING_KEY};
use crate::backend::protect::{default_bundle_path, protect, Protected};
use crate::crypto::params::{ParameterSet, SecurityLevel};
use crate::engine::{decrypt, Decoding, FeatureMode};
use crate::files::write_atomic;
use crate::input::vectors::{format_sample, read_samples};
use crate::model::activation::Activation;
use crate::model::quant::{float_reference, Variant};
use crate::model::{argmax, synth, Classifier};
use crate::progress::Silent;
use crate::transport::message::{now_ms, ResultMessage};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of a bench run.
pub struct BenchOptions {
    pub variants: Vec<Variant>,
    pub features: Vec<FeatureMode>,
    pub security: Vec<SecurityLevel>,
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

/// The edge side of a cell (run in a child process): results as [`ResultMessage`]s,
/// length-prefixed, in `results`.
pub fn run_edge(
    bundle: &Path,
    verifying: &Path,
    inputs: &Path,
    mode: FeatureMode,
    results: &Path,
) -> Result<EdgeReport> {
    let samples = read_samples(inputs)?;
    let t = Instant::now();
    let ready = crate::bundle::open_verified(bundle, verifying)?.ready()?;
    let mut engine = ready.engine;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    // Signed as `hedged` signs (here with a fixed key of the bench's): `result_bytes` is the
    // message a board puts on the wire.
    let board = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let mut out = Vec::new();
    let mut times = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let t = Instant::now();
        let result = match mode {
            FeatureMode::Plain => engine.infer_plain(&s.values)?,
            FeatureMode::Enc => engine.infer_encrypting(&s.values)?,
        };
        let elapsed = t.elapsed();
        times.push(elapsed.as_secs_f64() * 1e3);
        let mut message = ResultMessage {
            device_id: "bench".into(),
            bundle_id: ready.id.clone(),
            seq: i as u64 + 1,
            timestamp_ms: now_ms(),
            infer_us: elapsed.as_micros() as u64,
            extract_us: 0,
            result,
            signed: None,
        };
        message.sign(&board);
        let bytes = message.encode();
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    write_atomic(results, &out, 0o644)?;
    Ok(EdgeReport {
        load_ms,
        infer_ms: times,
        peak_rss_mb: peak_rss_mb(),
    })
}

fn read_results(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = crate::files::read(path)?;
    let truncated = || BackendError::Data(format!("{}: truncated results", path.display()));
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u64::from_le_bytes(
            bytes
                .get(at..at + 8)
                .ok_or_else(truncated)?
                .try_into()
                .expect("8 bytes"),
        ) as usize;
        at += 8;
        out.push(bytes.get(at..at + len).ok_or_else(truncated)?.to_vec());
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

/// A bench run: the fixed-seed task and its inputs.
pub struct Bench<'a> {
    opts: &'a BenchOptions,
    task: synth::Task,
    bench_inputs: Vec<Vec<f32>>,
}

/// One security level's keys, written to the work directory.
pub struct BenchKeys {
    pub keys: BackendKeys,
    pub params: ParameterSet,
    pub verifying_path: PathBuf,
}

/// A variant protected and its inputs written, ready for its feature modes.
pub struct CellSetup {
    pub variant: Variant,
    pub level: SecurityLevel,
    pub bundle_path: PathBuf,
    pub inputs_path: PathBuf,
    inputs: Vec<Vec<f32>>,
    protected: Protected,
    float_model: Classifier,
    float_model_bytes: usize,
    encrypt_model_ms: f64,
    plaintext_ms: Option<f64>,
}

impl<'a> Bench<'a> {
    pub fn new(opts: &'a BenchOptions) -> Result<Self> {
        crate::files::create_dir_all(&opts.work_dir)?;
        let (in_dim, _, classes) = opts.shape;
        let task = synth::Task::new(42, in_dim, classes);
        let bench_inputs = match &opts.model {
            Some(_) => Vec::new(),
            None => task
                .samples(42 + synth::BENCH_STREAM, opts.inputs.max(opts.act_inputs))
                .into_iter()
                .map(|s| s.0)
                .collect(),
        };
        Ok(Self {
            opts,
            task,
            bench_inputs,
        })
    }

    pub fn keys(&self, level: SecurityLevel) -> Result<BenchKeys> {
        let params = ParameterSet::for_level(level);
        let dir = self.opts.work_dir.join(format!("keys-{}", level.bits()));
        // Scratch keys: a new set every run (keygen never overwrites).
        let _ = std::fs::remove_dir_all(&dir);
        let t = Instant::now();
        let keys = keygen(params, &dir, &Silent)?;
        log::info!(
            "keygen {}-bit: {:.1} s",
            level.bits(),
            t.elapsed().as_secs_f64()
        );
        Ok(BenchKeys {
            keys,
            params,
            verifying_path: dir.join(VERIFYING_KEY),
        })
    }

    /// Protect `variant` and write its bundle and inputs.
    pub fn setup(
        &self,
        keys: &BenchKeys,
        level: SecurityLevel,
        variant: Variant,
    ) -> Result<CellSetup> {
        let opts = self.opts;
        let (model, calib) = model_for(variant, opts, &self.task)?;
        let inputs: Vec<Vec<f32>> = if self.bench_inputs.is_empty() {
            calib.clone()
        } else {
            self.bench_inputs.clone()
        };
        let count = if variant == Variant::Act {
            opts.act_inputs
        } else {
            opts.inputs
        }
        .min(inputs.len());
        let inputs = inputs[..count].to_vec();
        let t = Instant::now();
        let protected = protect(
            &keys.keys,
            &model,
            variant,
            Default::default(),
            Default::default(),
            &calib,
            "bench",
            None,
            1,
            None,
            &Silent,
        )?;
        log::info!(
            "{} {}-bit: z bound 2^{:.1}, delta_out 2^{:.1}",
            variant.name(),
            level.bits(),
            (protected.quant.z_bound as f64).log2(),
            (protected.quant.delta_out as f64).log2()
        );
        let encrypt_model_ms = t.elapsed().as_secs_f64() * 1e3;
        let bundle_path = default_bundle_path(&opts.work_dir, variant);
        write_atomic(&bundle_path, &protected.bytes, 0o644)?;
        let inputs_path = opts.work_dir.join("inputs.txt");
        let text: String = inputs
            .iter()
            .map(|x| format_sample(None, x) + "\n")
            .collect();
        write_atomic(&inputs_path, text.as_bytes(), 0o644)?;
        let float_model = float_reference(&model, variant);
        let float_model_bytes = match variant {
            Variant::Last => 4 * (model.output.w.len() + model.output.b.len()),
            _ => model.float_bytes(),
        };
        let plaintext_ms = opts.plaintext.then(|| {
            let t = Instant::now();
            for x in &inputs {
                std::hint::black_box(float_model.forward(x));
            }
            t.elapsed().as_secs_f64() * 1e3 / inputs.len().max(1) as f64
        });
        Ok(CellSetup {
            variant,
            level,
            bundle_path,
            inputs_path,
            inputs,
            protected,
            float_model,
            float_model_bytes,
            encrypt_model_ms,
            plaintext_ms,
        })
    }

    /// Decrypt and check what the edge child wrote to `results`.
    pub fn evaluate(
        &self,
        setup: &CellSetup,
        keys: &BenchKeys,
        mode: FeatureMode,
        report: &EdgeReport,
        results: &Path,
    ) -> Result<Cell> {
        let results = read_results(results)?;
        let q = &setup.protected.quant;
        let inputs = &setup.inputs;
        let bound = q.act_score_bound(&keys.params);
        let decoding = Decoding::new(
            q,
            &keys.params,
            keys.keys.secret.key_id,
            &setup.protected.checks,
        )?;
        let exact = setup.variant != Variant::Act;
        let mut decrypt_ms = 0.0;
        let (mut within, mut ref_agree, mut float_agree) = (true, 0usize, 0usize);
        let mut margin = f64::INFINITY;
        let mut result_bytes = 0;
        for (x, bytes) in inputs.iter().zip(&results) {
            result_bytes = bytes.len();
            let t = Instant::now();
            let m = ResultMessage::decode(bytes).map_err(crate::transport::TransportError::from)?;
            let d = decrypt(&m.result, &decoding, &keys.keys.secret)?;
            decrypt_ms += t.elapsed().as_secs_f64() * 1e3;
            let reference = q.reference(&q.input.quantize(x)?);
            let delta = q.delta_out as f64;
            for (j, (&phase, &z)) in d.phases.iter().zip(&reference.scores).enumerate() {
                let err = phase.wrapping_sub((z as u64).wrapping_mul(q.delta_out)) as i64;
                let tolerance = if exact { 0.5 } else { bound[j] };
                let m = (tolerance * delta).log2() - (err.unsigned_abs().max(1) as f64).log2();
                margin = margin.min(m);
                if exact {
                    within &= d.scores[j] == z;
                } else {
                    within &= ((d.scores[j] - z) as f64).abs() <= bound[j];
                }
            }
            if exact {
                // The check outputs' own margin (their Δ is smaller: docs/THREATS.md #20).
                margin = margin.min(d.noise_margin_bits);
            }
            ref_agree += (d.class == argmax(&reference.scores)) as usize;
            float_agree += (d.class == argmax(&setup.float_model.forward(x))) as usize;
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
        let model_bytes = setup.protected.bundle.model.encrypted_bytes();
        Ok(Cell {
            variant: setup.variant.name().into(),
            features: mode.name().into(),
            security: setup.level.bits(),
            inputs: results.len(),
            infer_ms: times.iter().sum::<f64>() / n,
            infer_ms_min: times.iter().copied().fold(f64::INFINITY, f64::min),
            infer_ms_max: times.iter().copied().fold(0.0, f64::max),
            load_ms: report.load_ms,
            peak_rss_mb: report.peak_rss_mb,
            noise_margin_bits: margin,
            model_bytes,
            float_model_bytes: setup.float_model_bytes,
            model_ratio: model_bytes as f64 / setup.float_model_bytes as f64,
            bundle_bytes: setup.protected.bytes.len(),
            result_bytes,
            encrypt_model_ms: setup.encrypt_model_ms,
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
            plaintext_ms: setup.plaintext_ms,
        })
    }
}
