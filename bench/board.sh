#!/usr/bin/env bash
# The board benchmark suite (issue 13), one command, no hardware: pseudo-terminals written
# `temp=…,hum=…` lines, read by the ser2mqtt release binary (its embedded broker included) and, side
# by side on the same machine and frames, by what users build instead, each publishing into
# Mosquitto: a well-written Python gateway (bench/baseline_gateway.py: pyserial select loop, chunked
# reads, paho-mqtt) and, when installed, Node-RED 4 with node-red-node-serialport 2. A TCP subscriber
# counts every field. Contenders alternate within each run; medians of RUNS are printed as markdown
# tables with the ratios. CPU is the run time of the contender's threads from /proc schedstat (the cloud broker
# of the bridge load is not counted).
#
# Loads: the board load (PORTS x HZ), the same with the bridge to a cloud Mosquitto (QoS 1), a paced
# 4 x 2,000 lines/s load (16,000 readings/s), bursts of 5,000 lines per port on 1, 4 and 16 ports, and
# the latency at 1,000 readings/s (1 port x 500 lines/s), beside its floor on this machine (no gateway:
# `mosquitto_pub -l` reading the pty, publishing each line into Mosquitto). Start-up (spawn to first reading at the
# subscriber) is read off the board load runs.
#
# Needs: mosquitto and mosquitto_pub, python3 with pyserial and paho-mqtt (pip install pyserial paho-mqtt); for the
# Node-RED column: NODE_RED=path/to/node_modules/node-red/red.js (npm install node-red@4
# node-red-node-serialport@2 in a directory of its own; Node-RED 5 needs Node >= 22.9).
# Usage: bench/board.sh [RUNS] [PORTS] [HZ] [SECS]   (defaults: 3 16 100 15)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}; ports=${2:-16}; hz=${3:-100}; secs=${4:-15}
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
python3 -c 'import serial, paho.mqtt' 2>/dev/null || { echo "needs: pip install pyserial paho-mqtt" >&2; exit 2; }
# Two builds, not one: built together with an example, the gateway would get the dev-dependencies'
# features too (tokio's test-util, rumqttc's websocket) and not be the binary that ships.
cargo build --release --locked -q --example board_load
cargo build --release --locked -q --bin ser2mqtt
load=./target/release/examples/board_load
out=$(mktemp)
trap 'rm -f "$out"' EXIT

contenders=(ser2mqtt python)
[ -n "${NODE_RED:-}" ] && contenders+=(nodered)
run() { # $1 = label, rest = board_load options; one line per contender, labelled
    local label=$1; shift
    for c in "${contenders[@]}"; do
        case $c in
            ser2mqtt) $load ser2mqtt ./target/release/ser2mqtt "$@" ;;
            python) $load python bench/baseline_gateway.py "$mosq" "$@" ;;
            nodered) $load nodered "$NODE_RED" "$mosq" "$@" ;;
        esac | sed "s/^/$label /" | tee -a "$out"
    done
}
for r in $(seq "$runs"); do
    run board --ports "$ports" --hz "$hz" --secs "$secs"
    run bridge --ports "$ports" --hz "$hz" --secs "$secs" --bridge "$mosq"
    run paced4 --ports 4 --hz 2000 --secs "$secs"
    for p in 1 4 16; do run "burst$p" --ports "$p" --burst 5000; done
    run latency --ports 1 --hz 500 --secs "$secs"
    # The latency floor: no gateway, a C client publishing each whole line into Mosquitto.
    $load floor "$mosq" --ports 1 --hz 500 --secs "$secs" | sed "s/^/latency /" | tee -a "$out"
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "-"}'; }
field() { grep "^$1 $2 " "$out" | tr ' ' '\n' | sed -n "s/^$3=//p" | median; }
table() { # $1 = load label, $2 = title, rest = fields
    local label=$1 title=$2; shift 2
    echo
    echo "**$title**"
    echo
    local head="| |" rule="|---|"
    for c in "${contenders[@]}"; do head+=" $c |"; rule+="---|"; done
    for c in "${contenders[@]:1}"; do head+=" ser2mqtt / $c |"; rule+="---|"; done
    echo "$head"; echo "$rule"
    for f in "$@"; do
        local row="| $f |" a
        a=$(field "$label" ser2mqtt "$f")
        for c in "${contenders[@]}"; do row+=" $(field "$label" "$c" "$f") |"; done
        for c in "${contenders[@]:1}"; do
            row+=" $(awk -v a="$a" -v b="$(field "$label" "$c" "$f")" 'BEGIN{ if (b+0 > 0) printf "%.2f", a/b; else print "-" }') |"
        done
        echo "$row"
    done
}
echo
echo "Medians of $runs runs, $(nproc) cores ($(uname -m)), $(date -u +%F); $(./target/release/ser2mqtt --version), $("$mosq" -h 2>&1 | head -1 || true)$( [ -n "${NODE_RED:-}" ] && echo ", Node-RED $(node -p "require('$(dirname "$(readlink -f "$NODE_RED")")/package.json').version" 2>/dev/null) on Node $(node --version)")"
cost="readings_per_s delivered cpu_us_per_reading cpu_percent peak_rss_kib anon_rss_kib"
table board "$ports ports × $hz lines/s × 2 fields, $secs s window" $cost startup_ms
table bridge "the same with the bridge to a cloud Mosquitto at QoS 1" $cost
table paced4 "4 ports × 2,000 lines/s × 2 fields (16,000 readings/s offered)" $cost
for p in 1 4 16; do table "burst$p" "$p port(s), a burst of 5,000 lines each, as fast as the ptys take them" $cost; done
# The floor's column only here: it publishes lines, not fields, so its other figures compare nothing.
contenders+=(floor)
table latency "latency, line written → field at the subscriber, 1 port × 500 lines/s (1,000 readings/s)" \
    latency_p50_us latency_p99_us latency_p999_us latency_max_us
