#!/usr/bin/env bash
# Refresh the lock files: resolve pyproject.toml's ranges afresh in throw-away venvs and pin what was resolved.
# scripts/setup.sh and scripts/setup-legacy.sh install with these as constraints, so a fresh machine gets the
# versions CI tested. Run it, run scripts/test.sh, commit requirements/*.txt with the result.
# Usage: scripts/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
lock() {  # lock EXTRAS OUTPUT
  "$PY" -m venv "$tmp/$1"
  "$tmp/$1/bin/pip" install -q --upgrade pip
  "$tmp/$1/bin/pip" install -q ".[$1]"
  {
    echo "# Tested versions for edgekit[$1] on $("$PY" --version 2>&1), $(uname -m). Refresh: scripts/lock.sh"
    "$tmp/$1/bin/pip" freeze --exclude edgekit --all | grep -vE '^(pip|wheel)=='
  } > "$2"
  echo "lock: wrote $2 ($(grep -vc '^#' "$2") packages)" >&2
}
lock host,import,device,dev requirements/lock.txt
lock device-legacy requirements/lock-legacy.txt
