//! Criterion timings of the backend's decryption of one result, on the paper's shape
//! (2304→512→10, the fixed-seed model of `hedge bench`), 128-bit set, one thread: the raw
//! phases against the full `engine::decrypt` with its refusal checks (shape, masks, the
//! bundle's own ciphertexts, noise and range), to show what the checks cost, and the same from
//! the result's bytes on the wire (unpacking its switched words first).
//!   cargo bench --bench decrypt [-- FILTER]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hedge::crypto::keys;
use hedge::crypto::params::{ParameterSet, SecurityLevel};
use hedge::engine::synthetic::{Protected, Task};
use hedge::engine::{decrypt, phases, ResultCiphertext};
use hedge::model::quant::Variant;
use hedge::model::synth;
use std::time::Duration;

fn decryption(c: &mut Criterion) {
    let params = ParameterSet::for_level(SecurityLevel::L128);
    let ks = keys::generate(params);
    let task = Task::paper();
    let input = task.task.samples(42 + synth::BENCH_STREAM, 1).remove(0).0;
    let mut group = c.benchmark_group("decrypt_128");
    for variant in [Variant::Last, Variant::Noact, Variant::Act] {
        let Protected {
            decoding,
            mut engine,
            ..
        } = Protected::new(&ks, params, task.model(variant, &params));
        let result = engine.infer_plain(&input).expect("inference");
        decrypt(&result, &decoding, &ks.secret).expect("a genuine result passes");
        group.bench_function(BenchmarkId::new("phases", variant.name()), |b| {
            b.iter(|| phases(&result, &decoding, &ks.secret).unwrap())
        });
        group.bench_function(BenchmarkId::new("checked", variant.name()), |b| {
            b.iter(|| decrypt(&result, &decoding, &ks.secret).unwrap())
        });
        let wire = postcard::to_allocvec(&result).expect("serialises");
        group.bench_function(BenchmarkId::new("from_wire", variant.name()), |b| {
            b.iter(|| {
                let r: ResultCiphertext = postcard::from_bytes(&wire).unwrap();
                decrypt(&r, &decoding, &ks.secret).unwrap()
            })
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
