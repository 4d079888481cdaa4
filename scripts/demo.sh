#!/usr/bin/env bash
# The one-command tour (the README's first command). From a fresh clone: sets up .venv (scripts/setup.sh),
# builds digit-classifier bundles for a Raspberry Pi and an MCU (fit table), starts a development MQTT
# broker and three simulated devices fed with labelled images, shows the live fleet view, benchmarks one
# device remotely, prints where everything went, and stops everything it started (also on Ctrl-C).
# Usage: scripts/demo.sh [--short] [--broker mqtt://HOST:PORT] [--workdir DIR] [--rebuild]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The development broker is mosquitto when installed (MQTT 5, what the agents speak); offer it.
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ] && [[ " $* " != *" --broker"* ]]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "demo: installing mosquitto (Debian package) for the development broker" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto) >/dev/null
    if command -v systemctl >/dev/null 2>&1; then systemctl stop mosquitto >/dev/null 2>&1 || true; fi
  else
    echo "demo: the agents speak MQTT 5: install mosquitto (sudo apt-get install mosquitto) or pass --broker mqtt://HOST:PORT" >&2
    exit 7
  fi
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# exec: Ctrl-C and SIGTERM go straight to `edgekit demo`, which stops its agents, exporter and broker.
exec .venv/bin/edgekit demo "$@"
