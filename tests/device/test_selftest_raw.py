"""The self-test of audio and sensor bundles starts from the golden samples' raw input: the device computes the
features itself, so a bundle whose features it computes differently (a tampered spec, changed raw samples) is
refused, saying how many samples differ and by how much. Image bundles run their stored inputs as before."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.bundle.selftest import load_golden, run_selftest
from edgekit_agent.contract.errors import BundleError, SelfTestError

from tamper import copy_bundle, edit_spec, rehash


def edit_golden(src: Path, tmp_path: Path, *, drop: str | None = None, **arrays: np.ndarray) -> Path:
    d = copy_bundle(src, tmp_path)
    with np.load(d / "golden.npz") as npz:
        golden = {k: npz[k] for k in npz.files if k != drop}
    golden.update(arrays)
    buf = io.BytesIO()
    np.savez_compressed(buf, **golden)
    (d / "golden.npz").write_bytes(buf.getvalue())
    rehash(d)
    return d


@pytest.mark.parametrize("kind", ["audio", "sensor"])
def test_the_selftest_computes_the_inputs_from_raw_samples_and_passes(kind: str, request: pytest.FixtureRequest):
    bundle = load_bundle(request.getfixturevalue(f"{kind}_bundle"))
    golden = load_golden(bundle)
    spec = bundle.manifest.preprocess
    assert golden.raw is not None and golden.raw.dtype == np.float32
    assert golden.raw.shape == ((8, spec.clip_samples) if kind == "audio" else (8, spec.window, len(spec.channels)))
    r = run_selftest(bundle)
    assert r.passed and r.samples == 8 and r.input_max_abs_diff is not None and r.input_max_abs_diff <= 1
    assert "inputs computed from raw samples" in r.summary() and json.dumps(r.to_dict())


def test_an_image_bundle_runs_its_stored_inputs(digits_bundle: Path):
    r = run_selftest(load_bundle(digits_bundle))
    assert r.passed and r.input_max_abs_diff is None and "raw" not in r.summary()
    assert load_golden(load_bundle(digits_bundle)).raw is None


@pytest.mark.parametrize(
    ("kind", "changes"),
    [
        ("audio", {"mean": 0.5}),  # normalisation shifted
        ("audio", {"fmax": 3000.0}),  # same shape, other mel bands
        ("sensor", {"mean": [0.3, 0.0, 0.0]}),
        ("sensor", {"channels": ["ay", "ax", "az"], "mean": "swap", "std": "swap"}),  # channel order swapped
    ],
)
def test_a_tampered_feature_spec_fails_saying_how_many_samples_differ_and_by_how_much(
    kind: str, changes: dict, request: pytest.FixtureRequest, tmp_path: Path
):
    src = request.getfixturevalue(f"{kind}_bundle")
    spec = json.loads((src / "manifest.json").read_bytes())["preprocess"]
    for key, value in changes.items():
        if value == "swap":
            changes[key] = [spec[key][1], spec[key][0], spec[key][2]]
    bundle = load_bundle(edit_spec(src, tmp_path, **changes))  # the verifier accepts it
    with pytest.raises(SelfTestError) as info:
        run_selftest(bundle)
    msg = str(info.value)
    assert f"the {kind} features this device computes from the golden raw samples differ" in msg
    assert "of 8 samples, by up to" in msg and "(tolerance 1;" in msg and "rebuild the bundle" in msg
    worst = int(msg.split("by up to ")[1].split(" ")[0])
    assert worst > 1


def test_a_spec_that_does_not_fit_the_model_fails_the_selftest(audio_bundle: Path, tmp_path: Path):
    bundle = load_bundle(edit_spec(audio_bundle, tmp_path, n_mels=20))
    with pytest.raises(
        SelfTestError, match=r"the manifest's audio preprocess spec cannot compute inputs.*\(1, 30, 20, 1\)"
    ):
        run_selftest(bundle)


@pytest.mark.parametrize("kind", ["audio", "sensor"])
def test_changed_raw_samples_fail(kind: str, request: pytest.FixtureRequest, tmp_path: Path):
    src = request.getfixturevalue(f"{kind}_bundle")
    raw = load_golden(load_bundle(src)).raw.copy()
    raw[2] = raw[2][::-1] * 0.5 + 0.1  # one sample: another signal
    with pytest.raises(SelfTestError, match=r"differ from the workstation's on 1 of 8 samples, by up to \d+ raw units"):
        run_selftest(load_bundle(edit_golden(src, tmp_path, raw=raw)))


def test_an_audio_bundle_without_raw_samples_is_refused(audio_bundle: Path, tmp_path: Path):
    with pytest.raises(BundleError, match=r"needs the raw samples \('raw'\).*rebuild the bundle"):
        run_selftest(load_bundle(edit_golden(audio_bundle, tmp_path, drop="raw")))


def test_raw_samples_not_matching_the_inputs_in_number_are_refused(sensor_bundle: Path, tmp_path: Path):
    raw = load_golden(load_bundle(sensor_bundle)).raw[:5]
    with pytest.raises(BundleError, match="5 raw samples for 8 inputs"):
        run_selftest(load_bundle(edit_golden(sensor_bundle, tmp_path, raw=raw)))
