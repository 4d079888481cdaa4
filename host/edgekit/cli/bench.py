"""Benchmark a device remotely over MQTT, or compare saved benchmark reports.

`edgekit bench --device ID --broker URL` sends run_benchmark (MQTT 5 request/response, or its payload
fields on an MQTT 3.1.1 broker), waits for the
report, prints it as a table and saves JSON + a latency picture (PNG) under --out.
`edgekit bench --compare A.json B.json ...` tabulates reports across devices, runtimes and profiles,
with each p50 as a ratio to the first report's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit_agent.contract.errors import ExitStatus, UsageError

if TYPE_CHECKING:  # annotations only: rich and edgekit.fleet.remote load inside run(), keeping --help fast
    from rich.table import Table

    from edgekit.fleet.remote import RemoteBench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="device id to benchmark")
    parser.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        help="MQTT broker URL, mqtt[s]://[USER@]HOST:PORT (password: EDGEKIT_MQTT_PASSWORD) (default %(default)s)",
    )
    parser.add_argument("--tls-ca", metavar="PEM", help="CA certificate of a broker with a private CA (mqtts://)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up runs (default %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=None, help="interpreter threads (default: as many as the device serves with)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the report (default %(default)s)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-reports"), help="where to save JSON and PNG (default %(default)s)"
    )
    parser.add_argument(
        "--compare", nargs="+", type=Path, metavar="REPORT.json", help="tabulate saved reports instead of running one"
    )
    parser.add_argument("--json", action="store_true", help="print the report (or comparison) as JSON on stdout")


def _f(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def report_table(bench: RemoteBench) -> Table:
    """The quantity/value table of one remote benchmark (the demo prints it too)."""
    from edgekit.cli import ui

    rep = bench.report
    steady, rt, mem = rep.get("steady") or {}, rep.get("runtime") or {}, rep.get("memory") or {}
    rows = [
        ("device", bench.device_id),
        ("model", (rep.get("model") or {}).get("name", "?")),
        ("runtime", f"{rt.get('engine', '?')} {rt.get('version', '')}"),
        ("delegate / threads", f"{rt.get('delegate', '?')} / {rt.get('num_threads', '?')}"),
        ("init ms", _f(rep.get("init_ms"))),
        ("first inference ms", _f(rep.get("first_inference_ms"))),
        ("steady-state runs", steady.get("count", "?")),
        (
            "min / mean / max ms",
            f"{_f(steady.get('min_ms'))} / {_f(steady.get('mean_ms'))} / {_f(steady.get('max_ms'))}",
        ),
        ("p50 / p90 / p99 ms", f"{_f(steady.get('p50_ms'))} / {_f(steady.get('p90_ms'))} / {_f(steady.get('p99_ms'))}"),
        ("throughput inf/s", _f(rep.get("throughput_ips"), ".1f")),
        ("RSS / peak MiB", f"{_f(mem.get('rss_mb'), '.1f')} / {_f(mem.get('peak_rss_mb'), '.1f')}"),
        ("round trip s", f"{bench.round_trip_s:.2f}"),
    ]
    return ui.table(f"remote benchmark of {bench.device_id}", ["quantity", "value"], rows)


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli import ui
    from edgekit.fleet import remote

    if args.compare:
        rows = remote.compare_reports(args.compare)
        if args.json:
            from dataclasses import asdict

            ui.print_json([asdict(r) for r in rows])
            return ExitStatus.OK
        ui.console.print(
            ui.table(
                "benchmark comparison (ratio = p50 / first report's p50)",
                [
                    "report",
                    "device",
                    "model",
                    "runtime",
                    "delegate",
                    "threads",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "mean ms",
                    "inf/s",
                    "peak RSS MiB",
                    "p50 ratio",
                ],
                [
                    (
                        r.source,
                        r.device_id,
                        r.model,
                        r.engine,
                        r.delegate,
                        r.threads if r.threads is not None else "-",
                        _f(r.p50_ms),
                        _f(r.p90_ms),
                        _f(r.p99_ms),
                        _f(r.mean_ms),
                        _f(r.throughput_ips, ".1f"),
                        _f(r.peak_rss_mb, ".1f"),
                        "-" if r.p50_ratio is None else f"{r.p50_ratio:.2f}×",
                    )
                    for r in rows
                ],
            )
        )
        return ExitStatus.OK
    if not args.device:
        raise UsageError("give --device ID to benchmark a device, or --compare REPORT.json ... to compare reports.")

    labels = {
        "sent": "request sent, waiting for the device",
        "accepted": "accepted: running the benchmark on the device",
    }
    with ui.progress() as prog:
        task = prog.add_task(f"{args.device}: sending run_benchmark", total=3)

        def on_state(state: str) -> None:
            prog.update(task, description=f"{args.device}: {labels.get(state, state)}", advance=1)

        bench = remote.request_benchmark(
            args.broker,
            args.device,
            num_runs=args.runs,
            warmup_runs=args.warmup,
            num_threads=args.threads,
            timeout=args.timeout,
            on_state=on_state,
            tls_ca=args.tls_ca,
        )
    json_path, png_path = remote.save_report(bench, args.out)
    if args.json:
        ui.print_json(bench.to_dict())
        return ExitStatus.OK
    ui.console.print(report_table(bench))
    ui.console.print(f"saved {json_path} and {png_path}")
    return ExitStatus.OK
