#!/usr/bin/env bash
# The release profile's two open choices side by side (issue 13): opt-level "s" (shipped) against
# "z", and panic unwind (shipped) against abort. The shipped binary is target/release/ser2mqtt; each
# other variant is built into its own target directory (target/profiles/NAME; cold, about 5 min each
# on 2 cores), then the board load (16 × 100 lines/s)
# and a 4-port burst are offered to each in turn, RUNS times. Prints a markdown table: stripped size,
# and medians of CPU per reading, peak and anonymous RSS, and the burst's rate.
# Usage: bench/profiles.sh [RUNS] [SECS]   (defaults: 3 15)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}; secs=${2:-15}
# Two builds, not one, as in board.sh: built with an example, the gateway would get dev features.
cargo build --release --locked -q --example board_load
cargo build --release --locked -q --bin ser2mqtt
load=./target/release/examples/board_load
variants=("s-unwind s unwind" "s-abort s abort" "z-unwind z unwind" "z-abort z abort")
binary() { if [ "$1" = s-unwind ]; then echo target/release/ser2mqtt; else echo "target/profiles/$1/release/ser2mqtt"; fi; }
for v in "${variants[@]:1}"; do
    read -r name opt panic <<<"$v"
    CARGO_TARGET_DIR=target/profiles/$name cargo build --release --locked -q --bin ser2mqtt \
        --config "profile.release.opt-level=\"$opt\"" --config "profile.release.panic=\"$panic\""
done
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for r in $(seq "$runs"); do
    for v in "${variants[@]}"; do
        read -r name _ <<<"$v"
        bin=$(binary "$name")
        $load ser2mqtt "$bin" --ports 16 --hz 100 --secs "$secs" | sed "s/^/$name board /" >>"$out"
        $load ser2mqtt "$bin" --ports 4 --burst 5000 | sed "s/^/$name burst /" >>"$out"
    done
done
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "-"}'; }
field() { grep "^$1 $2 " "$out" | tr ' ' '\n' | sed -n "s/^$3=//p" | median; }
echo
echo "Medians of $runs runs, $(nproc) cores ($(uname -m)), $(date -u +%F), commit $(git rev-parse --short HEAD)"
echo
echo "| variant (opt-level, panic) | stripped bytes | board: CPU µs/reading | board: peak RSS KiB | board: anon RSS KiB | 4-port burst readings/s | burst delivered |"
echo "|---|---|---|---|---|---|---|"
for v in "${variants[@]}"; do
    read -r name _ <<<"$v"
    size=$(stat -c %s "$(binary "$name")")
    echo "| $name | $size | $(field "$name" board cpu_us_per_reading) | $(field "$name" board peak_rss_kib) | $(field "$name" board anon_rss_kib) | $(field "$name" burst readings_per_s) | $(field "$name" burst delivered) |"
done
