#!/usr/bin/env bash
# Deployment figures on loopback, with the real binaries and mosquitto: transfer time and
# broker bytes for a full `act` bundle and for a model update (the board holds the key set),
# and `act` inference latency idle versus while a rate-limited transfer runs beside it.
#
#   scripts/deploy-bench.sh [SHAPE] [INPUTS]      (after cargo build --release)
#
# SHAPE is the classifier (default the paper's 2304,512,10); INPUTS the inferences timed idle
# and during the transfer (default 3). Transfer time is from `hedge deploy` to the board's
# "active" (fetch, SHA-256 checks, signature, test load, swap); broker bytes are mosquitto's
# $SYS/broker/bytes/sent over the transfer (chunks to the board, plus the few small messages).
set -euo pipefail
cd "$(dirname "$0")/.."
shape=${1:-2304,512,10}
inputs=${2:-3}
H=$PWD/target/release/hedge
D=$PWD/target/release/hedged
w=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$w"' EXIT
port=$((20000 + RANDOM % 20000))
printf 'listener %s 127.0.0.1\nallow_anonymous true\nsys_interval 1\n' "$port" >"$w/mq.conf"
mosquitto -c "$w/mq.conf" >/dev/null 2>&1 &
broker=127.0.0.1:$port
sleep 0.5
keys=$w/keys
"$H" keygen --out "$keys" --quiet >/dev/null
for i in 1 2 3 4; do
  "$H" synth --out "$w/s$i" --seed "$i" --shape "$shape" --test 12 --calibration 100 >/dev/null
  "$H" protect --model "$w/s$i/model.onnx" --calibration "$w/s$i/calibration.txt" \
    --keys "$keys" --variant act --out "$w/v$i.bundle" --quiet >/dev/null 2>&1
done
board=(--bundle "$w/v1.bundle" --verifying-key "$keys/verifying.key" --spool-dir "$w/spool"
  --device-id board --broker "$broker")
key=$("$D" "${board[@]}" --input - --print-identity 2>/dev/null)
"$H" device --keys "$keys" add board --key "$key" >/dev/null
"$H" decrypt --keys "$keys" --subscribe "$broker" --client-id dec --output "$w/out.jsonl" \
  2>/dev/null &
mkfifo "$w/in"
RUST_LOG=info "$D" "${board[@]}" --input "$w/in" 2>"$w/board.log" &
exec 3>"$w/in"

sent() { mosquitto_sub -p "$port" -t '$SYS/broker/bytes/sent' -C 1 -W 5; }
results() { [ -f "$w/out.jsonl" ] && wc -l <"$w/out.jsonl" || echo 0; }
feed() { # N lines of test set $1
  head -n "$2" "$w/s$1/test.txt" | sed 's/^[^:]*: //' >&3
}
wait_results() { while [ "$(results)" -lt "$1" ]; do sleep 0.2; done; }
mean_infer() { # mean infer_ms of result lines $1..$2
  sed -n "$1,$2p" "$w/out.jsonl" | python3 -c 'import sys, json
v = [json.loads(l)["infer_ms"] for l in sys.stdin]
print(f"{sum(v) / len(v):.0f} ms (n={len(v)}: " + ", ".join(f"{x:.0f}" for x in v) + ")")'
}
deployed() { # deploy bundle $1 (flags $2…), wait for active; prints seconds and bytes
  local before after t0 t1 n
  before=$(sent)
  t0=$(date +%s.%N)
  n=$("$H" deploy --keys "$keys" --bundle "$1" --device board --broker "$broker" "${@:2}" |
    sed -n 's/^deployment \([0-9]*\):.*/\1/p')
  until "$H" deploy --keys "$keys" status --deployment "$n" | awk 'NR > 1 {print $5}' |
    grep -qx active; do sleep 0.1; done
  t1=$(date +%s.%N)
  sleep 2.5 # $SYS is refreshed every second
  after=$(sent)
  "$H" deploy --keys "$keys" status --deployment "$n" | awk 'NR > 1 {print "  payload " $3 ", " $4 " bytes"}'
  echo "  transfer to active: $(python3 -c "print(f'{$t1 - $t0:.2f}')") s; broker bytes sent: $((after - before))"
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "shape $shape, act, 128-bit; bundle $(stat -c %s "$w/v2.bundle") bytes"
"$H" deploy --keys "$keys" serve --broker "$broker" >/dev/null 2>&1 &
agent=$!
feed 1 "$inputs"
wait_results "$inputs"
echo "idle act inference: $(mean_infer 1 "$inputs")"

echo "full bundle, no rate limit:"
deployed "$w/v2.bundle" --full
"$H" fleet --keys "$keys" --broker "$broker" --listen 2 >/dev/null 2>&1
echo "model update (the board holds the key set):"
deployed "$w/v3.bundle"

# A transfer long enough to overlap the inferences: the bundle over about 10 s per input.
size=$(stat -c %s "$w/v4.bundle")
rate=$((size / (10 * inputs)))
kill "$agent"
wait "$agent" 2>/dev/null || true
"$H" deploy --keys "$keys" serve --broker "$broker" --rate "$rate" >/dev/null 2>&1 &
echo "full bundle at $rate bytes/s, $inputs inference(s) during the transfer:"
feed 2 "$inputs" &
deployed "$w/v4.bundle" --full
wait_results $((2 * inputs))
echo "act inference during the transfer: $(mean_infer $((inputs + 1)) $((2 * inputs)))"
grep -h "deployment [0-9]*: \(fetching\|active\|verifying\)" "$w/board.log" | sed 's/^/  board: /'
