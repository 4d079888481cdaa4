#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment .venv with everything: host (TensorFlow), device, dev.
# Idempotent: a second run with an unchanged pyproject.toml and lock does nothing. Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${EDGEKIT_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PY --version)" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
stamp="$VENV/.edgekit-installed"
want=$(cat pyproject.toml requirements/lock.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing edgekit[host,import,device,dev] into $VENV (TensorFlow is ~600 MB the first time)" >&2
  # The lock pins the versions CI tested (scripts/lock.sh refreshes it); pyproject.toml keeps the ranges.
  "$VENV/bin/pip" install -q -c requirements/lock.txt -e ".[host,import,device,dev]"
  echo "$want" > "$stamp"
fi
