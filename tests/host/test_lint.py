"""The full-int8 lint on a model with a real float island (LayerNormalization, facts note 3)."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit_agent.contract.errors import ConversionError, QuantizationError


@pytest.fixture(scope="module")
def layernorm_model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1), batch_size=1),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.LayerNormalization(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


@pytest.fixture(scope="module")
def layernorm_conversion(layernorm_model):
    from edgekit.pipeline.convert import convert_int8

    x = np.random.default_rng(0).random((40, 8, 8, 1), dtype=np.float32)
    return convert_int8(layernorm_model, x, num_samples=40, strict=False, with_float=False, name="layernorm")


def test_lint_finds_the_float_island_inside_layernormalization(layernorm_conversion):
    report = layernorm_conversion.lint
    assert not report.ok
    assert report.islands, report.to_dict()
    island = report.islands[0]
    # The island is entered by DEQUANTIZE and left by QUANTIZE, with a float op in between.
    assert island.op_names[0] == "DEQUANTIZE" and island.op_names[-1] == "QUANTIZE"
    body = [op for op in island.op_names if op not in ("QUANTIZE", "DEQUANTIZE")]
    assert body and all(op in dict(report.ops) for op in body)
    assert any(body[0] in p for p in report.problems)
    # Input and output are still int8: the problem is inside the graph.
    assert report.input_dtype == report.output_dtype == "int8"


def test_strict_lint_names_the_operator_and_what_to_do(layernorm_conversion):
    from edgekit.pipeline.lint import lint_full_int8

    body = [op for op in layernorm_conversion.lint.islands[0].op_names if op not in ("QUANTIZE", "DEQUANTIZE")]
    with pytest.raises(QuantizationError) as err:
        lint_full_int8(layernorm_conversion.tflite, strict=True, name="ln.tflite")
    msg = str(err.value)
    assert "ln.tflite" in msg and body[0] in msg and "LayerNormalization" in msg
    assert isinstance(err.value, ConversionError) and err.value.exit_status == 6


def test_convert_is_strict_by_default(layernorm_model):
    from edgekit.pipeline.convert import convert_int8

    x = np.random.default_rng(1).random((20, 8, 8, 1), dtype=np.float32)
    with pytest.raises(QuantizationError, match="float island"):
        convert_int8(layernorm_model, x, num_samples=20, with_float=False)


def test_lint_checks_the_demanded_io_dtypes(layernorm_conversion):
    from edgekit.pipeline.lint import lint_full_int8

    report = lint_full_int8(layernorm_conversion.tflite, input_dtype="uint8", output_dtype="uint8")
    assert any("input tensor is int8" in p for p in report.problems)
    assert any("output tensor is int8" in p for p in report.problems)
