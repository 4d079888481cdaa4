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
def digits_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits demo as an image folder (what `edgekit datasets digits` writes), once per session."""
    from fixtures_models import write_digits_dataset

    return write_digits_dataset(tmp_path_factory.mktemp("digits-data"))


@pytest.fixture(scope="session")
def digits_build(digits_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """The ``BuildResult`` of the real `edgekit build` pipeline (few epochs) on the digits folder for
    raspberry-pi-4, once per session; its trained model is ``digits_build.model_file``."""
    from fixtures_models import build_digits

    return build_digits(digits_dataset, tmp_path_factory.mktemp("digits-bundle"))


@pytest.fixture(scope="session")
def digits_bundle(digits_build) -> Path:
    """A real bundle (directory) for the digits CNN on raspberry-pi-4, built once per session by
    `edgekit.build` (real training, real converter). The archive is next to it:
    ``digits_bundle.parent / (digits_bundle.name + '.tar.gz')``.
    """
    return digits_build.profiles[0].directory


@pytest.fixture(scope="session")
def digits_splits(digits_dataset: Path):
    """The digits folder loaded and split (seed 0) with `edgekit.pipeline.data`, once per session."""
    from edgekit.pipeline.data import load_dataset, split_dataset

    return split_dataset(load_dataset(digits_dataset), seed=0)


@pytest.fixture(scope="session")
def digits_trained(digits_splits):
    """The `edgekit.pipeline.train.TrainResult` of a digits CNN trained for one (augmented) epoch; once per session."""
    from edgekit.pipeline.train import train_model

    return train_model(digits_splits, epochs=1, seed=0)


@pytest.fixture(scope="session")
def digits_model(digits_trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``digits_trained``'s model saved as .keras; once per session."""
    from edgekit.pipeline.train import save_model

    return save_model(digits_trained.model, tmp_path_factory.mktemp("digits-model") / "digits.keras")


@pytest.fixture(scope="session")
def digits_int8(digits_model: Path, digits_splits):
    """`edgekit.pipeline.convert.convert_int8` of ``digits_model`` (int8 in/out, with the float32 twin);
    once per session."""
    from edgekit.pipeline.convert import convert_int8

    return convert_int8(digits_model, digits_splits.train.x, num_samples=100, seed=0, with_float=True, name="digits")


@pytest.fixture(scope="session")
def audio_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ``tones`` audio bundle (sine tones → log-mel → int8), built once per session."""
    from media_models import build_media_bundle

    return build_media_bundle("audio", tmp_path_factory.mktemp("audio-bundle"))


@pytest.fixture(scope="session")
def sensor_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ``gestures`` sensor bundle (synthetic accelerometer windows → int8), built once per session."""
    from media_models import build_media_bundle

    return build_media_bundle("sensor", tmp_path_factory.mktemp("sensor-bundle"))
