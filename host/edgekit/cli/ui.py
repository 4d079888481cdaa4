"""Terminal output for the edgekit CLI: rich consoles, tables and progress bars (CLI only, never library code)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(col, justify="right" if col.endswith(("(B)", "%", "ms", "bytes", "KB", "count")) else "left")
    for row in rows:
        t.add_row(*(escape(str(c)) for c in row))
    return t


def print_json(data: Any) -> None:
    """Machine-readable output on stdout: plain JSON, no colour."""
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


@contextmanager
def progress(transient: bool = True) -> Iterator[Progress]:
    """A progress display on stderr (stdout stays clean for --json)."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=transient,
    ) as p:
        yield p


def kib(n: int | float | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KiB"
