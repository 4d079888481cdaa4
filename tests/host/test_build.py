"""`edgekit build` on the digits demo with the real pipeline (real training, the real converter in its
subprocess, LiteRT): the manifest carries what the contract says, its figures are reproduced here
independently, the archive loads on the device side, and the fit / dtype / --model paths work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.build import BuildResult, build, default_name, plan
from edgekit.cli import main
from edgekit.profiles import load_profile
from edgekit_agent.contract.errors import DatasetError, ExitStatus, FitError, UsageError
from edgekit_agent.contract.manifest import Manifest

CPU_PROFILE = """
name = "{name}"
description = "test board"
target = "cpu"
[tensors]
input_dtype = "{dtype}"
output_dtype = "{dtype}"
[runtime]
num_threads = 1
delegate = "xnnpack"
[memory]
ram_bytes = {ram}
flash_bytes = 1_000_000_000
margin = 0.1
"""


def profile_file(tmp: Path, name: str, dtype: str = "int8", ram: int = 100_000_000) -> Path:
    p = tmp / f"{name}.toml"
    p.write_text(CPU_PROFILE.format(name=name, dtype=dtype, ram=ram))
    return p


@pytest.fixture(scope="session")
def built(digits_build: BuildResult) -> tuple[BuildResult, dict]:
    pb = digits_build.profiles[0]
    assert pb.directory is not None
    return digits_build, json.loads((pb.directory / "manifest.json").read_text())


def test_manifest_has_every_contract_field(built: tuple[BuildResult, dict]) -> None:
    result, m = built
    assert m["name"] == "digits" and m["profile"]["name"] == "raspberry-pi-4"
    assert m["inputs"][0]["dtype"] == "int8" and m["outputs"][0]["dtype"] == "int8"
    assert m["labels"] == [str(i) for i in range(10)]
    assert m["outputs_are"] in ("logits", "probabilities")
    metrics = m["metrics"]
    for key in ("float_accuracy", "int8_accuracy", "samples", "split", "sizes", "qat", "prune"):
        assert key in metrics, key
    assert metrics["split"]["seed"] == 0 and metrics["split"]["test"] == pytest.approx(0.15)
    sizes = metrics["sizes"]
    assert sizes["int8_tflite_bytes"] == (result.profiles[0].directory / "model.tflite").stat().st_size
    assert sizes["int8_float_ratio"] == pytest.approx(
        sizes["int8_tflite_bytes"] / sizes["float_tflite_bytes"], abs=1e-4
    )
    assert sizes["int8_float_ratio"] < 0.3  # full int8 weights: about a quarter of float32
    assert sizes["keras_bytes"] == result.model_file.stat().st_size
    assert m["fit"]["fits"] is True
    ref = m["reference"]
    assert len(ref["input_mean"]["edges"]) == 11 and sum(ref["input_mean"]["freq"]) == pytest.approx(1)
    assert len(ref["class_freq"]) == 10 and sum(ref["class_freq"]) == pytest.approx(1)
    assert ref["confidence"]["edges"][0] == 0.0 and ref["confidence"]["edges"][-1] == 1.0
    assert m["golden"]["samples"] == 16 and m["golden"]["tolerance"] == 1
    written = result.profiles[0].manifest  # the typed manifest the build wrote is the one the device reads
    assert written is not None and written == Manifest.load(result.profiles[0].directory / "manifest.json")


def test_metrics_are_reproduced_independently(built: tuple[BuildResult, dict], digits_dataset: Path) -> None:
    """Re-load the image folder, re-split with the manifest's seed, and run the bundle's model with the
    device's runtime: the same int8 accuracy and the same number of samples."""
    from edgekit.pipeline.data import load_dataset, split_dataset
    from edgekit_agent.bundle.load import load_bundle
    from edgekit_agent.infer.preprocess import quantize

    result, m = built
    split = m["metrics"]["split"]
    test = split_dataset(load_dataset(digits_dataset), val=split["val"], test=split["test"], seed=split["seed"]).test
    b = load_bundle(result.profiles[0].directory)
    rt = b.open_runtime(num_threads=1)
    pred = np.array([int(np.argmax(rt.invoke(quantize(x, b.manifest.inputs[0])[None]))) for x in test.x])
    assert len(test.y) == m["metrics"]["samples"]
    assert np.mean(pred == test.y) == pytest.approx(m["metrics"]["int8_accuracy"], abs=1e-6)
    # int8 tracks float closely, and the demo model is a real classifier.
    assert m["metrics"]["int8_accuracy"] > 0.9
    assert abs(m["metrics"]["float_accuracy"] - m["metrics"]["int8_accuracy"]) < 0.03
    # The float figure is the saved Keras model's accuracy on the same split.
    from edgekit.pipeline.evaluate import evaluate_keras
    from edgekit.pipeline.train import load_model

    float_acc = evaluate_keras(load_model(result.model_file), test.x, test.y).accuracy
    assert float_acc == pytest.approx(m["metrics"]["float_accuracy"], abs=1e-6)


def test_archive_loads_and_self_tests_on_the_device_side(built: tuple[BuildResult, dict], tmp_path: Path) -> None:
    from edgekit_agent.bundle.load import load_bundle
    from edgekit_agent.bundle.selftest import run_selftest

    result, m = built
    archive = result.profiles[0].archive
    assert archive is not None and archive.name == "digits-raspberry-pi-4.tar.gz"
    b = load_bundle(archive, workdir=tmp_path)
    assert b.manifest.name == "digits" and b.signed_by is None
    st = run_selftest(b)
    assert st.samples == 16


def test_plan_is_a_table_of_steps() -> None:
    profiles = [load_profile("raspberry-pi-4"), load_profile("raspberry-pi-5")]
    labels = [label for label, _ in plan(0.5, profiles, from_model=False)]
    assert labels[:3] == ["load and split the dataset", "train", "prune to 50% sparsity"]
    assert sum("raspberry-pi-5" in label for label in labels) == 4
    # A model file is loaded first: its input decides the size and colour mode the dataset is loaded at.
    assert [label for label, _ in plan(None, profiles[:1], from_model=True)][:2] == [
        "load the model",
        "load and split the dataset",
    ]


def test_default_name(tmp_path: Path) -> None:
    (tmp_path / "my photos!").mkdir()
    assert default_name(tmp_path / "my photos!") == "my-photos"
    assert default_name(tmp_path / "set.npz") == "set"


def test_bad_arguments_fail_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="edgekit datasets digits"):
        build(tmp_path / "none", ["raspberry-pi-4"], out)
    with pytest.raises(UsageError, match="no profile"):
        build(tmp_path, [], out)
    with pytest.raises(UsageError, match="twice"):
        build(tmp_path, ["raspberry-pi-4", "raspberry-pi-4"], out)
    with pytest.raises(UsageError, match="sparsity"):
        build(tmp_path, ["raspberry-pi-4"], out, prune=1.5)
    assert not out.exists()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        build(tmp_path, ["raspberry-pi-4"], tmp_path / "a-file")


def test_model_file_prune_uint8_profile_and_keep_going_through_the_cli(
    built: tuple[BuildResult, dict], digits_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One run (conversions are the expensive part) covering: --model skips training; --prune prunes and
    records the achieved sparsity; a uint8 profile gets uint8 tensors; a profile that does not fit is
    skipped with --keep-going, and the command still exits DOES_NOT_FIT so scripts notice."""
    result, _ = built
    tiny = profile_file(tmp_path, "tiny-board", ram=2_000)
    u8 = profile_file(tmp_path, "u8-board", dtype="uint8")
    out = tmp_path / "out"
    # An earlier build's bundle for the profile that will not fit now: --keep-going must not leave it behind.
    (out / "dig-tiny-board").mkdir(parents=True)
    (out / "dig-tiny-board" / "manifest.json").write_text("{}")
    (out / "dig-tiny-board.tar.gz").write_bytes(b"old")
    argv = [
        "build",
        "--dataset",
        str(digits_dataset),
        "--model",
        str(result.model_file),
        "--prune",
        "0.5",
        "--profile",
        str(tiny),
        "--profile",
        str(u8),
        "--out",
        str(out),
        "--keep-going",
        "--json",
        "--name",
        "dig",
        "--version",
        "2.0.1",
    ]
    assert main(argv) == ExitStatus.DOES_NOT_FIT
    doc = json.loads(capsys.readouterr().out)
    by = {p["profile"]: p for p in doc["profiles"]}
    assert by["tiny-board"]["fits"] is False and by["tiny-board"]["directory"] is None
    assert "ram" in by["tiny-board"]["fit_summary"].lower()
    assert not (out / "dig-tiny-board").exists() and not (out / "dig-tiny-board.tar.gz").exists()
    assert sorted(p.name for p in out.glob("*.tar.gz")) == ["dig-u8-board.tar.gz"]
    bundle = Path(by["u8-board"]["directory"])
    m = json.loads((bundle / "manifest.json").read_text())
    assert (m["name"], m["version"], m["inputs"][0]["dtype"], m["outputs"][0]["dtype"]) == (
        "dig",
        "2.0.1",
        "uint8",
        "uint8",
    )
    assert m["metrics"]["arch"] == f"file:{result.model_file.name}"
    prune = m["metrics"]["prune"]
    assert prune["target_sparsity"] == 0.5 and 0.4 <= prune["achieved_sparsity"] <= 0.55
    assert m["metrics"]["float_accuracy"] == pytest.approx(prune["float_accuracy_after"], abs=1e-6)
    # The pruned model is saved next to the bundles; the input model file is left alone.
    assert doc["model_file"] == str(out / "dig.keras") and (out / "dig.keras").is_file()
    steps = [t["step"] for t in doc["step_seconds"]]
    assert (
        steps[:3] == ["load the model", "load and split the dataset", "prune to 50% sparsity"]
        and len(steps) == 3 + 1 + 2 * 4
    )
    # Each figure is rounded to 0.01 s, so the steps may add up to a hair more than the rounded total.
    assert 0 < sum(t["seconds"] for t in doc["step_seconds"]) <= doc["seconds"] + 0.005 * (len(steps) + 1)
    convert = next(t for t in doc["step_seconds"] if t["step"].startswith("convert"))
    assert convert["cpu_seconds"] > 0.2  # the conversion is counted (in this process for a CNN, else its child)
    assert main(["inspect", str(bundle)]) == ExitStatus.OK


def test_fit_step_raises_fit_error_with_numbers_unless_keep_going(
    built: tuple[BuildResult, dict], tmp_path: Path
) -> None:
    """The build's fit step on the real int8 model (no second conversion needed)."""
    from edgekit import build as build_module
    from edgekit.pipeline.convert import ConversionResult
    from edgekit.pipeline.lint import lint_full_int8

    result, _ = built
    tiny = load_profile(profile_file(tmp_path, "tiny-board", ram=2_000))
    tflite = (result.profiles[0].directory / "model.tflite").read_bytes()
    state = build_module._State(  # noqa: SLF001 - the step is the unit under test
        dataset=tmp_path,
        out=tmp_path,
        profiles=[tiny],
        model_path=None,
        epochs=None,
        prune=None,
        max_accuracy_drop=1.0,
        keep_going=False,
        name="digits",
        version="1",
        seed=0,
        arch="auto",
    )
    state.current = build_module._ProfileWork(  # noqa: SLF001
        tiny,
        ConversionResult(
            tflite=tflite,
            float_tflite=b"",
            float_bytes=0,
            lint=lint_full_int8(tflite),
            input_dtype="int8",
            output_dtype="int8",
            representative_samples=0,
            seconds=0.0,
        ),
    )
    with pytest.raises(FitError) as e:
        build_module._fit(state, tiny)  # noqa: SLF001
    assert "tiny-board" in str(e.value) and "ram" in str(e.value).lower() and any(ch.isdigit() for ch in str(e.value))
    assert e.value.exit_status is ExitStatus.DOES_NOT_FIT
    state.keep_going = True
    build_module._fit(state, tiny)  # noqa: SLF001
    assert state.current.fit is not None and state.current.fit.fits is False


def test_progress_events_come_before_each_step(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    events = []
    with pytest.raises(DatasetError):
        build(tmp_path / "empty", ["raspberry-pi-4"], tmp_path / "out", on_progress=events.append)
    assert len(events) == 1 and (events[0].step, events[0].label) == (1, "load and split the dataset")
    assert events[0].total == len(plan(None, [load_profile("raspberry-pi-4")], from_model=False))
