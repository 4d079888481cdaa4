"""The TFLite converter in a child process: ``python -m edgekit.pipeline._convert_worker JOB.json``.

The converter can kill its process (a segfault on some Keras 3 models with quantisation, docs/pipeline.md, Convert),
so :mod:`edgekit.pipeline.convert` never runs it in the caller's process. The job file names the model (a Keras 3
``.keras`` file or a SavedModel directory), a ``.npy`` of representative samples and the outputs to write.
Each task may name its own model (several models, one TensorFlow import). A converter exception exits with
:data:`EXIT_CONVERTER_ERROR` and its message in ``error.txt``; any other exit code (a negative one is a signal)
is a crash, reported by the parent. In the caller's process (:func:`run` with ``models``), a task whose format
is ``"memory"`` names a Keras 3 model the caller holds: it is converted as it is, not saved and loaded again.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXIT_CONVERTER_ERROR = 3
EXIT_BAD_JOB = 4


def _converter(job: dict[str, Any], task: dict[str, Any], models: dict[str, Any]) -> Any:
    """A converter for the task's model (a task may name its own model; else the job's)."""
    import tensorflow as tf

    path, fmt = task.get("model", job.get("model")), task.get("format", job.get("format"))
    if fmt == "memory":
        return tf.lite.TFLiteConverter.from_keras_model(models[path])
    if fmt == "saved_model":
        return tf.lite.TFLiteConverter.from_saved_model(path)
    import keras

    model = keras.models.load_model(path, compile=False)
    return tf.lite.TFLiteConverter.from_keras_model(model)


def _representative(path: str) -> Iterator[list[Any]]:
    import numpy as np

    samples = np.load(path)
    for i in range(len(samples)):
        yield [samples[i : i + 1]]  # batch of one, the model's fixed input shape


def _int8(converter: Any, job: dict[str, Any], task: dict[str, Any]) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: _representative(job["representative"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = {"int8": tf.int8, "uint8": tf.uint8}[task["input_dtype"]]
    converter.inference_output_type = {"int8": tf.int8, "uint8": tf.uint8}[task["output_dtype"]]


def _debug(job: dict[str, Any], task: dict[str, Any], models: dict[str, Any]) -> None:
    """Per-layer quantisation error with TF's QuantizationDebugger (docs/pipeline.md, Evaluate), as JSON rows."""
    import tensorflow as tf

    converter = _converter(job, task, models)
    _int8(converter, job, task)
    # The debugger compares float and quantised tensors layer by layer; it feeds float inputs itself.
    converter.inference_input_type = converter.inference_output_type = tf.float32
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: _representative(job["representative"])
    )
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)  # the only public view that names each layer's op and tensor
    rows = []
    for rec in csv.DictReader(io.StringIO(buf.getvalue())):
        row: dict[str, Any] = {"op": rec.pop("op_name"), "tensor": rec.pop("tensor_name")}
        for key, value in rec.items():
            try:
                row[key] = float(value)
            except (TypeError, ValueError):
                row[key] = value
        rows.append(row)
    Path(task["out"]).write_text(json.dumps(rows))


def run(job_path: str, models: dict[str, Any] | None = None) -> int:
    """Run every task of a job file; returns the process exit code. ``models``: the in-memory models that
    ``"memory"`` tasks name (in the caller's process only)."""
    try:
        job = json.loads(Path(job_path).read_text())
        tasks = job["tasks"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"bad job file {job_path}: {exc}", file=sys.stderr)
        return EXIT_BAD_JOB
    error_file = Path(job_path).with_name("error.txt")
    try:
        for task in tasks:
            if task["kind"] == "debug":
                _debug(job, task, models or {})
                continue
            converter = _converter(job, task, models or {})
            if task["kind"] == "int8":
                _int8(converter, job, task)
            Path(task["out"]).write_bytes(converter.convert())
    except Exception as exc:  # noqa: BLE001 - every converter failure is reported to the parent as text
        error_file.write_text(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
        return EXIT_CONVERTER_ERROR
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m edgekit.pipeline._convert_worker JOB.json", file=sys.stderr)
        sys.exit(EXIT_BAD_JOB)
    sys.exit(run(sys.argv[1]))
