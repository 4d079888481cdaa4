"""Deploy a bundle over the air: `edgekit deploy BUNDLE --device ID [--device ID ...] --broker URL`.

The archive goes to every device in chunks (each with its sha256) through the `swap_bundle` command.
Each device verifies the whole archive's sha256 and the bundle's signature (per its --trusted-keys),
self-tests it, switches to it while it keeps serving, watches a health window (error rate, p99 latency
against the old bundle, accuracy on labelled inputs) and rolls back by itself when the window fails.
Exit status 0 when every device committed the new bundle, 8 when the broker refused a request (these
credentials may not command that device), 7 when one did not answer while offline, 5 when one refused
the bundle, failed or rolled back (the table says why: "rolled back: <reason>"). A device that restarts
during the deployment is sent again what it lost, and its true outcome is reported (docs/fleet.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgekit_agent.contract.errors import ExitStatus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edgekit_agent.contract.limits import OTA_CHUNK_BYTES

    parser.add_argument("bundle", type=Path, help="bundle .tar.gz archive or bundle directory")
    parser.add_argument("--device", action="append", required=True, metavar="ID", help="device id (repeatable)")
    parser.add_argument(
        "--broker", required=True, metavar="URL", help="mqtt://[user:pass@]HOST:PORT or mqtts://… (TLS)"
    )
    parser.add_argument("--tls-ca", type=Path, metavar="PEM", help="CA certificate of the broker (private CA)")
    parser.add_argument(
        "--health-window",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds the device watches the new bundle (default 30)",
    )
    parser.add_argument(
        "--max-error-rate", type=float, metavar="F", help="fail above this error rate (device default 0.05)"
    )
    parser.add_argument(
        "--max-p99-ratio",
        type=float,
        metavar="X",
        help="fail when p99 invoke latency exceeds X times the old bundle's (default 3)",
    )
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="F",
        help="fail when labelled accuracy falls more than F below the old bundle's (default 0.10)",
    )
    parser.add_argument(
        "--min-requests", type=int, metavar="N", help="fail when fewer inferences than N ran in the window (default 0)"
    )
    parser.add_argument(
        "--chunk-bytes", type=int, default=OTA_CHUNK_BYTES, metavar="N", help=f"chunk size (default {OTA_CHUNK_BYTES})"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, metavar="S", help="give up on a device after S seconds (default 300)"
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="return once the devices serve the new bundle (do not wait for the health window)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _health(args: argparse.Namespace) -> dict[str, float]:
    pairs = {
        "window_s": args.health_window,
        "max_error_rate": args.max_error_rate,
        "max_p99_ratio": args.max_p99_ratio,
        "max_accuracy_drop": args.max_accuracy_drop,
        "min_requests": args.min_requests,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli import ui
    from edgekit.fleet.deploy import deploy

    with ui.progress() as bar:
        tasks = {d: bar.add_task(f"{d}: begin", total=None) for d in args.device}
        on_trial: set[str] = set()

        def on_progress(device: str, stage: str, done: int, total: int) -> None:
            if stage == "restarted":
                bar.console.print(f"{device}: back online (restart {done}); sending again what it lost")
                return
            description = f"{device}: {stage}"
            if stage == "trial" and not args.no_wait:
                # The device now serves the new bundle and judges it for the whole window: without this the
                # bar sits on "trial" for --health-window seconds (30 by default) with no word why.
                description += f" (health window {args.health_window:g} s)"
                if device not in on_trial:
                    on_trial.add(device)
                    bar.console.print(
                        f"{device}: serving the new bundle; waiting out its {args.health_window:g} s health window "
                        "(error rate, p99 latency, accuracy against the old bundle), then it commits or rolls back"
                    )
            bar.update(tasks[device], description=description, completed=done, total=total or None)

        report = deploy(
            args.bundle,
            args.device,
            args.broker,
            health=_health(args),
            chunk_bytes=args.chunk_bytes,
            timeout=args.timeout,
            wait_health=not args.no_wait,
            tls_ca=args.tls_ca,
            on_progress=on_progress,
        )
    if args.json:
        ui.print_json(report.to_dict())
    else:
        rows = [
            (
                d.device_id,
                d.outcome,
                f"{d.chunks - d.resumed_chunks}/{d.chunks}" if d.transfer_s is not None else "-",
                _s(d.transfer_s),
                _s(d.activate_s),
                _s(d.committed_s),
                f"{d.rollback.get('took_ms')} ms" if d.rollback else "-",
                (d.error or {}).get("message", "") if not d.ok else "",
            )
            for d in report.devices
        ]
        title = (
            f"deploy {report.archive.name} ({report.archive_bytes:,} B, sha256 {report.archive_sha256[:12]}…) "
            f"in {report.seconds:.1f} s"
        )
        ui.console.print(
            ui.table(
                title,
                ("device", "outcome", "chunks sent", "transfer s", "to active s", "to committed s", "rollback", "why"),
                rows,
            )
        )
    outcomes = {d.outcome for d in report.devices}
    if report.ok:
        return ExitStatus.OK
    if "not_authorized" in outcomes:
        return ExitStatus.NOT_AUTHORIZED
    if "timeout" in outcomes:
        return ExitStatus.UNAVAILABLE
    return ExitStatus.BUNDLE_REJECTED


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
