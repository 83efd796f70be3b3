#!/usr/bin/env bash
# The whole test suite, as the README gives it: installs what the tests need that a fresh Debian or
# Ubuntu machine with only a Rust toolchain lacks (the Mosquitto broker the upstream tests start as
# their "cloud", on a free 127.0.0.1 port; the system service is not enabled or touched), then runs
# `cargo test --locked` with any arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."

have_mosquitto() {
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || [ -x /usr/local/sbin/mosquitto ]
}

if ! have_mosquitto; then
    echo "tests/run.sh: installing mosquitto (the upstream tests run it as their cloud broker)" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "tests/run.sh: no apt-get here; install the mosquitto broker with your package manager" >&2
        exit 1
    fi
    $sudo apt-get update -q
    # Debian may start the packaged service on port 1883; the tests never use that port.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends mosquitto
fi

# The integration tests mostly wait on sockets, ptys and timers, not the CPU: libtest's default of
# one test per core leaves a 2-core board idle most of the suite (48 s at 2, 15 s at 8 here).
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-8}"
exec cargo test --locked "$@"
