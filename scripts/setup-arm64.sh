#!/usr/bin/env bash
# Prepare this machine for the emulated 64-bit Raspberry Pi test (tests/e2e/test_arm64_pack.py), as root:
# qemu-user-static registered in binfmt_misc (F flag), a Debian bookworm arm64 root file system (what
# Raspberry Pi OS 64-bit is), and the linux-aarch64 / Python 3.11 wheels of both runtime choices, so that the
# test builds and installs packs with no network. Everything is cached under $EDGEKIT_ARM64_CACHE
# (default /var/cache/edgekit/arm64); a second run only checks. Where binfmt_misc cannot be registered (an
# unprivileged container) it says so and exits 0: the test then skips with the same reason.
# Usage: sudo scripts/setup-arm64.sh   (after scripts/setup.sh: the wheels are fetched with .venv's edgekit)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${EDGEKIT_ARM64_CACHE:-/var/cache/edgekit/arm64}
ROOT=$CACHE/bookworm-root
BINFMT=/proc/sys/fs/binfmt_misc
QEMU=/usr/bin/qemu-aarch64-static
say() { echo "setup-arm64: $*" >&2; }
t0=$SECONDS

if [ "$(id -u)" != 0 ]; then
  say "needs root (apt-get, binfmt_misc, debootstrap): sudo $0"
  exit 1
fi
need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ -x "$QEMU" ] || need+=(qemu-user-static)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (Debian packages)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") >/dev/null
fi

# F (fix binary): the kernel opens qemu when it is registered, so chroot needs no copy of qemu inside the root.
[ -e "$BINFMT/register" ] || mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null || true
if [ -e "$BINFMT/qemu-aarch64" ] && ! grep -q '^flags:.*F' "$BINFMT/qemu-aarch64"; then
  echo -1 >"$BINFMT/qemu-aarch64" 2>/dev/null || true
fi
if [ ! -e "$BINFMT/qemu-aarch64" ] && [ -e "$BINFMT/register" ]; then
  magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
  mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
  printf '%s' ":qemu-aarch64:M::$magic:$mask:$QEMU:F" >"$BINFMT/register" 2>/dev/null || true
fi
if ! grep -qs '^flags:.*F' "$BINFMT/qemu-aarch64" || ! grep -qs '^enabled' "$BINFMT/qemu-aarch64"; then
  say "binfmt_misc: qemu-aarch64 could not be registered here (no binfmt_misc, or not allowed): skipping the arm64 set-up"
  exit 0
fi

if [ ! -f "$ROOT/.edgekit-ready" ]; then
  say "debootstrap: Debian bookworm arm64 (minbase + python3) into $ROOT (about 5 min)"
  rm -rf "$ROOT.partial"
  mkdir -p "$CACHE"
  debootstrap --arch=arm64 --variant=minbase --include=python3 bookworm "$ROOT.partial" >"$CACHE/debootstrap.log" 2>&1 \
    || { say "debootstrap failed: see $CACHE/debootstrap.log"; exit 1; }
  # A minimal root keeps apt's downloads: nothing needs them once installed.
  rm -rf "$ROOT.partial"/var/cache/apt/archives/*.deb "$ROOT.partial"/var/lib/apt/lists/*
  rm -rf "$ROOT" && mv "$ROOT.partial" "$ROOT"
  touch "$ROOT/.edgekit-ready"
fi
[ "$(chroot "$ROOT" /usr/bin/python3 -c 'import platform; print(platform.machine())')" = aarch64 ] \
  || { say "$ROOT does not run as aarch64: check binfmt_misc"; exit 1; }

for runtime in litert tflite-runtime; do
  dir=$CACHE/wheels-linux-aarch64-cp311-$runtime
  if [ ! -f "$dir/.edgekit-ready" ] || [ "$(cat "$dir/.edgekit-ready")" != "$(sha256sum pyproject.toml | cut -d' ' -f1)" ]; then
    say "wheels: linux-aarch64, Python 3.11, $runtime into $dir"
    rm -rf "$dir.partial"
    .venv/bin/edgekit pack --fetch-wheels "$dir.partial" --platform linux-aarch64 --python 3.11 --runtime "$runtime" \
      >/dev/null
    sha256sum pyproject.toml | cut -d' ' -f1 >"$dir.partial/.edgekit-ready"
    rm -rf "$dir" && mv "$dir.partial" "$dir"
  fi
done
say "ready in $((SECONDS - t0)) s: root $ROOT, wheels $CACHE/wheels-*"
