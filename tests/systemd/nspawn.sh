#!/usr/bin/env bash
# The .deb under a real systemd: boots Debian bookworm (systemd 252) in systemd-nspawn with the unified
# cgroup hierarchy (so the unit's DevicePolicy/DeviceAllow are enforced as on Raspberry Pi OS),
# installs the package and checks, through nsenter, what a user of the service sees: READY, readings
# from a tcp:// device at mosquitto_sub, a reload that fails on a broken config, `offline` on stop,
# a busy port named in `journalctl -p err` and recovered from once free, a broken config ending in
# `failed` after a bounded number of starts, the watchdog restarting a stopped process, and purge.
#
# Usage (as root): tests/systemd/nspawn.sh PACKAGE.deb
# The Debian root is made once by debootstrap (~40 s with a near mirror) and cached as a tarball in
# $SER2MQTT_NSPAWN_CACHE (default /var/tmp/ser2mqtt-nspawn); each run unpacks a fresh copy.
# The container has its own network namespace (--private-network), so its 127.0.0.1:1883 never
# meets the host's.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: tests/systemd/nspawn.sh PACKAGE.deb" >&2; exit 2; }
deb=$(realpath "$1")
[ "$(id -u)" -eq 0 ] || { echo "nspawn.sh: needs root (debootstrap, systemd-nspawn, nsenter)" >&2; exit 2; }
for tool in debootstrap systemd-nspawn nsenter; do
    command -v "$tool" >/dev/null || { echo "nspawn.sh: $tool not found (packages debootstrap, systemd-container, util-linux)" >&2; exit 2; }
done
started=$(date +%s)

# What the root needs beyond minbase: systemd as init, mosquitto_sub to watch the broker, socat as the
# serial device server on tcp://, adduser for the postinst. The list is in the cache's name, so a
# change makes a new root.
include=systemd,systemd-sysv,dbus,mosquitto-clients,socat,adduser,kmod,procps
cache=${SER2MQTT_NSPAWN_CACHE:-/var/tmp/ser2mqtt-nspawn}
tarball="$cache/bookworm-$(echo "$include" | md5sum | cut -c1-8).tar"
work=$(mktemp -d /var/tmp/ser2mqtt-nspawn-run.XXXXXX)
root="$work/root"
nspawn=""

cleanup() {
    local rc=$?
    if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
        # SIGTERM asks nspawn to power the container off; SIGKILL if it has not within 20 s.
        kill -TERM "$nspawn" 2>/dev/null || true
        for _ in $(seq 40); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$nspawn" 2>/dev/null || true
        wait "$nspawn" 2>/dev/null || true
    fi
    if [ $rc -ne 0 ] && [ -f "$work/console.log" ]; then
        echo "--- container console (last 30 lines)" >&2
        tail -30 "$work/console.log" >&2 || true
    fi
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT

# Greps the unit's journal of this boot (captured first: `grep -q` on a pipe would end journalctl
# with SIGPIPE, a failure under pipefail). Usage: journal_has PATTERN [journalctl options]
# journald reads a service's stderr and native messages asynchronously: under load a line written
# just before the process exited shows up a moment later, so look for up to 10 s.
journal_has() {
    local out
    for _ in $(seq 1 50); do
        out=$(in_ct journalctl -u ser2mqtt -b --no-pager "${@:2}")
        grep -q -- "$1" <<< "$out" && return 0
        sleep 0.2
    done
    return 1
}
fail() { echo "FAIL: $*" >&2; in_ct journalctl -u ser2mqtt -b --no-pager -n 40 >&2 || true; exit 1; }

mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
    echo "== debootstrap bookworm (cached in $tarball)"
    debootstrap --variant=minbase --include="$include" bookworm "$work/base" \
        "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" > "$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    # The downloaded .debs are installed already: keeping them adds 41 MiB to the cache and to each
    # run's copy (257 -> 206 MB without them).
    rm -f "$work/base"/var/cache/apt/archives/*.deb
    tar -C "$work/base" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$work/base"
fi
mkdir "$root"
tar -C "$root" -xf "$tarball"
cp "$deb" "$root/root/ser2mqtt.deb"

echo "== boot"
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn -q -b -D "$root" --register=no --keep-unit \
    --private-network -M "ser2mqtt-ci-$$" > "$work/console.log" 2>&1 &
nspawn=$!
leader=""
# The container's init is nspawn's child; it appears within a second or two.
for _ in $(seq 100); do
    leader=$(pgrep -P "$nspawn" -x systemd || true)
    [ -n "$leader" ] && break
    sleep 0.2
done
[ -n "$leader" ] || { echo "FAIL: the container's systemd did not start" >&2; exit 1; }

in_ct() {
    nsenter -t "$leader" -m -u -i -n -p -C -- \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= "$@"
}
# Boot is a few seconds; 120 s bounds a wedged boot on a loaded CI machine.
state=$(in_ct timeout 120 systemctl is-system-running --wait || true)
case "$state" in running|degraded) ;; *) echo "FAIL: container boot ended '$state'" >&2; exit 1 ;; esac

unit_prop() { in_ct systemctl show -P "$1" ser2mqtt; }
# Polls a condition (a shell snippet run on the host) every 0.5 s for up to $1 seconds.
wait_until() {
    local secs=$1; shift
    for _ in $(seq $((secs * 2))); do
        if eval "$@"; then return 0; fi
        sleep 0.5
    done
    return 1
}
# Each scenario starts with the unit's start-limit counter at zero (an unloaded unit has none).
reset_start_limit() { in_ct systemctl reset-failed ser2mqtt 2>/dev/null || true; }
write_config() { in_ct sh -c 'cat > /etc/ser2mqtt/ser2mqtt.yaml'; }

echo "== install"
in_ct dpkg -i /root/ser2mqtt.deb > "$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; exit 1; }
if grep -qi "warning" "$work/dpkg.log"; then cat "$work/dpkg.log" >&2; fail "dpkg -i printed a warning"; fi
[ "$(in_ct stat -c %U:%G:%a /etc/ser2mqtt/ser2mqtt.yaml)" = "root:ser2mqtt:640" ] || fail "config is not root:ser2mqtt 0640"
[ "$(in_ct stat -c %U /var/lib/ser2mqtt)" = "ser2mqtt" ] || fail "home /var/lib/ser2mqtt not owned by ser2mqtt"
in_ct test -f /usr/lib/modules-load.d/ser2mqtt.conf || fail "modules-load.d file missing"
[ "$(in_ct systemctl is-enabled ser2mqtt || true)" = "disabled" ] || fail "installed enabled; the package promises not to"

# A sensor behind a serial device server: socat answers every connection with a reading every 200 ms.
# (A script, not socat's SYSTEM:, whose address syntax takes the comma as an option separator.)
printf '#!/bin/sh\nwhile :; do echo temp=21.5,hum=40; sleep 0.2; done\n' > "$root/usr/local/bin/sensor"
chmod 755 "$root/usr/local/bin/sensor"
in_ct systemd-run -q --unit=sensor socat TCP-LISTEN:7000,bind=127.0.0.1,reuseaddr,fork EXEC:/usr/local/bin/sensor
good_config='gateway:
  name: ci
ports:
  - name: climate
    device: tcp://127.0.0.1:7000
    framing: { type: lines }
    decoder:
      type: key_value
      pair_separator: ","
      separator: "="
      keys: [temp, hum]
      types: { temp: number, hum: number }
maps:
  - port: climate
    topic: "sensors/{gateway}/{port}/{field}"
    payload: plain
'
# `type: lines` with no `delimiter` and an unknown key: two problems `check` must name.
broken_config='gateway:
  name: ci
ports:
  - name: climate
    device: tcp://127.0.0.1:7000
    framing: { type: lines }
    decoder: { type: key_value, keys: [temp] }
maps:
  - port: climate
    topic: "sensors/{gateway}/{port}/{field}"
    qos: 3
'
echo "$good_config" | write_config

echo "== start: READY, readings at a subscriber"
in_ct systemctl start ser2mqtt || fail "systemctl start failed with a good config"
[ "$(unit_prop ActiveState)/$(unit_prop SubState)" = "active/running" ] || fail "not active/running after start"
status=$(unit_prop StatusText)
echo "status: $status"
case "$status" in *"broker listening on 127.0.0.1:1883"*) ;; *) fail "status text: $status" ;; esac
got=$(in_ct timeout 20 mosquitto_sub -h 127.0.0.1 -t sensors/ci/climate/temp -C 3 -W 15 || true)
[ "$(echo "$got" | grep -c '^21.5$')" = 3 ] || fail "expected three readings 21.5 on sensors/ci/climate/temp, got: $got"

echo "== reload: refused on a broken config, accepted on a good one"
pid=$(unit_prop MainPID)
echo "$broken_config" | write_config
if in_ct systemctl reload ser2mqtt 2> "$work/reload.err"; then fail "systemctl reload succeeded on a broken config"; fi
cat "$work/reload.err"
[ "$(unit_prop ActiveState)" = active ] && [ "$(unit_prop MainPID)" = "$pid" ] || fail "a refused reload stopped or restarted the service"
journal_has "qos" -p err || fail "journalctl -p err does not name the bad key after a refused reload"
echo "$good_config" | write_config
in_ct systemctl reload ser2mqtt || fail "reload of a good config failed"
[ "$(unit_prop MainPID)" = "$pid" ] || fail "reload restarted the process"

echo "== stop: offline published"
in_ct timeout 15 mosquitto_sub -h 127.0.0.1 -t 'ci/#' -v > "$work/avail.txt" 2>&1 &
sub=$!
wait_until 10 'grep -qs "^ci/climate/availability online" "$work/avail.txt"' || fail "no retained online: $(cat "$work/avail.txt")"
in_ct systemctl stop ser2mqtt
wait "$sub" || true
grep -q "^ci/climate/availability offline" "$work/avail.txt" || fail "no offline for the port on stop: $(cat "$work/avail.txt")"
grep -q "^ci/status offline" "$work/avail.txt" || fail "no offline for the gateway on stop: $(cat "$work/avail.txt")"

echo "== busy port: named in journalctl -p err; restarts end at the start limit"
in_ct systemd-run -q --unit=squatter socat TCP-LISTEN:1883,bind=127.0.0.1,reuseaddr,fork SYSTEM:cat
wait_until 10 'in_ct bash -c "exec 3<>/dev/tcp/127.0.0.1/1883" 2>/dev/null' || fail "squatter did not listen"
reset_start_limit
if in_ct systemctl start ser2mqtt 2>/dev/null; then fail "started although 127.0.0.1:1883 is taken"; fi
journal_has "Address already in use" -p err || fail "journalctl -p err does not name the busy address"
[ "$(unit_prop ExecMainStatus)" = 69 ] || fail "exit status $(unit_prop ExecMainStatus), expected 69"
# Exit 69 is restarted (a previous instance may still hold the port) every 2 s, 5 starts in 120 s at most.
wait_until 40 '[ "$(unit_prop ActiveState)" = failed ]' || fail "busy port: not failed ($(unit_prop ActiveState)/$(unit_prop SubState))"
restarts=$(unit_prop NRestarts)
echo "restarts before failed: $restarts"
[ "$restarts" -le 5 ] || fail "$restarts restarts, expected at most the start limit"
in_ct systemctl stop squatter
reset_start_limit
in_ct systemctl start ser2mqtt || fail "did not start once 1883 was free"
in_ct systemctl stop ser2mqtt

echo "== broken config: failed at once (exit 64, RestartPreventExitStatus)"
echo "$broken_config" | write_config
reset_start_limit
if in_ct systemctl start ser2mqtt 2>/dev/null; then fail "started with a broken config"; fi
# Settled: failed, and no restart pending (auto-restart would show as activating).
wait_until 60 '[ "$(unit_prop ActiveState)" = failed ]' || fail "broken config did not end failed ($(unit_prop ActiveState)/$(unit_prop SubState))"
sleep 5
[ "$(unit_prop ActiveState)" = failed ] || fail "left failed again: restarts go on"
restarts=$(unit_prop NRestarts)
echo "restarts before failed: $restarts"
[ "$restarts" = 0 ] || fail "$restarts restarts of a broken config, expected none"
[ "$(unit_prop ExecMainStatus)" = 64 ] || fail "exit status $(unit_prop ExecMainStatus), expected 64"
[ "$(in_ct systemctl is-failed ser2mqtt || true)" = failed ] || fail "not in systemctl --failed"
journal_has "qos" -p err || fail "journalctl -p err does not name the bad key"

echo "== watchdog: a stopped process is killed and restarted"
echo "$good_config" | write_config
reset_start_limit
in_ct systemctl start ser2mqtt
pid=$(unit_prop MainPID)
before=$(unit_prop NRestarts)
in_ct kill -STOP "$pid"
# WatchdogSec=30s in the shipped unit, then RestartSec=2s and a start: ~35 s; 75 s bounds it.
wait_until 75 '[ "$(unit_prop NRestarts)" -gt "$before" ] && [ "$(unit_prop ActiveState)" = active ] && [ "$(unit_prop MainPID)" != "$pid" ]' \
    || fail "not restarted after SIGSTOP (NRestarts $(unit_prop NRestarts), MainPID $(unit_prop MainPID))"
journal_has "Watchdog timeout" || fail "journal shows no watchdog timeout"
got=$(in_ct timeout 20 mosquitto_sub -h 127.0.0.1 -t sensors/ci/climate/temp -C 1 -W 15 || true)
[ "$got" = 21.5 ] || fail "no reading after the watchdog restart: $got"

echo "== purge: state and user removed"
in_ct systemctl stop ser2mqtt
in_ct dpkg --purge ser2mqtt > "$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; exit 1; }
if in_ct getent passwd ser2mqtt >/dev/null; then fail "user ser2mqtt left after purge"; fi
if in_ct test -e /var/lib/ser2mqtt; then fail "/var/lib/ser2mqtt left after purge"; fi
if in_ct test -e /etc/ser2mqtt; then fail "/etc/ser2mqtt left after purge"; fi

echo "systemd checks ok in $(( $(date +%s) - started )) s"
