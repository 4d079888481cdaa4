#!/usr/bin/env bash
# An emulated 64-bit Raspberry Pi OS (Debian bookworm arm64 under qemu-user) to try a device pack in, as root.
# scripts/setup-arm64.sh must have run (it caches the pristine root under /var/cache/edgekit/arm64).
#   scripts/arm64-root.sh try PACK.tar.gz [DIR]   new + install (time, size) + `edgekit-agent verify` and `bench`
#                                                 (latency, RSS) of the served bundle, then remove
#   scripts/arm64-root.sh new DIR                 a fresh copy of the cached root with /proc mounted. Not /sys:
#                                                 LiteRT's cpuinfo then segfaults under qemu. Not the host's /dev:
#                                                 debootstrap made the nodes the agent needs, and a stray `rm -rf`
#                                                 of a root left mounted cannot reach the host's devices
#   scripts/arm64-root.sh install DIR PACK        unpack PACK into DIR/tmp/pack and run its install.sh there, offline
#   scripts/arm64-root.sh run DIR CMD...          run CMD inside (e.g. edgekit-agent verify ...); the host's network
#   scripts/arm64-root.sh remove DIR              unmount and delete
# Emulated timings are not a Pi's: only sizes, memory and correctness carry over.
set -euo pipefail
CACHE=${EDGEKIT_ARM64_CACHE:-/var/cache/edgekit/arm64}
BASE=$CACHE/bookworm-root
say() { echo "arm64-root: $*" >&2; }
die() {
  say "$*"
  exit 1
}

new() {
  [ -f "$BASE/.edgekit-ready" ] || die "no cached root in $BASE: run scripts/setup-arm64.sh (as root) first"
  [ ! -e "$1" ] || die "$1 exists: remove it first (scripts/arm64-root.sh remove $1)"
  cp -a "$BASE" "$1"
  mount -t proc proc "$1/proc"
}

remove() {
  if mountpoint -q "$1/proc"; then umount "$1/proc" || umount -l "$1/proc"; fi
  rm -rf --one-file-system "$1"
}

install_pack() {
  rm -rf "$1/tmp/pack" && mkdir -p "$1/tmp/pack"
  tar -xzf "$2" -C "$1/tmp/pack"
  local t0=$SECONDS
  chroot "$1" /bin/sh /tmp/pack/install.sh
  say "install took $((SECONDS - t0)) s; /opt/edgekit is $(du -sm "$1/opt/edgekit" | cut -f1) MiB"
}

inside() {
  local dir=$1
  shift
  chroot "$dir" /usr/bin/env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"
}

cmd=${1:-}
[ "$(id -u)" = 0 ] || die "needs root (chroot, mount)"
case "$cmd" in
  new) new "$2" ;;
  remove) remove "$2" ;;
  install) install_pack "$2" "$3" ;;
  run)
    dir=$2
    shift 2
    inside "$dir" "$@"
    ;;
  try)
    pack=$(realpath "$2")
    dir=${3:-$(mktemp -d /tmp/edgekit-arm64.XXXXXX)/root}
    new "$dir"
    trap 'remove "$dir"' EXIT
    install_pack "$dir" "$pack"
    bundle=$(sed -n 's/^bundle = "\(.*\)"/\1/p' "$dir/etc/edgekit/agent.toml")
    keys=()
    if grep -q '^trusted_keys' "$dir/etc/edgekit/agent.toml"; then keys=(--trusted-keys /etc/edgekit/keys); fi
    inside "$dir" edgekit-agent verify "$bundle" "${keys[@]}"
    inside "$dir" edgekit-agent bench "$bundle" --runs 50
    ;;
  *)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
