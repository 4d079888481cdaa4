"""``edgekit-agent infer``, ``bench`` and ``verify`` on audio and sensor bundles: .wav and .csv files where an
image bundle takes images, the self-test from raw samples in their reports, a tampered spec refused (exit 5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.cli.app import main
from edgekit_agent.contract.errors import ExitStatus

from media_models import write_files
from tamper import edit_spec


@pytest.mark.parametrize("kind", ["audio", "sensor"])
def test_infer_classifies_wav_and_csv_files(kind: str, request: pytest.FixtureRequest, tmp_path: Path, capsys):
    bundle = request.getfixturevalue(f"{kind}_bundle")
    capsys.readouterr()  # the converter's output, when this test built the bundle
    files = write_files(kind, tmp_path / "in", per_class=2, seed=21)
    assert main(["infer", str(bundle), *(str(p) for p, _ in files), "--json"]) == ExitStatus.OK
    results = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in results] == [str(p) for p, _ in files]
    b = load_bundle(bundle)
    pre = b.preprocessor()
    with b.open_runtime(num_threads=1) as rt:
        want = [b.manifest.labels[int(np.argmax(rt.invoke(pre(p))))] for p, _ in files]
    assert [r["label"] for r in results] == want
    assert sum(w == label for w, (_, label) in zip(want, files)) >= len(files) - 1


def test_infer_reports_a_broken_wav_and_exits_3(audio_bundle: Path, tmp_path: Path, capsys):
    capsys.readouterr()
    (p, _), *_ = write_files("audio", tmp_path / "in", per_class=1, seed=22)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    assert main(["infer", str(audio_bundle), str(p), str(bad)]) == ExitStatus.BAD_INPUT
    captured = capsys.readouterr()
    assert str(p) in captured.out and "bad.wav: the WAV file has no audio data" in captured.err


@pytest.mark.parametrize("kind", ["audio", "sensor"])
def test_bench_and_verify_report_the_selftest_from_raw_samples(kind: str, request: pytest.FixtureRequest, capsys):
    bundle = request.getfixturevalue(f"{kind}_bundle")
    capsys.readouterr()  # the converter's output, when this test built the bundle
    assert main(["bench", str(bundle), "--runs", "10", "--threads", "1", "--json"]) == ExitStatus.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["steady"]["count"] == 10 and doc["selftest"]["passed"] and doc["selftest"]["input_max_abs_diff"] <= 1
    assert main(["verify", str(bundle)]) == ExitStatus.OK
    assert "(inputs computed from raw samples, max |diff|" in capsys.readouterr().out


def test_verify_refuses_a_tampered_feature_spec_with_exit_5(sensor_bundle: Path, tmp_path: Path, capsys):
    capsys.readouterr()
    d = edit_spec(sensor_bundle, tmp_path, std=[9.0, 9.0, 9.0])
    assert main(["verify", str(d)]) == ExitStatus.BUNDLE_REJECTED
    err = capsys.readouterr().err
    assert "the sensor features this device computes from the golden raw samples differ" in err
