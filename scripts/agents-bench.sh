#!/usr/bin/env bash
# Decryption agents against a simulated fleet: for each agent count, a fresh mosquitto, that
# many `hedge decrypt` agents in one shared subscription on one registry (SQLite, or a
# PostgreSQL started here with fsync on), and `hedge loadgen` with BOARDS boards × RESULTS
# results as fast as the acknowledgements allow. Prints one line per agent count: its
# loadgen JSON (results_per_s is end to end: publish → durable acknowledgement).
#   scripts/agents-bench.sh [sqlite|postgres] [AGENTS...]
#   e.g. BOARDS=1000 RESULTS=20 scripts/agents-bench.sh postgres 1 2 4
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-sqlite}
shift || true
counts=("${@:-1 2 4}")
# shellcheck disable=SC2206
counts=(${counts[*]})
BOARDS=${BOARDS:-1000}
RESULTS=${RESULTS:-20}
WINDOW=${WINDOW:-8}
cargo build --release --quiet --bin hedge
hedge=$PWD/target/release/hedge
work=$(mktemp -d /tmp/hedge-agents-XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [[ -n ${pg_stop:-} ]]; then eval "$pg_stop" >/dev/null 2>&1 || true; fi
  [[ -n ${KEEP:-} ]] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

as_postgres() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

registry_for() { # $1: a name → a registry location
  if [[ $store == postgres ]]; then
    psql -q -h 127.0.0.1 -p "$pg_port" -U hedge -d postgres -c "CREATE DATABASE $1" >/dev/null
    echo "postgres://hedge@127.0.0.1:$pg_port/$1"
  else
    echo "$work/$1.sqlite"
  fi
}

if [[ $store == postgres ]]; then
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  [[ $(id -u) == 0 ]] && chown postgres "$work"
  as_postgres "$bin/initdb" -D "$work/pg" -A trust -U hedge >/dev/null
  pg_port=$(port)
  as_postgres "$bin/postgres" -D "$work/pg" -p "$pg_port" -k "$work" \
    -c listen_addresses=127.0.0.1 -c max_connections=200 >"$work/pg.log" 2>&1 &
  pids+=($!)
  pg_stop="as_postgres $bin/pg_ctl -D $work/pg -m fast -w stop"
  until psql -q -h 127.0.0.1 -p "$pg_port" -U hedge -d postgres -c 'SELECT 1' >/dev/null 2>&1; do sleep 0.2; done
fi

"$hedge" --quiet keygen --out "$work/keys" >/dev/null 2>&1
"$hedge" --quiet synth --out "$work/synth" --seed 1 --shape 48,16,10 --calibration 60 --test 10 >/dev/null
for n in "${counts[@]}"; do
  registry=$(registry_for "agents$n")
  "$hedge" --quiet --registry "$registry" protect --model "$work/synth/model.onnx" \
    --keys "$work/keys" --variant last --calibration "$work/synth/calibration.txt" \
    --out "$work/last.bundle" >/dev/null 2>&1
  mq=$work/mq$n
  mkdir -p "$mq"
  mq_port=$(port)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n%s' \
    "$mq_port" "$([[ $(id -u) == 0 ]] && echo 'user root')" >"$mq/m.conf"
  mosquitto -c "$mq/m.conf" >"$mq/log" 2>&1 &
  mq_pid=$!
  pids+=("$mq_pid")
  sleep 0.5
  agents=()
  for i in $(seq 1 "$n"); do
    RUST_LOG=warn "$hedge" --registry "$registry" decrypt --keys "$work/keys" \
      --subscribe "127.0.0.1:$mq_port" --client-id "agent-$i" \
      --topic '$share/agents/hedge/+/results' --output "$mq/agent-$i.jsonl" \
      2>"$mq/agent-$i.log" &
    agents+=($!)
    pids+=($!)
  done
  sleep 1
  line=$(/usr/bin/time -f %U+%S -o "$mq/loadgen.time" "$hedge" --registry "$registry" loadgen --keys "$work/keys" --bundle "$work/last.bundle" \
    --broker "127.0.0.1:$mq_port" --boards "$BOARDS" --results "$RESULTS" --window "$WINDOW" \
    2>"$mq/loadgen.log" | tail -1)
  bc <<<"$(cat "$mq/loadgen.time")" >"$mq/loadgen.cpu"
  cpu() { ps -o times= -p "$@" 2>/dev/null | paste -sd+ | bc; }
  pg_cpu=$([[ $store == postgres ]] && ps -o times= -u postgres | paste -sd+ | bc || echo 0)
  echo "$store agents=$n $line"
  echo "  cpu seconds: agents $(cpu "${agents[@]}"), mosquitto $(ps -o times= -C mosquitto | paste -sd+ | bc), postgres $pg_cpu, loadgen $(cat "$mq/loadgen.cpu")"
  kill "${agents[@]}" "$mq_pid" 2>/dev/null || true
  wait "${agents[@]}" "$mq_pid" 2>/dev/null || true
done
