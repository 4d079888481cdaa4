#!/usr/bin/env python3
"""`edgekit build` against a plain Keras script doing the same work, side by side (issue 15, item 2).

    .venv/bin/python scripts/bench_build.py [--epochs 1,6] [--repeat 3] [--dataset DIR] [--json FILE]

Both sides are fresh processes (TensorFlow's import included, as a user sees it) on the digits image folder:
`edgekit build --profile raspberry-pi-4` (train, int8 conversion, evaluation, fit check, bundle) and
``--baseline``, this file run as a plain Keras script that does not import edgekit: the same CNN, optimiser,
schedule, shifted copies, split (per class, seeded the same way), best-validation checkpoint, 200 calibration
images, full-int8 conversion with a batch of 1, and int8 accuracy on the test split with LiteRT. Runs alternate
(edgekit first on even repeats, the baseline first on odd ones); medians, the ratio and both accuracies are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPLIT_VAL = SPLIT_TEST = 0.15
CALIBRATION = 200


# ----------------------------------------------------------------------- the plain Keras script (no edgekit)
def _load(root: Path):
    import numpy as np
    from PIL import Image

    labels = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    xs, ys = [], []
    for cls, label in enumerate(labels):
        for f in sorted((root / label).glob("*.png")):
            xs.append(np.asarray(Image.open(f).convert("L"), np.float32)[:, :, None] / 255.0)
            ys.append(cls)
    return np.stack(xs), np.asarray(ys), labels


def _split(y, labels, seed: int):
    import numpy as np

    parts = {"train": [], "val": [], "test": []}
    for cls, label in enumerate(labels):
        idx = np.flatnonzero(y == cls)
        idx = idx[np.random.default_rng([seed, zlib.crc32(label.encode())]).permutation(len(idx))]
        n_test, n_val = max(round(len(idx) * SPLIT_TEST), 1), max(round(len(idx) * SPLIT_VAL), 1)
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def _shifted(x, y):
    import numpy as np

    h, w = x.shape[1:3]
    dy, dx = max(1, h // 8), max(1, w // 8)
    copies = [x]
    for sy, sx in ((dy, 0), (-dy, 0), (0, dx), (0, -dx)):
        out = np.zeros_like(x)
        out[:, max(sy, 0) : h + min(sy, 0), max(sx, 0) : w + min(sx, 0)] = x[
            :, max(-sy, 0) : h + min(-sy, 0), max(-sx, 0) : w + min(-sx, 0)
        ]
        copies.append(out)
    return np.concatenate(copies), np.tile(y, len(copies))


def _cnn(keras, shape, classes: int, batch_size=None):
    L = keras.layers
    layers = [
        keras.Input(shape=shape, batch_size=batch_size),
        L.Conv2D(32, 3, padding="same", activation="relu"),
        L.Conv2D(64, 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
    ]
    h = shape[0] // 2
    while h > 4:
        layers += [L.Conv2D(64, 3, padding="same", activation="relu"), L.MaxPooling2D()]
        h //= 2
    layers += [
        L.Conv2D(64, 3, padding="same", activation="relu"),
        L.Flatten(),
        L.Dropout(0.25),
        L.Dense(512, activation="relu"),
        L.Dense(classes, activation="softmax"),
    ]
    return keras.Sequential(layers)


def baseline(dataset: Path, out: Path, epochs: int, seed: int = 0) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    x, y, labels = _load(dataset)
    part = _split(y, labels, seed)
    xt, yt = _shifted(x[part["train"]], y[part["train"]])
    keras.utils.set_random_seed(seed)
    model = _cnn(keras, x.shape[1:], len(labels))
    steps = epochs * int(np.ceil(len(yt) / 32))
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=steps, alpha=0.05)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
    best = str(out / "best.weights.h5")
    check = keras.callbacks.ModelCheckpoint(best, monitor="val_accuracy", save_best_only=True, save_weights_only=True)
    val = (x[part["val"]], y[part["val"]])
    model.fit(xt, yt, epochs=epochs, batch_size=32, shuffle=True, verbose=0, validation_data=val, callbacks=[check])
    model.load_weights(best)
    xs, ys = x[part["test"]], y[part["test"]]
    float_acc = float(np.mean(np.argmax(model.predict(xs, verbose=0), 1) == ys))

    fixed = _cnn(keras, x.shape[1:], len(labels), batch_size=1)  # a batch of 1: no SHAPE/PACK ops in the graph
    fixed.set_weights(model.get_weights())
    rng = np.random.default_rng(seed)
    calib = x[part["train"]][np.sort(rng.choice(len(part["train"]), CALIBRATION, replace=False))]
    conv = tf.lite.TFLiteConverter.from_keras_model(fixed)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib[i : i + 1]] for i in range(len(calib)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    tflite = conv.convert()
    (out / "model.tflite").write_bytes(tflite)

    interp = Interpreter(model_content=tflite, num_threads=1)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zero = inp["quantization"]
    hits = 0
    for sample, label in zip(xs, ys):
        interp.set_tensor(inp["index"], np.clip(np.round(sample / scale) + zero, -128, 127).astype(np.int8)[None])
        interp.invoke()
        hits += int(np.argmax(interp.get_tensor(outp["index"])[0]) == label)
    return {"float_accuracy": float_acc, "int8_accuracy": hits / len(ys), "int8_bytes": len(tflite)}


# ------------------------------------------------------------------------------------------------- driver
def _timed(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the process and its children), stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall, cpu, r.stdout


def run_edgekit(dataset: Path, out: Path, epochs: int) -> tuple[float, float, dict]:
    cmd = [sys.executable, "-m", "edgekit", "build", "--dataset", str(dataset), "--profile", "raspberry-pi-4"]
    wall, cpu, stdout = _timed([*cmd, "--out", str(out), "--epochs", str(epochs), "--json"])
    p = json.loads(stdout)["profiles"][0]
    return wall, cpu, {"float_accuracy": p["float_accuracy"], "int8_accuracy": p["int8_accuracy"]}


def run_baseline(dataset: Path, out: Path, epochs: int) -> tuple[float, float, dict]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--baseline", str(out), "--dataset", str(dataset), "--epochs", str(epochs)]
    wall, cpu, _ = _timed(cmd)
    return wall, cpu, json.loads((out / "result.json").read_text())  # stdout also carries the converter's chatter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", default="1,6", help="comma-separated epoch counts (default 1,6)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dataset", type=Path, help="the digits image folder (default: written to a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write every run here")
    ap.add_argument("--baseline", type=Path, help=argparse.SUPPRESS)  # run the plain Keras script into this folder
    a = ap.parse_args()
    if a.baseline:
        (a.baseline / "result.json").write_text(json.dumps(baseline(a.dataset, a.baseline, int(a.epochs))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        dataset = a.dataset or Path(tmp) / "digits"
        if not a.dataset:
            subprocess.run([sys.executable, "-m", "edgekit", "datasets", "digits", str(dataset)], check=True)
        runs: dict[int, dict[str, list]] = {}
        for epochs in (int(e) for e in a.epochs.split(",")):
            runs[epochs] = {"edgekit": [], "baseline": []}
            for rep in range(a.repeat):
                sides = [("edgekit", run_edgekit), ("baseline", run_baseline)]
                for side, fn in sides if rep % 2 == 0 else sides[::-1]:
                    load = os.getloadavg()[0]
                    wall, cpu, acc = fn(dataset, Path(tmp) / f"{side}-{epochs}-{rep}", epochs)
                    runs[epochs][side].append({"wall_s": wall, "cpu_s": cpu, "load": load, **acc})
                    print(
                        f"  {epochs} epoch(s), run {rep + 1}, {side:8s}: {wall:5.1f} s, {cpu:5.1f} CPU-s "
                        f"(load {load:.1f}), "
                        f"float {100 * acc['float_accuracy']:.2f} %, int8 {100 * acc['int8_accuracy']:.2f} %",
                        file=sys.stderr,
                        flush=True,
                    )
    print(f"\n`edgekit build` vs a plain Keras script, digits, medians of {a.repeat} interleaved runs:")
    for epochs, sides in runs.items():
        med = {s: statistics.median(r["wall_s"] for r in v) for s, v in sides.items()}
        cpu = {s: statistics.median(r["cpu_s"] for r in v) for s, v in sides.items()}
        acc = {s: [f"{100 * r['int8_accuracy']:.2f}" for r in v] for s, v in sides.items()}
        print(
            f"  {epochs} epoch(s): edgekit {med['edgekit']:.1f} s, baseline {med['baseline']:.1f} s, "
            f"ratio {med['edgekit'] / med['baseline']:.2f} (CPU-s {cpu['edgekit']:.1f} / {cpu['baseline']:.1f} = "
            f"{cpu['edgekit'] / cpu['baseline']:.2f}); int8 accuracy % edgekit {acc['edgekit']}, "
            f"baseline {acc['baseline']}"
        )
    if a.json:
        a.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
