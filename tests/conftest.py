"""Shared fixtures. Heavy ones (a trained digits model, its bundle) have session scope: build once, reuse."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # for `from brokers import Mosquitto`
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from brokers import Mosquitto  # noqa: E402


@pytest.fixture()
def mosquitto(tmp_path: Path):
    """A fresh anonymous mosquitto on a free port (function scope: tests may stop and restart it)."""
    broker = Mosquitto(tmp_path / "broker").start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle (directory) for the digits CNN on raspberry-pi-4, built once per session.

    Built with the host pipeline's library functions (real training, real converter). The archive is
    next to it: ``digits_bundle.parent / (digits_bundle.name + '.tar.gz')``.
    """
    from fixtures_models import build_digits_bundle

    return build_digits_bundle(tmp_path_factory.mktemp("digits-bundle"))
