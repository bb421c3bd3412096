//! Criterion timings of what the edge does per input, on the paper's shape (2304→512→10,
//! the fixed-seed model of `hedge bench`), 128-bit set, one thread: every variant with
//! plaintext features, and with features encrypted on the edge (encryption included, as in
//! `hedge bench`'s `infer_ms`). `hedge bench` adds peak memory, model sizes, noise margins and
//! correctness; this adds confidence intervals.
//!   cargo bench --bench inference [-- FILTER]     (e.g. `-- last`; the act cells take minutes)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hedge::crypto::keys::{self, EdgeKeys};
use hedge::crypto::lut::Activation;
use hedge::crypto::params::{ParameterSet, SecurityLevel};
use hedge::engine::{EdgeEngine, EncryptedModel, ModelInfo};
use hedge::model::quant::{QuantModel, Variant};
use hedge::model::synth;
use std::time::Duration;

fn inference(c: &mut Criterion) {
    let params = ParameterSet::for_level(SecurityLevel::L128);
    let ks = keys::generate(params);
    let edge_keys = EdgeKeys {
        public: ks.public.clone(),
        evaluation: Some(ks.evaluation.clone()),
    };
    let task = synth::Task::new(42, 2304, 10);
    let calibration: Vec<Vec<f32>> = task
        .samples(42 + synth::CALIBRATION_STREAM, 200)
        .into_iter()
        .map(|s| s.0)
        .collect();
    let input = task.samples(42 + synth::BENCH_STREAM, 1).remove(0).0;

    let mut group = c.benchmark_group("inference_128");
    for variant in [Variant::Last, Variant::Noact, Variant::Act] {
        let activation = (variant != Variant::Noact).then_some(Activation::Relu);
        let model = synth::classifier(42, &task, 512, activation);
        let q = QuantModel::quantize(&model, variant, None, &calibration, &params)
            .expect("the fixed-seed model quantises");
        let (encrypted, _checks) = EncryptedModel::encrypt(&q, &ks.secret).expect("encrypts");
        let mut engine = EdgeEngine::new(
            ModelInfo::of(&q),
            params,
            ks.secret.key_id,
            &edge_keys,
            &encrypted,
        )
        .expect("loads");
        let name = format!("{variant:?}").to_lowercase();
        // Fewer, longer samples for the slow cells (criterion's minimum is 10).
        let (samples, time) = match variant {
            Variant::Last => (100, 5),
            Variant::Noact => (10, 10),
            Variant::Act => (10, 80),
        };
        group
            .sample_size(samples)
            .measurement_time(Duration::from_secs(time));
        group.bench_function(BenchmarkId::new(&name, "plain"), |b| {
            b.iter(|| engine.infer_plain(&input).expect("infers"))
        });
        group.bench_function(BenchmarkId::new(&name, "enc"), |b| {
            b.iter(|| engine.infer_encrypting(&input).expect("infers"))
        });
    }
    group.finish();
}

criterion_group!(benches, inference);
criterion_main!(benches);
