"""Int8 accuracy of a bundle (directory or .tar.gz) or .tflite file on a dataset, and float accuracy of a Keras model.

The int8 model runs through edgekit_agent's own runtime and preprocessing, the code a device runs. For a
bundle, the preprocessing spec, the labels and the split seed come from its manifest: the dataset's class
folders are matched to the bundle's labels by name, and by default only the held-out test split of the
same seeded split the build used is evaluated (--split all for every image). For a .tflite file the image
size and colour mode come from the model's input tensor and the classes are the dataset's, in folder order.
--keras MODEL adds the float model's accuracy on the same images; --per-layer (needs --keras) lists the
layers with the largest quantisation error (TensorFlow's QuantizationDebugger).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit_agent.contract.errors import DatasetError, ExitStatus, ModelError, UsageError

if TYPE_CHECKING:
    from edgekit.pipeline.convert import LayerError
    from edgekit.pipeline.evaluate import ComparisonReport
    from edgekit_agent.contract.manifest import HeadSpec, OutputsAre, PreprocessSpec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", type=Path, metavar="TARGET", help="bundle directory, bundle .tar.gz or .tflite file")
    parser.add_argument(
        "--dataset", type=Path, required=True, metavar="DIR", help="image folder (one subfolder per class) or .npz"
    )
    parser.add_argument(
        "--keras",
        type=Path,
        default=None,
        metavar="MODEL",
        help="also evaluate this float Keras model on the same images",
    )
    parser.add_argument(
        "--split", choices=("test", "all"), default="test", help="held-out test split (default) or every image"
    )
    parser.add_argument("--seed", type=int, default=None, help="split seed (default: the bundle's, else 0)")
    parser.add_argument(
        "--per-layer", action="store_true", help="list the layers with the worst quantisation error (needs --keras)"
    )
    parser.add_argument("--top", type=int, default=10, help="how many layers --per-layer lists (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="interpreter threads (default: all cores)")
    parser.add_argument("--strict", action="store_true", help="an unreadable image is an error instead of a warning")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _map_labels(ds_labels: tuple[str, ...], model_labels: tuple[str, ...], target: Path) -> np.ndarray:
    """Index into the model's labels for each dataset class, matched by name."""
    missing = [name for name in ds_labels if name not in model_labels]
    if missing:
        raise DatasetError(
            f"dataset class(es) {', '.join(missing)} are not among {target}'s labels ({', '.join(model_labels)}); "
            "name the class folders like the labels the model was built with."
        )
    return np.asarray([model_labels.index(name) for name in ds_labels], dtype=np.int64)


@dataclass(frozen=True, slots=True)
class _Target:
    """A bundle's or .tflite's model file, preprocessing, labels (None: the dataset's) and the split it was built
    with (a .tflite's defaults are those of `edgekit build`)."""

    model: Path
    spec: PreprocessSpec
    labels: tuple[str, ...] | None
    kind: str  # "bundle" or "tflite"
    description: str
    split_seed: int = 0
    split_val: float = 0.15
    split_test: float = 0.15
    head: HeadSpec | None = None  # a .tflite's: what its output width says
    outputs_are: OutputsAre | None = None
    delegate: str = "xnnpack"  # a microcontroller bundle's: builtin kernels, as `build` measured it


def _load_target(target: Path, workdir: Path) -> _Target:
    """The model file, preprocessing spec, labels and split settings of a bundle or .tflite."""
    from edgekit.pipeline.data import spec_for_input
    from edgekit_agent.infer.runtime import Runtime

    if target.suffix == ".tflite":
        if not target.is_file():
            raise ModelError(f"{target}: no such .tflite file; give a bundle directory, its .tar.gz or a .tflite.")
        rt = Runtime(target, num_threads=1, delegate="none")
        try:
            spec = spec_for_input(rt.input_shape, str(target))
        finally:
            rt.close()
        return _Target(model=target, spec=spec, labels=None, kind="tflite", description="tflite")
    from edgekit_agent.bundle.load import load_bundle

    bundle = load_bundle(target, workdir=workdir)  # verifies every file's sha256 against the manifest
    m = bundle.manifest
    split = m.metrics.get("split") or {}
    return _Target(
        model=bundle.model_path,
        spec=m.preprocess,
        labels=m.labels,
        kind="bundle",
        description=f"{m.name} {m.version} ({m.profile_name})",
        split_seed=int(split.get("seed", 0)),
        split_val=float(split.get("val", 0.15)),
        split_test=float(split.get("test", 0.15)),
        head=m.head,
        outputs_are=m.outputs_are,
        delegate="none" if m.runtime.get("delegate") == "none" else "xnnpack",
    )


def run(args: argparse.Namespace) -> ExitStatus:
    if args.per_layer and args.keras is None:
        raise UsageError("--per-layer needs the float model: add --keras MODEL.")
    from edgekit.cli import ui
    from edgekit.cli.datasets import load_with_progress
    from edgekit.pipeline.convert import per_layer_errors
    from edgekit.pipeline.data import split_dataset
    from edgekit.pipeline.evaluate import compare

    with tempfile.TemporaryDirectory(prefix="edgekit-evaluate-") as tmp:
        t = _load_target(args.target, Path(tmp))
        ds = load_with_progress(
            args.dataset, t.spec if args.dataset.suffix != ".npz" else None, strict=args.strict, quiet=args.json
        )
        labels = t.labels or ds.labels
        mapping = _map_labels(ds.labels, labels, args.target)
        seed = args.seed if args.seed is not None else t.split_seed
        if args.split == "all":
            x, y_ds, train_x = ds.x, ds.y, ds.x
        else:
            splits = split_dataset(ds, val=t.split_val, test=t.split_test, seed=seed)
            x, y_ds, train_x = splits.test.x, splits.test.y, splits.train.x
        if ds.multilabel:  # columns, matched by name; a label the dataset lacks would be judged as absent
            if set(ds.labels) != set(labels):
                raise DatasetError(
                    f"{args.dataset}: its labels ({', '.join(ds.labels)}) are not {args.target}'s "
                    f"({', '.join(labels)}); a multi-label dataset must use the same labels as the model."
                )
            y = np.zeros((len(y_ds), len(labels)), dtype=np.uint8)
            y[:, mapping] = y_ds
            if t.head is None:
                from edgekit_agent.contract.manifest import HeadSpec

                t = replace(t, head=HeadSpec("multilabel"))
        else:
            y = mapping[y_ds]
        model = None
        if args.keras is not None:
            from edgekit.pipeline.train import load_model, model_shape

            model = load_model(args.keras)
            shape = model_shape(model, args.keras, args.dataset)
            takes, feeds = tuple(shape.input_shape[1:]), tuple(x.shape[1:])
            if (
                any(a is not None and a != b for a, b in zip(takes, feeds))
                or len(takes) != len(feeds)
                or shape.classes not in (None, len(labels))
            ):
                raise ModelError(
                    f"{args.keras}: the Keras model takes {takes} and gives {shape.classes} classes, but "
                    f"{args.target} takes {feeds} and gives {len(labels)}; "
                    "pass the float model this bundle was built from."
                )
        with ui.progress() as bar:
            task = bar.add_task("evaluating int8", total=len(y))
            report = compare(
                t.model,
                x,
                y,
                model=model,
                num_threads=args.threads,
                num_classes=len(labels),
                head=t.head,
                outputs_are=t.outputs_are,
                float_bytes=_size(args.keras),
                delegate=t.delegate,
                on_progress=lambda d, n: bar.update(task, completed=d),
            )
        layers = per_layer_errors(model, train_x, top=args.top, seed=seed) if args.per_layer else []
    info = {
        "target": str(args.target),
        "kind": t.kind,
        "labels": list(labels),
        "split": args.split,
        "seed": seed,
        **report.to_dict(),
        "skipped_images": len(ds.skipped),
    }
    if layers:
        info["per_layer"] = [e.to_dict() for e in layers]
    if report.int8_result.near_chance:
        ui.err_console.print(
            f"[bold red]WARNING:[/] int8 accuracy {report.int8_accuracy:.1%} is near chance "
            f"({report.int8_result.chance:.1%}, what guessing scores on these images): the model has not learned "
            "to tell the classes apart.",
            highlight=False,
            markup=True,
            soft_wrap=True,
        )
    if args.json:
        ui.print_json(info)
        return ExitStatus.OK
    _print(args, t, report, labels, layers, seed)
    return ExitStatus.OK


def _size(path: Path | None) -> int | None:
    if path is None:
        return None
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _print(
    args: argparse.Namespace,
    t: _Target,
    report: ComparisonReport,
    labels: tuple[str, ...],
    layers: list[LayerError],
    seed: int,
) -> None:
    from edgekit.cli import ui

    c = ui.console
    where = (
        f"{report.int8_result.samples} images "
        f"({'held-out test split, seed ' + str(seed) if args.split == 'test' else 'all'})"
    )
    rows = [
        ("target", f"{args.target} ({t.description})"),
        ("evaluated on", where),
        ("int8 accuracy", f"{100 * report.int8_accuracy:.2f} %  ({report.int8_result.correct} correct)"),
        ("int8 model", ui.kib(report.int8_bytes)),
    ]
    if report.float_result is not None:
        rows += [
            ("float accuracy (Keras)", f"{100 * report.float_accuracy:.2f} %"),
            ("drop", f"{report.drop_points:+.2f} points"),
            ("float model file", ui.kib(report.float_bytes)),
        ]
    c.print(ui.table("Evaluation", ("", "value"), rows))
    if report.int8_result.multilabel:
        c.print(
            ui.table(
                f"int8 per label (exact match {100 * (report.int8_result.exact_match or 0):.2f} %)",
                ("label", "accuracy", "precision", "recall", "tn, fp / fn, tp"),
                [
                    (
                        labels[i],
                        *(
                            "-" if v is None else f"{100 * v:.1f} %"
                            for v in (r["accuracy"], r["precision"], r["recall"])
                        ),
                        "{}, {} / {}, {}".format(*r["confusion"][0], *r["confusion"][1]),
                    )
                    for i, r in enumerate(report.int8_result.per_label())
                ],
            )
        )
    else:
        conf = report.int8_result.confusion
        c.print(
            ui.table(
                "int8 confusion matrix (rows: true class, columns: predicted)",
                ("true \\ predicted", *labels),
                [(labels[i], *row) for i, row in enumerate(conf) if sum(row)],
            )
        )
    if layers:
        c.print(
            ui.table(
                "Layers with the largest quantisation error (RMSE in output-scale steps; ~0.29 is rounding alone)",
                ("op", "tensor", "rmse/scale", "max abs error"),
                [(e.op, e.tensor, f"{e.rmse_over_scale:.3f}", f"{e.max_abs_error:.4g}") for e in layers],
            )
        )
