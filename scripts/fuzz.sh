#!/usr/bin/env bash
# Fuzz every parser of outside input with libFuzzer, on the stable toolchain (coverage
# instrumentation through -Cpasses=sancov-module; no sanitizer: the code is safe Rust, and
# debug assertions and overflow checks are on). Grows fuzz/corpus/TARGET, then minimises it.
#   scripts/fuzz.sh [RUNS] [TARGET...]     default: 1000000 runs, every target
# Crashes land in fuzz/artifacts/TARGET/; replay one with
#   HEDGE_FUZZ_TARGET=TARGET target/fuzz/x86_64-unknown-linux-gnu/release/hedge-fuzz fuzz/artifacts/TARGET/crash-…
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1000000}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frames encrypted_features result_message ack deploy_offer deploy_messages bundle
  signed_bundle settings idx image onnx vector_line)

cargo test --release --test fuzz_corpus -- --ignored write_seeds >/dev/null
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps the instrumentation out of build scripts and proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --manifest-path fuzz/Cargo.toml --target-dir target/fuzz --target "$host"
bin=target/fuzz/$host/release/hedge-fuzz

for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  echo "=== $t ($(date +%T))"
  # A genuine result message (the seed) is 64 KB and more: let the fuzzer keep it whole.
  case $t in result_message) max_len=262144 ;; *) max_len=65536 ;; esac
  HEDGE_FUZZ_TARGET=$t "$bin" "fuzz/corpus/$t" -runs="$runs" -max_len=$max_len \
    -rss_limit_mb=2048 -timeout=1 -artifact_prefix="fuzz/artifacts/$t/" \
    -print_final_stats=1 2>&1 | grep -E "^(stat::|#[0-9]+ +DONE|==|SUMMARY|.*panicked)" || true
  # Keep the smallest set of inputs with the same coverage.
  rm -rf "fuzz/corpus/$t.min" && mkdir "fuzz/corpus/$t.min"
  HEDGE_FUZZ_TARGET=$t "$bin" -merge=1 "fuzz/corpus/$t.min" "fuzz/corpus/$t" 2>/dev/null
  rm -rf "fuzz/corpus/$t" && mv "fuzz/corpus/$t.min" "fuzz/corpus/$t"
  echo "corpus: $(ls "fuzz/corpus/$t" | wc -l) inputs, $(du -sh "fuzz/corpus/$t" | cut -f1)"
  ls "fuzz/artifacts/$t" | sed 's/^/artifact: /'
done
