#!/usr/bin/env bash
# The load-and-fault tests of tests/load.rs at a size of your choosing, over mosquitto with
# persistence; fails if any result is lost or written twice.
#
# Real daemons: DEVICES `hedged` each publishing RESULTS results over SECONDS, the broker
# restarted BROKER_RESTARTS times and the decryptor killed (SIGKILL) DECRYPTOR_KILLS times,
# mosquitto_sub as the control consumer.
#   scripts/soak.sh [DEVICES] [RESULTS] [SECONDS] [BROKER_RESTARTS] [DECRYPTOR_KILLS]
#   e.g. scripts/soak.sh 8 2000 300 6 3
#
# The generator: `hedge loadgen` simulating BOARDS boards × RESULTS results (RATE results/s
# in all, 0 = as fast as acknowledgements allow) to AGENTS decryption agents on one shared
# subscription, the broker restarted BROKER_RESTARTS times and an agent killed (SIGKILL,
# started again on its output) AGENT_KILLS times, a fault every FAULT_EVERY seconds.
#   scripts/soak.sh --fleet [BOARDS] [RESULTS] [RATE] [AGENTS] [BROKER_RESTARTS] [AGENT_KILLS] [FAULT_EVERY]
#   e.g. scripts/soak.sh --fleet 1000 100 0 2 4 4 10
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --fleet ]; then
  shift
  export SOAK_BOARDS=${1:-1000} SOAK_RESULTS=${2:-20} SOAK_RATE=${3:-0} SOAK_AGENTS=${4:-2}
  export SOAK_BROKER_RESTARTS=${5:-2} SOAK_AGENT_KILLS=${6:-2} SOAK_FAULT_EVERY=${7:-5}
  test=soak_fleet
else
  export SOAK_DEVICES=${1:-8} SOAK_RESULTS=${2:-2000} SOAK_SECONDS=${3:-120}
  export SOAK_BROKER_RESTARTS=${4:-4} SOAK_DECRYPTOR_KILLS=${5:-2}
  test=soak
fi
cargo test --release --test load "$test" -- --exact --ignored --nocapture 2>&1 |
  grep -E '^soak:|test result|panicked'
