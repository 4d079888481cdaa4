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
