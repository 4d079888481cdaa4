"""Convert a model to a full-integer TFLite model for a device profile: a Keras model (.keras, .h5 or
SavedModel), a float .tflite or an .onnx file.

Post-training quantisation calibrates on --representative-samples images drawn (seeded) from the training
split of --dataset; input and output tensors get the profile's dtype (int8 or uint8). The converter runs
in a child process, so a converter crash is reported as an error (exit 6) instead of killing edgekit.
The result is linted: a float island (DEQUANTIZE -> float op -> QUANTIZE) or a wrong input/output dtype
is an error naming the operator. Float and int8 accuracy are compared on the validation split; when int8
is more than --max-accuracy-drop points below float, quantisation-aware training runs and the better
model is kept (--no-qat turns that off). A float .tflite or .onnx file (ONNX through onnx2tf first) is
quantised by ai-edge-quantizer with the same calibration images and measured the same way; with no Keras model
there is no QAT.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgekit.cli.build import add_head_arguments
from edgekit_agent.contract.errors import ExitStatus, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", type=Path, metavar="MODEL", help="Keras model (.keras, .h5, SavedModel dir), float .tflite or .onnx"
    )
    parser.add_argument(
        "--dataset", type=Path, required=True, metavar="DIR", help="image folder or .npz (calibration and accuracy)"
    )
    parser.add_argument(
        "--profile", required=True, metavar="NAME", help="device profile name or profile .toml (see `edgekit profiles`)"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write the int8 .tflite")
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=1.0,
        metavar="POINTS",
        help="run quantisation-aware training when int8 loses more than this (default 1.0 point)",
    )
    parser.add_argument("--no-qat", action="store_true", help="never run quantisation-aware training")
    parser.add_argument("--qat-epochs", type=int, default=3, help="epochs of quantisation-aware training (default 3)")
    parser.add_argument(
        "--representative-samples", type=int, default=200, metavar="N", help="calibration samples (default 200)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the calibration sample (default 0)")
    parser.add_argument("--float-out", type=Path, default=None, metavar="FILE", help="also write the float32 .tflite")
    add_head_arguments(parser, head=False)
    parser.add_argument("--strict", action="store_true", help="an unreadable image is an error instead of a warning")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli import ui
    from edgekit.cli.datasets import model_and_splits
    from edgekit.pipeline.convert import convert_for_profile
    from edgekit.pipeline.foreign import convert_for_profile as foreign_for_profile
    from edgekit.pipeline.foreign import is_foreign
    from edgekit.profiles import load_profile

    profile = load_profile(args.profile)  # fail fast on a typo, before TensorFlow loads
    model, splits = model_and_splits(
        args.model, args.dataset, seed=args.seed, strict=args.strict, quiet=args.json, foreign=True
    )
    keras_model = not is_foreign(args.model)
    head = None
    if keras_model:
        from edgekit.pipeline.train import head_for_dataset, model_shape

        kind = model_shape(model, args.model).head_for(splits.train).kind
        head = head_for_dataset(splits.train, kind, args.threshold)
    elif args.threshold is not None or splits.train.multilabel:
        raise UsageError(
            f"{args.model}: a float .tflite or ONNX model is converted with its head decided by its outputs; "
            "--threshold and multi-label datasets need a Keras model."
        )
    with ui.progress() as bar:
        task = bar.add_task("converting", total=None)
        on_stage = lambda msg: bar.update(task, description=msg)  # noqa: E731
        if keras_model:
            res = convert_for_profile(
                model,
                splits,
                profile,
                max_accuracy_drop=args.max_accuracy_drop,
                qat=not args.no_qat,
                qat_epochs=args.qat_epochs,
                num_samples=args.representative_samples,
                seed=args.seed,
                name=args.model.name,
                on_stage=on_stage,
                with_float=args.float_out is not None,
                head=head,
            )
        else:  # a float .tflite or ONNX model: no Keras model to fine-tune, so ai-edge-quantizer and no QAT
            res = foreign_for_profile(
                model, splits, profile, num_samples=args.representative_samples, seed=args.seed, on_stage=on_stage
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(res.tflite)
    if args.float_out:
        args.float_out.write_bytes(res.float_tflite)
    info = {"out": str(args.out), "profile": profile.name, **res.to_dict()}
    if head is not None:
        info["head"] = head.to_dict()
    if args.json:
        ui.print_json(info)
        return ExitStatus.OK
    pct = lambda v: "-" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    rows = [
        ("model", f"{args.out} ({ui.kib(len(res.tflite))}, {res.input_dtype} in / {res.output_dtype} out)"),
        ("float32 .tflite", f"{ui.kib(res.float_bytes)} (int8/float = {res.size_ratio:.3f})"),
        ("calibration", f"{res.representative_samples} training images (seed {args.seed})"),
        (f"float accuracy ({res.eval_split})", f"{pct(res.float_accuracy)} on {res.eval_samples} images"),
        ("int8 accuracy, post-training", pct(res.ptq_int8_accuracy)),
        (
            "int8 accuracy, QAT",
            pct(res.qat_int8_accuracy)
            if res.qat_ran
            else "not possible (no Keras model)"
            if not keras_model
            else "not run (drop within limit)"
            if not args.no_qat
            else "not run (--no-qat)",
        ),
        ("kept", f"{res.kept} (drop {res.accuracy_drop:+.2f} points)" if res.accuracy_drop is not None else res.kept),
    ]
    ui.console.print(ui.table(f"Converted for {profile.name}", ("", "value"), rows))
    ui.console.print(ui.table("Operators", ("operator", "count"), res.lint.ops))
    for w in res.lint.warnings:
        ui.err_console.print(f"[yellow]warning:[/] {w}", highlight=False, markup=True)
    if res.accuracy_drop is not None and res.accuracy_drop > args.max_accuracy_drop:
        ui.err_console.print(
            f"[yellow]warning:[/] int8 is still {res.accuracy_drop:.2f} points below float "
            f"(limit {args.max_accuracy_drop}); "
            + (
                "more data or QAT epochs may help."
                if keras_model
                else "more or more typical calibration images may help."
            ),
            highlight=False,
            markup=True,
        )
    return ExitStatus.OK
