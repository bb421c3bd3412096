#!/usr/bin/env bash
# Count the guest instructions one activation step (key switch + classic blind rotation at the
# 128-bit set) executes, with a tiny qemu TCG plugin: the difference between runs of
# examples/pbs_cost with 1 and 4 repetitions, divided by 3, so set-up costs cancel.
#   scripts/count-insns.sh            x86-64 AVX2 path, aarch64 (and x86-64 scalar, if built)
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
/* Counts executed guest instructions: an inline add per translated block. */
#include <stdint.h>
#include <stdio.h>
#include <stddef.h>
typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, struct qemu_plugin_tb *));
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, enum qemu_plugin_op, void *, uint64_t);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, void *), void *);
__attribute__((visibility("default"))) int qemu_plugin_version = 1;
static uint64_t count;
static void on_tb(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &count, qemu_plugin_tb_n_insns(tb));
}
static void on_exit(qemu_plugin_id_t id, void *p) { (void)id; (void)p; fprintf(stderr, "insns: %llu\n", (unsigned long long)count); }
__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv) {
  (void)info; (void)argc; (void)argv;
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb);
  qemu_plugin_register_atexit_cb(id, on_exit, NULL);
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
step "x86-64, tfhe-fft AVX2+FMA kernels" qemu-x86_64 -plugin "$dir/libinsn.so" -cpu Haswell-v4 "$x86"
if [ -x "$baseline" ]; then
  step "x86-64, scalar FFT (no AVX2)"    qemu-x86_64 -plugin "$dir/libinsn.so" -cpu Haswell-v4,-avx2,-fma "$baseline"
fi
step "aarch64, scalar FFT (no NEON)"     qemu-aarch64 -plugin "$dir/libinsn.so" "$arm"
