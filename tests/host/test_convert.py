"""edgekit.pipeline.convert: full-int8 PTQ in a child process, sizes, the crash path, uint8 profiles and the QAT
fallback."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest

from edgekit_agent.contract.errors import ConversionError, DatasetError


def test_digits_conversion_is_full_int8_with_a_fixed_batch(digits_int8):
    lint = digits_int8.lint
    assert lint.ok and not lint.islands and not lint.warnings, lint.to_dict()
    ops = dict(lint.ops)
    assert "CONV_2D" in ops and "FULLY_CONNECTED" in ops
    assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(ops)  # no dynamic-batch shape arithmetic (facts note 5)
    from edgekit_agent.infer.runtime import Runtime

    rt = Runtime(digits_int8.tflite, num_threads=1)
    assert rt.input_shape == (1, 8, 8, 1) and rt.input_dtype == np.int8 and rt.output_dtype == np.int8
    assert rt.input_quant[0] > 0 and rt.output_quant[0] > 0
    assert digits_int8.representative_samples == 100


def test_int8_file_is_about_a_quarter_of_float32(digits_int8):
    ratio = len(digits_int8.tflite) / len(digits_int8.float_tflite)
    assert digits_int8.float_tflite[4:8] == b"TFL3"
    assert 0.24 < ratio <= 0.26, ratio
    assert digits_int8.float_bytes == len(digits_int8.float_tflite) and digits_int8.size_ratio == ratio


def test_the_computed_float32_size_matches_a_real_float32_conversion(digits_int8):
    """Without ``with_float`` the float32 size is computed from the int8 graph instead of converted."""
    from edgekit.pipeline.sizes import float32_bytes

    computed, real = float32_bytes(digits_int8.tflite), len(digits_int8.float_tflite)
    assert abs(computed - real) / real < 0.005, (computed, real)


def test_evaluate_tflite_equals_a_direct_interpreter_run(digits_int8, digits_splits):
    """The evaluation path (edgekit_agent's runtime and quantize) against a hand-written LiteRT loop."""
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.pipeline.evaluate import evaluate_tflite

    x, y = digits_splits.test.x[:60], digits_splits.test.y[:60]
    res = evaluate_tflite(digits_int8.tflite, x, y, num_threads=1)
    interp = Interpreter(model_content=digits_int8.tflite, num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zero = inp["quantization"]
    preds = []
    for sample in x:
        q = np.clip(np.round(sample / scale) + zero, -128, 127).astype(np.int8)[None]
        interp.set_tensor(inp["index"], q)
        interp.invoke()
        preds.append(int(np.argmax(interp.get_tensor(out["index"])[0])))
    assert res.predictions.tolist() == preds
    assert res.accuracy == pytest.approx(np.mean(np.asarray(preds) == y))
    assert sum(map(sum, res.confusion)) == res.samples == 60


def test_int8_accuracy_is_close_to_float(digits_int8, digits_model, digits_splits):
    from edgekit.pipeline.evaluate import compare
    from edgekit.pipeline.train import load_model

    test = digits_splits.test
    report = compare(digits_int8.tflite, test.x, test.y, model=load_model(digits_model), num_threads=1)
    assert report.float_accuracy > 0.85  # one augmented epoch already learns the digits
    assert abs(report.drop_points) <= 2.0, report.to_dict()
    assert report.drop_points == pytest.approx(100 * (report.float_accuracy - report.int8_accuracy), abs=1e-3)


def test_uint8_profile_gets_uint8_tensors(digits_model, digits_splits):
    from edgekit.pipeline.convert import convert_int8

    res = convert_int8(
        digits_model, digits_splits.train.x, input_dtype="uint8", output_dtype="uint8", num_samples=50, with_float=False
    )
    assert res.lint.ok and res.lint.input_dtype == res.lint.output_dtype == "uint8"
    assert res.float_tflite == b""


def test_no_representative_data_is_refused(digits_model):
    from edgekit.pipeline.convert import convert_int8

    with pytest.raises(DatasetError, match="representative"):
        convert_int8(digits_model, np.zeros((0, 8, 8, 1), np.float32))


def test_a_converter_exception_in_the_worker_is_a_conversion_error(tmp_path):
    """The worker is given an unreadable model file: the converter side fails, the parent reports it."""
    from edgekit.pipeline.convert import run_worker

    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"this is not a zip archive")
    np.save(tmp_path / "rep.npy", np.zeros((2, 8, 8, 1), np.float32))
    job = {
        "model": str(bad),
        "format": "keras",
        "representative": str(tmp_path / "rep.npy"),
        "tasks": [{"kind": "int8", "input_dtype": "int8", "output_dtype": "int8", "out": str(tmp_path / "o.tflite")}],
    }
    with pytest.raises(ConversionError, match="converter failed on broken.keras") as err:
        run_worker(job, tmp_path, what="broken.keras")
    assert err.value.exit_status == 6
    assert not (tmp_path / "o.tflite").exists()


def test_a_crashed_converter_process_is_a_conversion_error(tmp_path, monkeypatch):
    """A child that dies from a real SIGSEGV (what the converter does on some Keras 3 RNNs) must not take us down."""
    from edgekit.pipeline import convert

    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(convert, "WORKER_COMMAND", [sys.executable, "-c", crash])
    with pytest.raises(ConversionError, match="crashed \\(SIGSEGV\\)") as err:
        convert.run_worker({"tasks": []}, tmp_path, what="lstm.keras")
    assert "lstm.keras" in str(err.value) and err.value.exit_status == 6


def test_a_model_without_recurrent_layers_converts_without_a_child_process(digits_model, digits_splits, monkeypatch):
    """The worker command is a process that crashes: the CNN never starts it, so the conversion succeeds."""
    from edgekit.pipeline import convert

    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(convert, "WORKER_COMMAND", [sys.executable, "-c", crash])
    res = convert.convert_int8(digits_model, digits_splits.train.x, num_samples=20, name="digits")
    assert res.lint.ok and res.float_tflite == b""
    assert 0.24 < res.size_ratio <= 0.26, res.size_ratio


def test_the_in_memory_conversion_gives_the_bytes_of_the_saved_model(digits_model, digits_splits, tmp_path):
    """In this process a Keras 3 model goes to the converter as it is; the worker's route for a saved model
    (what the child process takes) converts the same file to the same bytes."""
    from edgekit.pipeline import convert
    from edgekit.pipeline.train import load_model

    in_memory = convert.convert_int8(load_model(digits_model), digits_splits.train.x, num_samples=20, seed=0)
    np.save(tmp_path / "rep.npy", convert._representative(digits_splits.train.x, 20, 0))
    task = {"kind": "int8", "input_dtype": "int8", "output_dtype": "int8", "out": str(tmp_path / "file.tflite")}
    job = {"model": str(digits_model), "format": "keras", "representative": str(tmp_path / "rep.npy"), "tasks": [task]}
    convert.run_worker(job, tmp_path, what="digits.keras", isolate=False)
    assert (tmp_path / "file.tflite").read_bytes() == in_memory.tflite


def test_training_hands_the_convert_step_the_validation_accuracy_it_would_measure(digits_trained, digits_splits):
    """The float figure int8 is compared against (and QAT decided on) is taken from training, not re-measured:
    it must be exactly what evaluate_keras gives on the batch-1 model the convert step receives."""
    from edgekit.pipeline.evaluate import evaluate_keras

    val = digits_splits.val
    assert digits_trained.val_accuracy == evaluate_keras(digits_trained.model, val.x, val.y).accuracy


def test_a_recurrent_model_is_converted_in_a_child_process(digits_splits, tmp_path, monkeypatch):
    """An LSTM (the converter segfaults on some under quantisation) goes to the child, whose crash is reported."""
    import keras

    from edgekit.pipeline import convert

    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Reshape((8, 8)),
            keras.layers.Bidirectional(keras.layers.LSTM(4)),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    assert convert.needs_isolation(model)
    assert not convert.needs_isolation(keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten()]))
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(convert, "WORKER_COMMAND", [sys.executable, "-c", crash])
    with pytest.raises(ConversionError, match="crashed \\(SIGSEGV\\) while converting lstm"):
        convert.convert_int8(model, digits_splits.train.x, num_samples=5, name="lstm")


def test_worker_refuses_a_bad_job_file(tmp_path):
    from edgekit.pipeline import _convert_worker

    (tmp_path / "job.json").write_text("{not json")
    assert _convert_worker.run(str(tmp_path / "job.json")) == _convert_worker.EXIT_BAD_JOB


def test_qat_runs_when_forced_and_the_better_model_is_kept(digits_model, digits_splits):
    from edgekit.pipeline.convert import convert_for_profile
    from edgekit.pipeline.train import load_model
    from edgekit.profiles import load_profile

    small = replace(digits_splits, train=digits_splits.train.subset(np.arange(0, len(digits_splits.train), 3)))
    res = convert_for_profile(
        load_model(digits_model), small, load_profile("raspberry-pi-4"), force_qat=True, qat_epochs=1, num_samples=50
    )
    assert res.qat_ran and res.eval_split == "val" and res.eval_samples == len(small.val)
    assert res.ptq_int8_accuracy is not None and res.qat_int8_accuracy is not None
    assert res.kept == ("qat" if res.qat_int8_accuracy > res.ptq_int8_accuracy else "ptq")
    assert res.int8_accuracy == max(res.ptq_int8_accuracy, res.qat_int8_accuracy)
    assert res.lint.ok and res.tflite[4:8] == b"TFL3"
    d = res.to_dict()
    assert d["qat_ran"] is True and d["kept"] == res.kept and d["float_accuracy"] == res.float_accuracy


def test_a_tf_keras_savedmodel_from_the_user_is_loaded_and_converted_with_batch_1(tmp_path, digits_splits):
    """A user's own tf_keras model (SavedModel dir, free batch) goes through load_model and convert_int8."""
    import tf_keras

    from edgekit.pipeline import zoo
    from edgekit.pipeline.convert import convert_int8
    from edgekit.pipeline.train import load_model

    tf_keras.utils.set_random_seed(0)
    user = tf_keras.Sequential(
        [
            tf_keras.Input((8, 8, 1)),
            tf_keras.layers.Conv2D(8, 3, activation="relu"),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(10, activation="softmax"),
        ]
    )
    user.save(tmp_path / "user_savedmodel")  # no suffix: tf_keras writes a SavedModel directory
    model = load_model(tmp_path / "user_savedmodel")
    assert zoo.is_tf_keras(model) and model.inputs[0].shape[0] is None
    res = convert_int8(model, digits_splits.train.x, num_samples=20, with_float=False, name="user")
    ops = dict(res.lint.ops)
    assert res.lint.ok and "CONV_2D" in ops and not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(ops), ops
    from edgekit_agent.infer.runtime import Runtime

    assert Runtime(res.tflite, num_threads=1).input_shape == (1, 8, 8, 1)
