"""Show what is inside a bundle (directory or .tar.gz) or a .tflite file: the manifest summary, every file
checked against the sha256 in the manifest, the operators with counts and the tensors with dtype, shape
and quantisation. Exits with BUNDLE_REJECTED (5) when a file is missing, changed or not listed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgekit_agent.contract.errors import ExitStatus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", type=Path, metavar="PATH", help="bundle directory, bundle archive (.tar.gz) or .tflite file"
    )
    parser.add_argument("--json", action="store_true", help="print the full report as JSON on stdout")
    parser.add_argument("--all-tensors", action="store_true", help="list every tensor, not only inputs and outputs")
    parser.add_argument(
        "--trusted-keys", type=Path, metavar="DIR", help="also check the signature against the *.pub keys in DIR"
    )


def _quant(scales: tuple[float, ...], zeros: tuple[int, ...]) -> tuple[str, str]:
    if not scales:
        return "-", "-"
    if len(scales) == 1:
        return f"{scales[0]:.6g}", str(zeros[0] if zeros else 0)
    return f"{len(scales)} per-channel ({min(scales):.3g}..{max(scales):.3g})", f"{sorted(set(zeros))[:3]}"


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli import ui
    from edgekit.package.inspection import inspect_path

    report = inspect_path(args.path, trusted_keys=args.trusted_keys)
    status = ExitStatus.OK if report.verified else ExitStatus.BUNDLE_REJECTED
    if args.json:
        ui.print_json(report.to_dict())
        return status

    c = ui.console
    m = report.manifest
    rows: list[tuple[str, str]] = [
        ("path", str(report.path)),
        ("kind", report.kind),
        ("model", f"{report.model_file} ({ui.kib(report.model_bytes)})"),
    ]
    if m is not None:
        metrics = m.get("metrics") or {}
        rows += [
            ("name / version", f"{m['name']} {m['version']}"),
            ("profile", f"{m['profile']} ({m['target']})"),
            ("created", m["created"]),
            ("labels", f"{len(m['labels'])}: {', '.join(m['labels'][:12])}{' …' if len(m['labels']) > 12 else ''}"),
            ("input", ", ".join(f"{t['dtype']} {t['shape']}" for t in m["inputs"])),
            ("output", ", ".join(f"{t['dtype']} {t['shape']} ({m['outputs_are']})" for t in m["outputs"])),
            ("head", _head_text(m["head"])),
        ]
        if "float_accuracy" in metrics and "int8_accuracy" in metrics:
            rows.append(
                (
                    "accuracy",
                    f"float {100 * metrics['float_accuracy']:.2f} %, int8 {100 * metrics['int8_accuracy']:.2f} % "
                    f"on {metrics.get('samples', '?')} held-out samples" + (" (QAT)" if metrics.get("qat") else ""),
                )
            )
        sizes = metrics.get("sizes") or {}
        if sizes.get("int8_float_ratio"):
            rows.append(
                (
                    "int8 / float32",
                    f"{sizes['int8_tflite_bytes']:,} / {sizes['float_tflite_bytes']:,} B = "
                    f"{sizes['int8_float_ratio']:.3f}",
                )
            )
        if m.get("fit"):
            rows.append(("fit", "fits" if m["fit"].get("fits") else "DOES NOT FIT"))
        if report.signed_by:
            signed = f"yes, valid, key {report.signed_by}"
        elif report.signature_error:
            signed = "REFUSED (see below)"
        else:
            signed = "yes (not checked: --trusted-keys DIR)" if report.signed else "no"
        rows.append(("signed", signed))
    c.print(ui.table("Summary", ("field", "value"), rows))

    if report.files:
        c.print(
            ui.table(
                "Files (sha256 against the manifest)",
                ("file", "bytes", "status"),
                [(f.name, f.bytes if f.bytes is not None else "-", f.status) for f in report.files],
            )
        )
    if report.operators:
        c.print(ui.table("Operators", ("operator", "count"), report.operators))
    tensors = report.tensors if args.all_tensors else [t for t in report.tensors if t.role]
    if tensors:
        title = "Tensors" if args.all_tensors else "Input and output tensors (--all-tensors for all)"
        c.print(
            ui.table(
                title,
                ("#", "role", "name", "dtype", "shape", "scale", "zero point"),
                [(t.index, t.role, t.name, t.dtype, list(t.shape), *_quant(t.scales, t.zero_points)) for t in tensors],
            )
        )
    if report.verified:
        if report.kind != "tflite":
            c.print("[green]verified:[/] every file matches the manifest")
    else:
        ui.err_console.print("[bold red]verification failed:[/] " + "; ".join(report.problems))
    return status


def _head_text(head: dict[str, Any]) -> str:
    if head["kind"] == "multilabel":
        return f"multilabel (one sigmoid output per label: the labels at probability >= {head['threshold']:g})"
    if head["kind"] == "sigmoid":
        return f"sigmoid (one output: the second label at probability >= {head['threshold']:g})"
    return "softmax (one output per label)"
