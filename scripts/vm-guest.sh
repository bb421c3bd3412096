#!/bin/bash
# The guest half of scripts/vm-test.sh, run as root by hedge-vm-test.service at every boot of
# the test VM. It does what a person installing a board would, and checks what systemd and
# the package promise. The host's files are in /mnt/host (9p): the package (hedge.deb), two
# bundles, the backend's verifying key, feature vectors, host.env; this script writes its
# progress to guest.log there and its outcome, "GUEST OK figures…" or "FAIL check: why", to
# guest.result, then powers the VM off. Its phase survives the reboot in /var/lib/vm-test.
set -uo pipefail
share=/mnt/host
state=/var/lib/vm-test
mkdir -p "$state"
# shellcheck source=/dev/null
. "$share/host.env" # PORT (the host's mosquitto), SLOW (a factor on every wait: 1 with KVM)
config=/etc/hedge/hedged.toml
sock=/run/hedge/features.sock
spool=/var/lib/hedge/spool

log() { echo "vm: $*" | tee -a "$share/guest.log"; }
fail() {
  log "FAIL $*"
  {
    echo "--- systemctl status hedged"
    systemctl status hedged --no-pager 2>&1 | tail -20
    echo "--- journalctl -u hedged"
    journalctl -u hedged --no-pager -b 2>&1 | tail -60
  } >>"$share/guest.log"
  echo "FAIL $*" >"$share/guest.result"
  sync
  systemctl poweroff
  exit 1
}
figure() { echo "$1=$2" >>"$state/figures"; }
now() { cut -d' ' -f1 /proc/uptime; }
# wait_for SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s for SECONDS × SLOW (COMMAND is
# run anew each time: a function or sh -c, never "$(…)" expanded once at the call).
wait_for() {
  local limit what
  limit=$(awk -v s="$1" -v f="$SLOW" 'BEGIN { print s * f * 5 }')
  what=$2
  shift 2
  for _ in $(seq "$limit"); do
    "$@" && return 0
    sleep 0.2
  done
  fail "$what (not within $(awk -v s="$limit" 'BEGIN { print s / 5 }') s)"
}
results_logged() { # results the daemon logged this boot
  journalctl -u hedged -b --no-pager -o cat | grep -c 'encrypted [0-9.]* ms'
}
spooled() { find "$spool" -name '*.msg' 2>/dev/null | wc -l; }
# Predicates for wait_for (evaluated at each poll).
made_at_least() { [ "$(results_logged)" -ge "$1" ]; }
spooled_exactly() { [ "$(spooled)" -eq "$1" ]; }
main_pid() { systemctl show -p MainPID --value hedged; }
# feed FILE: send its vectors and wait until the daemon has logged TOTAL results this boot.
feed() {
  local total=$2
  hedge-send "$sock" "$1" || fail "hedge-send $1"
  wait_for 60 "$total results made" made_at_least "$total"
}
acknowledged() { [ "$(spooled)" -eq 0 ]; }

phase=$(cat "$state/phase" 2>/dev/null || echo install)
log "phase $phase at $(now) s of uptime"
case $phase in
install)
  figure boot_s "$(now)"
  # 1. The package, as a person installs it.
  dpkg -i "$share/hedge.deb" >>"$share/guest.log" 2>&1 || fail "dpkg -i: the package does not install"
  systemctl cat hedged >/dev/null || fail "dpkg -i: no hedged unit"
  [ "$(systemctl is-enabled hedged)" = disabled ] || fail "dpkg -i: the unit must be installed disabled"
  id hedge >/dev/null || fail "dpkg -i: no system user hedge"
  [ -d "$spool" ] || fail "dpkg -i: no spool directory"
  # The backend's key and the bundle as the README says (README.md, "On the board").
  cp "$share/verifying.key" /etc/hedge/ && cp "$share/model.bundle" /var/lib/hedge/ ||
    fail "copying the key and the bundle"
  sed -i -e 's/^host = .*/host = "10.0.2.2"/' -e "s/^port = .*/port = $PORT/" \
    -e 's/^device_id = .*/device_id = "vm-board"/' "$config"
  # Enrolment: the board's identity to the backend, which enrols it (the host does).
  runuser -u hedge -- hedged --config "$config" --print-identity >"$share/identity.tmp" ||
    fail "hedged --print-identity"
  mv "$share/identity.tmp" "$share/identity"
  wait_for 120 "enrolment by the host" test -e "$share/enrolled"

  # 2. systemctl enable --now: active (running) only once the daemon said READY.
  t=$(now)
  systemctl enable --now hedged >>"$share/guest.log" 2>&1 || fail "systemctl enable --now hedged"
  figure start_s "$(awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')"
  [ "$(systemctl is-active hedged)" = active ] || fail "not active after enable --now"
  [ "$(systemctl show -p Type --value hedged)" = notify ] || fail "the unit is not Type=notify"
  status=$(systemctl show -p StatusText --value hedged)
  [[ $status == running* ]] || fail "READY: the status text is '$status', not the daemon's 'running …'"
  # The daemon opens its socket before READY=1; systemd logs "Started" when READY arrives.
  journal=$(journalctl -u hedged -b --no-pager -o short-monotonic)
  opened=$(grep -n 'listening for frames' <<<"$journal" | head -1 | cut -d: -f1)
  started=$(grep -n 'Started hedged.service' <<<"$journal" | head -1 | cut -d: -f1)
  [ -n "$opened" ] && [ -n "$started" ] && [ "$opened" -lt "$started" ] ||
    fail "READY: systemd called the service started before the daemon was ready"
  enter=$(systemctl show -p ActiveEnterTimestampMonotonic --value hedged)
  exec_start=$(systemctl show -p ExecMainStartTimestampMonotonic --value hedged)
  figure ready_s "$(awk -v a="$exec_start" -v b="$enter" 'BEGIN { printf "%.2f", (b - a) / 1e6 }')"

  # 3. Results: four vectors, decrypted on the host (it checks the classes).
  feed "$share/vectors-1.txt" 4
  wait_for 60 "the first results acknowledged (spool empty)" acknowledged
  journalctl -u hedged -b --no-pager -o cat | sed -n 's/.*encrypted \([0-9.]*\) ms.*/\1/p' |
    sort -n | awk '{ v[NR] = $1 } END { printf "infer_ms=%s\n", v[int((NR + 1) / 2)] }' >>"$state/figures"

  # 4. systemctl reload after replacing the bundle: the next results come from the new one.
  cp "$share/next.bundle" /var/lib/hedge/model.bundle
  systemctl reload hedged || fail "systemctl reload hedged"
  wait_for 60 "the reload logged" sh -c "journalctl -u hedged -b --no-pager -o cat | grep -q '^.*reloaded: '"
  feed "$share/vectors-2.txt" 8
  wait_for 60 "the results after the reload acknowledged" acknowledged

  # 5. A stalled daemon (SIGSTOP: it stops feeding the watchdog) is killed and restarted.
  pid=$(main_pid)
  restarts=$(systemctl show -p NRestarts --value hedged)
  watchdog=$(systemctl show -p WatchdogUSec --value hedged)
  t=$(now)
  kill -STOP "$pid"
  restarted() {
    [ "$(main_pid)" != "$pid" ] && [ "$(main_pid)" != 0 ] &&
      [ "$(systemctl is-active hedged)" = active ] &&
      [ "$(systemctl show -p NRestarts --value hedged)" -gt "$restarts" ]
  }
  wait_for 180 "the watchdog ($watchdog) restarting a stalled daemon" restarted
  figure watchdog_restart_s "$(awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')"
  journalctl -u hedged -b --no-pager | grep -q 'Watchdog timeout' ||
    fail "watchdog: no 'Watchdog timeout' in the journal"

  # 6. Hardening at run time: in the daemon's mount namespace, as its user, nothing outside
  #    its state directory is writable — not even a directory the user owns elsewhere.
  install -d -o hedge -g hedge /srv/hedge-probe /home/hedge-probe
  runuser -u hedge -- touch /srv/hedge-probe/outside || fail "hardening probe: the control write failed"
  pid=$(main_pid)
  inside() { nsenter -t "$pid" -m -S "$(id -u hedge)" -G "$(id -g hedge)" -- "$@"; }
  for f in /srv/hedge-probe/x /home/hedge-probe/x /etc/hedge/x /usr/bin/x /var/lib/x; do
    if inside touch "$f" 2>/dev/null; then fail "hardening: the daemon's user wrote $f"; fi
  done
  inside touch /var/lib/hedge/spool/.probe && inside rm /var/lib/hedge/spool/.probe ||
    fail "hardening: the state directory is not writable for the daemon"
  inside touch /tmp/hedge-probe || fail "hardening: no private /tmp"
  [ ! -e /tmp/hedge-probe ] || fail "hardening: the daemon's /tmp is the system's"
  exposure=$(systemd-analyze security hedged --no-pager 2>/dev/null |
    sed -n 's/.*Overall exposure level for hedged.service: \([0-9.]*\).*/\1/p')
  [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' ||
    fail "systemd-analyze security hedged: exposure '$exposure' (≤ 2.0 expected)"
  figure exposure "$exposure"

  # 7. The logs are in the journal.
  lines=$(journalctl -u hedged -b --no-pager -o cat | grep -c 'hedged\|result\|listening')
  [ "$lines" -ge 5 ] || fail "journalctl -u hedged: $lines lines of the daemon"

  # 8. The board offline (its broker unreachable): two results wait in the spool, then a
  #    reboot with the broker back in the configuration.
  sed -i "s/^port = .*/port = 9/" "$config"
  systemctl restart hedged || fail "systemctl restart hedged"
  made=$(results_logged)
  feed "$share/vectors-3.txt" $((made + 2))
  wait_for 30 "two results spooled while offline" spooled_exactly 2
  sed -i "s/^port = 9\$/port = $PORT/" "$config"
  ls "$spool" >"$state/spool-before"
  echo reboot >"$state/phase"
  figure reboot_at "$(date +%s.%N)"
  log "rebooting with $(spooled) result(s) in the spool"
  sync
  systemctl reboot
  ;;
reboot)
  before=$(sed -n 's/^reboot_at=//p' "$state/figures")
  figure reboot_s "$(awk -v a="$before" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
  wait_for 60 "hedged active after the reboot" sh -c '[ "$(systemctl is-active hedged)" = active ]'
  journalctl -u hedged -b --no-pager -o cat | grep -q '2 spooled result(s) from a previous run' ||
    fail "the spool after the reboot: not the 2 results left before it"
  wait_for 60 "the spooled results acknowledged after the reboot" acknowledged
  pid=$(main_pid)
  figure daemon_peak_rss_kb "$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")"
  figure unit_memory_kb $(($(systemctl show -p MemoryCurrent --value hedged) / 1024))

  # 9. dpkg -r keeps the configuration, the state and the user; dpkg -P removes what the
  #    package made (the configuration, the spool, the user) and leaves the admin's bundle
  #    and key.
  pkg=$(dpkg-deb -f "$share/hedge.deb" Package)
  dpkg -r "$pkg" >>"$share/guest.log" 2>&1 || fail "dpkg -r $pkg"
  [ ! -e /usr/bin/hedged ] || fail "dpkg -r: /usr/bin/hedged left"
  [ ! -e /lib/systemd/system/hedged.service ] || fail "dpkg -r: the unit file left"
  [ "$(systemctl is-active hedged)" != active ] || fail "dpkg -r: the service still active"
  pgrep -x hedged >/dev/null && fail "dpkg -r: the daemon still runs"
  [ -f "$config" ] || fail "dpkg -r: the configuration removed (a conffile is kept until purge)"
  [ -d "$spool" ] && id hedge >/dev/null || fail "dpkg -r: the state or the user removed"
  dpkg -P "$pkg" >>"$share/guest.log" 2>&1 || fail "dpkg -P $pkg"
  [ ! -e "$config" ] || fail "dpkg -P: $config left"
  [ ! -e "$spool" ] || fail "dpkg -P: the spool left"
  ! id hedge >/dev/null 2>&1 || fail "dpkg -P: the user hedge left"
  [ ! -e /etc/systemd/system/multi-user.target.wants/hedged.service ] ||
    fail "dpkg -P: the unit still enabled"
  [ -f /var/lib/hedge/model.bundle ] && [ -f /etc/hedge/verifying.key ] ||
    fail "dpkg -P: the admin's bundle or key removed"
  echo done >"$state/phase"
  echo "GUEST OK $(grep -v '^reboot_at=' "$state/figures" | tr '\n' ' ')" >"$share/guest.result"
  log "done"
  sync
  systemctl poweroff
  ;;
*)
  log "nothing to do (phase $phase)"
  systemctl poweroff
  ;;
esac
