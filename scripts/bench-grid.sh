#!/usr/bin/env bash
# The paper's full grid (3 variants x 2 feature modes x 3 security levels) at 2304->512->10,
# one JSON object per cell in docs/bench-128-192-256.jsonl. Takes ~15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin hedge
out=${1:-docs/bench-128-192-256.jsonl}
{
  echo "# $(date -u +%FT%TZ) $(uname -m) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(nproc) cores)"
  echo "# ./target/release/hedge bench --json --plaintext --inputs ${INPUTS:-20} --act-inputs ${ACT_INPUTS:-3}"
  ./target/release/hedge bench --json --plaintext --inputs "${INPUTS:-20}" --act-inputs "${ACT_INPUTS:-3}" || true
} | tee "$out"
