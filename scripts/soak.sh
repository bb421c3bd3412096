#!/usr/bin/env bash
# The load-and-fault test of tests/load.rs at a size of your choosing: DEVICES daemons each
# publishing RESULTS results over SECONDS to mosquitto (with persistence), the broker
# restarted BROKER_RESTARTS times and the decryptor killed (SIGKILL) DECRYPTOR_KILLS times,
# mosquitto_sub as the control consumer. Prints devices, results, faults, lost, duplicates
# and results per second at the decryptor; fails if any result is lost or accepted twice.
#   scripts/soak.sh [DEVICES] [RESULTS] [SECONDS] [BROKER_RESTARTS] [DECRYPTOR_KILLS]
#   e.g. scripts/soak.sh 8 2000 300 6 3
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_DEVICES=${1:-8} SOAK_RESULTS=${2:-2000} SOAK_SECONDS=${3:-120}
export SOAK_BROKER_RESTARTS=${4:-4} SOAK_DECRYPTOR_KILLS=${5:-2}
cargo test --release --test load soak -- --ignored --nocapture 2>&1 | grep -E '^soak:|test result|panicked'
