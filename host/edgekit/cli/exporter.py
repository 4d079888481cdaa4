"""Serve the fleet's telemetry as Prometheus metrics on http://HOST:PORT/metrics until Ctrl-C.

Consumes telemetry and events through MQTT 5 shared subscriptions ($share/GROUP/edge/v1/+/telemetry/inference,
…/+/events): start several exporters with the same --group to split a large fleet between them (Prometheus adds
their series up). Per device: up, info, counters (requests, errors, labelled, correct, outbox drops, windows, OTA
rollbacks), last window time and drift; latency histograms per model and profile (per device with
--per-device histograms). A Grafana dashboard is in dashboards/edgekit-grafana.json, alerting rules in
alerts/edgekit-rules.yml (docs/fleet.md).
"""

from __future__ import annotations

import argparse
import signal
import threading

from edgekit_agent.contract.errors import ExitStatus, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        help="MQTT broker URL, mqtt[s]://[USER@]HOST:PORT (password: EDGEKIT_MQTT_PASSWORD) (default %(default)s)",
    )
    parser.add_argument("--tls-ca", metavar="PEM", help="CA certificate of a broker with a private CA (mqtts://)")
    parser.add_argument("--port", type=int, default=9108, help="HTTP port for /metrics (default %(default)s)")
    parser.add_argument("--host", default="0.0.0.0", help="HTTP address (default %(default)s)")
    parser.add_argument("--group", default="edgekit-exporter", help="shared-subscription group (default %(default)s)")
    parser.add_argument(
        "--stages",
        default="total",
        help="latency series exported as histograms, comma-separated from "
        "total,preprocess,invoke (default %(default)s; each adds ~16 series per device)",
    )
    parser.add_argument(
        "--buckets",
        choices=("coarse", "full"),
        default="coarse",
        help="coarse: a 1-2-5 subset of the devices' bucket bounds (exact, half the series); full: all",
    )
    parser.add_argument(
        "--per-device",
        choices=("off", "counters", "histograms"),
        default="counters",
        help="per-device series: counters (default: a dozen a device, latency histograms per model only), "
        "histograms (also per-device latency histograms, ~16 series each), off (only edgekit_device_up per device; "
        "counters per model and profile)",
    )
    parser.add_argument(
        "--bundles",
        action="append",
        default=[],
        metavar="DIR",
        help="a bundle directory or a folder of them (edgekit build --out): their build-time int8 accuracy "
        "becomes edgekit_model_reference_accuracy, for the accuracy alert (repeatable)",
    )
    parser.add_argument(
        "--latency-budget",
        action="append",
        default=[],
        metavar="PROFILE=MS",
        help="the p95 latency budget of a profile in ms, as edgekit_profile_latency_budget_seconds, for the "
        "latency alert (repeatable), e.g. raspberry-pi-4=20",
    )
    parser.add_argument(
        "--mqtt", choices=("auto", "5", "3.1.1"), default="auto", help="MQTT protocol (auto falls back to 3.1.1)"
    )


def parse_budgets(specs: list[str]) -> dict[str, float]:
    """``["raspberry-pi-4=20"]`` → ``{"raspberry-pi-4": 20.0}`` (ms)."""
    budgets = {}
    for spec in specs:
        profile, _, ms = spec.partition("=")
        try:
            value = float(ms)
        except ValueError:
            value = -1.0
        if not profile or not value > 0 or value == float("inf"):
            raise UsageError(
                f"--latency-budget {spec!r}: write PROFILE=MS with a positive number, e.g. raspberry-pi-4=20."
            )
        budgets[profile] = value
    return budgets


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli.ui import err_console
    from edgekit.fleet.exporter import Exporter, load_references

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    with Exporter(
        args.broker,
        port=args.port,
        host=args.host,
        group=args.group,
        protocol=args.mqtt,
        stages=stages,
        buckets=args.buckets,
        per_device=args.per_device,
        references=load_references(args.bundles),
        latency_budgets_ms=parse_budgets(args.latency_budget),
        tls_ca=args.tls_ca,
    ) as exp:
        if not exp.link.mqtt5:
            why = "--mqtt 3.1.1 was asked for" if args.mqtt == "3.1.1" else "the broker speaks MQTT 3.1.1 only"
            err_console.print(f"[yellow]warning:[/] {why}: no shared subscription, run a single exporter")
        err_console.print(f"exporter: {args.broker} -> {exp.url} (group {args.group}); Ctrl-C to stop")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return ExitStatus.OK
