#!/usr/bin/env bash
# Check that binaries start on a Jetson TX2's system (JetPack 4.x = Ubuntu 18.04, glibc 2.27):
# static binaries pass; dynamic ones must need no symbol version newer than GLIBC_2.27.
#   scripts/check-glibc.sh BINARY...      (MAX_GLIBC=2.31 to check against another release)
set -euo pipefail
max="${MAX_GLIBC:-2.27}"
status=0
for bin in "$@"; do
  if ! readelf -h "$bin" >/dev/null 2>&1; then
    echo "$bin: not an ELF file" >&2
    status=1
    continue
  fi
  machine=$(readelf -h "$bin" | sed -n 's/ *Machine: *//p')
  # Here-strings, not pipes: with pipefail, `grep -q` exiting early SIGPIPEs the writer and
  # the pipeline reports failure on a match.
  if ! grep -q INTERP <<<"$(readelf -l "$bin")" && ! grep -q NEEDED <<<"$(readelf -d "$bin" 2>/dev/null)"; then
    echo "$bin ($machine): statically linked, needs no glibc: ok"
    continue
  fi
  objdump=objdump
  if [ "$machine" = AArch64 ] && command -v aarch64-linux-gnu-objdump >/dev/null; then
    objdump=aarch64-linux-gnu-objdump
  fi
  need=$($objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V -u | tail -1)
  if [ -z "$need" ]; then
    echo "$bin ($machine): no versioned glibc symbols: ok"
  elif [ "$(printf '%s\n%s\n' "$need" "$max" | sort -V | tail -1)" = "$max" ]; then
    echo "$bin ($machine): needs glibc $need <= $max: ok"
  else
    echo "$bin ($machine): needs glibc $need, newer than $max:" >&2
    grep -m5 "GLIBC_$need" <<<"$($objdump -T "$bin")" >&2 || true
    status=1
  fi
done
exit $status
