#!/usr/bin/env bash
# The disk queue's figures (see examples/queue_bench.rs), median of RUNS, side by side with a baseline
# on the same loopback Mosquitto: `mosquitto_pub -l -q 1` sending the same number of messages with no
# disk in between (what a plain client achieves on this link).
# Needs mosquitto, mosquitto-clients. Usage: bench/queue.sh [MESSAGES] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
runs=${2:-3}
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
cargo build --release --example queue_bench -q
# The queue must sit on a real disk (not tmpfs) for the byte counts to mean anything.
dir=$(mktemp -d -p "${TMPDIR:-/var/tmp}")
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'persistence false\nlistener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$dir/m.conf"
"$mosq" -c "$dir/m.conf" >/dev/null 2>&1 & pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for r in $(seq "$runs"); do
    ./target/release/examples/queue_bench "$dir/q$r" "$n" "$port" > "$dir/out$r"
    cat "$dir/out$r" | tr '\n' ' '; echo
    seq "$n" | sed 's/.*/{"pm1_0":3,"pm2_5":5,"pm10":7,"time":"2026-11-22T06:00:00.000Z","ts":1795327200000}/' > "$dir/lines"
    t0=$(date +%s.%N)
    mosquitto_pub -p "$port" -q 1 -t bench/base -l < "$dir/lines"
    t1=$(date +%s.%N)
    awk "BEGIN{printf \"baseline_msgs_per_s %.0f\n\", $n/($t1-$t0)}" | tee -a "$dir/base"
done
for k in append_msgs_per_s disk_bytes_per_reading replay_msgs_per_s; do
    echo "median $k $(cat "$dir"/out* | awk -v k=$k '$1==k{print $2}' | median)"
done
echo "median baseline_msgs_per_s $(awk '{print $2}' "$dir/base" | median)"
