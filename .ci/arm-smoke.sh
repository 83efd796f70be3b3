#!/usr/bin/env bash
# Proves an ARM release binary works, not just links: under qemu-user it prints its version, checks
# every shipped config, and runs the demo while a subscriber on the host receives its readings.
# Usage: .ci/arm-smoke.sh TARGET   (aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf)
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1
case "$target" in
    aarch64-unknown-linux-gnu) runner=(qemu-aarch64-static -L /usr/aarch64-linux-gnu) ;;
    armv7-unknown-linux-gnueabihf) runner=(qemu-arm-static -L /usr/arm-linux-gnueabihf) ;;
    *) echo "unknown target $target" >&2; exit 2 ;;
esac
bin=target/$target/release/ser2mqtt
file "$bin"
"${runner[@]}" "$bin" --version
for c in configs/*.yaml packaging/ser2mqtt.yaml; do
    "${runner[@]}" "$bin" check --config "$c" >/dev/null
    echo "check ok: $c"
done

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${runner[@]}" "$bin" demo --listen "127.0.0.1:$port" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
# qemu runs the gateway several times slower; give the broker up to 30 s to listen.
for _ in $(seq 300); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
done
got=$(timeout 30 mosquitto_sub -p "$port" -t 'sensors/demo/air/pm2_5' -t 'sensors/demo/gps/satellites' -C 4 -v)
echo "$got"
[ "$(echo "$got" | grep -c '^sensors/demo/')" -eq 4 ] || { echo "ARM demo did not deliver readings" >&2; exit 1; }
kill -TERM $pid
wait $pid
echo "ARM round trip ok: $target"
