#!/usr/bin/env bash
# Builds the .deb for TARGET (default: the host) from an existing release build: the manual page
# from the CLI (`ser2mqtt manpage`), `cargo deb`, then DEBIAN/md5sums (cargo-deb writes none; `dpkg
# --verify` and lintian want them). Prints the package's path.
# Usage: packaging/deb.sh [--target TRIPLE] [--output DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
target=""
out="target/debian"
while [ $# -gt 0 ]; do
    case "$1" in
        --target) target=$2; shift 2 ;;
        --output) out=$2; shift 2 ;;
        *) echo "usage: packaging/deb.sh [--target TRIPLE] [--output DIR]" >&2; exit 2 ;;
    esac
done
mkdir -p target/man "$out"
# The page is the same on every target, so a host build of any profile prints it.
cargo run --locked -q --bin ser2mqtt -- manpage | gzip -9n > target/man/ser2mqtt.1.gz
args=(--no-build --no-strip --output "$out/")
[ -n "$target" ] && args+=(--target "$target")
deb=$(cargo deb "${args[@]}" | tail -1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -R "$deb" "$tmp/p"
(cd "$tmp/p" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$tmp/p/DEBIAN/md5sums"
chmod 644 "$tmp/p/DEBIAN/md5sums"
dpkg-deb --root-owner-group -Zxz -b "$tmp/p" "$deb" >/dev/null
echo "$deb"
