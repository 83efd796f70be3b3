#!/usr/bin/env bash
# The whole test suite, as the README gives it: installs what the tests need that a fresh Debian or
# Ubuntu machine with only a Rust toolchain lacks (the system services are not enabled or touched),
# then runs `cargo test --locked` with any arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests run besides the gateway: the Mosquitto broker (the upstream tests' "cloud", on a free
# 127.0.0.1 port), and for the README's simulator example (tests/docs.rs) socat, mosquitto_sub and
# ip (loopback in the example's own network namespace).
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need+=(iproute2)

if [ ${#need[@]} -gt 0 ]; then
    echo "tests/run.sh: installing ${need[*]} (the tests run them)" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "tests/run.sh: no apt-get here; install ${need[*]} with your package manager" >&2
        exit 1
    fi
    $sudo apt-get update -q
    # Debian may start the packaged Mosquitto service on port 1883; the tests never use that port.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# The integration tests mostly wait on sockets, ptys and timers, not the CPU: libtest's default of
# one test per core leaves a 2-core board idle most of the suite (48 s at 2, 15 s at 8 here).
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-8}"
exec cargo test --locked "$@"
