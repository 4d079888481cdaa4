"""Watch the fleet: one row per device (status, bundle, runtime, throughput, latency, accuracy, errors).

Live-updating table by default; ``--json`` prints one JSON line per device update (for scripts);
``--once`` prints a snapshot once the retained status/meta messages have arrived and exits.
A device is "lost" when it said it was online but has been silent for 3 telemetry windows.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from edgekit_agent.contract.errors import ExitStatus

if TYPE_CHECKING:
    from rich.table import Table

    from edgekit.fleet.state import DeviceRow

COLUMNS = (
    "device",
    "status",
    "bundle",
    "profile",
    "runtime",
    "ips",
    "p50 ms",
    "p99 ms",
    "accuracy %",
    "errors",
    "drops",
    "gaps",
    "last seen",
)
STATUS_STYLE = {"online": "green", "offline": "red", "lost": "yellow", "unknown": "dim"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        help="MQTT broker URL, mqtt[s]://[USER@]HOST:PORT (password: EDGEKIT_MQTT_PASSWORD) (default %(default)s)",
    )
    parser.add_argument("--tls-ca", metavar="PEM", help="CA certificate of a broker with a private CA (mqtts://)")
    parser.add_argument(
        "--once", action="store_true", help="print a snapshot after the retained messages arrive, then exit"
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per device update on stdout")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds (with --once: collect live telemetry for S seconds before the snapshot)",
    )
    parser.add_argument(
        "--mqtt", choices=("auto", "5", "3.1.1"), default="auto", help="MQTT protocol (auto falls back to 3.1.1)"
    )


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _age(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    age = max(0.0, now - ts)
    return f"{age:.0f}s ago" if age < 120 else f"{age / 60:.0f}m ago"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _text(value: str, limit: int = 80) -> str:
    """A device-supplied string made safe to print: control characters (terminal escape sequences could
    retitle or clear the screen) become "?", rich markup is escaped, and it is cut at ``limit``."""
    from rich.markup import escape

    clean = _CONTROL.sub("?", value)
    return escape(clean if len(clean) <= limit else clean[: limit - 1] + "…")


def render(rows: Iterable[DeviceRow], title: str) -> Table:
    """The fleet table: one row per device, device-supplied strings made safe."""
    from rich.table import Table

    now = time.time()
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in COLUMNS:
        t.add_column(
            col,
            justify="right" if col in ("ips", "p50 ms", "p99 ms", "accuracy %", "errors", "drops", "gaps") else "left",
        )
    for r in rows:
        acc = None if r.accuracy is None else 100 * r.accuracy
        # Every string here comes from a device: "[...]" in a bundle name would be rich markup, ESC a terminal command.
        status = f"[{STATUS_STYLE.get(r.status, 'white')}]{_text(r.status, 20)}[/]"
        if r.status != "online" and r.status_reason:
            status += f" ({_text(r.status_reason, 40)})"
        t.add_row(
            _text(r.device_id),
            status,
            _text(r.bundle or "-"),
            _text(r.profile or "-"),
            _text(r.runtime or "-"),
            _fmt(r.throughput_ips, ".1f"),
            _fmt(r.p50_ms, ".2f"),
            _fmt(r.p99_ms, ".2f"),
            _fmt(acc, ".1f"),
            str(r.errors),
            str(r.outbox_dropped),
            str(r.lost_messages),
            _age(r.last_seen, now),
        )
    if not t.rows:
        t.caption = "no devices yet: start one with `edgekit-agent run BUNDLE --broker URL --device-id ID`"
    return t


def _json_line(row: DeviceRow) -> None:
    print(json.dumps(row.to_dict(), sort_keys=True), flush=True)


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli.ui import console, err_console
    from edgekit.fleet.watch import FleetWatcher

    with FleetWatcher(args.broker, protocol=args.mqtt, tls_ca=args.tls_ca) as watcher:
        if not watcher.sync(timeout=5.0):
            err_console.print(
                "[yellow]warning:[/] the broker did not echo the sync marker (does an ACL forbid edgekit/sync/#?); the snapshot may be incomplete"
            )
        if args.once:
            if args.timeout:
                for _ in watcher.follow(args.timeout):
                    pass
            rows = watcher.snapshot()
            if args.json:
                for r in rows:
                    _json_line(r)
            else:
                console.print(render(rows, f"fleet on {watcher.link.address.url}"))
            return ExitStatus.OK
        if args.json:
            for r in watcher.snapshot():
                _json_line(r)
            for changed in watcher.follow(args.timeout):
                for r in changed:
                    _json_line(r)
            return ExitStatus.OK
        from rich.live import Live

        title = f"fleet on {watcher.link.address.url} (Ctrl-C to stop)"
        with Live(render(watcher.snapshot(), title), console=console, refresh_per_second=4, transient=False) as live:
            for _ in watcher.follow(args.timeout):
                live.update(render(watcher.snapshot(), title))
    return ExitStatus.OK
