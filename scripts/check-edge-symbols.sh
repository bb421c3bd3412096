#!/usr/bin/env bash
# The boards' build holds no secret-key code: no key generation, no encryption of a model
# under the secret keys, no decoding, check outputs or decryption of results, no backend or
# test support. Fails if BINARY's symbol table names any of it (run on the unstripped build;
# the packages strip their copies). `--expect-some BINARY` checks the opposite on a backend
# binary, so that the patterns are known to match what they look for.
#   usage: scripts/check-edge-symbols.sh target/aarch64-unknown-linux-musl/release/hedged
#          scripts/check-edge-symbols.sh --expect-some target/release/hedge
set -euo pipefail
expect_some=false
if [ "${1:-}" = --expect-some ]; then expect_some=true; shift; fi
bin=${1:?usage: check-edge-symbols.sh [--expect-some] BINARY}
nm=nm
command -v aarch64-linux-gnu-nm >/dev/null 2>&1 && nm=aarch64-linux-gnu-nm
patterns='hedge::engine::(decrypt|encrypt)::|hedge::crypto::keys::(generate|SecretKeys)|hedge::crypto::pke::PublicKey::generate|EncryptedMatrix>?::encrypt|EncryptedGgswRows>?::encrypt|EncryptedLuts>?::encrypt|hedge::crypto::encrypt_seeded_glwes|hedge::(backend|report|fuzz)::|lwe_encryption::decrypt_lwe_ciphertext|generate_new_binary_glwe_secret_key'
syms=$("$nm" -C "$bin")
[ -n "$syms" ] || { echo "check-edge-symbols: $bin has no symbol table (stripped?)" >&2; exit 1; }
found=$(grep -E "$patterns" <<<"$syms" | sed 's/^[0-9a-f]* [A-Za-z] //' | sort -u || true)
if $expect_some; then
  [ -n "$found" ] || { echo "check-edge-symbols: no backend symbol in $bin: the patterns are stale" >&2; exit 1; }
  echo "check-edge-symbols: $bin has $(wc -l <<<"$found") backend symbols, as a backend binary should"
elif [ -n "$found" ]; then
  echo "check-edge-symbols: $bin holds backend or secret-key code:" >&2
  head -20 <<<"$found" >&2
  exit 1
else
  echo "check-edge-symbols: $bin holds no secret-key code ($(wc -l <<<"$syms") symbols checked)"
fi
