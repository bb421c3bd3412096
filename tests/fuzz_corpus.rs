//! The fuzz targets' committed corpora (fuzz/corpus/TARGET, grown and minimised by
//! scripts/fuzz.sh) and their seeds, replayed through the same entry points: every input a
//! fuzzer found interesting stays a regression test.

use std::path::Path;

#[test]
fn every_corpus_input_and_seed_is_handled_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = 0;
    for (name, target) in hedge::fuzz::TARGETS {
        let dir = root.join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            panic!("no corpus for target {name} in {}", dir.display());
        };
        for entry in entries {
            let path = entry.unwrap().path();
            target(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    for (name, input) in hedge::fuzz::seeds() {
        let (_, target) = hedge::fuzz::TARGETS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap();
        target(&input);
    }
    assert!(replayed >= hedge::fuzz::TARGETS.len(), "{replayed} inputs");
}

/// Writes the seeds into fuzz/corpus (scripts/fuzz.sh runs it before fuzzing).
#[test]
#[ignore]
fn write_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (i, (name, input)) in hedge::fuzz::seeds().into_iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{i:02}")), input).unwrap();
    }
}
