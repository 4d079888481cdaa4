"""Classifier heads: a user's binary model with one sigmoid output (saved as legacy .h5, as the tutorials do)
builds into a bundle whose manifest records the head, whose accuracy, drift reference and self-test understand
it, and which the device serves as a class with its probability. Models that cannot suit the dataset are
refused before any work with an error that says what would work. Real Keras, converter and LiteRT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.build import build
from edgekit_agent.contract.errors import ModelError
from edgekit_agent.contract.manifest import HeadSpec, TensorSpec

CLASSES = ("dark", "light")


def _write_classes(root: Path, classes: tuple[str, ...], n: int = 30) -> Path:
    """8x8 grey PNGs: class k is noise around a brightness that rises with k (learnable by one Dense unit)."""
    rng = np.random.default_rng(1)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        level = 60 + 140 * k / max(1, len(classes) - 1)
        for i in range(n):
            px = np.clip(rng.normal(level, 25, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(px, mode="L").save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def binary_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_classes(tmp_path_factory.mktemp("binary"), CLASSES)


def _binary_model(activation: str | None, train_on: Path | None):
    import keras

    from edgekit.pipeline.data import load_dataset

    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 1))
    model = keras.Model(i, keras.layers.Dense(1, activation=activation)(keras.layers.Flatten()(i)))
    if train_on is not None:
        ds = load_dataset(train_on)
        loss = keras.losses.BinaryCrossentropy(from_logits=activation is None)
        model.compile(keras.optimizers.Adam(0.05), loss)
        model.fit(ds.x, ds.y.astype(np.float32), epochs=40, batch_size=16, verbose=0)
    return model


@pytest.fixture(scope="module")
def sigmoid_h5(binary_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "binary.h5"
    _binary_model("sigmoid", binary_data).save(path)  # the legacy HDF5 format
    return path


@pytest.fixture(scope="module")
def sigmoid_build(binary_data: Path, sigmoid_h5: Path, tmp_path_factory: pytest.TempPathFactory):
    return build(binary_data, ["raspberry-pi-4"], tmp_path_factory.mktemp("out"), model=sigmoid_h5, name="binary")


def test_a_sigmoid_h5_builds_a_bundle_with_a_sigmoid_head(sigmoid_build) -> None:
    p = sigmoid_build.profiles[0]
    m = p.manifest
    assert m is not None and m.head == HeadSpec("sigmoid", 0.5) and m.outputs_are == "probabilities"
    assert m.labels == CLASSES and m.outputs[0].shape == (1, 1)
    doc = json.loads((p.directory / "manifest.json").read_text())
    assert doc["head"] == {"kind": "sigmoid", "threshold": 0.5}
    # Accuracy is measured through the head (an argmax over one output would always say class 0: 50 %).
    assert p.float_accuracy >= 0.9 and p.int8_accuracy >= 0.9, (p.float_accuracy, p.int8_accuracy)
    ref = m.reference
    assert len(ref["class_freq"]) == 2 and min(ref["class_freq"]) > 0.2  # both classes predicted
    # the confidence of the class chosen is never below one half at the 0.5 threshold
    assert sum(ref["confidence"]["freq"][:5]) == pytest.approx(0.0)


def test_the_device_serves_the_class_and_its_probability(sigmoid_build, binary_data: Path) -> None:
    from edgekit_agent.bundle.load import load_bundle
    from edgekit_agent.bundle.selftest import run_selftest
    from edgekit_agent.infer.classify import top_one

    bundle = load_bundle(sigmoid_build.profiles[0].directory)
    st = run_selftest(bundle)
    assert st.passed and st.label_accuracy >= 0.9  # top-1 through the head, not argmax of one value
    decide, pre = top_one(bundle.manifest), bundle.preprocessor()
    rt = bundle.open_runtime(num_threads=1)
    try:
        for name in CLASSES:
            hits = [decide(rt.invoke(pre(f))) for f in sorted((binary_data / name).glob("*.png"))]
            assert sum(p.label == name for p in hits) >= 0.9 * len(hits)
            assert all(0.5 <= p.confidence <= 1.0 and p.index == CLASSES.index(p.label) for p in hits)
    finally:
        rt.close()


def test_binary_decision_with_logits_and_a_threshold() -> None:
    from edgekit_agent.infer.classify import Binary, decide

    t = TensorSpec("out", (1, 1), "int8", 0.1, 0)
    b = Binary(t, "logits", CLASSES, threshold=0.8)
    # logit 2.0 (raw 20): sigmoid 0.881 >= 0.8 -> light; logit 1.0: 0.731 < 0.8 -> dark with 0.269 against
    assert b.index_confidence(np.array([[20]], np.int8)) == (1, pytest.approx(0.8808, abs=1e-4))
    assert b.index_confidence(np.array([[10]], np.int8)) == (0, pytest.approx(1 - 0.7311, abs=1e-4))
    classes, conf = decide(np.array([[2.0], [1.0]]), HeadSpec("sigmoid", 0.8), "logits")
    assert classes.tolist() == [1, 0] and conf == pytest.approx([0.8808, 0.2689], abs=1e-4)


def test_a_logit_output_builds_too(binary_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "logit.keras"
    _binary_model(None, binary_data).save(path)
    p = build(binary_data, ["raspberry-pi-4"], tmp_path / "out", model=path, name="logit").profiles[0]
    assert p.manifest.head.kind == "sigmoid" and p.manifest.outputs_are == "logits"
    assert p.int8_accuracy >= 0.9


@pytest.mark.parametrize(
    ("classes", "units", "activation", "says"),
    [
        (("a", "b", "c"), 1, "sigmoid", ["one output (a binary sigmoid classifier)", "3 classes", "exactly two"]),
        (CLASSES, 1, "softmax", ["softmax over one output", "always 1.0", "activation='sigmoid'"]),
        (CLASSES, 3, "softmax", ["3 outputs", "2 classes", "one sigmoid output"]),
    ],
)
def test_a_model_that_cannot_suit_the_dataset_is_refused_first(tmp_path, classes, units, activation, says) -> None:
    import keras

    data = _write_classes(tmp_path / "data", classes, n=4)
    i = keras.Input((8, 8, 1))
    path = tmp_path / "m.h5"
    keras.Model(i, keras.layers.Dense(units, activation=activation)(keras.layers.Flatten()(i))).save(path)
    with pytest.raises(ModelError) as e:
        build(data, ["raspberry-pi-4"], tmp_path / "out", model=path)
    for s in [str(path), *says]:
        assert s in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_the_agent_serves_and_reports_the_binary_class(sigmoid_build, binary_data: Path, tmp_path: Path) -> None:
    """The serving loop and its telemetry window: classes by name, accuracy per class, confidence >= 0.5."""
    from edgekit_agent.bundle.load import load_bundle
    from edgekit_agent.serve.agent import Agent
    from edgekit_agent.serve.config import AgentSettings

    settings = AgentSettings(device_id="binary", data_dir=tmp_path / "data", num_threads=1)
    agent = Agent(load_bundle(sigmoid_build.profiles[0].directory), settings)
    for name in CLASSES:
        for f in sorted((binary_data / name).glob("*.png"))[:10]:
            p = agent.serve_file(f, label_name=name)
            assert p.label in CLASSES and p.confidence >= 0.5
    body = agent.recorder.snapshot_and_reset()
    counts = body["predictions"]["class_counts"]
    assert set(counts) == set(CLASSES) and min(counts.values()) >= 8, counts
    acc = body["accuracy"]
    assert acc["labeled"] == 20 and acc["accuracy"] >= 0.9 and set(acc["per_class"]) == set(CLASSES)
    assert sum(body["predictions"]["confidence_hist"]["counts"][:5]) == 0
    assert body["drift"]["predicted_class"]["psi"] is not None and body["drift"]["confidence"]["psi"] is not None


def test_evaluate_and_infer_clis_understand_the_head(sigmoid_build, binary_data: Path, capsys) -> None:
    from edgekit.cli import main
    from edgekit_agent.cli.app import main as agent_main

    bundle = sigmoid_build.profiles[0].directory
    assert main(["evaluate", str(bundle), "--dataset", str(binary_data), "--split", "all", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["accuracy"] >= 0.9 and doc["near_chance"] is False and len(doc["confusion"]) == 2
    image = sorted((binary_data / "light").glob("*.png"))[0]
    assert agent_main(["infer", str(bundle), str(image), "--json", "--skip-selftest"]) == 0
    out = json.loads(capsys.readouterr().out)
    row = out[0]
    assert row["label"] == "light" and 0.5 <= row["confidence"] <= 1.0


def test_pruning_and_quantisation_aware_training_fine_tune_a_sigmoid_head(binary_data: Path) -> None:
    """Both fine-tune with the head's loss (binary cross-entropy on (N, 1) targets), not N-class cross-entropy.
    The model is a tf_keras one: tfmot rebuilds only those and the zoo's (docs/pipeline.md, Prune)."""
    import tf_keras

    from edgekit.pipeline.convert import convert_for_profile
    from edgekit.pipeline.data import load_dataset, split_dataset
    from edgekit.pipeline.prune import prune_model
    from edgekit.profiles import load_profile

    splits = split_dataset(load_dataset(binary_data), seed=0)
    tf_keras.utils.set_random_seed(0)
    i = tf_keras.Input((8, 8, 1))
    x = tf_keras.layers.Dense(8, activation="relu")(tf_keras.layers.Flatten()(i))
    model = tf_keras.Model(i, tf_keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(tf_keras.optimizers.Adam(0.02), "binary_crossentropy")
    model.fit(splits.train.x, splits.train.y.astype(np.float32), epochs=40, batch_size=8, verbose=0)
    pruned = prune_model(model, splits, sparsity=0.5, seed=0, batch_size=8)
    assert pruned.accuracy_after >= 0.9, pruned
    res = convert_for_profile(pruned.model, splits, load_profile("raspberry-pi-4"), force_qat=True, qat_epochs=1)
    assert res.qat_ran and res.qat_int8_accuracy is not None and res.qat_int8_accuracy >= 0.9, res
