"""List the device profiles shipped with edgekit (or given as TOML paths) with their budgets: target,
tensor dtypes, RAM left for the model (the tensor arena on an MCU), flash or storage left, the margin
added to measured figures, the runtime/kernel flash estimate and the size of the op set.
"""

from __future__ import annotations

import argparse

from edgekit_agent.contract.errors import ExitStatus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="*", metavar="PROFILE", help="profile names or TOML paths (default: every shipped profile)"
    )
    parser.add_argument("--json", action="store_true", help="print the profiles as JSON on stdout")


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli import ui
    from edgekit.profiles import load_all_profiles, load_profile

    profiles = [load_profile(p) for p in args.paths] if args.paths else load_all_profiles()
    if args.json:
        ui.print_json([p.to_dict() for p in profiles])
        return ExitStatus.OK
    rows = [
        (
            p.name,
            str(p.target),
            f"{p.input_dtype}/{p.output_dtype}",
            f"{p.delegate}×{p.num_threads}",
            f"{p.ram_bytes / 1024:,.0f}",
            f"{p.flash_bytes / 1024:,.0f}",
            f"{p.runtime_flash_bytes / 1024:,.0f}" if p.runtime_flash_bytes else "-",
            f"{p.margin:.0%}",
            "all builtins" if p.ops is None else str(len(p.ops)),
        )
        for p in profiles
    ]
    ui.console.print(
        ui.table(
            "Device profiles: RAM left for the model (MCU: tensor arena), flash left for model + runtime",
            ("profile", "target", "in/out", "delegate", "RAM KB", "flash KB", "runtime KB", "margin %", "ops"),
            rows,
        )
    )
    for p in profiles:
        ui.console.print(
            f"[bold]{p.name}[/]: {p.description}" + (f" — {p.datasheet}" if p.datasheet else ""), highlight=False
        )
    return ExitStatus.OK
