#!/usr/bin/env python3
"""Figures of the host pipeline stages (docs/pipeline.md): training, conversion, QAT, pruning on the digits demo.

    .venv/bin/python scripts/bench_pipeline.py [--seeds 0 1 2] [--json bench-pipeline.json]

Per seed (split and training seed): the default CNN training with and without the shifted-copy
augmentation (wall time, float test accuracy), then PTQ through ``edgekit.pipeline.convert.convert_int8`` (child
process) against the same conversion in this process (the price of crash isolation), int8 test accuracy
through edgekit_agent's runtime, int8/float32 .tflite size ratio; once, pruning at 50 % and 75 % (raw and
gzip int8 sizes). Medians over seeds and side-by-side ratios; the machine load is printed with them,
because this machine is shared and wall times move with it.
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


def in_process_ptq(model, rep) -> tuple[bytes, float]:
    """The same PTQ as the worker, in this process (what the child process saves us from when it crashes)."""
    import tensorflow as tf

    from edgekit.pipeline import zoo

    t0 = time.perf_counter()
    conv = tf.lite.TFLiteConverter.from_keras_model(zoo.with_fixed_batch(model, 1))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rep[i : i + 1]] for i in range(len(rep)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    return conv.convert(), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from edgekit.pipeline.convert import _representative, convert_int8
    from edgekit.pipeline.data import load_dataset, split_dataset, write_digits
    from edgekit.pipeline.evaluate import evaluate_tflite
    from edgekit.pipeline.prune import prune_model
    from edgekit.pipeline.train import train_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ds = load_dataset(write_digits(Path(tmp) / "digits").directory)
        for seed in args.seeds:
            splits = split_dataset(ds, seed=seed)
            row: dict = {"seed": seed, "load1": os.getloadavg()[0]}
            for aug in (True, False):
                t0 = time.perf_counter()
                # Same number of passes over the images: 6 epochs of 5 copies vs 30 epochs of the originals.
                res = train_model(splits, seed=seed, augment=aug, epochs=6 if aug else 30)
                key = "aug" if aug else "noaug"
                row[f"train_s_{key}"] = time.perf_counter() - t0
                row[f"float_acc_{key}"] = res.float_accuracy
                if aug:
                    model = res.model
                    if seed == args.seeds[0]:
                        prune_source = model  # pruned below on this seed's own split (its test images unseen)
            conv = convert_int8(model, splits.train.x, seed=seed)
            row["convert_child_s"] = conv.seconds  # int8 + float32 conversions, TF import in the child included
            t0 = time.perf_counter()
            convert_int8(model, splits.train.x, seed=seed, with_float=False)
            row["convert_child_int8_s"] = time.perf_counter() - t0
            _, row["convert_inproc_int8_s"] = in_process_ptq(model, _representative(splits.train.x, 200, seed))
            row["int8_bytes"], row["float_tflite_bytes"] = len(conv.tflite), len(conv.float_tflite)
            row["size_ratio"] = conv.size_ratio
            row["int8_acc"] = evaluate_tflite(conv.tflite, splits.test.x, splits.test.y, num_threads=1).accuracy
            row["drop_points"] = 100 * (row["float_acc_aug"] - row["int8_acc"])
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), file=sys.stderr)
        prune_rows = []
        splits = split_dataset(ds, seed=args.seeds[0])
        for sparsity in (0.5, 0.75):
            p = prune_model(prune_source, splits, sparsity=sparsity, epochs=2, seed=args.seeds[0])
            prune_rows.append(
                {
                    "sparsity": sparsity,
                    "achieved": p.sparsity,
                    "acc_before": p.accuracy_before,
                    "acc_after": p.accuracy_after,
                    "raw_before": p.int8_bytes_before,
                    "raw_after": p.int8_bytes_after,
                    "gzip_before": p.int8_gzip_before,
                    "gzip_after": p.int8_gzip_after,
                    "seconds": p.seconds,
                }
            )
            print(json.dumps(prune_rows[-1]), file=sys.stderr)

    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    summary = {
        "seeds": args.seeds,
        "median_load1": med("load1"),
        "train_s_aug": med("train_s_aug"),
        "train_s_noaug": med("train_s_noaug"),
        "float_acc_aug": med("float_acc_aug"),
        "float_acc_noaug": med("float_acc_noaug"),
        "min_float_acc_aug": min(r["float_acc_aug"] for r in rows),
        "int8_acc": med("int8_acc"),
        "max_drop_points": max(r["drop_points"] for r in rows),
        "size_ratio": med("size_ratio"),
        "convert_child_int8_s": med("convert_child_int8_s"),
        "convert_inproc_int8_s": med("convert_inproc_int8_s"),
        "child_over_inproc": med("convert_child_int8_s") / med("convert_inproc_int8_s"),
        "prune": prune_rows,
        "runs": rows,
    }
    print(f"\nseeds {args.seeds}, median load {summary['median_load1']:.1f} on {os.cpu_count()} cores")
    print(
        f"training (default CNN, 30 passes): {summary['train_s_aug']:.1f} s with shifted copies, "
        f"{summary['train_s_noaug']:.1f} s without (ratio {summary['train_s_aug'] / summary['train_s_noaug']:.2f})"
    )
    print(
        f"float test accuracy: {100 * summary['float_acc_aug']:.2f} % with "
        f"(min {100 * summary['min_float_acc_aug']:.2f} %), "
        f"{100 * summary['float_acc_noaug']:.2f} % without"
    )
    print(
        f"int8 test accuracy {100 * summary['int8_acc']:.2f} %, worst drop {summary['max_drop_points']:.2f} points; "
        f"int8/float32 bytes {summary['size_ratio']:.4f}"
    )
    print(
        f"int8 conversion: {summary['convert_child_int8_s']:.1f} s in a child process vs "
        f"{summary['convert_inproc_int8_s']:.1f} s in-process (x{summary['child_over_inproc']:.1f})"
    )
    for p in prune_rows:
        print(
            f"prune {p['sparsity']:.0%}: achieved {100 * p['achieved']:.1f} %, acc {100 * p['acc_before']:.2f} -> "
            f"{100 * p['acc_after']:.2f} %, int8 raw {p['raw_before']} -> {p['raw_after']} B, "
            f"gzip {p['gzip_before']} -> {p['gzip_after']} B ({p['gzip_after'] / p['gzip_before']:.2f}x)"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
