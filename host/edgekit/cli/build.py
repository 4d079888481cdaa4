"""Build full-int8 device bundles in one go: dataset (or --model FILE) → train → optional prune → convert →
evaluate (int8 through the device's own runtime) → fit check → bundle, for each --profile.

Writes OUT/NAME-PROFILE/ (manifest.json, model.tflite, golden.npz, …) and OUT/NAME-PROFILE.tar.gz per
profile, and the trained (or pruned) model as OUT/NAME.keras - OUT/NAME-pruned.keras when --model is
OUT/NAME.keras itself, which is never overwritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgekit_agent.contract.errors import ExitStatus

EXAMPLES = """examples:
  edgekit datasets digits data/digits
  edgekit build --dataset data/digits --profile raspberry-pi-4 --out out
  edgekit build --dataset photos --profile raspberry-pi-4 --out out \\
      --backbone mobilenet_v2 --fine-tune 5
  edgekit datasets gestures data/gestures
  edgekit build --dataset data/gestures --profile rp2040 --out out \\
      --window 2s --stride 1s"""


class _HelpFormatter(argparse.HelpFormatter):
    """Prose is reflowed to the terminal, paragraph by paragraph; a paragraph with indented lines (the
    examples) is printed as written, one command a line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for paragraph in text.strip().split("\n\n"):
            lines = paragraph.splitlines()
            if any(line[:1].isspace() for line in lines):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(out)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity is a fraction between 0 and 1 (e.g. 0.5), got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_head_arguments(parser: argparse.ArgumentParser, *, head: bool = True) -> None:
    """--head (build and train) and --threshold (build, train and convert)."""
    if head:
        parser.add_argument(
            "--head",
            choices=("softmax", "sigmoid", "multilabel"),
            help="the head to train: sigmoid (one output) for two classes; default softmax, multilabel for a "
            "labels.csv or 2-D y dataset",
        )
    parser.add_argument(
        "--threshold",
        type=float,
        metavar="P",
        help="a sigmoid or multilabel head's decision threshold, kept in the manifest (default 0.5)",
    )


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    """--backbone, --backbone-weights and --fine-tune (shared by build and train)."""
    from edgekit.pipeline.backbones import BACKBONES

    parser.add_argument(
        "--backbone",
        choices=tuple(BACKBONES),
        metavar="NAME",
        help="start from a pretrained base (" + ", ".join(BACKBONES) + "): Keras' ImageNet weights (downloaded "
        "once) or --backbone-weights",
    )
    parser.add_argument(
        "--backbone-weights",
        type=Path,
        metavar="FILE",
        help="the base's weights (.weights.h5, or Keras' *_no_top.h5) instead of downloading ImageNet's",
    )
    parser.add_argument(
        "--fine-tune",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="after the head, train the top third of the base N epochs at a tenth of the rate (default 0)",
    )


def _seconds(text: str) -> float:
    """``2s``, ``500ms`` or ``1.5`` (seconds) → seconds."""
    t = text.strip().lower()
    scale = 1e-3 if t.endswith("ms") else 1.0
    try:
        value = float(t.removesuffix("ms").removesuffix("s")) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a duration; write e.g. 2s or 500ms") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a duration must be positive, got {text}")
    return value


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    """--window, --stride and --rate: how a folder of CSV sensor recordings is cut (shared by build and train)."""
    parser.add_argument(
        "--window", type=_seconds, metavar="DURATION", help="sensor recordings: window length, e.g. 2s (default 2s)"
    )
    parser.add_argument(
        "--stride", type=_seconds, metavar="DURATION", help="sensor recordings: window step (default half the window)"
    )
    parser.add_argument(
        "--rate", type=float, metavar="HZ", help="sensor recordings: resample to this rate (default: their median)"
    )


def windowing(args: argparse.Namespace) -> object | None:
    """The :class:`~edgekit.pipeline.sensor_data.Windowing` the options ask for, None when none is given."""
    if args.window is None and args.stride is None and args.rate is None:
        return None
    from edgekit.pipeline.sensor_data import DEFAULT_WINDOW_S, Windowing

    return Windowing(args.window or DEFAULT_WINDOW_S, args.stride, args.rate)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _HelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument(
        "--dataset",
        type=Path,
        required=True,
        metavar="DIR",
        help="image folder or folder of CSV sensor recordings (one subfolder per class), or .npz",
    )
    parser.add_argument(
        "--profile",
        action="append",
        required=True,
        metavar="NAME",
        help="device profile name or TOML path (repeatable)",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where bundles and archives are written")
    parser.add_argument(
        "--model",
        type=Path,
        metavar="FILE",
        help="use this model instead of training: Keras (.keras, .h5, SavedModel), a float .tflite or .onnx",
    )
    parser.add_argument("--epochs", type=_positive_int, metavar="N", help="training epochs (default: the zoo's choice)")
    parser.add_argument("--arch", default="auto", help="model architecture from the zoo (default: auto)")
    add_head_arguments(parser)
    add_backbone_arguments(parser)
    add_window_arguments(parser)
    parser.add_argument(
        "--alpha", type=float, help="backbone width multiplier (default: what the profiles suit, e.g. 0.35 for an MCU)"
    )
    parser.add_argument(
        "--image-size", metavar="WxH", help="backbone input size (default: what the profiles suit, e.g. 96x96)"
    )
    parser.add_argument(
        "--prune", type=_fraction, metavar="SPARSITY", help="magnitude-prune to this sparsity before converting"
    )
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=1.0,
        metavar="POINTS",
        help="int8 may lose this many points before QAT runs (default 1.0)",
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="skip profiles the model does not fit instead of stopping"
    )
    parser.add_argument("--name", help="bundle name (default: the dataset folder name)")
    parser.add_argument("--version", default="1.0.0", help="bundle version (default 1.0.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, training and calibration (default 0)")
    parser.add_argument(
        "--sign-key",
        type=Path,
        metavar="KEY",
        help="sign every bundle with this Ed25519 private key (edgekit keys new)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _height_width(size: tuple[int, int] | None) -> tuple[int, int] | None:
    """WxH as parsed → (height, width) as models take it."""
    return None if size is None else (size[1], size[0])


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def run(args: argparse.Namespace) -> ExitStatus:
    from rich.markup import escape

    from edgekit.build import BuildProgress, build
    from edgekit.cli import ui
    from edgekit.cli.datasets import parse_size, print_skipped

    if args.sign_key is not None:  # a bad key should fail now, not after minutes of training
        from edgekit.package.keys import load_private_key

        load_private_key(args.sign_key)
    with ui.progress() as bar:
        task = bar.add_task("build", total=None)

        def on_progress(event: BuildProgress) -> None:
            text = event.label + (f": {event.detail}" if event.detail else "")
            bar.update(
                task, total=event.total, completed=event.step - (0 if event.label == "done" else 1), description=text
            )

        result = build(
            args.dataset,
            args.profile,
            args.out,
            model=args.model,
            epochs=args.epochs,
            prune=args.prune,
            max_accuracy_drop=args.max_accuracy_drop,
            keep_going=args.keep_going,
            name=args.name,
            version=args.version,
            seed=args.seed,
            arch=args.arch,
            backbone=args.backbone,
            backbone_weights=args.backbone_weights,
            fine_tune=args.fine_tune,
            alpha=args.alpha,
            image_size=_height_width(parse_size(args.image_size)),
            head=args.head,
            threshold=args.threshold,
            windowing=windowing(args),  # type: ignore[arg-type]
            on_progress=on_progress,
        )
    status = ExitStatus.OK if result.all_fit else ExitStatus.DOES_NOT_FIT
    signed = {}
    if args.sign_key is not None:
        from edgekit.package.keys import sign_bundle

        signed = {
            p.profile: sign_bundle(p.directory, args.sign_key).key_id
            for p in result.profiles
            if p.directory is not None
        }
    print_skipped(result.skipped_images)
    for warning in result.warnings:  # on stderr in both modes: --json keeps them in its document too
        ui.err_console.print(f"[bold red]WARNING:[/] {escape(warning)}", highlight=False, markup=True, soft_wrap=True)
    if args.json:
        ui.print_json({**result.to_dict(), **({"signed_by": signed} if signed else {})})
        return status
    # One column per profile, one row per figure: readable in an 80-column terminal.
    fields = (
        ("float accuracy", lambda p: f"{_pct(p.float_accuracy)} %"),
        ("int8 accuracy", lambda p: f"{_pct(p.int8_accuracy)} %"),
        ("int8 - float", lambda p: f"{100 * (p.int8_accuracy - p.float_accuracy):+.2f} points"),
        ("held-out samples", lambda p: str(p.samples)),
        ("float32 .tflite", lambda p: ui.kib(p.float_tflite_bytes)),
        ("int8 .tflite", lambda p: ui.kib(p.int8_bytes)),
        ("int8 / float32", lambda p: f"{p.int8_bytes / p.float_tflite_bytes:.3f}" if p.float_tflite_bytes else "-"),
        ("QAT ran", lambda p: "yes" if p.qat else "no"),
        ("fit", lambda p: "fits" if p.fits else "DOES NOT FIT"),
    )
    if any(p.exact_match is not None for p in result.profiles):  # multi-label: accuracy is per label
        fields += (("int8 exact match", lambda p: f"{_pct(p.exact_match)} %" if p.exact_match is not None else "-"),)
    ui.console.print(
        ui.table(
            f"{result.name} {result.version} ({result.arch}), built in {result.seconds:.1f} s; "
            f"model: {result.model_file}",
            ("", *(p.profile for p in result.profiles)),
            [(label, *(get(p) for p in result.profiles)) for label, get in fields],
        )
    )
    ui.console.print(
        "time per step (wall / CPU s): " + ", ".join(f"{label} {t:.1f}/{c:.1f}" for label, t, c in result.step_seconds),
        highlight=False,
        markup=False,
    )
    for p in result.profiles:
        if p.directory is not None:
            how = f" (signed by key {signed[p.profile]})" if p.profile in signed else ""
            ui.console.print(f"{p.profile}: {p.directory}/  and  {p.archive}{how}", highlight=False, markup=False)
        if not p.fits:
            ui.err_console.print(f"[bold red]{p.profile}:[/] does not fit: {p.fit_summary}")
    return status
