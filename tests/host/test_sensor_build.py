"""`edgekit build` on synthetic gestures for the three MCU profiles, with the real pipeline (training, the real
converter, LiteRT, the TFLite Micro interpreter): int8 accuracy well above chance, the exact arena, the header
constants firmware normalises with, and host and device computing the same input from the same CSV file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgekit.build import BuildResult, build
from edgekit.cli import main
from edgekit.fit.mcu import MODEL_DATA_H, MODEL_SENSOR_H
from edgekit.fit.tflm import measure_arena
from edgekit.pipeline.data import load_dataset, load_sensor_folder, split_dataset
from edgekit.pipeline.motion import CHANNELS, gesture_recording, write_gestures
from edgekit.pipeline.sensor_data import Windowing, normalise_on_train
from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.bundle.selftest import run_selftest
from edgekit_agent.contract.errors import UsageError
from edgekit_agent.contract.manifest import SensorSpec
from edgekit_agent.infer.preprocess import quantize

MCU_PROFILES = ("rp2040", "arduino-nano-33-ble-sense", "esp32-s3")
WINDOWING = Windowing(window=2.0, stride=1.0)


@pytest.fixture(scope="session")
def gestures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gestures(
        tmp_path_factory.mktemp("motion") / "gestures", recordings=12, seconds=(5, 8), seed=1
    ).directory


@pytest.fixture(scope="session")
def gesture_build(gestures: Path, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return build(gestures, MCU_PROFILES, tmp_path_factory.mktemp("out"), epochs=15, windowing=WINDOWING)


def test_builds_for_every_mcu_profile_well_above_chance(gesture_build: BuildResult) -> None:
    assert gesture_build.arch == "conv1d"
    assert [p.profile for p in gesture_build.profiles] == list(MCU_PROFILES)
    for p in gesture_build.profiles:
        assert p.fits, p.fit_summary
        assert p.chance <= 0.3 and p.int8_accuracy >= p.chance + 0.4, (p.int8_accuracy, p.chance)
        assert abs(p.int8_accuracy - p.float_accuracy) <= 0.05


def test_the_manifest_spec_is_the_training_splits(gesture_build: BuildResult, gestures: Path) -> None:
    spec = gesture_build.profiles[0].manifest.preprocess
    assert isinstance(spec, SensorSpec)
    assert spec.channels == CHANNELS and (spec.window, spec.stride, spec.sample_rate) == (100, 50, 50.0)
    fitted = normalise_on_train(split_dataset(load_sensor_folder(gestures, windowing=WINDOWING), seed=0)).spec
    assert spec == fitted


def test_exact_arena_and_the_ops_every_mcu_profile_registers(gesture_build: BuildResult, capsys) -> None:
    p = gesture_build.profiles[0]
    tflite = (p.directory / "model.tflite").read_bytes()
    fit = json.loads((p.directory / "manifest.json").read_text())["fit"]
    arena = measure_arena(tflite).bytes
    assert fit["arena_bytes"] == arena and 0 < arena < 20_000
    header = (p.directory / MODEL_DATA_H).read_text()
    assert f"kTensorArenaMeasuredSize = {arena};" in header
    assert "EXPAND_DIMS" not in fit["ops"] and "MEAN" not in fit["ops"]
    args = ["check", str(p.directory / "model.tflite"), "--json"]
    for name in MCU_PROFILES:
        args += ["--profile", name]
    assert main(args) == 0, capsys.readouterr().out


def _sensor_constants(text: str) -> dict[str, str]:
    return dict(re.findall(r"constexpr [\w: *]+ (k\w+)(?:\[\w+\])? = (.+?);", text))


def test_sensor_header_carries_what_firmware_normalises_with(gesture_build: BuildResult, tmp_path: Path) -> None:
    p = gesture_build.profiles[1]
    m = p.manifest
    spec = m.preprocess
    text = (p.directory / MODEL_SENSOR_H).read_text()
    c = _sensor_constants(text)
    assert int(c["kChannels"]) == 6 and int(c["kWindowRows"]) == spec.window and int(c["kStrideRows"]) == 50
    assert c["kChannelNames"] == "{" + ", ".join(f'"{ch}"' for ch in spec.channels) + "}"
    assert float(c["kSampleRateHz"].rstrip("f")) == spec.sample_rate
    means = [float(v.rstrip("f")) for v in c["kChannelMean"].strip("{}").split(",")]
    stds = [float(v.rstrip("f")) for v in c["kChannelStd"].strip("{}").split(",")]
    np.testing.assert_array_equal(np.float32(means), np.float32(spec.mean))  # the same float32 the device uses
    np.testing.assert_array_equal(np.float32(stds), np.float32(spec.std))
    tin = m.inputs[0]
    assert np.float32(float(c["kInputScale"].rstrip("f"))) == np.float32(tin.scale)
    assert int(c["kInputZeroPoint"]) == tin.zero_point
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed: the header's syntax is not compiled")
    (tmp_path / "main.cc").write_text(
        f'#include <cstdio>\n#include "{MODEL_SENSOR_H}"\nusing namespace edgekit_model;\n'
        'int main() { std::printf("%d %d %s %.9g %d", kChannels, kWindowRows, kChannelNames[kChannels - 1], '
        "kChannelStd[0], kInputZeroPoint); }\n"
    )
    shutil.copy(p.directory / MODEL_SENSOR_H, tmp_path / MODEL_SENSOR_H)
    subprocess.run(
        ["g++", "-std=c++17", "-Wall", "-Werror", "-o", str(tmp_path / "h"), str(tmp_path / "main.cc")], check=True
    )
    out = subprocess.run([str(tmp_path / "h")], check=True, capture_output=True, text=True).stdout.split()
    assert out[:3] == ["6", "100", "gz"] and np.float32(float(out[3])) == np.float32(spec.std[0])
    assert int(out[4]) == tin.zero_point


def test_host_and_device_compute_the_same_input_from_a_csv(gesture_build: BuildResult, tmp_path: Path) -> None:
    bundle = load_bundle(gesture_build.profiles[0].directory)
    assert run_selftest(bundle).passed
    spec = bundle.manifest.preprocess
    # 300 rows at the spec's rate: the central window starts at row 100, which training cut at stride 50 too.
    rng = np.random.default_rng(7)
    paths = {}
    for gesture in ("wave", "idle"):
        rows = gesture_recording(gesture, 6.0, spec.sample_rate, rng)
        rows[:, 0] = 12.5 + np.arange(len(rows)) / spec.sample_rate
        assert len(rows) == 300
        path = tmp_path / "rec" / gesture / "r.csv"
        path.parent.mkdir(parents=True)
        np.savetxt(path, rows, fmt="%.5f", delimiter=",", header="time," + ",".join(CHANNELS), comments="")
        paths[gesture] = path
    host = load_dataset(tmp_path / "rec", spec)
    pre = bundle.preprocessor()
    for path in paths.values():
        mine = np.flatnonzero(np.asarray(host.files) == str(path))
        assert len(mine) == 5
        central = mine[2]
        np.testing.assert_array_equal(pre.floats(path), host.x[central])
        np.testing.assert_array_equal(pre(path), quantize(host.x[central], pre.tensor)[None, ...])
        np.testing.assert_array_equal(pre.from_raw(host.raw[central]), host.x[central])


def test_window_options_are_for_sensor_folders_only(digits_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--window, --stride and --rate are for folders of CSV"):
        build(digits_dataset, ["rp2040"], tmp_path, windowing=WINDOWING)
