#!/usr/bin/env bash
# Build hedged for the edge boards (aarch64), without Docker: the Rust target plus Debian's
# gcc-aarch64-linux-gnu as linker (.cargo/config.toml). The musl target links statically, so
# the binary needs no glibc at all and starts on JetPack 4.x (glibc 2.27). Only the edge:
# --no-default-features leaves the backend (keys, protection, decryption) out of the build.
#   needs: rustup target add aarch64-unknown-linux-musl; apt-get install gcc-aarch64-linux-gnu
#   then:  scripts/check-glibc.sh target/aarch64-unknown-linux-musl/release/hedged
#   tests: cargo test --release --target aarch64-unknown-linux-musl --no-default-features --lib
#          (qemu-aarch64 runs them)
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-musl
if ! grep -qx "$target" <<<"$(rustup target list --installed)"; then
  echo "build-aarch64: missing Rust target: rustup target add $target" >&2
  exit 1
fi
if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  echo "build-aarch64: missing linker: apt-get install gcc-aarch64-linux-gnu" >&2
  exit 1
fi
cargo build --release --target "$target" --no-default-features --bin hedged "$@"
scripts/check-glibc.sh "target/$target/release/hedged"
