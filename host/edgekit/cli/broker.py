"""Run a development MQTT broker on this machine until Ctrl-C (no TLS: development only).

Without options it has no authentication. With ``--users DEVICES --fleet-users FLEET`` (mosquitto password
files) it runs the set-up docs/trust.md documents: devices on ``--port`` as their own user (the client id is
the user name, so one device cannot take over another's session) with a per-device ACL, fleet tools on
``--fleet-port``.

The default engine is mosquitto when it is installed (full MQTT 5, what the edge/v1 contract needs),
otherwise amqtt, the pure-Python broker installed with edgekit[host] — which speaks MQTT 3.1.1 only:
the fleet tools and the agents fall back to 3.1.1 against it (request/response fields in the payload),
but shared subscriptions are not available there (run one exporter).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

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
    parser.add_argument(
        "--users",
        type=Path,
        metavar="PASSWD",
        help="mosquitto password file of the devices (user name = device id): authentication on --port",
    )
    parser.add_argument(
        "--fleet-users", type=Path, metavar="PASSWD", help="mosquitto password file of the fleet tools' users"
    )
    parser.add_argument(
        "--fleet-port", type=int, default=0, help="the fleet tools' port with --users (default: a free one)"
    )


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli.ui import err_console
    from edgekit.fleet.dev_broker import BANNER, SECURE_BANNER, BrokerUsers, start_dev_broker
    from edgekit_agent.contract.errors import UsageError

    if (args.users is None) != (args.fleet_users is None):
        raise UsageError("--users and --fleet-users go together: the devices' and the fleet tools' password files.")
    users = BrokerUsers(args.users, args.fleet_users, args.fleet_port) if args.users is not None else None
    stop = threading.Event()
    # SIGTERM (from a demo script or systemd) stops as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with start_dev_broker(args.host, args.port, engine=args.engine, users=users) as broker:
        err_console.print(f"[bold yellow]{SECURE_BANNER if users else BANNER}[/]")
        if users is not None:
            err_console.print(f"fleet tools: {broker.fleet_url} (user:password@ in the URL)")
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
