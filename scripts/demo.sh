#!/usr/bin/env bash
# The one-command tour (the README's first command). From a fresh clone: sets up .venv (scripts/setup.sh),
# builds digit-classifier bundles for a Raspberry Pi and an MCU (fit table), starts a development MQTT
# broker and three simulated devices fed with labelled images, shows the live fleet view, benchmarks one
# device remotely, prints where everything went, and stops everything it started (also on Ctrl-C).
# The broker is mosquitto when it is installed, else the embedded pure-Python amqtt (installed with the
# venv; MQTT 3.1.1, which the agents and tools negotiate by themselves): nothing else is needed, and this
# script installs no system packages. --broker URL uses your broker instead.
# Usage: scripts/demo.sh [--short] [--broker mqtt://HOST:PORT] [--broker-engine auto|mosquitto|amqtt] [--workdir DIR] [--rebuild]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# exec: Ctrl-C and SIGTERM go straight to `edgekit demo`, which stops its agents, exporter and broker, and
# its exit status is this script's: a failed step exits with that step's documented code (e.g. 3 when the
# build refuses the dataset), its own error printed above the demo's.
exec .venv/bin/edgekit demo "$@"
