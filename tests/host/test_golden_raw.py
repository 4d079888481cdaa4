"""The bundle writer stores audio and sensor golden samples' raw input, and refuses raw samples whose features
(computed with the device's preprocessor) are not the golden inputs: the build fails, not every device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.package.writer import write_bundle
from edgekit.profiles import load_profile
from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.bundle.selftest import load_golden
from edgekit_agent.contract.errors import BundleError
from edgekit_agent.infer.audio import log_mel

from media_models import TONES


def rewrite(src: Path, out: Path, **kw: object):
    b = load_bundle(src)
    g = load_golden(b)
    spec = b.manifest.preprocess
    args = {
        "name": "tones",
        "profile": load_profile("raspberry-pi-4"),
        "tflite": b.model_path.read_bytes(),
        "preprocess": spec,
        "labels": list(TONES),
        "golden_x": np.stack([log_mel(r, spec) for r in g.raw]),
        "golden_y": g.labels,
        "golden_raw": g.raw,
        "outputs_are": "probabilities",
    }
    return write_bundle(out, **{**args, **kw}), g


def test_raw_golden_samples_are_stored_as_written(audio_bundle: Path, tmp_path: Path):
    info, g = rewrite(audio_bundle, tmp_path)
    again = load_golden(load_bundle(info.directory))
    assert np.array_equal(again.raw, g.raw) and np.array_equal(again.inputs, g.inputs)


def test_raw_samples_that_do_not_give_the_golden_inputs_fail_the_build(audio_bundle: Path, tmp_path: Path):
    raw = load_golden(load_bundle(audio_bundle)).raw
    with pytest.raises(BundleError, match=r"differ from the golden inputs on 8 of 8 samples.*preprocess spec"):
        rewrite(audio_bundle, tmp_path, golden_raw=raw * 0.01)


def test_an_audio_bundle_without_raw_samples_fails_the_build(audio_bundle: Path, tmp_path: Path):
    with pytest.raises(BundleError, match=r"needs the golden samples' raw input \(Dataset.raw\)"):
        rewrite(audio_bundle, tmp_path, golden_raw=None)
