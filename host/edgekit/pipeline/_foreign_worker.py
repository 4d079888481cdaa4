"""Foreign-model tools in a child process: ``python -m edgekit.pipeline._foreign_worker JOB.json``.

Two jobs (:mod:`edgekit.pipeline.foreign` writes them): ``onnx`` turns an ONNX file into a float32 ``.tflite``
(onnx2tf writes a SavedModel, the TFLite converter converts it), ``quantize`` makes a float ``.tflite`` full
int8 with ai-edge-quantizer, calibrated on a ``.npy`` of the caller's samples. Both run here because onnx2tf
ends its process with ``sys.exit`` on a model it cannot convert and both print progress bars and logs of their
own. A tool's exception exits with :data:`EXIT_TOOL_ERROR` and its message in ``error.txt`` next to the job file.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

EXIT_TOOL_ERROR = 3
EXIT_BAD_JOB = 4


def _onnx(job: dict[str, Any]) -> None:
    import onnx2tf
    import tensorflow as tf

    out_dir = Path(job["out_dir"])
    onnx2tf.convert(
        input_onnx_file_path=job["model"],
        output_folder_path=str(out_dir),
        batch_size=1,  # devices serve one image at a time; a dynamic batch leaves SHAPE ops TFLite Micro lacks
        output_signaturedefs=True,
        not_use_onnxsim=True,  # onnxsim is a separate install and onnx2tf only shells out to it
        non_verbose=True,
    )
    # onnx2tf's own .tflite has no signature (ai-edge-quantizer calibrates through one) and allows TF Select
    # ops no device runs: convert its SavedModel again, builtin operators only.
    Path(job["out"]).write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(out_dir)).convert())


def _quantize(job: dict[str, Any]) -> None:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    model = bytearray(Path(job["model"]).read_bytes())
    signatures = Interpreter(model_content=bytes(model)).get_signature_list()
    if len(signatures) != 1:
        raise RuntimeError(f"the model has {len(signatures)} signatures; ai-edge-quantizer calibrates exactly one")
    ((key, sig),) = signatures.items()
    (input_name,) = sig["inputs"]
    samples = np.load(job["representative"])
    calibration = {key: [{input_name: samples[i : i + 1]} for i in range(len(samples))]}
    q = quantizer.Quantizer(model, recipe.static_wi8_ai8())  # int8 weights and activations, int8 in and out
    result = q.quantize(q.calibrate(calibration), enable_progress_report=False)
    Path(job["out"]).write_bytes(_inline_buffers(bytes(result.quantized_model)))


def _inline_buffers(tflite: bytes) -> bytes:
    """The model with every buffer inside the flatbuffer. Past 256 KiB of weights ai-edge-quantizer appends them
    after it (offset/size, the format for models over 2 GB), which TFLite Micro copies into its arena: the
    digits CNN needed 601 KB of arena that way instead of 16 KB."""
    import flatbuffers
    import numpy as np
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(tflite, 0)
    for buf in model.buffers or []:
        if buf.offset > 1 and buf.size:
            buf.data = np.frombuffer(tflite, dtype=np.uint8, count=buf.size, offset=buf.offset)
            buf.offset = buf.size = 0
    builder = flatbuffers.Builder(len(tflite) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def run(job_path: str) -> int:
    """Run the job of a job file; returns the process exit code."""
    try:
        job = json.loads(Path(job_path).read_text())
        tool = {"onnx": _onnx, "quantize": _quantize}[job["kind"]]
    except (OSError, ValueError, KeyError) as exc:
        print(f"bad job file {job_path}: {exc}", file=sys.stderr)
        return EXIT_BAD_JOB
    try:
        tool(job)
    except Exception as exc:  # noqa: BLE001 - every tool failure is reported to the parent as text
        Path(job_path).with_name("error.txt").write_text(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
        return EXIT_TOOL_ERROR
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m edgekit.pipeline._foreign_worker JOB.json", file=sys.stderr)
        sys.exit(EXIT_BAD_JOB)
    sys.exit(run(sys.argv[1]))
