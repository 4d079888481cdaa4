#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: sets up .venv and .venv-legacy, installs mosquitto, espeak-ng and
# prometheus (Debian packages; the tests start their own brokers and Prometheus on free ports), as root the
# emulated arm64 Pi (scripts/setup-arm64.sh, cached in /var/cache/edgekit/arm64), then pytest.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "test: installing mosquitto (Debian package)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients) >/dev/null
  else
    echo "test: mosquitto is needed: sudo apt-get install mosquitto" >&2
    exit 1
  fi
fi
if ! command -v espeak-ng >/dev/null 2>&1; then  # speaks the synthetic keyword clips of the audio tests
  if [ "$(id -u)" = 0 ]; then
    echo "test: installing espeak-ng (Debian package)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends espeak-ng) >/dev/null
  else
    echo "test: espeak-ng is not installed (sudo apt-get install espeak-ng): the keyword-spotting tests will skip" >&2
  fi
fi
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "test: installing prometheus (Debian package)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null
  else
    echo "test: prometheus is not installed (sudo apt-get install prometheus): tests/e2e/test_prometheus.py will skip" >&2
  fi
fi
# The services the packages may start are not wanted: tests run their own on free ports.
if command -v systemctl >/dev/null 2>&1; then systemctl stop mosquitto prometheus >/dev/null 2>&1 || true; fi
if [ -x /etc/init.d/prometheus ]; then /etc/init.d/prometheus stop >/dev/null 2>&1 || true; fi  # no systemd
bash scripts/setup.sh
bash scripts/setup-legacy.sh
# The emulated arm64 Pi of tests/e2e/test_arm64_pack.py needs root (binfmt_misc, debootstrap); without it that test
# skips and says why.
if [ "$(id -u)" = 0 ]; then bash scripts/setup-arm64.sh; fi
exec .venv/bin/python -m pytest "$@"
