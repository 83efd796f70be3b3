#!/usr/bin/env bash
# The chaos soak (examples/soak.rs): 16 ptys at 100 Hz into the release gateway, bridged to a local
# Mosquitto through a fault-injecting proxy, for SECS seconds of link cuts (refused, black hole),
# cloud restarts, gateway SIGKILLs and pty unplugs; then every reading is looked for upstream.
# Prints the fault log and a table (missing, in a kill's commit window, duplicates, order, RSS, fds);
# exits 1 if anything was lost outside the documented window or arrived out of order.
# Needs mosquitto. Everything on 127.0.0.1. Not part of the test run.
# Usage: bench/soak.sh [SECS] [QOS] [SEED]   (defaults: 600 1 1)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { echo "needs mosquitto (apt install mosquitto)"; exit 2; }
cargo build --release --locked -q --bin ser2mqtt --example soak
exec ./target/release/examples/soak ./target/release/ser2mqtt --secs "${1:-600}" --qos "${2:-1}" --seed "${3:-1}"
