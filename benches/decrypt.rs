//! Criterion timings of the backend's decryption of one result, on the paper's shape
//! (2304→512→10, the fixed-seed model of `hedge bench`), 128-bit set, one thread: the raw
//! phases against the full `engine::decrypt` with its refusal checks (shape, masks, the
//! bundle's own ciphertexts, noise and range), to show what the checks cost.
//!   cargo bench --bench decrypt [-- FILTER]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hedge::crypto::keys::{self, EdgeKeys};
use hedge::crypto::lut::Activation;
use hedge::crypto::params::{ParameterSet, SecurityLevel};
use hedge::engine::{decrypt, phases, Decoding, EdgeEngine, EncryptedModel, ModelInfo};
use hedge::model::quant::{QuantModel, Variant};
use hedge::model::synth;
use std::time::Duration;

fn decryption(c: &mut Criterion) {
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
    let mut group = c.benchmark_group("decrypt_128");
    for variant in [Variant::Last, Variant::Noact, Variant::Act] {
        let activation = (variant != Variant::Noact).then_some(Activation::Relu);
        let model = synth::classifier(42, &task, 512, activation);
        let q = QuantModel::quantize(&model, variant, None, &calibration, &params)
            .expect("the fixed-seed model quantises");
        let (encrypted, checks) = EncryptedModel::encrypt(&q, &ks.secret).expect("encrypts");
        let decoding = Decoding::new(&q, &params, ks.secret.key_id, &checks)
            .and_then(|d| d.refusing(&encrypted))
            .expect("decoding");
        let mut engine = EdgeEngine::new(
            ModelInfo::of(&q),
            params,
            ks.secret.key_id,
            &edge_keys,
            &encrypted,
        )
        .expect("engine");
        let result = engine.infer_plain(&input).expect("inference");
        decrypt(&result, &decoding, &ks.secret).expect("a genuine result passes");
        group.bench_function(BenchmarkId::new("phases", variant.name()), |b| {
            b.iter(|| phases(&result, &decoding, &ks.secret).unwrap())
        });
        group.bench_function(BenchmarkId::new("checked", variant.name()), |b| {
            b.iter(|| decrypt(&result, &decoding, &ks.secret).unwrap())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = decryption
}
criterion_main!(benches);
