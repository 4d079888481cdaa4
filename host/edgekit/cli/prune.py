"""Magnitude-prune a Keras model to a target sparsity (tensorflow-model-optimization) and save it.

The pruning schedule is computed from the real number of fine-tune steps (tfmot's default of one update
every 100 steps prunes nothing in a short fine-tune). Reports the sparsity reached per layer, float
accuracy before and after on the held-out test split, and the int8 .tflite size raw and gzip-compressed
before and after. A pruned model is no smaller as a raw .tflite file: the zeros are stored like any
other weight, so the saving shows only after compression (an OTA download, a compressed flash image).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgekit_agent.contract.errors import ExitStatus

NOTE = (
    "Sparsity does not shrink the raw .tflite file (zeros are stored like any other weight); "
    "it shows after compression, e.g. gzip for an OTA download."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL", help="Keras model: .keras, .h5 or SavedModel directory")
    parser.add_argument(
        "--dataset", type=Path, required=True, metavar="DIR", help="image folder or .npz to fine-tune on"
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="MODEL", help="where to save the pruned model (.keras or .h5)"
    )
    parser.add_argument(
        "--sparsity", type=float, default=0.5, help="fraction of Conv/Dense weights set to zero (default 0.5)"
    )
    parser.add_argument("--epochs", type=int, default=2, help="fine-tune epochs while pruning (default 2)")
    parser.add_argument(
        "--schedule",
        choices=("polynomial", "constant"),
        default="polynomial",
        help="sparsity schedule (default polynomial)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the fine-tune (default 0)")
    parser.add_argument("--no-sizes", action="store_true", help="skip the int8 size measurement (two conversions)")
    parser.add_argument("--strict", action="store_true", help="an unreadable image is an error instead of a warning")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli import ui
    from edgekit.cli.datasets import model_and_splits
    from edgekit.pipeline.prune import prune_model
    from edgekit.pipeline.train import save_model

    model, splits = model_and_splits(args.model, args.dataset, seed=args.seed, strict=args.strict, quiet=args.json)
    with ui.progress() as bar:
        task = bar.add_task("pruning", total=args.epochs)
        res = prune_model(
            model,
            splits,
            sparsity=args.sparsity,
            epochs=args.epochs,
            seed=args.seed,
            schedule=args.schedule,
            measure_sizes=not args.no_sizes,
            on_epoch=lambda e, n, logs: bar.update(
                task, completed=e + 1, description=f"pruning (val accuracy {logs.get('val_accuracy', 0):.3f})"
            ),
        )
    path = save_model(res.model, args.out)
    info = {"model": str(path), **res.to_dict(), "note": NOTE}
    if args.json:
        ui.print_json(info)
        return ExitStatus.OK
    c = ui.console
    c.print(
        ui.table(
            f"Sparsity per layer (target {args.sparsity:.0%}, {res.steps} steps, "
            f"update every {res.frequency} until step {res.end_step})",
            ("layer", "weights count", "zeros count", "sparsity %"),
            [(s.layer, s.weights, s.zeros, f"{100 * s.sparsity:.1f}") for s in res.layers],
        )
    )
    rows = [
        ("saved", str(path)),
        ("overall sparsity", f"{100 * res.sparsity:.1f} %"),
        (
            "float test accuracy",
            f"{100 * res.accuracy_before:.2f} % before, "
            f"{100 * res.accuracy_after:.2f} % after ({-res.accuracy_drop:+.2f} points)",
        ),
    ]
    if res.int8_bytes_before is not None:
        rows += [
            ("int8 .tflite raw", f"{ui.kib(res.int8_bytes_before)} before, {ui.kib(res.int8_bytes_after)} after"),
            (
                "int8 .tflite gzip",
                f"{ui.kib(res.int8_gzip_before)} before, {ui.kib(res.int8_gzip_after)} after "
                f"({res.int8_gzip_after / res.int8_gzip_before:.2f}x)",
            ),
        ]
    c.print(ui.table("Pruned", ("", "value"), rows))
    c.print(NOTE)
    return ExitStatus.OK
