#!/usr/bin/env bash
# A small device-only environment on the fallback runtime: tflite-runtime 2.14 + numpy<2, no TensorFlow (what a
# pack made with `edgekit pack --runtime tflite-runtime` installs on a 64-bit device).
# Usage: scripts/setup-legacy.sh   (creates .venv-legacy; the tests use it when it exists)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv-legacy
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.edgekit-installed"
want=$(cat pyproject.toml requirements/lock-legacy.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -c requirements/lock-legacy.txt -e ".[device-legacy]"
  echo "$want" > "$stamp"
fi
