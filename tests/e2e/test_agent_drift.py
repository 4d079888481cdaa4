"""Drift statistics of the serving loop against the reference the real build pipeline wrote into the bundle:
in-distribution digits keep PSI low, inverted digits (a broken camera, a changed background) push it up."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.serve.agent import Agent
from edgekit_agent.serve.config import AgentSettings

from fixtures_models import digits_arrays


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, "PNG")
    return buf.getvalue()


def test_psi_is_low_in_distribution_and_high_for_inverted_inputs(digits_bundle: Path, tmp_path: Path):
    bundle = load_bundle(digits_bundle)
    ref = bundle.manifest.reference
    assert {"input_mean", "class_freq", "confidence"} <= set(ref), "the build pipeline writes the drift reference"
    agent = Agent(bundle, AgentSettings(device_id="drift", data_dir=tmp_path))
    x, y = digits_arrays()
    images = (x[::3, :, :, 0] * 255).round().astype("uint8")
    labels = y[::3]

    for img, label in zip(images, labels):
        agent.serve_file(png(img), label=int(label))
    normal = agent.recorder.snapshot_and_reset()
    for img, label in zip(images, labels):
        agent.serve_file(png(255 - img), label=int(label))
    inverted = agent.recorder.snapshot_and_reset()

    n = len(images)
    assert normal["drift"]["input_mean"]["n"] == n and sum(normal["drift"]["input_mean"]["counts"]) == n
    assert normal["accuracy"]["accuracy"] > 0.9
    # Stable (PSI < 0.1 is the usual "no shift" rule of thumb) on the data the reference describes...
    assert normal["drift"]["input_mean"]["psi"] < 0.1
    assert normal["drift"]["predicted_class"]["psi"] < 0.1
    # ...and an unmistakable shift (PSI > 0.25 is the usual "act now") when the inputs change.
    assert inverted["drift"]["input_mean"]["psi"] > 1.0
    assert inverted["drift"]["predicted_class"]["psi"] > 0.25
    assert inverted["accuracy"]["accuracy"] < 0.5
