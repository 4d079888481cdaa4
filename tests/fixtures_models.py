"""Small real models and bundles for tests (real Keras training, real TFLite converter, via `edgekit.build`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Few epochs keep the session fixture fast: the CNN trains on the images plus four shifted copies, so
# 2 epochs already give a usable classifier (the demo's default run and its figures are in
# scripts/bench_host.py, not in the tests).
FIXTURE_EPOCHS = 2


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits as float32 (N, 8, 8, 1) in [0, 1] and int labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype("float32")[..., None], d.target.astype("int64")


def write_digits_dataset(out: Path) -> Path:
    """The demo image folder (`edgekit datasets digits`) at ``out/digits``."""
    from edgekit.pipeline.data import write_digits

    return write_digits(Path(out) / "digits").directory


def build_digits(dataset: Path, out: Path, profiles: tuple[str, ...] = ("raspberry-pi-4",)) -> Any:
    """Run the real `edgekit build` pipeline on the digits folder; returns its BuildResult."""
    from edgekit.build import build

    return build(dataset, list(profiles), out, epochs=FIXTURE_EPOCHS, seed=0)


def _pipeline_key() -> str:
    """What a cached digits bundle was built by: this file and the host modules that make the model."""
    import hashlib

    host = Path(__file__).resolve().parents[1] / "host" / "edgekit"
    h = hashlib.sha256(Path(__file__).read_bytes())
    for name in (
        "pipeline/data.py",
        "pipeline/zoo.py",
        "pipeline/train.py",
        "pipeline/convert.py",
        "build.py",
        "package/writer.py",
    ):
        h.update((host / name).read_bytes())
    return h.hexdigest()


def build_digits_bundle(out: Path) -> Path:
    """The digits bundle directory for raspberry-pi-4 (the archive is next to it); stamped with the pipeline
    that built it, so benchmark scripts can tell a cached bundle from a stale one (:func:`current_digits_bundle`)."""
    result = build_digits(write_digits_dataset(out), Path(out) / "bundles")
    (Path(out) / "pipeline.sha256").write_text(_pipeline_key())
    return result.profiles[0].directory


def current_digits_bundle(out: Path) -> Path | None:
    """A digits bundle built into ``out`` by today's fixture and pipeline, or None (missing or stale)."""
    stamp = Path(out) / "pipeline.sha256"
    found = sorted(Path(out).glob("**/digits-raspberry-pi-4/manifest.json"))
    if found and stamp.is_file() and stamp.read_text().strip() == _pipeline_key():
        return found[0].parent
    return None
