#!/usr/bin/env bash
# The board load (issue 13): PORTS pseudo-terminals at HZ lines/s each (2 fields a line), read by the
# ser2mqtt release binary (its embedded broker included) and, side by side on the same machine, by a
# well-written Python gateway (bench/baseline_gateway.py: pyserial + paho-mqtt) publishing into
# Mosquitto; a TCP subscriber counts every field. Runs alternate; medians of RUNS are printed as a
# markdown table with the ratio. CPU is the contender's processes' utime+stime from /proc.
# Needs: mosquitto, python3 with pyserial and paho-mqtt (pip install pyserial paho-mqtt).
# Usage: bench/board.sh [RUNS] [PORTS] [HZ] [SECS]   (defaults: 3 16 100 20)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}; ports=${2:-16}; hz=${3:-100}; secs=${4:-20}
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
python3 -c 'import serial, paho.mqtt' 2>/dev/null || { echo "needs: pip install pyserial paho-mqtt" >&2; exit 2; }
cargo build --release --locked -q --bin ser2mqtt --example board_load
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for r in $(seq "$runs"); do
    ./target/release/examples/board_load ser2mqtt ./target/release/ser2mqtt --ports "$ports" --hz "$hz" --secs "$secs" | tee -a "$out"
    ./target/release/examples/board_load python bench/baseline_gateway.py "$mosq" --ports "$ports" --hz "$hz" --secs "$secs" | tee -a "$out"
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { grep "^$1 " "$out" | tr ' ' '\n' | sed -n "s/^$2=//p" | median; }
echo
echo "$ports ports × $hz lines/s × 2 fields, $secs s windows, medians of $runs runs, $(nproc) cores, $(date -u +%F)"
echo
echo "| | ser2mqtt (broker included) | Python + Mosquitto | ratio |"
echo "|---|---|---|---|"
for f in readings_per_s delivered cpu_us_per_reading cpu_percent peak_rss_kib latency_p50_us latency_p99_us latency_p999_us latency_max_us; do
    a=$(field ser2mqtt "$f"); b=$(field python "$f")
    echo "| $f | $a | $b | $(awk "BEGIN{ if ($b > 0) printf \"%.2f\", $a/$b; else print \"-\" }") |"
done
