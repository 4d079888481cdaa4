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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgekit_agent.contract.errors import ExitStatus

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.table import Table

    from edgekit.fleet.state import DeviceRow

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


@dataclass(frozen=True, slots=True)
class _Column:
    """A column of the fleet table in its full form and, for a narrow terminal, its compact one."""

    header: str
    short: str  # the header when space is short
    right: bool
    cells: tuple[str, ...]  # rich markup (device strings escaped)
    compact: tuple[str, ...] | None = None

    def shown(self, short: bool) -> tuple[str, tuple[str, ...]]:
        """The header and cells in the compact (``short``) or the full form."""
        if short:
            return self.short, self.cells if self.compact is None else self.compact
        return self.header, self.cells

    def width(self, short: bool) -> int:
        from rich.text import Text

        header, cells = self.shown(short)
        return max([len(header)] + [Text.from_markup(c).cell_len for c in cells])


# Which columns stay when the terminal is narrow, most needed first (the table keeps its own order).
PRIORITY = (
    "device",
    "status",
    "p50 ms",
    "ips",
    "accuracy %",
    "errors",
    "last seen",
    "bundle",
    "p99 ms",
    "runtime",
    "drops",
    "gaps",
    "profile",
)


class FleetView:
    """The fleet table, laid out when it is drawn, for the width it is drawn at: every column with full
    headers on a wide terminal; on a narrow one short headers, compact cells (no status reason, "3s" for
    "3s ago") and the least needed columns dropped, so each device stays on one line."""

    def __init__(self, rows: Iterable[DeviceRow], title: str) -> None:
        self.title = title
        self.columns = _columns(tuple(rows), time.time())

    def table(self, width: int) -> Table:
        from rich import box
        from rich.table import Table

        # The full form (headers with units, status reasons, "3s ago") unless the compact one keeps more columns.
        full, compact = self._fitting(width, short=False), self._fitting(width, short=True)
        short, chosen = (True, compact) if len(compact) > len(full) else (False, full)
        t = Table(
            title=self.title,
            title_justify="left",
            caption_justify="left",
            header_style="bold",
            box=box.SIMPLE_HEAD,
            show_edge=False,
        )
        shown = [(c, *c.shown(short)) for c in self.columns if c.header in chosen]
        for c, header, _ in shown:
            t.add_column(header, justify="right" if c.right else "left", no_wrap=True, overflow="ellipsis")
        for row in zip(*(cells for _, _, cells in shown)):
            t.add_row(*row)
        if not t.rows:
            t.caption = "no devices yet: start one with `edgekit-agent run BUNDLE --broker URL --device-id ID`"
        return t

    def _fitting(self, width: int, short: bool) -> set[str]:
        """The most needed columns that fit in ``width`` in that form; a column too wide is left out, and a
        narrower one after it may still fit."""
        chosen, used = set(), -1  # a table of columns c is sum(c + 3) - 1 wide: padding 1 + 1, a space between
        for column in sorted(self.columns, key=lambda c: PRIORITY.index(c.header)):
            need = column.width(short) + 3
            if used + need <= width:
                chosen.add(column.header)
                used += need
        return chosen

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)


def _columns(rows: tuple[DeviceRow, ...], now: float) -> tuple[_Column, ...]:
    # Every string here comes from a device: "[...]" in a bundle name would be rich markup, ESC a terminal command.
    def status(r: DeviceRow, reason: bool) -> str:
        text = f"[{STATUS_STYLE.get(r.status, 'white')}]{_text(r.status, 20)}[/]"
        if r.disk_full:  # serving, but dropping telemetry: as urgent as a status
            text += " [red]disk full[/]"
        return (
            text + f" ({_text(r.status_reason, 40)})" if reason and r.status != "online" and r.status_reason else text
        )

    def number(values: Iterable[float | None], spec: str) -> tuple[str, ...]:
        return tuple(_fmt(v, spec) for v in values)

    return (
        _Column("device", "device", False, tuple(_text(r.device_id, 40) for r in rows)),
        _Column(
            "status",
            "status",
            False,
            tuple(status(r, reason=True) for r in rows),
            tuple(status(r, reason=False) for r in rows),
        ),
        _Column("bundle", "bundle", False, tuple(_text(r.bundle or "-", 40) for r in rows)),
        _Column("profile", "profile", False, tuple(_text(r.profile or "-", 40) for r in rows)),
        _Column("runtime", "runtime", False, tuple(_text(r.runtime or "-", 40) for r in rows)),
        _Column("ips", "ips", True, number((r.throughput_ips for r in rows), ".1f")),
        _Column("p50 ms", "p50", True, number((r.p50_ms for r in rows), ".2f")),
        _Column("p99 ms", "p99", True, number((r.p99_ms for r in rows), ".2f")),
        _Column(
            "accuracy %",
            "acc%",
            True,
            number((None if r.accuracy is None else 100 * r.accuracy for r in rows), ".1f"),
        ),
        _Column("errors", "err", True, tuple(str(r.errors) for r in rows)),
        _Column("drops", "drop", True, tuple(str(r.outbox_dropped) for r in rows)),
        _Column("gaps", "gap", True, tuple(str(r.lost_messages) for r in rows)),
        _Column(
            "last seen",
            "seen",
            False,
            tuple(_age(r.last_seen, now) for r in rows),
            tuple(_age(r.last_seen, now).removesuffix(" ago") for r in rows),
        ),
    )


def render(rows: Iterable[DeviceRow], title: str) -> FleetView:
    """The fleet table (one row per device, device-supplied strings made safe), fitted to the width it is
    printed at: ``console.print(render(...))`` or a ``Live`` display."""
    return FleetView(rows, title)


def _json_line(row: DeviceRow) -> None:
    print(json.dumps(row.to_dict(), sort_keys=True), flush=True)


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli.ui import console, err_console
    from edgekit.fleet.watch import FleetWatcher

    with FleetWatcher(args.broker, protocol=args.mqtt, tls_ca=args.tls_ca) as watcher:
        if not watcher.sync(timeout=5.0):
            err_console.print(
                "[yellow]warning:[/] the broker did not echo the sync marker (does an ACL forbid edgekit/sync/#?); "
                "the snapshot may be incomplete"
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
