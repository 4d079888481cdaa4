"""The telemetry journal: why a ``kill -9`` of the agent loses no image it moved out of the watched folder.

The open telemetry window lives in memory (:class:`~edgekit_agent.serve.telemetry.WindowRecorder`, a
lock-free hot path). For every image of the watched folder, the agent also appends one row here (the
record's values, where the file is and where it goes) *before* it moves or deletes the file, and only then
moves it. Closing a window takes three steps, with the outbox's public API in the middle:

1. :meth:`begin_close` stores a marker: "the rows up to id N go into a window; the outbox's epoch and
   next ``seq`` were E and S before it was stored" (nothing else may put a sequenced message between this
   and step 2: the agent holds its publish lock);
2. the window is put into the outbox;
3. :meth:`end_close` deletes those rows and the marker in one transaction.

At start-up, :meth:`recover` reads what a crash left: a marker whose window reached the outbox (same epoch,
next ``seq`` beyond S) is finished (step 3), otherwise dropped (the rows stay); a row whose file is still in
the watched folder has its move finished (the image was counted, so it must not be served again); the rows
left are replayed into one window marked ``"recovered": true``. So every moved image is counted in exactly
one window, and ``seq`` stays the outbox's (contiguous).

Durability: WAL with ``synchronous=NORMAL`` for the per-image rows (no fsync on the serving path), and
``synchronous=FULL`` for the window-closing commit, which also makes every earlier row durable (the WAL is
written in order). A power cut can therefore cost at most the images of the open window: see docs/agent.md,
"Crashes and power cuts".
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit_agent.contract.errors import StorageError

log = logging.getLogger(__name__)

# One served image as the watcher journals it: (time ms, source, destination or None for a delete,
# (total ns, preprocess ns, invoke ns, predicted, confidence, label) or None, error code or None).
Record = tuple[int, int, int, int, float, int]
JournalRow = tuple[int, Path, Path | None, Record | None, str | None]
_NO_RECORD: Record = (0, 0, 0, -1, 0.0, -1)
_WAL_PAGES = 16  # checkpoint (and cut the WAL back) every 16 pages

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal_records (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    src TEXT NOT NULL,
    dst TEXT,
    total_ns INTEGER NOT NULL,
    preprocess_ns INTEGER NOT NULL,
    invoke_ns INTEGER NOT NULL,
    predicted INTEGER NOT NULL,
    confidence REAL NOT NULL,
    label INTEGER NOT NULL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS journal_closing (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    upto INTEGER NOT NULL,
    epoch TEXT NOT NULL,
    next_seq INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One served image: the values :meth:`WindowRecorder.record` took (or the error code it counted), and its
    move (``dst`` None: deleted)."""

    id: int
    ts_ms: int
    src: str
    dst: str | None
    total_ns: int
    preprocess_ns: int
    invoke_ns: int
    predicted: int
    confidence: float
    label: int
    error: str | None

    def as_record(self) -> tuple[int, int, int, int, float, int, float]:
        """The arguments of ``WindowRecorder.record``; the input mean was not journaled (NaN: not sampled)."""
        return (
            self.total_ns,
            self.preprocess_ns,
            self.invoke_ns,
            self.predicted,
            self.confidence,
            self.label,
            math.nan,
        )


@dataclass(frozen=True, slots=True)
class Recovery:
    """What :meth:`TelemetryJournal.recover` found: the rows to replay and what it did about the rest."""

    records: tuple[JournalRecord, ...]
    moves_finished: int  # files still in the watched folder whose move the crash interrupted
    close_finished: bool | None  # None: no window was being closed; True: it had reached the outbox


class TelemetryJournal:
    """The journal at ``path`` (SQLite, its own file; created with its directory). Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # Rows live one window: keep the WAL small (SQLite lets it reach 4 MB before a checkpoint, which
            # on a nearly full SD card takes the space the outbox needs; docs/agent.md, "Full disk").
            self._db.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
            self._db.execute(f"PRAGMA journal_size_limit={_WAL_PAGES * 4096}")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(
                f"{self.path}: cannot open the telemetry journal ({exc}); check the data directory's permissions and "
                "free space, or move the damaged file away (images served since the last window are then uncounted)."
            ) from None

    def _run(self, what: str, sql: str, args: tuple[object, ...] = ()) -> sqlite3.Cursor:
        try:
            with self._db:
                return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot {what} ({exc}); is the disk full?") from None

    # --- the watcher: one row per image, before its move ------------------------------------------------------
    def append(
        self,
        ts_ms: int,
        src: Path,
        dst: Path | None,
        record: tuple[int, int, int, int, float, int] | None,
        error: str | None = None,
    ) -> int:
        """Journal one served image (``record``: total, preprocess and invoke ns, predicted, confidence, label)
        or one that failed (``error``: the code counted); returns the row id. Call before moving the file."""
        values = record if record is not None else _NO_RECORD
        with self._lock:
            return int(
                self._run(
                    "journal a served image",
                    "INSERT INTO journal_records VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ts_ms, str(src), None if dst is None else str(dst), *values, error),
                ).lastrowid
            )

    def append_many(self, rows: Sequence[JournalRow]) -> None:
        """Journal several served images in one transaction (each row: the arguments of :meth:`append`)."""
        values = [
            (ts, str(src), None if dst is None else str(dst), *(rec if rec is not None else _NO_RECORD), err)
            for ts, src, dst, rec, err in rows
        ]
        with self._lock:
            try:
                with self._db:
                    self._db.executemany(
                        "INSERT INTO journal_records VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values
                    )
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: cannot journal served images ({exc}); is the disk full?") from None

    # --- closing a window ----------------------------------------------------------------------------------------
    def last_id(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM journal_records").fetchone()[0])

    def begin_close(self, epoch: str, next_seq: int, upto: int | None = None) -> int:
        """Mark the rows up to ``upto`` (default: all so far) as going into the window about to be stored in the
        outbox (whose epoch and next ``seq`` are given, read before the put); returns ``upto``."""
        if upto is None:
            upto = self.last_id()
        with self._lock:
            self._run(
                "mark a closing window",
                "INSERT OR REPLACE INTO journal_closing VALUES (1, ?, ?, ?)",
                (upto, epoch, next_seq),
            )
            return upto

    def end_close(self) -> None:
        """The window is in the outbox: delete its rows and the marker, durably (one fsync per window)."""
        with self._lock:
            self._db.execute("PRAGMA synchronous=FULL")
            try:
                try:
                    with self._db:
                        row = self._db.execute("SELECT upto FROM journal_closing").fetchone()
                        if row is not None:
                            self._db.execute("DELETE FROM journal_records WHERE id <= ?", (row[0],))
                            self._db.execute("DELETE FROM journal_closing")
                except sqlite3.Error as exc:
                    raise StorageError(
                        f"{self.path}: cannot trim the journal ({exc}); is the disk full? The next start would "
                        "count this window's images again."
                    ) from None
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def abort_close(self) -> list[JournalRecord]:
        """The window did not reach the outbox: drop the marker, keep the rows; returns them (to carry over)."""
        with self._lock:
            row = self._db.execute("SELECT upto FROM journal_closing").fetchone()
            self._run("unmark a closing window", "DELETE FROM journal_closing")
            return self._records(row[0] if row else 0)

    def _records(self, upto: int | None = None) -> list[JournalRecord]:
        sql = "SELECT * FROM journal_records" + (" WHERE id <= ?" if upto is not None else "") + " ORDER BY id"
        return [JournalRecord(*r) for r in self._db.execute(sql, () if upto is None else (upto,)).fetchall()]

    # --- start-up ------------------------------------------------------------------------------------------------
    def recover(self, epoch: str, next_seq: int) -> Recovery:
        """Finish what a crash interrupted (see the module docstring), given the outbox's current ``epoch`` and
        next ``seq``; returns the rows still to be counted. Call before the watcher starts."""
        with self._lock:
            marker = self._db.execute("SELECT epoch, next_seq FROM journal_closing").fetchone()
        closed: bool | None = None
        if marker is not None:
            closed = marker[0] == epoch and next_seq > marker[1]
            if closed:
                self.end_close()
            else:
                self.abort_close()
        with self._lock:
            records = self._records()
        finished, kept, unmoved = 0, [], []
        for r in records:
            src = Path(r.src)
            if src.exists():
                try:
                    if r.dst is None:
                        src.unlink()
                    else:
                        Path(r.dst).parent.mkdir(parents=True, exist_ok=True)
                        os.replace(src, r.dst)
                    finished += 1
                except OSError as exc:
                    # Still in the watched folder, it will be served (and counted) again: not here too.
                    log.warning("%s: cannot finish moving %s (%s); it will be served again", self.path, src, exc)
                    unmoved.append(r.id)
                    continue
            kept.append(r)
        for row_id in unmoved:
            self._run("forget an unmoved image", "DELETE FROM journal_records WHERE id = ?", (row_id,))
        return Recovery(tuple(kept), finished, closed)

    @property
    def pending(self) -> int:
        """Rows not yet in a stored window."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM journal_records").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
