#!/usr/bin/env bash
# Readings per second through the gateway's embedded broker to one subscriber, with the simulator
# writing an Arduino key=value sensor as fast as the pty takes it; side by side with a baseline that
# people build by hand: `mosquitto_pub -l` reading the same pty into a Mosquitto broker.
# Needs: socat, mosquitto, mosquitto-clients, a release build. Usage: bench/throughput.sh [SECONDS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
runs=${2:-3}
bin=target/release/ser2mqtt
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

ptys() { # $1 = name; creates $dir/$1.w (writer end) and $dir/$1.r (reader end)
    socat pty,raw,echo=0,link="$dir/$1.w" pty,raw,echo=0,link="$dir/$1.r" >/dev/null 2>&1 & pids+=($!)
    while [ ! -e "$dir/$1.r" ]; do sleep 0.05; done
}

count() { # $1 = port, $2 = topic: messages received in $secs seconds
    timeout "$secs" mosquitto_sub -p "$1" -t "$2" -q 0 > "$dir/count" 2>/dev/null || true
    wc -l < "$dir/count"
}

run_gateway() {
    local port; port=$(free_port); ptys gw$1
    cat > "$dir/gw.yaml" <<YAML
broker: { listeners: [{ bind: "127.0.0.1:$port" }] }
ports:
  - name: climate
    device: $dir/gw$1.r
    framing: { type: lines, delimiter: "\r\n" }
    decoder: { type: key_value, keys: [temp, hum] }
maps:
  - { port: climate, topic: "bench/{port}", publish: per_frame, qos: 0 }
YAML
    RUST_LOG=error $bin run --config "$dir/gw.yaml" >/dev/null 2>&1 & local gw=$!; pids+=($gw)
    sleep 1
    $bin simulate --sensor arduino --rate 0 --device "$dir/gw$1.w" >/dev/null 2>&1 & local sim=$!; pids+=($sim)
    sleep 1
    local n; n=$(count "$port" bench/climate)
    kill $sim $gw 2>/dev/null || true
    result=$((n / secs))
}

run_baseline() {
    local port; port=$(free_port); ptys base$1
    mosquitto -p "$port" >/dev/null 2>&1 & local broker=$!; pids+=($broker)
    sleep 0.5
    mosquitto_pub -p "$port" -t bench/climate -l < "$dir/base$1.r" >/dev/null 2>&1 & local pub=$!; pids+=($pub)
    $bin simulate --sensor arduino --rate 0 --device "$dir/base$1.w" >/dev/null 2>&1 & local sim=$!; pids+=($sim)
    sleep 1
    local n; n=$(count "$port" bench/climate)
    kill $sim $pub $broker 2>/dev/null || true
    result=$((n / secs))
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

g=(); b=()
for i in $(seq "$runs"); do
    run_gateway "$i"; g+=("$result")
    run_baseline "$i"; b+=("$result")
done
gm=$(printf '%s\n' "${g[@]}" | median)
bm=$(printf '%s\n' "${b[@]}" | median)
echo "ser2mqtt readings/s per run: ${g[*]} (median $gm)"
echo "baseline (mosquitto_pub -l + mosquitto) readings/s per run: ${b[*]} (median $bm)"
python3 -c "print(f'ratio ser2mqtt/baseline: {$gm/$bm:.2f}')" 2>/dev/null || true
