"""Models from elsewhere: a float .tflite and an ONNX file go in, a full-int8 model comes out, measured against the
float model on the held-out split; `check` on a float model says it is not quantised. The models are made here
from a tiny Keras CNN trained on the digits training split (TF converter without optimisations, tf2onnx with an
NCHW input like a PyTorch export): real ai-edge-quantizer, onnx2tf and LiteRT, nothing downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.build import build
from edgekit.cli import main
from edgekit.fit.check import check_fit
from edgekit.pipeline.foreign import load_foreign
from edgekit.profiles import load_profile
from edgekit_agent.contract.errors import ExitStatus, ModelError, UsageError
from edgekit_agent.infer.runtime import Runtime

# int8 may lose this many points against the float model on the held-out images (measured: docs/pipeline.md).
MARGIN_POINTS = 2.0


def _cnn(shape: tuple[int, int, int], classes: int, batch: int | None = None):
    import keras

    i = keras.Input(shape, batch_size=batch)
    x = keras.layers.Flatten()(keras.layers.Conv2D(8, 3, activation="relu")(i))
    # Over 256 KiB of weights, where ai-edge-quantizer starts writing them after the flatbuffer.
    x = keras.layers.Dense(1024, activation="relu")(x)
    return keras.Model(i, keras.layers.Dense(classes, activation="softmax")(x))


@pytest.fixture(scope="module")
def models(digits_splits, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A digits CNN (5 epochs on the training split, seconds) as a float .tflite and as ONNX, batch 1."""
    import keras
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(0)
    trained = _cnn((8, 8, 1), 10)
    trained.compile("adam", "sparse_categorical_crossentropy")
    trained.fit(digits_splits.train.x, digits_splits.train.y, epochs=5, batch_size=32, verbose=0)
    model = _cnn((8, 8, 1), 10, batch=1)
    model.set_weights(trained.get_weights())
    d = tmp_path_factory.mktemp("foreign")
    (d / "digits-float.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    spec = (tf.TensorSpec((1, 8, 8, 1), tf.float32, name="image"),)
    fn = tf.function(lambda t: model(t))
    tf2onnx.convert.from_function(
        fn, input_signature=spec, opset=13, inputs_as_nchw=["image"], output_path=str(d / "digits.onnx")
    )
    return {"tflite": d / "digits-float.tflite", "onnx": d / "digits.onnx", "dir": d}


def test_float_tflite_builds_an_int8_bundle_close_to_float(models, digits_dataset, tmp_path):
    result = build(digits_dataset, ["raspberry-pi-4"], tmp_path / "out", model=models["tflite"], seed=0)
    (p,) = result.profiles
    assert p.fits and p.directory is not None and result.arch == "file:digits-float.tflite"
    assert result.float_accuracy > 0.8  # the float model itself, on the 269 held-out images
    assert abs(p.float_accuracy - p.int8_accuracy) * 100 <= MARGIN_POINTS, (p.float_accuracy, p.int8_accuracy)
    manifest = json.loads((p.directory / "manifest.json").read_text())
    assert manifest["metrics"]["quantization"]["kept"] == "ptq" and not manifest["metrics"]["qat"]
    rt = Runtime(p.directory / "model.tflite", model_name="bundle")
    details = rt.interpreter.get_input_details()[0], rt.interpreter.get_output_details()[0]
    assert [d["dtype"].__name__ for d in details] == ["int8", "int8"]
    # The weights live inside the flatbuffer, so TFLite Micro reads them in place: its arena holds activations only.
    arena = check_fit((p.directory / "model.tflite").read_bytes(), load_profile("esp32-s3")).row("arena").measured
    assert arena < 32 * 1024, arena
    # An int8 model is refused as input: there is nothing left to quantise.
    with pytest.raises(ModelError, match="already quantised"):
        load_foreign(_copy(p.directory / "model.tflite", tmp_path / "int8.tflite"))


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def test_onnx_converts_through_the_cli_with_float_and_int8_figures(models, digits_dataset, tmp_path, capsys):
    out = tmp_path / "digits-int8.tflite"
    code = main(
        ["convert", str(models["onnx"]), "--dataset", str(digits_dataset), "--profile", "raspberry-pi-4"]
        + ["--out", str(out), "--float-out", str(tmp_path / "float.tflite"), "--json"]
    )
    assert code == ExitStatus.OK
    res = json.loads(capsys.readouterr().out)
    assert res["input_dtype"] == res["output_dtype"] == "int8" and res["lint"]["ok"]
    assert res["eval_split"] == "val" and res["eval_samples"] > 200 and not res["qat_ran"]
    # onnx2tf moved the channels last (NCHW -> NHWC): the float model still reads digits.
    assert res["float_accuracy"] > 0.8
    assert abs(res["accuracy_drop_points"]) <= MARGIN_POINTS, res
    assert out.read_bytes()[4:8] == b"TFL3" and (tmp_path / "float.tflite").stat().st_size == res["float_tflite_bytes"]


def test_rgb_onnx_converts_offline(models):
    """onnx2tf fetches sample photos for an RGB input unless they are in its working directory: edgekit puts
    noise there and points any other download at a closed port, so this passes with no network."""
    import tensorflow as tf
    import tf2onnx

    model = _cnn((8, 8, 3), 3, batch=1)
    spec = (tf.TensorSpec((1, 8, 8, 3), tf.float32, name="image"),)
    path = models["dir"] / "rgb.onnx"
    tf2onnx.convert.from_function(
        tf.function(lambda t: model(t)), input_signature=spec, opset=13, inputs_as_nchw=["image"], output_path=str(path)
    )
    loaded = load_foreign(path)
    assert loaded.kind == "onnx" and loaded.shape.input_shape == (1, 8, 8, 3) and loaded.shape.classes == 3
    assert loaded.outputs_are == "probabilities"


def test_check_on_a_float_tflite_says_it_is_not_quantised(models, capsys):
    code = main(["check", str(models["tflite"]), "--all-profiles"])
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert code == ExitStatus.BAD_INPUT
    assert "float model, not quantised" in err and "edgekit convert" in err and "DOES NOT FIT" not in err


def test_prune_of_a_foreign_model_is_refused_before_any_work(models, digits_dataset, tmp_path):
    with pytest.raises(UsageError, match="--prune"):
        build(digits_dataset, ["raspberry-pi-4"], tmp_path, model=models["onnx"], prune=0.5)
