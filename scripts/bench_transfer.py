#!/usr/bin/env python3
"""A pretrained start against training from scratch on a small dataset (docs/pipeline.md, Pretrained backbones).

    .venv/bin/python scripts/bench_transfer.py [--seeds 0 1 2] [--per-class 30] [--size 48] [--epochs 15]

Nothing is downloaded. The backbone (MobileNetV2, --alpha) is pretrained here on a larger, different task: six
drawn shapes (tests/synthetic_images.py), --pretrain-per-class images each, all layers trained; its base is
cached in --cache. The target task is four other shapes with --per-class images each (split 85 % train, 15 %
validation by seed); every run is measured on the same separate held-out set (--heldout-per-class images per
class, drawn with another seed). Per seed, interleaved, with the same number of epochs: MobileNetV2 from random
weights (edgekit's zoo), the pretrained base frozen with a new head, and the same with the last third of the
epochs fine-tuning the top of the base. Float held-out accuracy; medians over seeds and the median paired gain
in points.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from synthetic_images import PRETRAIN_SHAPES, TARGET_SHAPES, write_shapes  # noqa: E402


def pretrain(cache: Path, alpha: float, size: int, per_class: int, epochs: int) -> Path:
    """The pretrained base's weights file (cached: same arguments, same file)."""
    import keras
    import numpy as np

    from edgekit.pipeline import backbones

    path = cache / f"shapes6-mobilenet_v2-a{alpha:g}-{size}-{per_class}x{epochs}.weights.h5"
    if path.exists():
        return path
    choice = backbones.BackboneChoice("mobilenet_v2", alpha, (size, size))
    with tempfile.TemporaryDirectory() as tmp:
        ds = backbones.load_dataset(write_shapes(Path(tmp) / "pre", PRETRAIN_SHAPES, per_class, size, seed=1), choice)
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, include_top=False, weights=None)
    for layer in base.layers:
        # Keras' MobileNetV2 batch norms average over ~1000 steps (momentum 0.999): a short pretraining would
        # leave them near their initial statistics, and a frozen base runs on exactly those statistics.
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    out = keras.layers.Dense(len(ds.labels), activation="softmax")(keras.layers.GlobalAveragePooling2D()(base.output))
    model = keras.Model(base.inputs, out)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    order = np.random.default_rng(0).permutation(len(ds.y))  # validation_split takes the tail: mix the classes
    hist = model.fit(
        ds.x[order], ds.y[order], epochs=epochs, batch_size=32, shuffle=True, verbose=0, validation_split=0.1
    )
    print(
        f"pretrained on {len(ds.y)} images of {len(ds.labels)} shapes in {time.perf_counter() - t0:.0f} s, "
        f"train accuracy {hist.history['accuracy'][-1]:.3f}, val accuracy {hist.history['val_accuracy'][-1]:.3f}",
        file=sys.stderr,
    )
    cache.mkdir(parents=True, exist_ok=True)
    base.save_weights(str(path))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--heldout-per-class", type=int, default=50)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--alpha", type=float, default=0.35)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--pretrain-per-class", type=int, default=250)
    ap.add_argument("--pretrain-epochs", type=int, default=20)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgekit-bench-transfer")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from edgekit.pipeline import backbones
    from edgekit.pipeline.data import Splits, split_dataset
    from edgekit.pipeline.train import train_model

    weights = pretrain(args.cache, args.alpha, args.size, args.pretrain_per_class, args.pretrain_epochs)
    choice = backbones.choose("mobilenet_v2", alpha=args.alpha, size=(args.size, args.size), weights=weights)
    with tempfile.TemporaryDirectory() as tmp:
        small = backbones.load_dataset(
            write_shapes(Path(tmp) / "t", TARGET_SHAPES, args.per_class, args.size, 2), choice
        )
        held = backbones.load_dataset(
            write_shapes(Path(tmp) / "h", TARGET_SHAPES, args.heldout_per_class, args.size, 3), choice
        )
    fine = args.epochs // 3
    runs = {
        "scratch": lambda s, seed: train_model(
            s, arch="mobilenetv2", epochs=args.epochs, seed=seed, alpha=args.alpha, augment=False
        ),
        "pretrained, frozen": lambda s, seed: backbones.train_transfer(s, choice, epochs=args.epochs, seed=seed),
        f"pretrained, {fine} fine-tune": lambda s, seed: backbones.train_transfer(
            s, choice, epochs=args.epochs - fine, fine_tune=fine, seed=seed
        ),
    }
    rows = []
    for seed in args.seeds:
        part = split_dataset(small, val=0.15, test=0.0, seed=seed)
        splits = Splits(train=part.train, val=part.val, test=held)
        for name, run in runs.items():  # interleaved: each seed runs every start while the load is the same
            t0 = time.perf_counter()
            result = run(splits, seed)
            row = {
                "seed": seed,
                "start": name,
                "heldout_accuracy": round(result.float_accuracy, 4),
                "seconds": round(time.perf_counter() - t0, 1),
                "load1": round(os.getloadavg()[0], 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    chance = 1 / len(TARGET_SHAPES)
    print(
        f"\n{len(TARGET_SHAPES)} shapes, {args.per_class} images each ({len(splits.train.y)} train, "
        f"{len(splits.val.y)} val), held-out {len(held.y)}; MobileNetV2-{args.alpha:g} {args.size}x{args.size}, "
        f"{args.epochs} epochs; chance {chance:.0%}; seeds {args.seeds}"
    )
    scratch = {r["seed"]: r["heldout_accuracy"] for r in rows if r["start"] == "scratch"}
    summary = {}
    for name in runs:
        mine = {r["seed"]: r["heldout_accuracy"] for r in rows if r["start"] == name}
        secs = statistics.median(r["seconds"] for r in rows if r["start"] == name)
        gain = statistics.median(100 * (mine[s] - scratch[s]) for s in mine)
        summary[name] = {"median_accuracy": statistics.median(mine.values()), "median_gain_points": gain}
        print(
            f"{name:28s} median held-out accuracy {100 * statistics.median(mine.values()):5.1f} % "
            f"(seeds {', '.join(f'{100 * v:.1f}' for v in mine.values())}), "
            f"gain over scratch {gain:+.1f} points, median {secs:.0f} s"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"cache": str(args.cache)}, "rows": rows, "summary": summary},
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
