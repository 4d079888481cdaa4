"""Serve the fleet's telemetry as Prometheus metrics on http://HOST:PORT/metrics until Ctrl-C.

Consumes telemetry through the MQTT 5 shared subscription $share/GROUP/edge/v1/+/telemetry/inference:
start several exporters with the same --group to split a large fleet between them (Prometheus adds
their series up). Latency is exported as real histograms (edgekit_inference_latency_seconds), per-device
up gauges, and counters for requests, errors, labelled and correct inferences and outbox drops.
A Grafana dashboard is in dashboards/edgekit-grafana.json.
"""

from __future__ import annotations

import argparse
import signal
import threading

from edgekit_agent.contract.errors import ExitStatus


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
        "--mqtt", choices=("auto", "5", "3.1.1"), default="auto", help="MQTT protocol (auto falls back to 3.1.1)"
    )


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli.ui import err_console
    from edgekit.fleet.exporter import Exporter

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
