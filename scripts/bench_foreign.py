#!/usr/bin/env python3
"""Float against int8 for each way in (issue 11): the same trained digits CNN as Keras, as a float .tflite and as ONNX.

    .venv/bin/python scripts/bench_foreign.py [--profile raspberry-pi-4] [--json bench-foreign.json]

1. `edgekit datasets digits` and `edgekit train` (the zoo's CNN, default epochs) into a temporary folder.
2. The trained model exported the way other tools hand models over: a float .tflite (TF converter, no
   optimisations) and an ONNX file with an NCHW input like `torch.onnx.export` writes (tf2onnx).
3. `edgekit build --model FILE` for each, in fresh processes: float and int8 accuracy on the same 269 held-out
   test images (the float model through Keras or, for the other two, through LiteRT) and int8 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def edgekit(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "edgekit", *args, "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"edgekit {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def export(keras_file: Path, work: Path) -> dict[str, Path]:
    """The float .tflite and the ONNX file of a Keras model (batch 1), as in docs/pipeline.md, Ways in."""
    import keras
    import tensorflow as tf
    import tf2onnx

    model = keras.models.load_model(keras_file, compile=False)
    tflite = work / "digits-float.tflite"
    tflite.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    onnx = work / "digits.onnx"
    tf2onnx.convert.from_function(
        tf.function(lambda t: model(t)),
        input_signature=(tf.TensorSpec((1, *shape), tf.float32, name="image"),),
        opset=13,
        inputs_as_nchw=["image"],
        output_path=str(onnx),
    )
    return {"Keras (.keras)": keras_file, "float .tflite": tflite, "ONNX (NCHW)": onnx}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="raspberry-pi-4")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-foreign-") as tmp:
        work = Path(tmp)
        data = work / "digits"
        edgekit("datasets", "digits", str(data))
        trained = edgekit("train", "--dataset", str(data), "--out", str(work / "digits.keras"))
        rows = []
        for i, (way, path) in enumerate(export(work / "digits.keras", work).items()):
            out = str(work / f"out{i}")
            res = edgekit(
                "build", "--dataset", str(data), "--profile", args.profile, "--model", str(path), "--out", out
            )
            (p,) = res["profiles"]
            rows.append(
                {
                    "way in": way,
                    "float_accuracy": p["float_accuracy"],
                    "int8_accuracy": p["int8_accuracy"],
                    "drop_points": p["accuracy_drop_points"],
                    "test_samples": p["samples"],
                    "int8_bytes": p["int8_bytes"],
                }
            )
    print(f"digits CNN ({trained.get('epochs', '?')} epochs), {args.profile}, held-out test split")
    print("| way in | float | int8 | int8 - float | int8 bytes |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['way in']} | {100 * r['float_accuracy']:.2f} % | {100 * r['int8_accuracy']:.2f} % | "
            f"{100 * (r['int8_accuracy'] - r['float_accuracy']):+.2f} points | {r['int8_bytes']:,} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
