"""Models from elsewhere: a float ``.tflite`` or an ``.onnx`` file, made full int8 with the user's images.

An ONNX file becomes a float32 ``.tflite`` first (onnx2tf, which also turns the PyTorch layout NCHW into the
NHWC TFLite uses); from there both take one path: ai-edge-quantizer quantises weights and activations to int8
(int8 input and output), calibrated on training images drawn with a seed, and the float and int8 models are
measured on the same held-out images through the device's runtime. There is no Keras model, so no
quantisation-aware training: a large drop is reported, not repaired. Both tools run in a child process
(:mod:`edgekit.pipeline._foreign_worker`); nothing is downloaded (docs/pipeline.md, Ways in).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from edgekit.fit.tflite_graph import read_graph
from edgekit.pipeline.convert import ConversionResult, _representative
from edgekit.pipeline.data import Splits, image_input, shape_text
from edgekit.pipeline.evaluate import evaluate_tflite
from edgekit.pipeline.lint import lint_full_int8
from edgekit.pipeline.train import ModelShape
from edgekit.profiles import Profile
from edgekit_agent.contract.errors import ConversionError, DatasetError, ModelError

SUFFIXES = (".tflite", ".onnx")
WORKER_COMMAND: list[str] = [sys.executable, "-m", "edgekit.pipeline._foreign_worker"]
EXIT_TOOL_ERROR = 3
DEFAULT_TIMEOUT_S = 900
# onnx2tf fetches 20 sample photos from GitHub for a dummy inference on RGB models unless a file of this name is
# in its working directory; it gets seeded noise there instead (its own choice for other inputs).
_ONNX2TF_SAMPLES = "calibration_image_sample_data_20x128x128x3_float32.npy"
# Any other download attempt fails at once instead of reaching the network.
_NO_NETWORK = {k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}


@dataclass(frozen=True, slots=True)
class ForeignModel:
    """A float model from a ``.tflite`` or ``.onnx`` file (``kind``), as the float32 ``.tflite`` it runs as."""

    path: Path
    kind: Literal["tflite", "onnx"]
    float_tflite: bytes = field(repr=False)
    shape: ModelShape
    outputs_are: Literal["probabilities", "logits"]


def is_foreign(path: str | Path) -> bool:
    """True for a file edgekit imports through this module rather than loading with Keras."""
    return Path(path).suffix.lower() in SUFFIXES


def _quantised_input(tflite: bytes, name: str) -> str | None:
    """The input dtype when the model is already quantised (an integer input), else None."""
    graph = read_graph(tflite, name)
    dtypes = [graph.tensor(i).dtype for i in graph.inputs]
    return dtypes[0] if dtypes and all(d in ("int8", "uint8", "int16") for d in dtypes) else None


def not_quantised_message(tflite: bytes, path: str | Path) -> str | None:
    """What to say about a model that is not full int8 (a float input): what it is and what to run; None for a
    quantised model. `edgekit check` says this instead of a DOES NOT FIT on every profile."""
    graph = read_graph(tflite, str(path))
    inputs = [graph.tensor(i).dtype for i in graph.inputs]
    if not any(d in ("float32", "float16") for d in inputs):
        return None
    ops = len(graph.operators)
    float_ops = sum(
        1 for op in graph.operators if any(graph.tensor(t).dtype in ("float32", "float16") for t in op.outputs)
    )
    return (
        f"{path} is a float model, not quantised: it takes {'/'.join(inputs)} input and {float_ops} of its {ops} "
        "operators compute in float. Every device profile runs full-int8 models, so it cannot fit one as it is. "
        f"Quantise it with your images as calibration: `edgekit convert {path} --dataset DIR --profile NAME "
        f"--out {Path(path).stem}-int8.tflite` (then check that file), or build bundles from it in one go: "
        f"`edgekit build --model {path} --dataset DIR --profile NAME --out OUT`."
    )


def _require(module: str, path: Path) -> None:
    """:class:`ModelError` when the tool for ``path`` is not installed (it comes with ``edgekit[import]``)."""
    if importlib.util.find_spec(module) is None:
        raise ModelError(
            f"{path}: importing a {path.suffix} model needs {module}, which is not installed here; "
            "install it with `pip install 'edgekit[import]'` (scripts/setup.sh does)."
        )


def _run(job: dict[str, object], work: Path, *, what: str, advice: str, timeout: float) -> None:
    """Run one job in the worker process; :class:`ConversionError` naming ``what`` on a failure or crash."""
    job_path = work / "job.json"
    job_path.write_text(json.dumps(job))
    env = {**os.environ, **_NO_NETWORK, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for key in ("NO_PROXY", "no_proxy"):
        env.pop(key, None)
    try:
        proc = subprocess.run(
            [*WORKER_COMMAND, str(job_path)], capture_output=True, text=True, timeout=timeout, env=env, cwd=work
        )
    except subprocess.TimeoutExpired:
        raise ConversionError(f"{what} did not finish within {timeout:.0f} s; {advice}") from None
    if proc.returncode == 0:
        return
    error_file = work / "error.txt"
    if proc.returncode == EXIT_TOOL_ERROR and error_file.is_file():
        first = error_file.read_text().strip().splitlines()[0][:600]
        raise ConversionError(f"{what} failed: {first}. {advice}")
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
    raise ConversionError(f"{what} stopped (exit code {proc.returncode}). {advice}\nlast output:\n{tail}")


def _onnx_to_tflite(path: Path, timeout: float) -> bytes:
    _require("onnx2tf", path)
    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-") as tmp:
        work = Path(tmp)
        np.save(work / _ONNX2TF_SAMPLES, np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
        out = work / "float32.tflite"
        _run(
            {"kind": "onnx", "model": str(path.resolve()), "out_dir": str(work / "onnx2tf"), "out": str(out)},
            work,
            what=f"converting {path} with onnx2tf",
            advice="Check that the model loads with onnx.load and runs in onnxruntime; export it again with one "
            "image input of fixed height and width (torch.onnx.export with opset 13 or later).",
            timeout=timeout,
        )
        return out.read_bytes()


def _io_shapes(tflite: bytes, path: Path) -> tuple[list[tuple[int | None, ...]], list[tuple[int | None, ...]]]:
    graph = read_graph(tflite, str(path))

    def dims(index: int) -> tuple[int | None, ...]:
        t = graph.tensor(index)
        return tuple(None if d < 0 else int(d) for d in (t.shape_signature or t.shape))

    return [dims(i) for i in graph.inputs], [dims(i) for i in graph.outputs]


def load_foreign(path: str | Path, *, timeout: float = DEFAULT_TIMEOUT_S) -> ForeignModel:
    """Read a float ``.tflite`` (or convert an ``.onnx`` file to one) and check it is an image classifier:
    one input (batch, H, W, C) with 1 or 3 channels, one output (batch, classes).

    Raises :class:`ModelError` naming the file (missing, not a model, already quantised, not a classifier)
    and :class:`ConversionError` when onnx2tf cannot convert it.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file; give a float .tflite or an .onnx file.")
    kind: Literal["tflite", "onnx"] = "onnx" if path.suffix.lower() == ".onnx" else "tflite"
    tflite = _onnx_to_tflite(path, timeout) if kind == "onnx" else path.read_bytes()
    quantised = _quantised_input(tflite, str(path))
    if quantised is not None:
        raise ModelError(
            f"{path}: already quantised ({quantised} input), so there is nothing to convert; check it against a "
            f"device with `edgekit check {path} --profile NAME`, or give the float model it was made from."
        )
    inputs, outputs = _io_shapes(tflite, path)
    if len(inputs) != 1:
        raise ModelError(
            f"{path}: the model has {len(inputs)} inputs {', '.join(map(shape_text, inputs))}; edgekit feeds one "
            "image: give a model with exactly one input of shape (batch, height, width, channels)."
        )
    if len(outputs) != 1 or len(outputs[0]) != 2:
        raise ModelError(
            f"{path}: the model has {len(outputs)} output(s) {', '.join(map(shape_text, outputs))}; "
            "a classifier for edgekit needs exactly one output of shape (batch, classes)."
        )
    image_input(inputs[0], str(path))  # rank 4, 1 or 3 channels (NHWC: onnx2tf has moved the channels last)
    graph = read_graph(tflite, str(path))
    last = next((op.name for op in graph.operators if graph.outputs[0] in op.outputs), "")
    return ForeignModel(
        path=path,
        kind=kind,
        float_tflite=tflite,
        shape=ModelShape(path=path, input_shape=inputs[0], output_shape=outputs[0]),
        outputs_are="probabilities" if last == "SOFTMAX" else "logits",
    )


def quantize(
    model: ForeignModel,
    representative_x: np.ndarray,
    *,
    input_dtype: str = "int8",
    output_dtype: str = "int8",
    num_samples: int = 200,
    seed: int = 0,
    strict: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> ConversionResult:
    """Full-int8 static quantisation of the float model with ai-edge-quantizer, calibrated on ``num_samples``
    inputs drawn from ``representative_x`` with ``seed``, then linted like a converted Keras model."""
    if (input_dtype, output_dtype) != ("int8", "int8"):
        raise ModelError(
            f"{model.path}: ai-edge-quantizer writes int8 inputs and outputs; the profile asks for "
            f"{input_dtype}/{output_dtype}. Use an int8 profile, or convert a Keras model with `edgekit convert`."
        )
    _require("ai_edge_quantizer", model.path)
    start = time.perf_counter()
    rep = _representative(representative_x, num_samples, seed)
    with tempfile.TemporaryDirectory(prefix="edgekit-quantize-") as tmp:
        work = Path(tmp)
        (work / "float.tflite").write_bytes(model.float_tflite)
        np.save(work / "representative.npy", rep)
        _run(
            {
                "kind": "quantize",
                "model": str(work / "float.tflite"),
                "representative": str(work / "representative.npy"),
                "out": str(work / "int8.tflite"),
            },
            work,
            what=f"quantising {model.path} with ai-edge-quantizer",
            advice="Check that the model runs in LiteRT on these images and has exactly one signature "
            "(interpreter.get_signature_list(); a model converted without one needs converting again, e.g. from "
            "its SavedModel or ONNX file).",
            timeout=timeout,
        )
        tflite = (work / "int8.tflite").read_bytes()
    report = lint_full_int8(
        tflite, input_dtype=input_dtype, output_dtype=output_dtype, strict=strict, name=f"{model.path.name} (int8)"
    )
    return ConversionResult(
        tflite=tflite,
        float_tflite=model.float_tflite,
        float_bytes=len(model.float_tflite),
        lint=report,
        input_dtype=input_dtype,
        output_dtype=output_dtype,
        representative_samples=int(len(rep)),
        seconds=time.perf_counter() - start,
    )


def float_accuracy(model: ForeignModel, x: np.ndarray, y: np.ndarray, *, num_classes: int | None = None) -> float:
    """Accuracy of the float model (its float32 ``.tflite``, through the device's runtime) on ``x``, ``y``."""
    return float(evaluate_tflite(model.float_tflite, x, y, num_threads=1, num_classes=num_classes).accuracy)


def convert_for_profile(
    model: ForeignModel,
    splits: Splits,
    profile: Profile,
    *,
    num_samples: int = 200,
    seed: int = 0,
    on_stage: Callable[[str], None] | None = None,
) -> ConversionResult:
    """Quantise for a profile and measure float against int8 on the validation split (test when there is none),
    as :func:`edgekit.pipeline.convert.convert_for_profile` does for a Keras model, without QAT."""
    stage = on_stage or (lambda _msg: None)
    split_name, part = ("val", splits.val) if len(splits.val.y) else ("test", splits.test)
    if len(part.y) == 0:
        raise DatasetError("no validation or test samples to compare float and int8 accuracy; use a larger dataset.")
    stage(f"quantising the float {model.kind} model (ai-edge-quantizer)")
    result = quantize(
        model,
        splits.train.x,
        input_dtype=str(profile.input_dtype),
        output_dtype=str(profile.output_dtype),
        num_samples=num_samples,
        seed=seed,
    )
    stage("measuring float and int8 accuracy")
    n_cls = len(splits.labels)
    int8 = evaluate_tflite(result.tflite, part.x, part.y, num_threads=1, num_classes=n_cls).accuracy
    return replace(
        result,
        float_accuracy=float_accuracy(model, part.x, part.y, num_classes=n_cls),
        int8_accuracy=int8,
        ptq_int8_accuracy=int8,
        eval_split=split_name,
        eval_samples=int(len(part.y)),
    )
