"""Train a model from the zoo on an image folder (or .npz) and save it as .keras or .h5.

The dataset is split (seeded, stratified: 70 % train, 15 % validation, 15 % test); the epoch with the
best validation accuracy is kept and its float accuracy on the test split reported. The saved model has
a fixed batch of 1, ready for `edgekit convert`. --arch auto picks the compact CNN for small or grey
images, MobileNetV2 (width multiplier --alpha) for colour images of 32x32 and more, and the DS-CNN for a
folder of .wav clips (log-mel features, normalised as `edgekit build` does). --backbone starts
from a pretrained base instead (Keras' ImageNet weights or --backbone-weights FILE): the head is trained on
the frozen base, then --fine-tune N epochs train the top of the base too; images are scaled to [-1, 1].
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgekit.cli.build import add_backbone_arguments, add_head_arguments
from edgekit_agent.contract.errors import ExitStatus, UsageError

ARCH_CHOICES = ("auto", "cnn", "mobilenetv2", "dscnn")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", type=Path, required=True, metavar="DIR", help="image folder (one subfolder per class) or .npz"
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="MODEL", help="where to save the model (.keras or .h5)"
    )
    parser.add_argument("--arch", choices=ARCH_CHOICES, default="auto", help="zoo architecture (default: auto)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: per architecture, 6 for the CNN)"
    )
    add_head_arguments(parser)
    add_backbone_arguments(parser)
    parser.add_argument(
        "--alpha", type=float, default=None, help="MobileNet width multiplier (default 0.35; a backbone's: 0.35)"
    )
    parser.add_argument(
        "--image-size",
        metavar="WxH",
        default=None,
        help="resize images to WxH (default: their most common size; with a backbone 96x96)",
    )
    parser.add_argument(
        "--color",
        choices=("auto", "grey", "rgb"),
        default="auto",
        help="colour mode (default: inferred from the images)",
    )
    parser.add_argument(
        "--no-augment", action="store_true", help="train on the images only (the CNN adds shifted copies by default)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the training (default 0)")
    parser.add_argument("--strict", action="store_true", help="an unreadable image is an error instead of a warning")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _spec(args: argparse.Namespace) -> object | None:
    """A preprocessing spec from --image-size/--color, or None to infer both from the images."""
    from edgekit.cli.datasets import parse_size
    from edgekit.pipeline.data import folder_spec

    size = parse_size(args.image_size)
    if (size is None and args.color == "auto") or args.dataset.suffix == ".npz":
        return None  # inferred from the images; arrays carry their own shape
    return folder_spec(args.dataset, size=size, color_mode={"auto": None, "grey": "L", "rgb": "RGB"}[args.color])


def _backbone(args: argparse.Namespace) -> object | None:
    """The checked backbone choice (its ImageNet weights fetched now, before the images load), or None."""
    from edgekit.cli.datasets import parse_size
    from edgekit.pipeline import backbones

    if args.backbone is None:
        if args.backbone_weights is not None or args.fine_tune:
            raise UsageError("--backbone-weights and --fine-tune need --backbone (e.g. --backbone mobilenet_v2).")
        return None
    if args.arch != "auto" or args.no_augment:
        raise UsageError("--backbone trains its own head on the pretrained base: leave out --arch and --no-augment.")
    size = parse_size(args.image_size)
    choice = backbones.choose(
        args.backbone,
        alpha=args.alpha,
        size=None if size is None else (size[1], size[0]),
        weights=args.backbone_weights,
    )
    if choice.weights is None:
        backbones.imagenet_weights(choice)
    return choice


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli import ui
    from edgekit.cli.datasets import load_with_progress
    from edgekit.pipeline.data import split_dataset
    from edgekit.pipeline.sensor_data import is_sensor_folder
    from edgekit.pipeline.train import head_for_dataset, save_model, train_model

    if is_sensor_folder(args.dataset):  # a .keras file cannot carry the windowing and normalisation
        raise UsageError(
            f"{args.dataset}: a folder of sensor recordings; train it with `edgekit build --dataset {args.dataset} "
            "--profile NAME --out DIR [--window 2s --stride 1s]`, whose bundle records the windowing and the "
            "normalisation a device needs."
        )
    choice = _backbone(args)
    if choice is not None and args.dataset.suffix.lower() == ".npz":
        from edgekit.pipeline.backbones import load_dataset

        ds = load_dataset(args.dataset, choice)
    else:
        spec = choice.spec if choice is not None else _spec(args)
        ds = load_with_progress(args.dataset, spec, strict=args.strict, quiet=args.json)
    head = head_for_dataset(ds, args.head, args.threshold)
    if choice is not None and head.kind != "softmax":
        raise UsageError(f"--backbone trains a softmax head; a {head.kind} head trains without --backbone.")
    splits = split_dataset(ds, seed=args.seed)
    if ds.spec.kind == "audio":  # as `build` does: `build --model` then re-creates the same mean and std
        from edgekit.pipeline.audio_data import normalise

        splits = normalise(splits)
    with ui.progress() as bar:
        task = bar.add_task("training", total=args.epochs)

        def on_epoch(epoch: int, epochs: int, logs: dict[str, float]) -> None:
            acc = logs.get("val_accuracy", logs.get("accuracy", 0.0))
            bar.update(task, completed=epoch + 1, total=epochs, description=f"training (val accuracy {acc:.3f})")

        if choice is not None:
            from edgekit.pipeline.backbones import train_transfer

            result = train_transfer(
                splits, choice, epochs=args.epochs, fine_tune=args.fine_tune, seed=args.seed, on_epoch=on_epoch
            )
        else:
            result = train_model(
                splits,
                head=head,
                arch=args.arch,
                epochs=args.epochs,
                seed=args.seed,
                alpha=0.35 if args.alpha is None else args.alpha,
                augment=False if args.no_augment else None,
                on_epoch=on_epoch,
            )
    path = save_model(result.model, args.out)
    info = {
        "model": str(path),
        "arch": result.arch,
        "epochs": result.epochs,
        "params": int(result.model.count_params()),
        "input_shape": list(result.model.inputs[0].shape),
        "labels": list(ds.labels),
        "head": result.head.to_dict(),
        "float_accuracy": result.float_accuracy,
        "test_samples": result.test_samples,
        "best_val_accuracy": max(result.history.get("val_accuracy", [float("nan")])),
        "seed": args.seed,
        "skipped_images": len(ds.skipped),
        **({"backbone": {**choice.to_dict(), "fine_tune_epochs": args.fine_tune}} if choice is not None else {}),
    }
    if args.json:
        ui.print_json(info)
        return ExitStatus.OK
    rows = [
        ("model", info["model"]),
        ("architecture", f"{result.arch} ({info['params']:,} parameters, input {tuple(info['input_shape'])})"),
        (
            "dataset",
            f"{len(ds)} images, {len(ds.labels)} classes, {ds.spec.width}x{ds.spec.height} {ds.spec.color_mode}",
        ),
        ("split (seed)", f"train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)} ({args.seed})"),
        ("head", f"{result.head.kind}" + (f" (threshold {result.head.threshold:g})" if head.kind != "softmax" else "")),
        ("epochs", str(result.epochs)),
        ("float test accuracy", f"{100 * result.float_accuracy:.2f} % on {result.test_samples} images"),
    ]
    ui.console.print(ui.table("Trained", ("", "value"), rows))
    return ExitStatus.OK
