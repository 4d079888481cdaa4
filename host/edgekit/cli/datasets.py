"""Demo data and dataset checks.

`edgekit datasets digits DIR` writes scikit-learn's 1,797 handwritten digits (real 8x8 scans, shipped
inside scikit-learn, nothing downloaded) as an image folder: DIR/0/*.png ... DIR/9/*.png.
`edgekit datasets keywords DIR` speaks yes/no/up/down/left/right (plus _unknown_ words and _silence_) with
espeak-ng into DIR/WORD/*.wav (synthetic speech, 16 kHz mono; needs `apt install espeak-ng`).
`edgekit datasets gestures DIR` writes seeded synthetic accelerometer/gyro gestures (circle, idle, punch, wave)
as CSV recordings: DIR/GESTURE/*.csv.
`edgekit datasets show DIR` loads an image folder or .npz file the way every other command does and
reports classes, sizes and skipped (unreadable) images; --strict turns a skipped image into an error.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgekit_agent.contract.errors import ExitStatus, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("digits", "gestures", "keywords", "show"),
        help="digits / gestures / keywords: write a demo dataset (keywords: synthetic speech, espeak-ng); "
        "show: summarise a dataset",
    )
    parser.add_argument(
        "dir",
        type=Path,
        metavar="DIR",
        help="where to write the demo set (digits, gestures, keywords) or the dataset to read (show)",
    )
    parser.add_argument("--clips", type=int, default=60, metavar="N", help="keywords: clips per class (default 60)")
    parser.add_argument(
        "--strict", action="store_true", help="show: an unreadable image is an error instead of a warning"
    )
    parser.add_argument("--seed", type=int, default=0, help="gestures: the seed of the recordings (default 0)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"32x24"`` → (32, 24) (width, height)."""
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"image size '{text}' must look like WIDTHxHEIGHT, e.g. 32x32.") from None
    if w <= 0 or h <= 0:
        raise UsageError(f"image size '{text}' must be positive.")
    return w, h


def load_with_progress(path: Path, spec: Any = None, *, strict: bool = False, quiet: bool = False) -> Any:
    """Load a dataset with a progress bar; skipped files and converted clips are listed on stderr (never on
    stdout)."""
    from rich.markup import escape

    from edgekit.cli import ui
    from edgekit.pipeline.data import load_dataset

    if quiet:
        ds = load_dataset(path, spec, strict=strict)
    else:
        with ui.progress() as bar:
            task = bar.add_task(f"loading {path}", total=None)
            ds = load_dataset(
                path,
                spec,
                strict=strict,
                on_progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    print_skipped(ds.skipped)
    for note in ds.notes:
        ui.err_console.print(
            f"[yellow]warning:[/] converted {escape(note)}", highlight=False, markup=True, soft_wrap=True
        )
    return ds


def print_skipped(skipped: Any) -> None:
    """One line on stderr per image left out of a dataset, naming the file and why."""
    from rich.markup import escape

    from edgekit.cli import ui

    for s in skipped:
        ui.err_console.print(
            f"[yellow]warning:[/] skipped {escape(s.reason)}", highlight=False, markup=True, soft_wrap=True
        )


def model_and_splits(
    model_path: Path, dataset: Path, *, seed: int, strict: bool = False, quiet: bool = False, foreign: bool = False
) -> tuple[Any, Any]:
    """A user's Keras model and the dataset split for it (convert, prune): the model is checked first (one
    image input, one (batch, classes) output, else ModelError), the images are loaded at its input size and
    colour mode, and the dataset's tensors and classes must match it. With ``foreign`` a float .tflite or
    .onnx file is taken too (as a :class:`~edgekit.pipeline.foreign.ForeignModel`)."""
    from rich.markup import escape

    from edgekit.cli import ui
    from edgekit.pipeline.backbones import choice_of, load_dataset
    from edgekit.pipeline.data import split_dataset, thin_classes
    from edgekit.pipeline.foreign import is_foreign, load_foreign
    from edgekit.pipeline.train import load_model, model_shape

    backbone = None
    if foreign and is_foreign(model_path):
        model = load_foreign(model_path)
        shape = model.shape
    else:
        model = load_model(model_path)
        shape = model_shape(model, model_path, dataset)
        backbone = choice_of(model)  # trained with --backbone: its images are scaled to [-1, 1]
    if backbone is not None:
        ds = load_dataset(dataset, backbone, strict=strict)
    else:
        ds = load_with_progress(dataset, shape.dataset_spec(dataset), strict=strict, quiet=quiet)
    shape.check(ds, dataset)
    splits = split_dataset(ds, seed=seed)
    for line in thin_classes(splits):
        ui.err_console.print(f"[bold red]WARNING:[/] {escape(line)}", highlight=False, markup=True, soft_wrap=True)
    return model, splits


def _describe(spec: Any) -> str:
    if spec.kind == "sensor":
        return f"windows of {spec.window} rows x {len(spec.channels)} channels at {spec.sample_rate:g} Hz"
    if spec.kind == "image":
        return f"images, {spec.width}x{spec.height} {spec.color_mode}"
    return f"{spec.kind} samples of shape {spec.shape}"


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli import ui

    if args.action == "digits":
        from edgekit.pipeline.data import write_digits

        summary = write_digits(args.dir)
        result = {
            "directory": str(summary.directory),
            "classes": summary.classes,
            "samples": summary.samples,
            "width": summary.width,
            "height": summary.height,
        }
        if args.json:
            ui.print_json(result)
        else:
            ui.console.print(
                f"wrote {summary.samples} digit images ({summary.width}x{summary.height} grey PNG, "
                f"{summary.classes} classes) to {summary.directory}"
            )
        return ExitStatus.OK
    if args.action == "keywords":
        return _keywords(args)
    if args.action == "gestures":
        from edgekit.pipeline.motion import write_gestures

        motion = write_gestures(args.dir, seed=args.seed)
        if args.json:
            ui.print_json(
                {"directory": str(motion.directory), "classes": list(motion.classes), "recordings": motion.recordings}
            )
        else:
            ui.console.print(
                f"wrote {motion.recordings} synthetic motion recordings ({', '.join(motion.classes)}; "
                f"{motion.seconds[0]:g}-{motion.seconds[1]:g} s at about {motion.rate:g} Hz, CSV) to {motion.directory}"
            )
        return ExitStatus.OK
    ds = load_with_progress(args.dir, strict=args.strict, quiet=args.json)
    counts = ds.class_counts()
    info = {
        "path": str(args.dir),
        "samples": len(ds),
        "classes": len(ds.labels),
        "class_counts": counts,
        "spec": ds.spec.to_dict(),
        "skipped": [s.file for s in ds.skipped],
    }
    if args.json:
        ui.print_json(info)
        return ExitStatus.OK
    ui.console.print(
        ui.table(
            f"{args.dir}: {len(ds)} {_describe(ds.spec)}",
            ("class", "samples"),
            counts.items(),
        )
    )
    if ds.skipped:
        ui.console.print(f"{len(ds.skipped)} unreadable {'image' if ds.spec.kind == 'image' else 'file'}(s) skipped")
    return ExitStatus.OK


def _keywords(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli import ui
    from edgekit.pipeline.speech import write_keywords

    if args.clips < 1:
        raise UsageError(f"--clips must be at least 1, got {args.clips}.")
    with ui.progress() as bar:
        task = bar.add_task(f"speaking keywords into {args.dir}", total=None)
        summary = write_keywords(
            args.dir,
            per_class=args.clips,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    result = {
        "directory": str(summary.directory),
        "classes": list(summary.classes),
        "clips": summary.clips,
        "background_noise_files": summary.noise_files,
        "sample_rate": summary.sample_rate,
        "synthetic": True,
    }
    if args.json:
        ui.print_json(result)
    else:
        ui.console.print(
            f"wrote {summary.clips} synthetic speech clips (espeak-ng, 1 s, {summary.sample_rate} Hz mono WAV; "
            f"classes {', '.join(summary.classes)}) and {summary.noise_files} background-noise files to "
            f"{summary.directory}",
            highlight=False,
        )
    return ExitStatus.OK
