"""Terminal output for the edgekit CLI: rich consoles, tables and progress bars (CLI only, never library code)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgekit_agent.contract.errors import EdgekitError

# Not a terminal (a pipe, a file, CI): rich would assume 80 columns and squeeze the tables; use a wide page.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(highlight=False, width=_WIDTH)
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
        # Off a terminal nothing is drawn, so no refresh thread: its ten wake-ups a second cost 0.1 CPU-s per
        # 20 s of a build (piped or in CI), next to the training that wants both cores.
        auto_refresh=err_console.is_terminal,
    ) as p:
        yield p


def kib(n: int | float | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KiB"


@contextmanager
def native_logs_captured(enabled: bool = True) -> Iterator[Path | None]:
    """Keep TensorFlow's C++ start-up chatter (CUDA probes, oneDNN and CPU-feature notices, converter logs) off
    the terminal: file descriptor 2 goes to a temporary file while Python's own stderr (progress bars,
    warnings, errors) keeps the terminal. TF 2.21 writes some of these lines before it reads
    TF_CPP_MIN_LOG_LEVEL, so the variable alone cannot silence them. ``edgekit -v`` shows everything.

    Only when stderr is the real process stderr (not under pytest's capture or a redirected sys.stderr).
    """
    if not enabled or sys.stderr is not sys.__stderr__:
        yield None
        return
    try:
        if sys.stderr.fileno() != 2:
            yield None
            return
    except (AttributeError, OSError, ValueError):
        yield None
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    log = tempfile.NamedTemporaryFile(prefix="edgekit-native-", suffix=".log", delete=False)
    os.dup2(log.fileno(), 2)
    previous = sys.stderr
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, encoding=previous.encoding, errors="backslashreplace")
    ok = False
    try:
        yield Path(log.name)
        ok = True
    except (EdgekitError, KeyboardInterrupt):
        ok = True  # an expected failure: its message says what to do; the native log adds nothing
        raise
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)
        sys.stderr.close()
        sys.stderr = previous
        log.close()
        if ok or os.path.getsize(log.name) == 0:
            os.unlink(log.name)
        else:  # an unexpected failure: keep the native log and say where it is
            print(f"(TensorFlow's native log for this run: {log.name})", file=sys.stderr)
