#!/usr/bin/env bash
# Deployment checks: the systemd unit (verify with no warnings, security exposure threshold), ARM
# release builds that run under qemu, and the .deb packages (contents, info, extracted paths).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tdir=$(realpath "${CARGO_TARGET_DIR:-target}" 2>/dev/null || echo "$(pwd)/target")

echo "== host release build"
cargo build --locked --release
ls -l "$tdir/release/ser2mqtt"

echo "== systemd unit"
bin=$tdir/release/ser2mqtt
# verify checks that ExecStart's binary exists; point it at the one just built.
sed "s|/usr/bin/ser2mqtt|$bin|g" systemd/ser2mqtt.service > "$work/ser2mqtt.service"
out=$(systemd-analyze verify "$work/ser2mqtt.service" 2>&1 || true)
# verify exits 0 even on unknown keys such as WatchdogSecc: fail on anything it prints.
if [ -n "$out" ]; then echo "$out"; echo "systemd-analyze verify printed warnings" >&2; exit 1; fi
# --threshold is in tenths: 25 means an overall exposure above 2.5 fails.
systemd-analyze security --offline=true --threshold=25 "$work/ser2mqtt.service" | tail -1

echo "== ARM builds"
for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    cargo build --locked --release --target "$t"
    ls -l "$tdir/$t/release/ser2mqtt"
    .ci/arm-smoke.sh "$t"
done

echo "== packages"
for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf host; do
    if [ "$t" = host ]; then args=(); else args=(--target "$t"); fi
    deb=$(packaging/deb.sh "${args[@]}" --output "$work" | tail -1)
    echo "$deb"
    dpkg-deb --info "$deb"
    dpkg-deb --contents "$deb"
    dpkg-deb --info "$deb" conffiles | grep -qx /etc/ser2mqtt/ser2mqtt.yaml
done
host=$(ls "$work"/*_amd64.deb)
root="$work/root"
dpkg -x "$host" "$root"
for p in usr/bin/ser2mqtt etc/ser2mqtt/ser2mqtt.yaml usr/lib/systemd/system/ser2mqtt.service usr/share/doc/ser2mqtt/examples/nmea-gps.yaml; do
    [ -e "$root/$p" ] || { echo "missing in package: /$p" >&2; exit 1; }
done
"$root/usr/bin/ser2mqtt" check --config "$root/etc/ser2mqtt/ser2mqtt.yaml"
dpkg-deb --ctrl-tarfile "$host" | tar -xO ./postinst | grep -q 'adduser --system'
# Every file is listed in md5sums with its right sum (what `dpkg --verify` checks once installed).
dpkg-deb --ctrl-tarfile "$host" | tar -xO ./md5sums | (cd "$root" && md5sum --quiet -c -)
[ -e "$root/usr/share/man/man1/ser2mqtt.1.gz" ] && [ -e "$root/usr/share/doc/ser2mqtt/changelog.Debian.gz" ]
if command -v lintian >/dev/null; then
    # Errors and warnings fail the build; the tags we accept are overridden in the package itself
    # (packaging/lintian/ser2mqtt), each with its reason.
    lintian --fail-on error,warning "$host"
fi
echo "packages ok"
