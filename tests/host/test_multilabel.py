"""Multi-label heads: an image folder with a labels.csv (file,label1;label2) trains N sigmoid outputs with
binary cross-entropy, converts, and is measured per label and by exact match; the manifest records the
head and its threshold, and a real agent serves label sets with their probabilities and reports exact-match
accuracy. Also: one sigmoid output trained by `edgekit train --head sigmoid`, and --threshold refused on a
softmax head. Real Keras, converter and LiteRT; the dataset is drawn here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.build import build
from edgekit_agent.contract.errors import DatasetError, UsageError
from edgekit_agent.contract.manifest import HeadSpec

LABELS = ("bar", "corner", "dot")  # sorted, as the loader orders them


def _write_classes(root: Path, classes: tuple[str, ...], n: int) -> Path:
    """8x8 grey class folders whose brightness rises with the class (as tests/host/test_heads.py draws them)."""
    rng = np.random.default_rng(1)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            px = np.clip(rng.normal(60 + 140 * k / (len(classes) - 1), 25, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(px, mode="L").save(root / name / f"{i}.png")
    return root


def write_marks(root: Path, n: int = 120, seed: int = 1) -> list[tuple[str, tuple[str, ...]]]:
    """16x16 grey PNGs on noise, each with every one of three marks independently at probability 1/2: a
    bright dot in the middle, a bar near the top, a block in the bottom-left corner; and their labels.csv."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        px = rng.normal(40, 12, (16, 16))
        have = tuple(label for label in LABELS if rng.random() < 0.5)
        if "dot" in have:
            r, c = rng.integers(5, 9, 2)
            px[r : r + 3, c : c + 3] = 230
        if "bar" in have:
            r = int(rng.integers(0, 3))
            px[r : r + 2, 2:14] = 200
        if "corner" in have:
            px[12:16, 0:4] = 220
        name = f"img{i:03d}.png"
        Image.fromarray(np.clip(px, 0, 255).astype(np.uint8), mode="L").save(root / name)
        rows.append((name, have))
    # A header, labels in any order, and images with no label at all (an empty field).
    text = "file,labels\n" + "".join(f"{name},{';'.join(reversed(have))}\n" for name, have in rows)
    (root / "labels.csv").write_text(text)
    return rows


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, tuple[str, ...]]]]:
    root = tmp_path_factory.mktemp("marks") / "marks"
    return root, write_marks(root)


@pytest.fixture(scope="module")
def multilabel_build(marks, tmp_path_factory: pytest.TempPathFactory):
    return build(marks[0], ["raspberry-pi-4"], tmp_path_factory.mktemp("out"), epochs=4, threshold=0.4)


def test_labels_csv_loads_label_sets_and_the_split_measures_every_label(marks) -> None:
    from edgekit.pipeline.data import load_dataset, split_dataset, thin_classes

    root, rows = marks
    ds = load_dataset(root)
    assert ds.multilabel and ds.labels == LABELS and ds.y.shape == (len(rows), 3) and ds.y.dtype == np.uint8
    first = dict(zip(ds.files, ds.y.tolist()))[str(root / rows[0][0])]
    assert first == [int(label in rows[0][1]) for label in LABELS]
    assert sum(not have for _, have in rows) > 0  # images with no label are kept, as all-zero rows
    splits = split_dataset(ds, seed=0)
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(ds)
    for part in (splits.val, splits.test):
        assert min(part.class_counts().values()) >= 3, part.class_counts()
    assert thin_classes(splits) == ()
    again = split_dataset(load_dataset(root), seed=0)
    assert again.test.files == splits.test.files  # deterministic


def test_a_rare_label_gets_a_held_out_sample(tmp_path: Path) -> None:
    """Every label set of the rare label has fewer than three images, yet the label is measured."""
    from edgekit.pipeline.data import Dataset, split_dataset, thin_classes
    from edgekit_agent.contract.manifest import PreprocessSpec

    y = np.zeros((40, 3), dtype=np.uint8)
    y[:20, 0] = 1
    y[20:, 1] = 1
    y[[0, 1, 20, 21, 39], 2] = 1  # "c" only in two-image sets and one single image
    ds = Dataset(x=np.zeros((40, 4, 4, 1), np.float32), y=y, labels=("a", "b", "c"), spec=PreprocessSpec(4, 4))
    splits = split_dataset(ds, seed=3)
    assert splits.test.class_counts()["c"] >= 1 and splits.val.class_counts()["c"] >= 1
    assert splits.train.class_counts()["c"] >= 1 and thin_classes(splits) == ()


def test_an_npz_with_a_2d_y_is_multilabel_and_bad_files_are_named(tmp_path: Path) -> None:
    from edgekit.pipeline.data import load_dataset

    x = np.zeros((6, 4, 4), np.uint8)
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]], np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=y, labels=np.array(["cat", "dog"]))
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.multilabel and ds.labels == ("cat", "dog") and ds.class_counts() == {"cat": 3, "dog": 3}
    np.savez(tmp_path / "bad.npz", x=x, y=y * 2)
    with pytest.raises(DatasetError, match="0 or 1"):
        load_dataset(tmp_path / "bad.npz")
    root = tmp_path / "folder"
    root.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(root / "a.png")
    (root / "labels.csv").write_text("a.png,cat\nmissing.png,dog\n")
    with pytest.raises(DatasetError) as e:
        load_dataset(root)
    assert "row 2" in str(e.value) and str(root / "missing.png") in str(e.value)


def test_the_build_trains_sigmoid_outputs_and_measures_each_label(multilabel_build) -> None:
    p = multilabel_build.profiles[0]
    m = p.manifest
    assert m is not None and m.head == HeadSpec("multilabel", 0.4) and m.labels == LABELS
    assert m.outputs[0].shape == (1, 3) and m.outputs_are == "probabilities"
    doc = json.loads((p.directory / "manifest.json").read_text())
    assert doc["head"] == {"kind": "multilabel", "threshold": 0.4}
    # chance is about 0.5 per label (each mark at probability 1/2): well above it, and whole sets mostly right
    assert p.int8_accuracy >= 0.85 and p.chance <= 0.7 and not p.near_chance, (p.int8_accuracy, p.chance)
    per_label = m.metrics["multilabel"]["per_label"]
    assert set(per_label) == set(LABELS)
    for label, row in per_label.items():
        assert row["accuracy"] >= 0.75 and row["recall"] is not None, (label, row)
        assert sum(map(sum, row["confusion"])) == p.samples
    assert p.exact_match is not None and p.exact_match >= 0.6, p.exact_match
    freq = m.reference["class_freq"]
    assert len(freq) == 3 and all(0.2 < f < 0.8 for f in freq), freq  # each label predicted for about half


def test_self_test_and_the_served_label_sets(multilabel_build, marks, tmp_path: Path) -> None:
    """The device's self-test, then a real agent: label sets by "+"-joined names, exact-match accuracy,
    per-label counts and accuracy, and a prediction that names the set with every label's probability."""
    from edgekit_agent.bundle.load import load_bundle
    from edgekit_agent.bundle.selftest import run_selftest
    from edgekit_agent.serve.agent import Agent
    from edgekit_agent.serve.config import AgentSettings

    root, rows = marks
    bundle = load_bundle(multilabel_build.profiles[0].directory)
    st = run_selftest(bundle)
    assert st.passed and st.agreement == 1.0 and st.label_accuracy >= 0.6  # golden labels are label-set masks
    agent = Agent(bundle, AgentSettings(device_id="marks", data_dir=tmp_path / "data", num_threads=1))
    labelled = [(name, have) for name, have in rows if have][:40]
    right = 0
    for name, have in labelled:
        p = agent.serve_file(root / name, label_name="+".join(reversed(have)))
        assert set(p.labels) == {label for label, q in p.probabilities.items() if q >= 0.4}
        assert p.label == "+".join(p.labels) and p.index == sum(1 << LABELS.index(x) for x in p.labels)
        assert 0.0 <= p.confidence <= 1.0 and set(p.probabilities) == set(LABELS)
        right += set(p.labels) == set(have)
    body = agent.recorder.snapshot_and_reset()
    acc = body["accuracy"]
    assert acc["labeled"] == len(labelled) and acc["correct"] == right and right >= 0.6 * len(labelled)
    assert set(acc["per_class"]) == set(LABELS)
    assert all(r["labeled"] == len(labelled) and r["correct"] >= 0.7 * len(labelled) for r in acc["per_class"].values())
    counts = body["predictions"]["class_counts"]
    assert sum(counts.values()) > len(labelled)  # several labels per image are counted, one each
    assert body["bundle"]["head"] == "multilabel" and body["drift"]["predicted_class"]["psi"] is not None
    assert "bar+dot" in agent.label_index and "bar+cat" not in agent.label_index


def test_a_watched_folder_of_label_sets_is_served_and_judged_by_exact_match(multilabel_build, marks, tmp_path) -> None:
    """Files dropped into DIR/bar+dot/ are labelled with that set, served, journaled and moved; a folder that is
    not a set of the bundle's labels leaves its file unlabelled."""
    import os
    import shutil
    import time

    from edgekit_agent.bundle.load import load_bundle
    from edgekit_agent.serve.agent import Agent
    from edgekit_agent.serve.config import AgentSettings

    root, rows = marks
    inbox = tmp_path / "inbox"
    chosen = [(name, have) for name, have in rows if have][:24]
    for name, have in chosen:
        (inbox / "+".join(have)).mkdir(parents=True, exist_ok=True)
        shutil.copy(root / name, inbox / "+".join(have) / name)
    (inbox / "bar+fish").mkdir()
    shutil.copy(root / rows[0][0], inbox / "bar+fish" / "x.png")
    past = time.time() - 60  # settled: not still being written
    for p in inbox.rglob("*.png"):
        os.utime(p, (past, past))
    bundle = load_bundle(multilabel_build.profiles[0].directory)
    agent = Agent(bundle, AgentSettings(device_id="marks-watch", data_dir=tmp_path / "data", watch_dir=inbox))
    assert agent.scan_once() == len(chosen) + 1
    body = agent.recorder.snapshot_and_reset()
    assert body["counts"]["ok"] == len(chosen) + 1
    acc = body["accuracy"]
    assert acc["labeled"] == len(chosen) and acc["accuracy"] >= 0.6, acc
    assert (inbox / ".processed" / "bar+fish" / "x.png").is_file()
    assert sum(1 for _ in (inbox / ".processed").rglob("*.png")) == len(chosen) + 1


def test_evaluate_and_infer_clis_report_label_sets(multilabel_build, marks, capsys) -> None:
    from edgekit.cli import main
    from edgekit_agent.cli.app import main as agent_main

    root, rows = marks
    bundle = multilabel_build.profiles[0].directory
    assert main(["evaluate", str(bundle), "--dataset", str(root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["accuracy"] >= 0.8 and 0.0 <= doc["exact_match"] <= 1.0 and len(doc["per_label"]) == 3
    name = next(name for name, have in rows if set(have) == {"bar", "dot"})
    assert agent_main(["infer", str(bundle), str(root / name), "--json", "--skip-selftest"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert set(row["probabilities"]) == set(LABELS) and row["label"] == "+".join(row["labels"])


def test_convert_takes_the_saved_multilabel_model_with_a_threshold(multilabel_build, marks, tmp_path, capsys) -> None:
    from edgekit.cli import main

    model = multilabel_build.model_file  # the trained Keras model kept next to the bundles
    args = ["convert", str(model), "--dataset", str(marks[0]), "--profile", "raspberry-pi-4"]
    assert main([*args, "--out", str(tmp_path / "m.tflite"), "--threshold", "0.6", "--no-qat", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["head"] == {"kind": "multilabel", "threshold": 0.6} and info["int8_accuracy"] >= 0.8, info


def test_train_with_one_sigmoid_output_and_threshold_refusals(tmp_path: Path, capsys) -> None:
    from edgekit.cli import main

    data = _write_classes(tmp_path / "two", ("dark", "light"), n=20)
    out = tmp_path / "binary.keras"
    args = ["train", "--dataset", str(data), "--out", str(out), "--epochs", "2", "--head", "sigmoid", "--json"]
    assert main([*args, "--threshold", "0.3"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["head"] == {"kind": "sigmoid", "threshold": 0.3}
    import keras

    assert keras.models.load_model(out).outputs[0].shape[-1] == 1  # Dense(1, sigmoid)
    with pytest.raises(UsageError, match="softmax, which takes the largest output and has no threshold"):
        build(data, ["raspberry-pi-4"], tmp_path / "out", threshold=0.3)
    assert main(["build", "--dataset", str(data), "--profile", "raspberry-pi-4", "--out", str(tmp_path / "o"),
                 "--threshold", "0.3"]) == 2  # fmt: skip
    assert "has no threshold" in capsys.readouterr().err
    three = _write_classes(tmp_path / "three", ("a", "b", "c"), n=4)
    with pytest.raises(UsageError, match="tells two classes apart"):
        build(three, ["raspberry-pi-4"], tmp_path / "out", head="sigmoid")
