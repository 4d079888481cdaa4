"""The interpreter shim: engine order, delegates as they really ran, typed errors; the structural .tflite check."""

from __future__ import annotations

import ctypes.util
from pathlib import Path

import numpy as np
import pytest

from edgekit_agent.bundle.tflite_file import check_tflite
from edgekit_agent.contract.errors import DelegateError, ModelError, RuntimeUnavailableError
from edgekit_agent.infer.runtime import Runtime


@pytest.fixture(scope="module")
def model(digits_bundle: Path) -> bytes:
    return (digits_bundle / "model.tflite").read_bytes()


def test_litert_is_the_first_choice_and_xnnpack_shows_in_the_plan(model):
    rt = Runtime(model, num_threads=1)
    assert rt.info.engine == "litert" and rt.info.delegate == "xnnpack"
    assert "DELEGATE" in rt.ops()


def test_without_delegate_the_real_operators_run_with_close_outputs(model):
    plain = Runtime(model, num_threads=1, delegate="none")
    x = np.random.default_rng(0).integers(-128, 128, size=plain.input_shape, dtype=np.int8)
    assert plain.info.delegate == "none"
    assert "CONV_2D" in plain.ops() and "FULLY_CONNECTED" in plain.ops() and "DELEGATE" not in plain.ops()
    diff = np.abs(plain.invoke(x).astype(int) - Runtime(model, num_threads=1).invoke(x).astype(int))
    assert diff.max() <= 1


def test_tensorflow_engine_loads_the_same_model(model, monkeypatch):
    monkeypatch.setenv("EDGEKIT_RUNTIME", "tensorflow")
    rt = Runtime(model, num_threads=1, delegate="none")
    assert rt.info.engine == "tensorflow" and rt.output_shape == (1, 10)


def test_dequantize_uses_int64(model):
    rt = Runtime(model, num_threads=1)
    scale, zero = rt.output_quant
    q = np.array([[-128, 127]], dtype=np.int8)
    assert np.allclose(rt.dequantize_output(q), (np.array([-128, 127]) - zero) * scale)


def test_typed_errors(model):
    with pytest.raises(RuntimeUnavailableError, match="unknown runtime 'onnx'"):
        Runtime(model, engine="onnx")
    with pytest.raises(ModelError, match="unknown delegate"):
        Runtime(model, delegate="gpu")
    with pytest.raises(ModelError, match="cannot load this model"):
        Runtime(model[: len(model) // 2])


@pytest.mark.skipif(bool(ctypes.util.find_library("edgetpu")), reason="libedgetpu is installed here")
@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)  # LiteRT's Delegate.__del__ after a failed load
def test_missing_edgetpu_library_is_a_delegate_error(model):
    with pytest.raises(DelegateError, match="libedgetpu"):
        Runtime(model, delegate="edgetpu")


def test_check_tflite_accepts_the_model_and_refuses_every_truncation(model):
    check_tflite(model)
    for cut in range(0, len(model), max(1, len(model) // 150)):
        with pytest.raises(ModelError, match="truncated or corrupt"):
            check_tflite(model[:cut], "m.tflite")


def test_check_tflite_refuses_out_of_range_indices(model):
    # The root offset pointed past the end: the first thing a corrupted header breaks.
    bad = (len(model) + 16).to_bytes(4, "little") + model[4:]
    with pytest.raises(ModelError, match="past the end"):
        check_tflite(bad)
