#!/usr/bin/env bash
# Outage-and-SIGKILL, side by side: ser2mqtt's bridge with its disk queue against what a user would
# build instead, a local Mosquitto with persistence bridging to the cloud (readings published into
# it with mosquitto_pub at QoS 1, as a hand-written serial script would).
#
# Per run and per contender: 100 readings with the link up, the link cut (the TCP forwarder to the
# cloud killed: connections refused), 200 readings, the gateway SIGKILLed and restarted, 100 more
# readings, the link restored. Reported: readings lost and duplicated at the cloud subscriber, and
# the drain time from the link's return until the last reading arrived.
# Everything on 127.0.0.1. Needs socat, mosquitto, mosquitto-clients, a release build.
# Usage: bench/outage.sh [RUNS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
rate=${2:-20}
bin=$PWD/target/release/ser2mqtt
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
dir=$(mktemp -d -p "${TMPDIR:-/var/tmp}")
pids=()
cleanup() {
    for p in "${pids[@]}"; do pkill -KILL -P "$p" 2>/dev/null || true; kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# The cloud: one Mosquitto for the whole benchmark, and a subscriber recording what arrives.
cloud=$(free_port)
printf 'persistence false\nlistener %s 127.0.0.1\nallow_anonymous true\n' "$cloud" > "$dir/cloud.conf"
"$mosq" -c "$dir/cloud.conf" >/dev/null 2>&1 & pids+=($!)
wait_port "$cloud"

link_up() { # forwards $1 -> cloud; sets link_pid
    socat TCP-LISTEN:"$1",bind=127.0.0.1,fork,reuseaddr TCP:127.0.0.1:"$cloud" >/dev/null 2>&1 & link_pid=$!
    pids+=($link_pid)
    wait_port "$1"
}
link_down() { pkill -KILL -P "$link_pid" 2>/dev/null || true; kill -KILL "$link_pid" 2>/dev/null || true; wait "$link_pid" 2>/dev/null || true; }

# ser2mqtt: readings come in on a pty.
s2m_start() {
    "$bin" run --config "$dir/s2m.yaml" 2>>"$dir/s2m.log" & gw_pid=$!; pids+=($gw_pid)
    wait_port "$s2m_local"
    sleep 0.3
}
s2m_setup() {
    socat pty,raw,echo=0,link="$dir/tty.w" pty,raw,echo=0,link="$dir/tty.r" >/dev/null 2>&1 & pids+=($!)
    while [ ! -e "$dir/tty.r" ]; do sleep 0.05; done
    s2m_local=$(free_port); rm -rf "$dir/s2m-state"
    cat > "$dir/s2m.yaml" <<YAML
gateway: { name: gw, state_dir: "$dir/s2m-state" }
broker: { listeners: [{ bind: "127.0.0.1:$s2m_local" }] }
upstream:
  host: 127.0.0.1
  port: $link
  tls: { enabled: false }
  reconnect: { min: 1s, max: 5s }
  forward: [{ filter: "s/#", prefix: "sites/gw/", qos: 1 }]
ports:
  - { name: a, device: "$dir/tty.r", framing: { type: lines }, decoder: { type: csv, columns: [n] } }
maps:
  - { port: a, topic: "s/{field}", qos: 1 }
YAML
    s2m_start
}
s2m_send() { echo "$1" > "$dir/tty.w"; }
s2m_restart() { kill -KILL "$gw_pid"; wait "$gw_pid" 2>/dev/null || true; s2m_start; }

# Mosquitto with persistence, bridging out; readings published with mosquitto_pub -q 1.
mq_start() {
    "$mosq" -c "$dir/mq.conf" >/dev/null 2>&1 & gw_pid=$!; pids+=($gw_pid)
    wait_port "$mq_local"
}
mq_setup() {
    mq_local=$(free_port); rm -rf "$dir/mq-state"; mkdir -p "$dir/mq-state"
    cat > "$dir/mq.conf" <<CONF
persistence true
persistence_location $dir/mq-state/
listener $mq_local 127.0.0.1
allow_anonymous true
connection cloud
address 127.0.0.1:$link
topic s/# out 1 "" sites/gw/
cleansession false
restart_timeout 1 5
CONF
    mq_start
}
mq_send() { mosquitto_pub -p "$mq_local" -q 1 -t s/n -m "$1"; }
mq_restart() { kill -KILL "$gw_pid"; wait "$gw_pid" 2>/dev/null || true; mq_start; }

distinct() { awk '$1=="sites/gw/s/n"{print $2}' "$dir/got" | sort -un | wc -l; }

one_run() { # $1 = s2m | mq
    local who=$1
    link=$(free_port); link_up "$link"
    : > "$dir/got"
    mosquitto_sub -p "$cloud" -q 1 -t 'sites/gw/s/n' -v > "$dir/got" 2>/dev/null & local sub=$!; pids+=($sub)
    sleep 0.3
    "${who}_setup"
    local i=0 gap; gap=$(awk "BEGIN{print 1/$rate}")
    while [ $i -lt 100 ]; do i=$((i+1)); "${who}_send" $i; sleep "$gap"; done
    sleep 1
    link_down
    sleep 2
    while [ $i -lt 300 ]; do i=$((i+1)); "${who}_send" $i; sleep "$gap"; done
    sleep 0.5
    "${who}_restart"
    while [ $i -lt 400 ]; do i=$((i+1)); "${who}_send" $i; sleep "$gap"; done
    sleep 0.5
    link_up "$link"
    local t0; t0=$(date +%s.%N)
    # Wait for all 400 or 30 s of silence-free waiting.
    local last=0 n=0 tl=$t0
    for _ in $(seq 600); do
        n=$(distinct)
        if [ "$n" != "$last" ]; then last=$n; tl=$(date +%s.%N); fi
        [ "$n" -ge 400 ] && break
        sleep 0.1
    done
    local total; total=$(awk '$1=="sites/gw/s/n"' "$dir/got" | wc -l)
    local drain; drain=$(awk "BEGIN{printf \"%.1f\", $tl - $t0}")
    echo "$who run: lost $((400 - n)) of 400, duplicates $((total - n)), drain ${drain} s after the link returned"
    kill -KILL "$gw_pid" "$sub" 2>/dev/null || true; link_down
    wait "$gw_pid" "$sub" 2>/dev/null || true
}

for r in $(seq "$runs"); do
    one_run s2m
    one_run mq
done
