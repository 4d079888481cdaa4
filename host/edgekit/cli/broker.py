"""Run a development MQTT broker on this machine until Ctrl-C (no authentication, no TLS: development only).

The default engine is mosquitto when it is installed (full MQTT 5, what the edge/v1 contract needs),
otherwise amqtt, the pure-Python broker installed with edgekit[host] — which speaks MQTT 3.1.1 only:
the fleet tools and the agents fall back to 3.1.1 against it (request/response fields in the payload),
but shared subscriptions are not available there (run one exporter).
"""

from __future__ import annotations

import argparse
import signal
import threading

from edgekit_agent.contract.errors import ExitStatus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)"
    )
    parser.add_argument("--port", type=int, default=1883, help="TCP port (default %(default)s; 0 picks a free one)")
    parser.add_argument(
        "--engine",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="auto = mosquitto if installed, else amqtt (MQTT 3.1.1 only)",
    )


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli.ui import err_console
    from edgekit.fleet.dev_broker import BANNER, start_dev_broker

    stop = threading.Event()
    # SIGTERM (from a demo script or systemd) stops as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with start_dev_broker(args.host, args.port, engine=args.engine) as broker:
        err_console.print(f"[bold yellow]{BANNER}[/]")
        protocol = (
            "MQTT 5 and 3.1.1" if broker.mqtt5 else "MQTT 3.1.1 only (no shared subscriptions, no MQTT 5 properties)"
        )
        err_console.print(f"listening on {broker.url} ({broker.engine}: {protocol}); Ctrl-C to stop")
        # Printed on stdout alone so scripts can read the URL (useful with --port 0).
        print(broker.url, flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    err_console.print("broker stopped")
    return ExitStatus.OK
