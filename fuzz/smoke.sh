#!/usr/bin/env bash
# Runs every fuzz target for a few seconds (CI) or longer (`fuzz/smoke.sh 600` for a local pass).
# Needs a nightly toolchain (libFuzzer's instrumentation); installs cargo-fuzz if missing. Without
# nightly it says so and exits 0: the fuzz targets are an extra check, the test suite does not
# depend on them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/smoke.sh: SKIPPED, no nightly toolchain (rustup toolchain install nightly)" >&2
    exit 0
fi
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz --version '^0.13'
cargo +nightly fuzz build -O
# The logs' directory (the build itself goes to $CARGO_TARGET_DIR when that is set).
mkdir -p fuzz/target
for target in $(cargo +nightly fuzz list); do
    echo "== fuzz $target (${secs}s)"
    # A crash fails the run and leaves its input under fuzz/artifacts/<target>/.
    log="fuzz/target/smoke-$target.log"
    if cargo +nightly fuzz run -O "$target" -- -max_total_time="$secs" >"$log" 2>&1; then
        grep -E '^Done' "$log" || true
    else
        grep -E -A20 'panicked|ERROR|SUMMARY' "$log" | head -40 >&2
        echo "fuzz target $target failed (full output: $log)" >&2
        exit 1
    fi
done
