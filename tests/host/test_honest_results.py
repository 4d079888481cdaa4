"""Honest results: a build whose held-out accuracy is near chance says so (CLI and --json), a class with too
few images for the split is reported with what to do, and an unreadable image is one clean line naming the
file, not a Python warning pointing into edgekit's source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.cli import main
from edgekit.pipeline.data import load_image_folder, split_dataset, thin_classes
from edgekit.pipeline.evaluate import EvalResult
from edgekit_agent.contract.errors import ExitStatus


def _noise(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(root / name / f"{i}.png")
    return root


def test_a_class_too_small_for_the_split_is_reported_with_what_to_do(tmp_path: Path) -> None:
    ds = load_image_folder(_noise(tmp_path / "d", {"big": 20, "other": 20, "tiny": 1, "pair": 2}))
    lines = thin_classes(split_dataset(ds, seed=0))
    assert len(lines) == 2, lines
    tiny = next(line for line in lines if "'tiny'" in line)
    assert "1 image," in tiny and "no validation or test image" in tiny and "add at least 2 more" in tiny
    assert any("'pair' has 2 images" in line and "add at least 1 more" in line for line in lines)


def test_chance_is_the_larger_of_one_over_classes_and_the_majority_share() -> None:
    def result(confusion: list[list[int]]) -> EvalResult:
        n = sum(map(sum, confusion))
        correct = sum(confusion[i][i] for i in range(len(confusion)))
        return EvalResult(correct / n, n, confusion, np.zeros(n))

    balanced = result([[5, 5], [5, 5]])  # 50 % on two balanced classes: a coin
    assert balanced.chance == 0.5 and balanced.near_chance
    skewed = result([[9, 0], [1, 0]])  # 90 % by always answering the majority class
    assert skewed.chance == 0.9 and skewed.near_chance
    good = result([[9, 1], [0, 10]])
    assert not good.near_chance and good.to_dict()["near_chance"] is False


def test_a_build_near_chance_says_so_loudly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import keras

    data = _noise(tmp_path / "data", {"a": 30, "b": 30, "c": 1})
    broken = data / "a" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    i = keras.Input((8, 8, 1))
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(i, dense(keras.layers.Flatten()(i)))
    dense.set_weights([np.zeros((64, 3), np.float32), np.array([2.0, 0.0, 0.0], np.float32)])  # always "a"
    model.save(tmp_path / "always_a.keras")
    argv = ["build", "--dataset", str(data), "--profile", "raspberry-pi-4", "--out", str(tmp_path / "out")]
    code = main([*argv, "--model", str(tmp_path / "always_a.keras"), "--json"])
    captured = capsys.readouterr()
    assert code == ExitStatus.OK
    doc = json.loads(captured.out)
    p = doc["profiles"][0]
    assert p["int8_accuracy"] == 0.5 and p["chance_accuracy"] == 0.5 and p["near_chance"] is True
    assert any("near chance" in w and "Do not deploy" in w for w in doc["warnings"])
    assert any("class 'c' has 1 image" in w for w in doc["warnings"])
    assert doc["skipped_images"] == [{"file": str(broken), "reason": doc["skipped_images"][0]["reason"]}]
    lines = captured.err.splitlines()  # one line each, never wrapped (a path cut in two is no longer a path)
    assert any(
        line.startswith("WARNING: raspberry-pi-4: held-out int8 accuracy 50.0% is near chance") for line in lines
    )
    assert sum(line.startswith(f"warning: skipped {broken}: ") for line in lines) == 1
    assert "UserWarning" not in captured.err and "data.py" not in captured.err
