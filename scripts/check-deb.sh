#!/usr/bin/env bash
# Install a hedge .deb with dpkg (as root), check the installed layout, then purge it.
#   scripts/check-deb.sh target/debian/hedge_*_amd64.deb
set -euo pipefail
deb="$1"
fail() { echo "check-deb: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "must run as root (dpkg -i)"
dpkg -i "$deb" >/dev/null
trap 'dpkg --purge hedge >/dev/null 2>&1 || true' EXIT
for f in /usr/bin/hedge /usr/bin/hedged /usr/bin/hedge-send; do
  [ -x "$f" ] || fail "$f missing or not executable"
done
[ -f /etc/hedge/hedged.toml ] || fail "/etc/hedge/hedged.toml missing"
grep -qx /etc/hedge/hedged.toml /var/lib/dpkg/info/hedge.conffiles || fail "config is not a conffile"
unit=$(dpkg -L hedge | grep '/systemd/system/hedged.service$') || fail "unit missing"
grep -q '^Type=notify' "$unit" || fail "$unit is not the shipped unit"
getent passwd hedge >/dev/null || fail "system user hedge missing"
[ "$(stat -c %U:%a /var/lib/hedge)" = hedge:750 ] || fail "/var/lib/hedge: $(stat -c %U:%a /var/lib/hedge)"
[ "$(stat -c %U:%a /var/lib/hedge/spool)" = hedge:750 ] || fail "spool dir: $(stat -c %U:%a /var/lib/hedge/spool)"
[ "$(stat -c %G:%a /etc/hedge/hedged.toml)" = hedge:640 ] || fail "config: $(stat -c %G:%a /etc/hedge/hedged.toml)"
[ "$(stat -c %G:%a /etc/hedge)" = hedge:750 ] || fail "/etc/hedge: $(stat -c %G:%a /etc/hedge)"
/usr/bin/hedged --version >/dev/null || fail "hedged does not run"
# The installed daemon refuses to start without its bundle, with a clear message.
out=$(/usr/bin/hedged --config /etc/hedge/hedged.toml 2>&1) && fail "hedged started without a bundle"
grep -q "verifying.key\|model.bundle" <<<"$out" || fail "unclear start-up error: $out"
dpkg --purge hedge >/dev/null
trap - EXIT
! getent passwd hedge >/dev/null || fail "purge left the user"
[ ! -e /usr/bin/hedged ] || fail "purge left /usr/bin/hedged"
echo "check-deb: $deb installs, lays out and purges cleanly"
