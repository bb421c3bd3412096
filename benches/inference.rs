//! Criterion timings of what the edge does per input, on the paper's shape (2304→512→10,
//! the fixed-seed model of `hedge bench`), 128-bit set, one thread: every variant with
//! plaintext features, and with features encrypted on the edge (encryption included, as in
//! `hedge bench`'s `infer_ms`). `hedge bench` adds peak memory, model sizes, noise margins and
//! correctness; this adds confidence intervals.
//!   cargo bench --bench inference [-- FILTER]     (e.g. `-- last`; the act cells take minutes)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hedge::crypto::keys;
use hedge::crypto::params::{ParameterSet, SecurityLevel};
use hedge::engine::synthetic::{Protected, Task};
use hedge::model::quant::Variant;
use hedge::model::synth;
use std::time::Duration;

fn inference(c: &mut Criterion) {
    let params = ParameterSet::for_level(SecurityLevel::L128);
    let ks = keys::generate(params);
    let task = Task::paper();
    let input = task.task.samples(42 + synth::BENCH_STREAM, 1).remove(0).0;

    let mut group = c.benchmark_group("inference_128");
    for variant in [Variant::Last, Variant::Noact, Variant::Act] {
        let mut engine = Protected::new(&ks, params, task.model(variant, &params)).engine;
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
