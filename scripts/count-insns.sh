#!/usr/bin/env bash
# Count the guest instructions one activation step (key switch + classic blind rotation at the
# 128-bit set) executes, with a tiny qemu TCG plugin: the difference between runs of
# examples/pbs_cost with 1 and 4 repetitions, divided by 3, so set-up costs cancel.
#   scripts/count-insns.sh            x86-64 AVX2 path, aarch64 (and x86-64 scalar, if built)
#   scripts/count-insns.sh --by-function
#                                     the same step split by function (symbols of each binary),
#                                     x86-64 and aarch64 side by side
# Needs: gcc, qemu-user (7.2: plugin API version 1), the example built for both targets:
#   cargo build --release --example pbs_cost
#   cargo build --release --example pbs_cost --target aarch64-unknown-linux-musl
# The x86-64 build targets x86-64-v3 (.cargo/config.toml), so its scalar path needs a baseline
# build of its own (optional):
#   RUSTFLAGS="-C target-cpu=x86-64" CARGO_TARGET_DIR=target/x86-64-baseline \
#     cargo build --release --example pbs_cost
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/qemu-insn
mkdir -p "$dir"
cat > "$dir/insn.c" <<'C'
/* Counts executed guest instructions (an inline add per translated block) and prints the
   total at exit; with the argument out=FILE it also writes each block's count by guest
   address to FILE (for --by-function). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, struct qemu_plugin_tb *));
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, enum qemu_plugin_op, void *, uint64_t);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, void *), void *);
__attribute__((visibility("default"))) int qemu_plugin_version = 1;
struct block { uint64_t vaddr, count; struct block *next; };
static struct block *blocks;
static uint64_t count;
static char out[4096];
static void on_tb(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  size_t n = qemu_plugin_tb_n_insns(tb);
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &count, n);
  if (out[0]) {
    struct block *b = calloc(1, sizeof *b);
    b->vaddr = qemu_plugin_tb_vaddr(tb); b->next = blocks; blocks = b;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->count, n);
  }
}
static void at_end(qemu_plugin_id_t id, void *p) {
  (void)id; (void)p;
  fprintf(stderr, "insns: %llu\n", (unsigned long long)count);
  if (!out[0]) return;
  FILE *f = fopen(out, "w");
  for (struct block *b = blocks; b; b = b->next) if (b->count) fprintf(f, "%llx %llu\n", (unsigned long long)b->vaddr, (unsigned long long)b->count);
  fclose(f);
}
__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv) {
  (void)info;
  if (argc > 0 && strncmp(argv[0], "out=", 4) == 0) snprintf(out, sizeof out, "%s", argv[0] + 4);
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb);
  qemu_plugin_register_atexit_cb(id, at_end, NULL);
  return 0;
}
C
gcc -O2 -shared -fPIC -o "$dir/libinsn.so" "$dir/insn.c"

count() { # emulator, args… → instructions of the whole run
  "$@" 2>&1 >/dev/null | sed -n 's/^insns: //p'
}
step() { # label, emulator and its options, binary
  local label="$1"; shift
  local one four
  one=$(count "$@" --classic-only --reps 1)
  four=$(count "$@" --classic-only --reps 4)
  printf '%-34s %6.1f M instructions per activation step\n' "$label" "$(echo "($four - $one) / 3 / 1000000" | bc -l)"
}
x86=target/release/examples/pbs_cost
arm=target/aarch64-unknown-linux-musl/release/examples/pbs_cost
baseline=target/x86-64-baseline/release/examples/pbs_cost
if [ "${1:-}" = --by-function ]; then
  # The plugin's per-block counts, symbolised below by the difference of 4 and 1 repetitions.
  profile() { # label, nm, qemu and its options (the binary last)
    local label="$1" nm="$2"; shift 2
    local bin="${*: -1}"
    local q=("${@:1:$#-1}")
    "${q[0]}" -plugin "$dir/libinsn.so,out=$dir/one.txt" "${q[@]:1}" "$bin" --classic-only --reps 1 >/dev/null 2>&1
    "${q[0]}" -plugin "$dir/libinsn.so,out=$dir/four.txt" "${q[@]:1}" "$bin" --classic-only --reps 4 >/dev/null 2>&1
    echo "== $label"
    python3 - "$nm" "$bin" "$dir/one.txt" "$dir/four.txt" <<'PY'
import bisect, collections, re, subprocess, sys
nm, binary, one, four = sys.argv[1:]
symbols = sorted(
    (int(f[0], 16), re.sub(r"::h[0-9a-f]{16}$", "", f[2]))
    for f in (l.split(" ", 2) for l in subprocess.run(
        [nm, "-C", "--defined-only", "-n", binary], capture_output=True, text=True).stdout.splitlines())
    if len(f) == 3 and f[1] in "tTwW")
starts = [a for a, _ in symbols]
def blocks(path):
    return [(int(a, 16), int(c)) for a, c in (l.split() for l in open(path) if l.strip())]
def by_function(path, base):
    total = collections.Counter()
    for a, c in blocks(path):
        i = bisect.bisect_right(starts, a - base) - 1
        if i >= 0 and a - base <= starts[-1]:
            total[symbols[i][1]] += c
    return total
# The load address (0 for a static binary, qemu's choice for a PIE): functions begin blocks, so
# the right page-aligned shift makes the most hot blocks start exactly at a symbol.
hot = [a for a, _ in sorted(blocks(four), key=lambda b: -b[1])[:2000]]
by_page = collections.defaultdict(list)
for s in starts:
    by_page[s & 0xfff].append(s)
candidates = {a - s for a in hot[:50] for s in by_page[a & 0xfff]}
symbol_set = set(starts)
base = max(candidates | {0}, key=lambda b: sum(a - b in symbol_set for a in hot))
d = by_function(four, base)
d.subtract(by_function(one, base))
step = {k: v / 3 for k, v in d.items() if v > 0}
total = sum(step.values())
print(f"{total / 1e6:8.1f} M instructions per step")
for name, v in sorted(step.items(), key=lambda kv: -kv[1])[:8]:
    print(f"{v / 1e6:8.1f} M {100 * v / total:5.1f} %  {name[:110]}")
PY
  }
  profile "x86-64, tfhe-fft AVX2+FMA kernels" nm qemu-x86_64 -cpu Haswell-v4 "$x86"
  profile "aarch64, portable FFT (LLVM's NEON)" aarch64-linux-gnu-nm qemu-aarch64 "$arm"
  exit 0
fi
step "x86-64, tfhe-fft AVX2+FMA kernels" qemu-x86_64 -plugin "$dir/libinsn.so" -cpu Haswell-v4 "$x86"
if [ -x "$baseline" ]; then
  step "x86-64, scalar FFT (no AVX2)"    qemu-x86_64 -plugin "$dir/libinsn.so" -cpu Haswell-v4,-avx2,-fma "$baseline"
fi
step "aarch64, portable FFT (LLVM's NEON)" qemu-aarch64 -plugin "$dir/libinsn.so" "$arm"
