"""The pipeline commands end to end on the digits demo: datasets, train, convert, evaluate, prune; exit codes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgekit.cli import main
from edgekit_agent.contract.errors import ExitStatus

COMMANDS = ("datasets", "train", "prune", "convert", "evaluate")


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_datasets_train_convert_evaluate_prune(tmp_path, capsys):
    data = tmp_path / "digits"
    assert main(["datasets", "digits", str(data)]) == ExitStatus.OK
    assert len(list(data.rglob("*.png"))) == 1797
    capsys.readouterr()

    model = tmp_path / "digits.keras"
    assert main(["train", "--dataset", str(data), "--out", str(model), "--epochs", "1", "--json"]) == ExitStatus.OK
    trained = _json(capsys)
    assert model.is_file() and trained["input_shape"] == [1, 8, 8, 1] and trained["arch"] == "cnn"
    assert trained["float_accuracy"] > 0.8 and trained["test_samples"] == 269

    tfl, flt = tmp_path / "digits.tflite", tmp_path / "digits_f32.tflite"
    rc = main(
        [
            "convert",
            str(model),
            "--dataset",
            str(data),
            "--profile",
            "raspberry-pi-4",
            "--out",
            str(tfl),
            "--float-out",
            str(flt),
            "--no-qat",
            "--representative-samples",
            "50",
            "--json",
        ]
    )
    assert rc == ExitStatus.OK
    conv = _json(capsys)
    assert tfl.read_bytes()[4:8] == b"TFL3" and conv["int8_bytes"] == tfl.stat().st_size
    assert conv["lint"]["ok"] and conv["input_dtype"] == "int8" and conv["kept"] == "ptq" and not conv["qat_ran"]
    assert conv["size_ratio"] <= 0.26 and flt.stat().st_size == conv["float_tflite_bytes"]

    assert main(["evaluate", str(tfl), "--dataset", str(data), "--keras", str(model), "--json"]) == ExitStatus.OK
    ev = _json(capsys)
    assert ev["samples"] == 269 and 0.8 < ev["accuracy"] <= 1.0 and "float_accuracy" in ev
    assert abs(ev["float_accuracy"] - trained["float_accuracy"]) < 1e-9  # same split, same model
    assert sum(map(sum, ev["confusion"])) == 269
    assert main(["evaluate", str(tfl), "--dataset", str(data), "--split", "all", "--json"]) == ExitStatus.OK
    assert _json(capsys)["samples"] == 1797

    pruned = tmp_path / "pruned.keras"
    rc = main(
        [
            "prune",
            str(model),
            "--dataset",
            str(data),
            "--out",
            str(pruned),
            "--sparsity",
            "0.5",
            "--epochs",
            "1",
            "--no-sizes",
            "--json",
        ]
    )
    assert rc == ExitStatus.OK
    pr = _json(capsys)
    assert pruned.is_file() and abs(pr["sparsity"] - 0.5) < 0.02 and "compression" in pr["note"]


def test_evaluate_a_bundle_reproduces_the_builds_figure(digits_bundle, digits_dataset, capsys):
    """Same split seed from the manifest, same device code: the bundle's recorded int8 accuracy comes back."""
    manifest = json.loads((digits_bundle / "manifest.json").read_text())
    metrics = manifest["metrics"]
    archive = digits_bundle.parent / (digits_bundle.name + ".tar.gz")
    for target in (digits_bundle, archive):
        assert main(["evaluate", str(target), "--dataset", str(digits_dataset), "--json"]) == ExitStatus.OK
        ev = _json(capsys)
        assert ev["samples"] == metrics["samples"]
        assert ev["accuracy"] == pytest.approx(metrics["int8_accuracy"], abs=1e-6)
        assert ev["labels"] == manifest["labels"]


def test_evaluate_matches_classes_by_name(digits_bundle, digits_dataset, tmp_path, capsys):
    subset = tmp_path / "subset"
    for name in ("7", "3"):
        shutil.copytree(digits_dataset / name, subset / name)
    assert main(["evaluate", str(digits_bundle), "--dataset", str(subset), "--split", "all", "--json"]) == ExitStatus.OK
    ev = _json(capsys)
    assert ev["samples"] == len(list(subset.rglob("*.png")))
    conf = np.asarray(ev["confusion"])
    # Rows are the bundle's labels: only the rows of "3" and "7" hold samples.
    assert conf.shape == (10, 10) and set(np.flatnonzero(conf.sum(axis=1))) == {3, 7}

    shutil.copytree(digits_dataset / "1", subset / "one")
    assert main(["evaluate", str(digits_bundle), "--dataset", str(subset), "--json"]) == ExitStatus.BAD_INPUT
    assert "one" in capsys.readouterr().err


def test_exit_codes_for_bad_input(tmp_path, digits_dataset, capsys):
    bad_model = tmp_path / "model.keras"
    bad_model.write_bytes(b"junk")
    out = tmp_path / "x.tflite"
    assert (
        main(
            [
                "convert",
                str(bad_model),
                "--dataset",
                str(digits_dataset),
                "--profile",
                "raspbery-pi-4",
                "--out",
                str(out),
            ]
        )
        == ExitStatus.BAD_INPUT
    )
    assert "raspberry-pi-4" in capsys.readouterr().err  # did you mean
    assert (
        main(
            [
                "convert",
                str(bad_model),
                "--dataset",
                str(digits_dataset),
                "--profile",
                "raspberry-pi-4",
                "--out",
                str(out),
            ]
        )
        == ExitStatus.BAD_INPUT
    )
    assert "model.keras" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope"), "--dataset", str(digits_dataset)]) == ExitStatus.BUNDLE_REJECTED
    assert main(["evaluate", str(out), "--dataset", str(digits_dataset)]) == ExitStatus.BAD_INPUT
    assert "x.tflite" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--dataset", str(digits_dataset), "--per-layer"]) == ExitStatus.USAGE
    assert not out.exists()


def test_dataset_problems_on_the_command_line(tmp_path, digits_dataset, capsys):
    one = tmp_path / "one"
    shutil.copytree(digits_dataset / "4", one / "4")
    assert main(["datasets", "show", str(one)]) == ExitStatus.BAD_INPUT
    assert "at least two class" in capsys.readouterr().err

    two = tmp_path / "two"
    for name in ("0", "1"):
        shutil.copytree(digits_dataset / name, two / name)
    (two / "1" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert main(["datasets", "show", str(two), "--json"]) == ExitStatus.OK
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert "corrupt.png" in captured.err and info["skipped"] == [str(two / "1" / "corrupt.png")]
    assert info["samples"] == len(list(two.rglob("*.png"))) - 1
    assert main(["datasets", "show", str(two), "--strict"]) == ExitStatus.BAD_INPUT
    assert "corrupt.png" in capsys.readouterr().err

    (two / "2").mkdir()
    assert main(["datasets", "show", str(two)]) == ExitStatus.BAD_INPUT
    assert "contain no images" in capsys.readouterr().err


def test_a_mistyped_dataset_path_suggests_the_folders_that_exist(tmp_path, monkeypatch, capsys):
    for name in ("digits/0", "digits/1", "photos/cat"):
        (tmp_path / "data" / name).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    build = ["build", "--profile", "raspberry-pi-4", "--out", "out", "--dataset"]
    for typo in ("data/digts", "dat/digits", "data/Digits"):
        assert main([*build, typo]) == ExitStatus.BAD_INPUT
        err = " ".join(capsys.readouterr().err.split())
        assert "did you mean data/digits?" in err and "edgekit datasets digits" not in err, err
    assert main(["datasets", "show", "data/digts"]) == ExitStatus.BAD_INPUT
    assert "did you mean data/digits?" in " ".join(capsys.readouterr().err.split())
    # Nothing close: then making the demo dataset there is the helpful answer.
    assert main([*build, "elsewhere/mnist"]) == ExitStatus.BAD_INPUT
    err = " ".join(capsys.readouterr().err.split())
    assert "did you mean" not in err and "`edgekit datasets digits elsewhere/mnist`" in err, err
    assert not (tmp_path / "out").exists()


def test_build_help_prints_each_example_on_its_own_line(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    lines = capsys.readouterr().out.splitlines()
    assert "  edgekit datasets digits data/digits" in lines
    assert "  edgekit build --dataset data/digits --profile raspberry-pi-4 --out out" in lines
    assert max(len(line) for line in lines) <= 80


@pytest.mark.parametrize("command", COMMANDS)
def test_every_pipeline_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: edgekit " + command in capsys.readouterr().out


def test_train_resizes_and_converts_colour_images_to_grey(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, colour in enumerate(((255, 0, 0), (0, 0, 255))):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        for i in range(12):
            img = rng.integers(0, 60, (20, 24, 3)).astype(np.uint8)
            img[5 + c * 8 : 9 + c * 8, 4:20] = colour  # a bar whose position tells the class
            Image.fromarray(img).save(tmp_path / "data" / f"class{c}" / f"{i}.bmp")
    model = tmp_path / "m.h5"
    rc = main(
        [
            "train",
            "--dataset",
            str(tmp_path / "data"),
            "--out",
            str(model),
            "--image-size",
            "16x12",
            "--color",
            "grey",
            "--arch",
            "cnn",
            "--epochs",
            "1",
            "--json",
        ]
    )
    assert rc == ExitStatus.OK
    info = _json(capsys)
    assert info["input_shape"] == [1, 12, 16, 1] and info["labels"] == ["class0", "class1"] and model.is_file()
    from edgekit.pipeline.train import load_model

    assert tuple(load_model(model).inputs[0].shape) == (1, 12, 16, 1)  # .h5 round trip keeps the batch of 1
    assert (
        main(["train", "--dataset", str(tmp_path / "data"), "--out", str(model), "--image-size", "16by12"])
        == ExitStatus.USAGE
    )
