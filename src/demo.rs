//! `hedge demo`: the whole pipeline on one machine with no set-up — keys, the fixed-seed model
//! exported to ONNX and imported back, protection into signed bundles, the edge engine on a
//! replayed test set, decryption and a summary per variant.

use crate::backend;
use crate::bench::FeatureMode;
use crate::bundle::{bundle_id, EdgeBundle};
use crate::crypto::params::{ParameterSet, SecurityLevel};
use crate::engine::decrypt;
use crate::error::{Error, Result};
use crate::model::quant::Variant;
use crate::model::{argmax, onnx, synth, Classifier};
use std::path::PathBuf;
use std::time::Instant;

pub struct DemoOptions {
    pub dir: PathBuf,
    pub security: SecurityLevel,
    pub features: FeatureMode,
    pub variants: Vec<Variant>,
    pub count: usize,
    pub act_count: usize,
    pub shape: (usize, usize, usize),
}

/// Summary of one variant's run.
pub struct DemoSummary {
    pub variant: Variant,
    pub results: usize,
    pub classes: Vec<usize>,
    pub agree_float: usize,
    pub agree_label: usize,
    pub mean_ms: f64,
}

pub fn run(opts: &DemoOptions) -> Result<Vec<DemoSummary>> {
    let keys = opts.dir.join("keys");
    let t = Instant::now();
    let set = backend::keygen(ParameterSet::for_level(opts.security), &keys)?;
    println!(
        "1. keys ({}-bit) in {} [{:.1} s]",
        opts.security,
        keys.display(),
        t.elapsed().as_secs_f64()
    );
    let (i, h, c) = opts.shape;
    let task = synth::Task::new(42, i, c);
    let trusted = backend::load_verifying(&keys.join(backend::VERIFYING_KEY))?;
    let test = task.samples(42 + synth::BENCH_STREAM, opts.count.max(opts.act_count));
    let calib: Vec<Vec<f32>> = task
        .samples(42 + synth::CALIBRATION_STREAM, 200)
        .into_iter()
        .map(|s| s.0)
        .collect();
    let mut out = Vec::new();
    for &variant in &opts.variants {
        let act = (variant != Variant::Noact).then_some(crate::crypto::lut::Activation::Relu);
        let model_path = opts.dir.join(format!("model-{}.onnx", variant.name()));
        backend::write_atomic(
            &model_path,
            &onnx::to_bytes(&synth::classifier(42, &task, h, act), false),
            0o644,
        )?;
        let model: Classifier = onnx::load(&model_path)?;
        let t = Instant::now();
        let p = backend::protect(&set, &model, variant, None, &calib, "demo")?;
        let bundle_path = backend::default_bundle_path(&opts.dir, variant);
        backend::write_atomic(&bundle_path, &p.bytes, 0o644)?;
        println!(
            "2. {}: {i}→{h}→{c} model protected into {} ({:.1} MB, {:.1} s)",
            variant.name(),
            bundle_path.display(),
            p.bytes.len() as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        // The edge: verify and load the bundle, infer on the replayed test set.
        let (bundle, bytes) = EdgeBundle::load(&bundle_path, &trusted)?;
        let mut engine = bundle.engine()?;
        let count = if variant == Variant::Act {
            opts.act_count
        } else {
            opts.count
        };
        let mut summary = DemoSummary {
            variant,
            results: 0,
            classes: vec![0; c],
            agree_float: 0,
            agree_label: 0,
            mean_ms: 0.0,
        };
        for (x, label) in test.iter().take(count) {
            let t = Instant::now();
            let r = match opts.features {
                FeatureMode::Plain => engine.infer_plain(x)?,
                FeatureMode::Enc => engine.infer_encrypting(x)?,
            };
            summary.mean_ms += t.elapsed().as_secs_f64() * 1e3;
            // The backend: decrypt.
            let payload = backend::encode_result(&r);
            let d = decrypt(&backend::decode_result(&payload)?, &set.secret)?;
            summary.results += 1;
            summary.classes[d.class] += 1;
            summary.agree_float += (d.class == argmax(&model.forward(x))) as usize;
            summary.agree_label += (d.class == *label) as usize;
        }
        summary.mean_ms /= summary.results.max(1) as f64;
        println!(
            "3. {}: edge ran bundle {} on {} vectors ({} features), {:.1} ms per inference",
            variant.name(),
            bundle_id(&bytes),
            summary.results,
            opts.features.name(),
            summary.mean_ms
        );
        println!(
            "4. {}: decrypted {} results; class counts {:?}; agree with the plaintext model {}/{}, with the true label {}/{}",
            variant.name(),
            summary.results,
            summary.classes,
            summary.agree_float,
            summary.results,
            summary.agree_label,
            summary.results
        );
        if summary.agree_float * 100 < summary.results * 90 {
            return Err(Error::Malformed(format!(
                "{}: encrypted results disagree with the plaintext model",
                variant.name()
            )));
        }
        out.push(summary);
    }
    Ok(out)
}
