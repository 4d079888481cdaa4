"""Check whether a .tflite model (made by edgekit or not) fits device profiles: the exact TFLite Micro
tensor arena plus margin against an MCU's RAM, model plus runtime against its flash, every operator
against the firmware's op set, Coral's Edge TPU rules (and edgetpu_compiler when installed), tensor
dtypes. Prints a verdict table; exits DOES_NOT_FIT (4) when the model misses any chosen profile. A float
model (not quantised) gets no table: it exits BAD_INPUT (3) with the command that quantises it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgekit_agent.contract.errors import ExitStatus, ModelError, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL.tflite", help="the .tflite model to check")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--profile", "-p", action="append", metavar="NAME", help="a profile name or TOML path (repeatable)"
    )
    which.add_argument("--all-profiles", action="store_true", help="check every shipped profile")
    parser.add_argument(
        "--no-compile", action="store_true", help="do not run edgetpu_compiler even when it is installed"
    )
    parser.add_argument("--json", action="store_true", help="print the fit reports as JSON on stdout")


_MARK = {"ok": "", "warn": " (warn)", "fail": " ✗"}


def _number(report, *checks: str) -> str:
    for name in checks:
        try:
            row = report.row(name)
        except KeyError:
            continue
        value = f"{row.measured:,}" if isinstance(row.measured, int) else str(row.measured)
        return value + _MARK[str(row.verdict)]
    return "-"


def _ops(report) -> str:
    if report.edgetpu is not None:
        row = report.row("edgetpu")
        return f"{report.edgetpu.mapped}/{len(report.edgetpu.ops)} on TPU" + _MARK[str(row.verdict)]
    row = report.row("ops")
    if str(row.verdict) == "fail" and "registered" in str(row.budget):
        missing = row.detail.split(": ", 1)[-1].rstrip(".")
        return f"missing {missing}"
    return str(row.verdict)


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli import ui
    from edgekit.fit.check import check_fit
    from edgekit.pipeline.foreign import not_quantised_message
    from edgekit.profiles import load_all_profiles, load_profile

    try:
        tflite = args.model.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{args.model}: no such file; give the path of a .tflite model.") from None
    except IsADirectoryError:
        raise UsageError(
            f"{args.model} is a directory; give a .tflite file (use `edgekit inspect` for bundles)."
        ) from None
    profiles = load_all_profiles() if args.all_profiles else [load_profile(p) for p in args.profile]
    float_model = not_quantised_message(tflite, args.model)
    if float_model is not None:  # every profile runs full int8: a fit table would only say DOES NOT FIT
        raise ModelError(float_model)
    reports = []
    with ui.progress() as bar:
        task = bar.add_task(f"checking {args.model.name}", total=len(profiles))
        for p in profiles:
            bar.update(task, description=f"{args.model.name} on {p.name}")
            reports.append(check_fit(tflite, p, name=args.model.name, run_compiler=not args.no_compile))
            bar.advance(task)
    status = ExitStatus.OK if all(r.fits for r in reports) else ExitStatus.DOES_NOT_FIT
    if args.json:
        ui.print_json([r.to_dict() for r in reports])
        return status

    rows = [
        (
            r.profile,
            r.target,
            _number(r, "arena", "ram"),
            _number(r, "flash", "storage"),
            _ops(r),
            str(r.row("dtypes").verdict),
            "fits" if r.fits else "DOES NOT FIT",
        )
        for r in reports
    ]
    ui.console.print(
        ui.table(
            f"{args.model.name} ({len(tflite):,} bytes; {', '.join(reports[0].ops) if reports else ''})",
            ("profile", "target", "arena/RAM bytes", "flash bytes", "ops", "dtypes", "verdict"),
            rows,
        )
    )
    for r in reports:
        if not r.fits or any(str(x.verdict) == "warn" for x in r.rows):
            ui.console.print(r.summary(), highlight=False, markup=False)
    coral = [r for r in reports if r.edgetpu is not None]
    if coral and all(r.fits for r in coral):  # a fitting report prints no summary: still say whether it was compiled
        ui.console.print(
            f"Edge TPU: {coral[0].edgetpu.split_description()}; {coral[0].edgetpu.compiler.message}.", markup=False
        )
    return status
