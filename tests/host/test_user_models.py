"""A user's model file (`--model`, `edgekit convert MODEL`) is checked against the dataset before any work:
one image input (batch, H, W, C), one (batch, classes) output with one unit per class. The dataset is
loaded at the model's input size and colour mode. Tiny untrained Keras models; no conversion runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit import build as build_module
from edgekit.build import build
from edgekit.cli import main
from edgekit_agent.contract.errors import ExitStatus, ModelError

CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def grey8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes of 8x8 grey PNGs, 10 each."""
    root = tmp_path_factory.mktemp("grey8")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(root / name / f"{i}.png")
    return root


def _cnn(shape=(8, 8, 1), classes=3):
    import keras

    i = keras.Input(shape)
    x = keras.layers.Conv2D(2, 3, activation="relu")(i)
    return keras.Model(i, keras.layers.Dense(classes, activation="softmax")(keras.layers.Flatten()(x)))


def _save(model, path: Path) -> Path:
    model.save(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import keras

    d = tmp_path_factory.mktemp("user-models")
    L = keras.layers
    i1, i2 = keras.Input((8, 8, 1)), keras.Input((8, 8, 1))
    two_in = keras.Model([i1, i2], L.Dense(3, activation="softmax")(L.Flatten()(L.Concatenate()([i1, i2]))))
    flat = keras.Input((64,))
    i = keras.Input((8, 8, 1))
    x = L.Flatten()(i)
    return {
        "five_out": _save(_cnn(classes=5), d / "five_out.keras"),
        "two_in": _save(two_in, d / "two_in.keras"),
        "flat": _save(keras.Model(flat, L.Dense(3, activation="softmax")(flat)), d / "flat.keras"),
        "two_out": _save(keras.Model(i, [L.Dense(3, activation="softmax")(x), L.Dense(2)(x)]), d / "two_out.keras"),
        "rgb16": _save(_cnn((16, 16, 3)), d / "rgb16.keras"),
    }


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("five_out", ["5 outputs", "3 classes", "a, b, c"]),
        ("two_in", ["2 inputs", "(None, 8, 8, 1)", "exactly one input"]),
        ("flat", ["(None, 64)", "(batch, height, width, channels)", "takes (batch, 8, 8, 1) and gives (batch, 3)"]),
        ("two_out", ["2 output(s)", "(batch, classes)"]),
    ],
)
def test_build_refuses_a_model_that_does_not_suit_the_dataset(models, grey8, tmp_path, key, says) -> None:
    out = tmp_path / "out"
    with pytest.raises(ModelError) as e:
        build(grey8, ["raspberry-pi-4"], out, model=models[key])
    msg = str(e.value)
    assert str(models[key]) in msg, msg
    for text in says:
        assert text in msg, (text, msg)
    assert e.value.exit_status is ExitStatus.BAD_INPUT
    assert not out.exists()  # refused before anything was written


def test_build_loads_the_dataset_at_the_model_input_size_and_colour(models, grey8, tmp_path) -> None:
    """A 16x16 RGB model on 8x8 grey images: the images are resized and converted, as on the device."""
    state = build_module._State(  # noqa: SLF001 - the first two steps are the unit under test
        dataset=grey8,
        out=tmp_path,
        profiles=[],
        model_path=models["rgb16"],
        epochs=None,
        prune=None,
        max_accuracy_drop=1.0,
        keep_going=False,
        name="m",
        version="1",
        seed=0,
        arch="auto",
    )
    steps = build_module.plan(None, [], from_model=True)
    assert [label for label, _ in steps[:3]] == [
        "load the model",
        "load and split the dataset",
        "save and evaluate the float model",
    ]
    for _, step in steps[:3]:
        step(state)
    assert state.ds.x.shape[1:] == (16, 16, 3)
    assert (state.ds.spec.width, state.ds.spec.height, state.ds.spec.color_mode) == (16, 16, "RGB")
    assert 0.0 <= state.float_accuracy <= 1.0  # the model ran on the test split without a shape error


def test_npz_of_another_size_is_refused_naming_both_shapes(models, tmp_path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((12, 8, 8), np.uint8), y=np.arange(12) % 3)
    with pytest.raises(ModelError, match=r"rgb16\.keras.*\(16, 16, 3\).*d\.npz gives \(8, 8, 1\)"):
        build(tmp_path / "d.npz", ["raspberry-pi-4"], tmp_path / "out", model=models["rgb16"])


@pytest.mark.parametrize("command", ["convert", "prune"])
def test_convert_and_prune_refuse_a_flat_input_model_with_a_clear_error(
    models, grey8, tmp_path, command, capsys
) -> None:
    argv = [command, str(models["flat"]), "--dataset", str(grey8), "--out", str(tmp_path / "x")]
    if command == "convert":
        argv += ["--profile", "raspberry-pi-4"]
    assert main(argv) == ExitStatus.BAD_INPUT
    err = " ".join(capsys.readouterr().err.split())
    assert "flat.keras" in err and "(None, 64)" in err and "Traceback" not in err


def test_a_savedmodel_keras_did_not_write_is_refused_saying_how_to_save(tmp_path, grey8) -> None:
    """Keras 3 ``model.export()`` writes a SavedModel that tf_keras restores as a bare trackable object:
    a ModelError naming the directory and model.save('….keras'), not an AttributeError later."""
    from edgekit.pipeline.train import load_model

    _cnn().export(str(tmp_path / "sm"), verbose=False)
    with pytest.raises(ModelError, match=r"sm: loads as a .*not a Keras model.*model\.save\('model\.keras'\)"):
        load_model(tmp_path / "sm")
    with pytest.raises(ModelError, match="not a Keras model"):
        build(grey8, ["raspberry-pi-4"], tmp_path / "out", model=tmp_path / "sm")


def test_a_pruned_model_never_overwrites_the_model_file_it_came_from(tmp_path) -> None:
    """The rebuild route the docs suggest, `--model OUT/NAME.keras --prune 0.5 --out OUT`: the pruned model
    goes to OUT/NAME-pruned.keras and the input file keeps its bytes; from elsewhere it is OUT/NAME.keras."""
    from edgekit.pipeline.prune import PruneResult
    from edgekit.pipeline.train import load_model

    def save_step(model_path: Path, out: Path) -> Path:
        state = build_module._State(  # noqa: SLF001 - the save step is the unit under test
            dataset=tmp_path,
            out=out,
            profiles=[],
            model_path=model_path,
            epochs=None,
            prune=0.5,
            max_accuracy_drop=1.0,
            keep_going=False,
            name="m",
            version="1",
            seed=0,
            arch="auto",
        )
        state.model, state.model_file, state.float_accuracy = load_model(model_path), model_path, 0.5
        state.pruned = PruneResult(
            model=state.model,
            target_sparsity=0.5,
            layers=(),
            accuracy_before=0.5,
            accuracy_after=0.5,
            steps=1,
            end_step=1,
            frequency=1,
        )
        build_module._save_model(state)  # noqa: SLF001
        return state.model_file

    (tmp_path / "out").mkdir()
    original = _save(_cnn(), tmp_path / "out" / "m.keras")
    before = original.read_bytes()
    # The same file by another spelling of its path is still the same file.
    assert save_step(tmp_path / "out" / "." / "m.keras", tmp_path / "out") == tmp_path / "out" / "m-pruned.keras"
    assert original.read_bytes() == before and (tmp_path / "out" / "m-pruned.keras").is_file()
    assert save_step(original, tmp_path / "other") == tmp_path / "other" / "m.keras"
    assert (tmp_path / "other" / "m.keras").is_file() and original.read_bytes() == before


def test_evaluate_keras_model_that_is_not_the_bundles_is_refused(
    digits_bundle: Path, digits_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = _save(_cnn(shape=(8, 8, 1), classes=3), tmp_path / "three-classes.keras")  # the digits have 10
    code = main(["evaluate", str(digits_bundle), "--dataset", str(digits_dataset), "--keras", str(wrong)])
    err = capsys.readouterr().err.replace("\n", "")  # the console wraps long paths
    assert code == ExitStatus.BAD_INPUT and "three-classes.keras" in err and "gives 10" in err, err
