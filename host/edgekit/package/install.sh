#!/bin/sh
# Install the edgekit agent from this pack (made by `edgekit pack` for @@PLATFORM@@, Python @@PYTHON@@, @@RUNTIME@@),
# with no network. As root:
#   sh install.sh               install, or upgrade in place: a venv in @@PREFIX@@ (nothing goes into the system
#                               Python), edgekit-agent on PATH, bundles, keys, /etc/edgekit/agent.toml (first install
#                               only), the systemd unit, enabled and (re)started where systemd runs
#   sh install.sh --uninstall   remove the venv, the command and the service; keep /etc/edgekit (config, keys) and
#                               /var/lib/edgekit-agent (outbox, OTA slots): delete those by hand to forget the device
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=@@PREFIX@@
ETC=/etc/edgekit
UNIT=/etc/systemd/system/edgekit-agent.service
KIND="@@PLATFORM@@ @@PYTHON@@ @@RUNTIME@@"
say() { echo "edgekit install: $*" >&2; }
die() {
  say "$*"
  exit 1
}
systemd_running() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

[ "$(id -u)" = 0 ] || die "run as root: sudo sh $0"

if [ "${1:-}" = --uninstall ]; then
  if systemd_running; then systemctl disable --now edgekit-agent >/dev/null 2>&1 || true; fi
  rm -f "$UNIT" /usr/local/bin/edgekit-agent
  if systemd_running; then systemctl daemon-reload; fi
  rm -rf "$PREFIX"
  say "removed $PREFIX, /usr/local/bin/edgekit-agent and the service; kept $ETC and /var/lib/edgekit-agent"
  exit 0
fi
[ $# = 0 ] || die "unknown argument '$1'; usage: sh install.sh [--uninstall]"

command -v python3 >/dev/null 2>&1 || die "python3 is missing (Raspberry Pi OS and Debian ship it): apt-get install python3"
# The Python's platform, not `uname -m`: a 32-bit userland on a 64-bit kernel says aarch64 there.
found=$(python3 -c 'import sys, sysconfig; print(sysconfig.get_platform(), "%d.%d" % sys.version_info[:2])')
[ "$found" = "@@PLATFORM@@ @@PYTHON@@" ] || die "this pack is for @@PLATFORM@@ with Python @@PYTHON@@; this device \
has $found. Make a pack for it on the workstation: edgekit pack BUNDLE --platform ${found% *} --python ${found#* } \
(linux-armv7l cannot be packed: see the platform table in README.md)."

start=$(date +%s)
# The pack's wheels and nothing else, whatever a pip.conf or PIP_* variables here say (an index, more find-links).
for var in $(env | sed -n 's/^\(PIP_[A-Z0-9_]*\)=.*/\1/p'); do unset "$var"; done
export PIP_CONFIG_FILE=/dev/null
# Another Python or runtime: rebuild the venv rather than leave the old runtime's packages beside the new ones.
if [ -x "$PREFIX/bin/python" ] && [ "$(cat "$PREFIX/.edgekit-pack" 2>/dev/null)" != "$KIND" ]; then
  say "replacing the venv in $PREFIX ($(cat "$PREFIX/.edgekit-pack" 2>/dev/null || echo unknown) -> $KIND)"
  rm -rf "$PREFIX"
fi
# --without-pip: Debian's venv needs python3-venv (ensurepip) for pip; pip comes from the pack's own wheel.
[ -x "$PREFIX/bin/python" ] || python3 -m venv --without-pip "$PREFIX"
if ! "$PREFIX/bin/python" -c 'import pip' >/dev/null 2>&1; then
  # A wheel is its installed layout, so pip's unzipped into site-packages is pip. Not run from the zip instead:
  # zipimport compiles every module again on every start (minutes under emulation or on a Pi Zero).
  set -- "$HERE"/wheels/pip-*.whl
  "$PREFIX/bin/python" -c 'import sys, sysconfig, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sysconfig.get_paths()["purelib"])' "$1"
fi
pip() { "$PREFIX/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --no-index --find-links "$HERE/wheels" --upgrade pip "$HERE/wheels/@@AGENT_WHEEL@@[@@EXTRA@@]"
# Same version, newer build (a pack made from a later checkout): pip would call it satisfied.
pip install --no-index --no-deps --force-reinstall "$HERE/wheels/@@AGENT_WHEEL@@"
echo "$KIND" >"$PREFIX/.edgekit-pack"
cp "$HERE/pack.json" "$PREFIX/pack.json"
install -d -m 755 "$PREFIX/bundles" "$PREFIX/docs"
install -m 644 "$HERE"/bundles/* "$PREFIX/bundles/"
install -m 644 "$HERE"/docs/* "$PREFIX/docs/"
ln -sf "$PREFIX/bin/edgekit-agent" /usr/local/bin/edgekit-agent

install -d -m 755 "$ETC"
if [ -d "$HERE/keys" ]; then
  install -d -m 755 "$ETC/keys"
  install -m 644 "$HERE"/keys/*.pub "$ETC/keys/"
fi
device_id=$(uname -n | tr -c 'A-Za-z0-9_.\n-' '-' | cut -c1-64)
if [ -f "$ETC/agent.toml" ]; then
  sed "s/@@DEVICE_ID@@/$device_id/g" "$HERE/agent.toml" >"$ETC/agent.toml.pack"
  say "kept your $ETC/agent.toml (this pack's is $ETC/agent.toml.pack)"
else
  sed "s/@@DEVICE_ID@@/$device_id/g" "$HERE/agent.toml" >"$ETC/agent.toml"
  say "wrote $ETC/agent.toml (device_id $device_id): set [broker] url there"
fi
if ! id edgekit >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/edgekit-agent --no-create-home --shell /usr/sbin/nologin edgekit
fi
install -d -o edgekit -g edgekit -m 755 /var/lib/edgekit-agent /srv/camera
install -m 644 "$HERE/edgekit-agent.service" "$UNIT"

if systemd_running; then
  systemctl daemon-reload
  systemctl enable edgekit-agent >/dev/null 2>&1
  systemctl restart edgekit-agent
  say "service edgekit-agent enabled and (re)started: journalctl -u edgekit-agent -f"
else
  say "systemd is not running here (a container or chroot?): the service is not enabled; the unit is in $UNIT," \
    "on a booted system run: systemctl enable --now edgekit-agent"
fi
say "edgekit-agent $("$PREFIX/bin/edgekit-agent" --version | cut -d' ' -f2) (@@RUNTIME@@) installed in $PREFIX" \
  "in $(($(date +%s) - start)) s"
