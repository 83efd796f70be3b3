#!/usr/bin/env bash
# The ARM builds' sizes and a smoke figure under qemu-user (issue 13): each ARM release binary
# (aarch64, armv7; built as in .ci/deploy.sh) runs a small board load, 4 sensors x 50 lines/s x 2
# fields, read from device servers over TCP (`tcp://`: Debian 12's qemu-user cannot emulate the
# serial ioctls), every field counted at a TCP subscriber on the host. Emulated CPU time says
# nothing about a real board; the figures show that the binary starts, keeps up and stays small.
# Needs: qemu-user-static, the cross libc (libc6-dev-arm64-cross, libc6-dev-armhf-cross), the ARM
# builds: cargo build --release --target aarch64-unknown-linux-gnu (and armv7-unknown-linux-gnueabihf).
# Usage: bench/arm.sh [SECS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
tdir=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -q --example board_load
echo "| target | stripped binary | delivered | readings/s | start-up to first reading | RSS under qemu |"
echo "|---|---|---|---|---|---|"
for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    case "$t" in
        aarch64-unknown-linux-gnu) runner="qemu-aarch64-static -L /usr/aarch64-linux-gnu" ;;
        armv7-unknown-linux-gnueabihf) runner="qemu-arm-static -L /usr/arm-linux-gnueabihf" ;;
    esac
    bin=$tdir/$t/release/ser2mqtt
    if [ ! -x "$bin" ]; then echo "| $t | not built | | | | |"; continue; fi
    line=$("$tdir/release/examples/board_load" ser2mqtt "$bin" --tcp --runner "$runner" --ports 4 --hz 50 --secs "$secs")
    get() { echo "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
    echo "| $t | $(stat -c %s "$bin") bytes | $(get delivered) | $(get readings_per_s) | $(get startup_ms) ms | $(get peak_rss_kib) KiB (qemu's own included) |"
done
