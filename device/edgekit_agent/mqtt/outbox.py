"""A bounded on-disk outbox (SQLite, WAL): every sequenced message is written here before it is sent.

The link publishes from the head of the outbox and deletes a row only when the broker acknowledged it
(PUBACK), so a broker outage or an agent crash loses nothing until a bound is hit; then the oldest
telemetry is dropped first and the drops are counted (and reported in telemetry's ``outbox`` object).

Each database gets a random ``epoch`` when it is created, and ``seq`` increases by one for every message
put into the sequenced stream (telemetry, events, meta; persisted with the message, in the same
transaction), so a consumer de-duplicates on ``(device_id, epoch, seq)`` and sees any loss as a gap.
Messages with an identity of their own (command responses: ``cmd_id`` + state; benchmark reports:
``run_id``) are stored and delivered the same way but carry ``"seq": null``: a fleet consumer that
subscribes only to telemetry must not see the responses it never asked for as gaps. ``priority`` lets
command responses overtake a telemetry backlog.

Bounds: ``max_messages`` rows and ``max_bytes`` of stored messages (payload + topic), and the disk itself:
when less than ``reserve_bytes`` would stay free on the outbox's file system, the outbox is *full of disk*.
Then it makes room by dropping its oldest ``expendable`` messages (telemetry windows: the agent marks them),
never answers or events; what still does not fit on disk waits in a small memory lane
(:data:`MEMORY_MESSAGES`, oldest telemetry dropped first) and is written to disk when space is back. A
delivered message whose row cannot be deleted (SQLite needs disk space to delete) is remembered in memory as
delivered, so it is never sent again by this process; the delete is retried later. :meth:`Outbox.check_disk`
retries and says whether the disk is still full (the agent reports the changes as events).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_agent.contract.errors import StorageError

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGES = 10_000
#: 64 MiB: some 15,000 telemetry windows of ~4 KB (days of outage at 10 s windows), under 1 % of an 8 GB SD card.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: Free space the outbox leaves on its file system: SQLite needs some to checkpoint its WAL and to delete rows.
DEFAULT_RESERVE_BYTES = 512 * 1024
#: Messages held in memory while the disk refuses them (counted as dropped if the agent stops before they go).
MEMORY_MESSAGES = 256
_PAGE = 4096
_COUNTERS_BYTES = 64  # the counters file: "next_seq dropped", padded; rewritten in place, so it needs no new space
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    seq INTEGER,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    correlation BLOB,
    expendable INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_order ON messages (priority DESC, id);
"""
_COLUMNS = "id, seq, topic, payload, qos, retain, priority, correlation, expendable"


def _finite(value: Any) -> Any:
    """``value`` with every float that JSON cannot carry (inf, NaN) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _encode(doc: Mapping[str, Any], topic: str) -> bytes:
    """Compact JSON. A non-finite float (from a hostile input, say) becomes null with a warning, instead of an
    exception in whatever thread was publishing (the window timer, the OTA health thread, shutdown)."""
    try:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str).encode("utf-8")
    except ValueError:
        log.warning("a message to %s held inf/NaN numbers; sent as null", topic)
        return json.dumps(_finite(doc), separators=(",", ":"), allow_nan=False, default=str).encode("utf-8")


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One stored message, ready to publish (``id``: storage order, negative in the memory lane; ``seq``: the
    envelope's, or None)."""

    id: int
    seq: int | None
    topic: str
    payload: bytes
    qos: int
    retain: bool
    priority: int
    correlation: bytes | None
    expendable: bool = False

    @property
    def size(self) -> int:
        """What the byte budget counts: payload and topic."""
        return len(self.payload) + len(self.topic.encode("utf-8"))


def _entry(row: tuple[Any, ...]) -> OutboxEntry:
    return OutboxEntry(row[0], row[1], row[2], bytes(row[3]), row[4], bool(row[5]), row[6], row[7], bool(row[8]))


@dataclass(frozen=True, slots=True)
class OutboxStats:
    epoch: str
    depth: int
    dropped: int
    next_seq: int
    bytes: int = 0
    max_bytes: int = DEFAULT_MAX_BYTES
    disk_full: bool = False
    memory: int = 0  # messages waiting in memory because the disk refused them

    def to_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "dropped": self.dropped,
            "epoch": self.epoch,
            "next_seq": self.next_seq,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "disk_full": self.disk_full,
            "memory": self.memory,
        }


class Outbox:
    """Thread-safe bounded outbox at ``path`` (created with its parent directory if missing)."""

    def __init__(
        self,
        path: str | Path,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        if max_messages < 1:
            raise StorageError(f"{path}: max_messages must be at least 1, got {max_messages}.")
        if max_bytes < 1024:
            raise StorageError(f"{path}: max_bytes must be at least 1024, got {max_bytes}.")
        self.path = Path(path)
        self.max_messages = int(max_messages)
        self.max_bytes = int(max_bytes)
        self.reserve_bytes = max(0, int(reserve_bytes))
        self._lock = threading.Lock()
        # Rows handed to paho and not yet acknowledged: never dropped by the bound (they will arrive, and
        # counting them as dropped would report a loss the consumer never sees). Memory only: after a
        # restart nothing is in flight.
        self._pinned: set[int] = set()
        # Acknowledged rows whose DELETE failed (a full disk): id -> size. Never handed out again.
        self._delivered: dict[int, int] = {}
        self._memory: list[OutboxEntry] = []  # what the disk refused, oldest first; ids -1, -2, ...
        self._memory_ids = 0
        self._disk_full: str | None = None  # why, while the disk is full
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False: the agent puts from its threads, the link pops from its own; _lock serialises.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a crash of the process (kill -9), not necessarily a power cut: a
            # deliberate trade for SD-card wear and latency; FULL would fsync every telemetry window.
            self._db.execute("PRAGMA synchronous=NORMAL")
            # The WAL is checkpointed and cut back well inside the reserve, so a checkpoint never needs more
            # disk than the outbox leaves free (a WAL that fills the disk can neither checkpoint nor delete).
            self._db.execute(f"PRAGMA page_size={_PAGE}")  # before the first table: what _free() counts in
            wal_pages = max(16, self.reserve_bytes // (2 * _PAGE))
            self._db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
            self._db.execute(f"PRAGMA journal_size_limit={wal_pages * _PAGE}")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(messages)")}
            if "expendable" not in columns:  # an outbox written by an agent before the byte budget
                self._db.execute("ALTER TABLE messages ADD COLUMN expendable INTEGER NOT NULL DEFAULT 0")
            with self._db:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (uuid.uuid4().hex[:16],))
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('next_seq', '1')")
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', '0')")
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            rows, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload) + LENGTH(CAST(topic AS BLOB))), 0) FROM messages"
            ).fetchone()
        except sqlite3.Error as exc:
            raise StorageError(
                f"{self.path}: cannot open the outbox database ({exc}); check the data directory's permissions "
                "and free space, or move the damaged file away (its unsent telemetry is then lost)."
            ) from None
        self.epoch: str = meta["epoch"]
        # The counters file holds what the database could not record while the disk was full: a seq handed
        # out from memory must never be handed out again after a restart (consumers would take the new
        # message for a duplicate), and what was lost must stay counted.
        self._counters = self.path.with_name(self.path.name + ".counters")
        next_seq, dropped = self._read_counters()
        self._next_seq = max(int(meta["next_seq"]), next_seq)
        self._dropped = max(int(meta["dropped"]), dropped)
        if not self._counters.exists():
            self._write_counters()  # made while there is space: rewriting it later needs none
        self._rows = int(rows)  # on disk, remembered-as-delivered ones included
        self._bytes = int(size)

    # --- writing ---------------------------------------------------------------------------------------------
    def put(
        self,
        topic: str,
        message: Mapping[str, Any],
        *,
        qos: int = 1,
        retain: bool = False,
        priority: int = 0,
        correlation: bytes | None = None,
        sequenced: bool = True,
        expendable: bool = False,
    ) -> OutboxEntry:
        """Store ``message`` (a JSON object) with this outbox's ``epoch`` and the next ``seq`` filled in
        (``seq`` null when not ``sequenced``). ``expendable`` messages (telemetry) are the first to go when a
        bound or the disk is full. Never fails for lack of space: what the disk refuses waits in memory."""
        with self._lock:
            seq = self._next_seq if sequenced else None
            doc = dict(message)
            doc["epoch"], doc["seq"] = self.epoch, seq
            new = OutboxEntry(0, seq, topic, _encode(doc, topic), qos, retain, priority, correlation, expendable)
            if seq is not None:
                self._next_seq = seq + 1
            self._settle()
            if self._disk_full is not None:
                self._recover()
            if not self._memory:  # otherwise behind what already waits in memory, to keep the order
                stored = self._store(new)
                if stored is not None:
                    return stored
            return self._keep_in_memory(new)

    def _read_counters(self) -> tuple[int, int]:
        try:
            epoch, next_seq, dropped = self._counters.read_text(encoding="ascii").split()
            return (int(next_seq), int(dropped)) if epoch == self.epoch else (0, 0)
        except (OSError, ValueError):
            return 0, 0

    def _write_counters(self) -> None:
        """Record the counters beside the database (when the database cannot take them)."""
        line = f"{self.epoch} {self._next_seq} {self._dropped}".ljust(_COUNTERS_BYTES - 1) + "\n"
        try:
            # O_CREAT without O_TRUNC: the same bytes rewritten, so a full disk does not refuse it once it exists.
            fd = os.open(self._counters, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, line.encode("ascii"), 0)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("%s: cannot record the outbox counters (%s)", self._counters, exc)

    def _free(self) -> int | None:
        """Bytes the outbox can still write: free space on its file system plus SQLite's free pages (a
        delivered row frees pages inside the file, which never shrinks, and new rows reuse them)."""
        try:
            st = os.statvfs(self.path.parent)
            pages = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        except (OSError, sqlite3.Error):
            return None
        return st.f_bavail * st.f_frsize + pages * _PAGE

    def _fs_free(self) -> int:
        """Bytes free on the outbox's file system (0 when it cannot be read)."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def _full(self, why: str) -> None:
        if self._disk_full is None:
            log.error("%s: the disk is full (%s); dropping the oldest telemetry first", self.path, why)
            self._write_counters()  # now, while a byte may still be free: later it is rewritten in place
        self._disk_full = why

    def _store(self, new: OutboxEntry) -> OutboxEntry | None:
        """Write ``new`` to disk, first dropping what the bounds require; None when the disk cannot take it."""
        size = new.size
        free = self._free()
        low = free is not None and free < self.reserve_bytes + size
        rows_over = self._rows + 1 - self.max_messages
        bytes_over = self._bytes + size - self.max_bytes
        victims: list[tuple[int, int, bool]] = []  # (id, size, counts as dropped)
        if low or rows_over > 0 or bytes_over > 0:
            victims = self._victims(rows_over, bytes_over, size if low else 0, budget=rows_over > 0 or bytes_over > 0)
            freed = sum(v[1] for v in victims)
            if low and freed < size:
                self._full(f"less than {self.reserve_bytes + size} bytes free in {self.path.parent}")
                return None
        dropped = sum(1 for v in victims if v[2])
        try:
            with self._db:  # one transaction: the row, the drops and the counters move together
                self._delete([v[0] for v in victims])
                row_id = self._db.execute(
                    f"INSERT INTO messages ({_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        new.seq,
                        new.topic,
                        new.payload,
                        new.qos,
                        int(new.retain),
                        new.priority,
                        new.correlation,
                        int(new.expendable),
                    ),
                ).lastrowid
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(self._next_seq),))
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'dropped'", (str(self._dropped + dropped),))
        except sqlite3.Error as exc:
            self._full(str(exc))
            return None
        for vid, vsize, _ in victims:
            self._delivered.pop(vid, None)
            self._rows -= 1
            self._bytes -= vsize
        self._dropped += dropped
        self._rows += 1
        self._bytes += size
        if low:
            self._full(f"less than {self.reserve_bytes + size} bytes free in {self.path.parent}")
        return OutboxEntry(int(row_id), *(getattr(new, f) for f in OutboxEntry.__slots__[1:]))

    def _victims(self, rows_over: int, bytes_over: int, disk_need: int, *, budget: bool) -> list[tuple[int, int, bool]]:
        """Rows to delete, in this order: delivered ones (free), then the oldest expendable, then (for the
        bounds only, never for the disk) the oldest others. Rows in flight are never chosen."""
        out: list[tuple[int, int, bool]] = [(i, s, False) for i, s in self._delivered.items()]
        freed = sum(s for _, s, _ in out)
        skip = self._pinned.union(self._delivered)
        lanes = ("expendable = 1", "expendable = 0") if budget else ("expendable = 1",)
        for lane in lanes:
            cursor = self._db.execute(
                f"SELECT id, LENGTH(payload) + LENGTH(CAST(topic AS BLOB)) FROM messages WHERE {lane} ORDER BY id"
            )
            for row_id, row_size in cursor:
                if len(out) >= rows_over and freed >= max(bytes_over, disk_need):
                    break
                if row_id not in skip:
                    out.append((row_id, row_size, True))
                    freed += row_size
            cursor.close()
        return out

    def _delete(self, ids: list[int]) -> None:
        for i in range(0, len(ids), 500):  # within SQLite's limit on bound parameters, whatever its version
            chunk = ids[i : i + 500]
            self._db.execute(f"DELETE FROM messages WHERE id IN ({','.join('?' * len(chunk))})", chunk)

    def _keep_in_memory(self, new: OutboxEntry) -> OutboxEntry:
        if len(self._memory) >= MEMORY_MESSAGES:
            free = [e for e in self._memory if e.id not in self._pinned]
            victim = next((e for e in free if e.expendable), free[0] if free else None)
            if victim is not None:
                self._memory.remove(victim)
                self._dropped += 1
        self._memory_ids -= 1
        entry = OutboxEntry(self._memory_ids, *(getattr(new, f) for f in OutboxEntry.__slots__[1:]))
        self._memory.append(entry)
        self._write_counters()
        return entry

    def _settle(self) -> None:
        """Delete the rows remembered as delivered, when the disk lets us."""
        if not self._delivered:
            return
        ids = list(self._delivered)
        try:
            with self._db:
                self._delete(ids)
        except sqlite3.Error:
            return
        self._rows -= len(ids)
        self._bytes -= sum(self._delivered.values())
        self._delivered.clear()

    def _recover(self) -> None:
        """Leave the full-disk state once there is room again: the memory lane goes to disk (rows in flight
        stay in memory: their acknowledgement names them), delivered rows are deleted."""
        free = self._free()
        # Hysteresis, so the state does not flap at the edge: twice the reserve counting SQLite's free pages, or
        # the reserve and a quarter on the file system itself (the journal and the unpacked bundle share a small
        # disk, where twice the reserve may never come back; the file's own free pages alone do not count then).
        if free is not None and free < 2 * self.reserve_bytes and self._fs_free() < self.reserve_bytes * 5 // 4:
            return
        moving = [e for e in self._memory if e.id not in self._pinned]
        try:
            with self._db:
                for e in moving:
                    self._db.execute(
                        f"INSERT INTO messages ({_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (e.seq, e.topic, e.payload, e.qos, int(e.retain), e.priority, e.correlation, int(e.expendable)),
                    )
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(self._next_seq),))
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'dropped'", (str(self._dropped),))
        except sqlite3.Error:
            return
        self._memory = [e for e in self._memory if e.id in self._pinned]
        self._rows += len(moving)
        self._bytes += sum(e.size for e in moving)
        if not self._delivered:
            log.warning("%s: disk space is back; the outbox writes to disk again", self.path)
            self._disk_full = None

    def check_disk(self) -> str | None:
        """Retry what the disk refused; returns why the disk is full, or None when it is not (any more)."""
        with self._lock:
            self._settle()
            if self._disk_full is None:
                free = self._free()
                if free is not None and free < self.reserve_bytes:
                    self._full(f"{free} bytes free in {self.path.parent}, less than the {self.reserve_bytes} kept")
            else:
                self._recover()
            return self._disk_full

    # --- reading ---------------------------------------------------------------------------------------------
    def head(
        self, limit: int, exclude: set[int] | frozenset[int] = frozenset(), *, pin: bool = False
    ) -> list[OutboxEntry]:
        """Up to ``limit`` entries to send next (highest priority, then oldest; disk before memory), skipping
        ``exclude`` ids and messages already delivered.

        ``pin`` pins them in the same step (see :meth:`pin`), so a concurrent :meth:`put` cannot drop a row
        between being read here and being handed to the broker connection.
        """
        if limit <= 0:
            return []
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages ORDER BY priority DESC, id LIMIT ?",
                (limit + len(exclude) + len(self._delivered),),
            ).fetchall()
            skip = set(exclude) | set(self._delivered)
            disk = [(-r[6], 0, i, _entry(r)) for i, r in enumerate(rows) if r[0] not in skip]
            memory = [(-e.priority, 1, i, e) for i, e in enumerate(self._memory) if e.id not in exclude]
            out = [e for *_, e in sorted(disk + memory, key=lambda t: t[:3])][:limit]
            if pin:
                self._pinned.update(e.id for e in out)
        return out

    def pin(self, id: int) -> None:  # noqa: A002
        """Mark a message as handed to the broker connection: the bound will not drop it until :meth:`ack`."""
        with self._lock:
            self._pinned.add(id)

    def unpin(self, id: int) -> None:  # noqa: A002
        """A pinned message that was not handed over after all (it may be dropped again)."""
        with self._lock:
            self._pinned.discard(id)

    def ack(self, id: int) -> bool:  # noqa: A002
        """Forget a delivered (or refused) message by ``id``; False when it was already gone.

        When its row cannot be deleted (a full disk), it is remembered as delivered: never handed out again
        by this process, deleted later."""
        with self._lock:
            self._pinned.discard(id)
            if id < 0:
                kept = [e for e in self._memory if e.id != id]
                found, self._memory = len(kept) < len(self._memory), kept
                return found
            if id in self._delivered:
                return False
            try:
                row = self._db.execute(
                    "SELECT LENGTH(payload) + LENGTH(CAST(topic AS BLOB)) FROM messages WHERE id = ?", (id,)
                ).fetchone()
                if row is None:
                    return False
                with self._db:
                    self._db.execute("DELETE FROM messages WHERE id = ?", (id,))
            except sqlite3.Error as exc:
                self._delivered[id] = row[0] if row else 0
                self._full(f"cannot delete delivered messages: {exc}")
                return True
            self._rows -= 1
            self._bytes -= row[0]
            return True

    def contains(self, id: int) -> bool:  # noqa: A002
        with self._lock:
            if id < 0:
                return any(e.id == id for e in self._memory)
            if id in self._delivered:
                return False
            return self._db.execute("SELECT 1 FROM messages WHERE id = ?", (id,)).fetchone() is not None

    @property
    def depth(self) -> int:
        """Messages still to deliver (on disk and in memory)."""
        return self._rows - len(self._delivered) + len(self._memory)

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def disk_full(self) -> str | None:
        """Why the disk is full, or None."""
        return self._disk_full

    def stats(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(
                self.epoch,
                self.depth,
                self._dropped,
                self._next_seq,
                self._bytes,
                self.max_bytes,
                self._disk_full is not None,
                len(self._memory),
            )

    def close(self) -> None:
        with self._lock:
            if self._delivered or self._memory:
                log.warning(
                    "%s: closing with %d delivered rows not deleted (sent once more at the next start) and %d "
                    "messages in memory (lost, counted as dropped)",
                    self.path,
                    len(self._delivered),
                    len(self._memory),
                )
            if self._memory:
                # What was handed to the broker connection will arrive (as with the bounds): only the rest is lost.
                self._dropped += sum(1 for e in self._memory if e.id not in self._pinned)
                self._memory.clear()
                self._write_counters()
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
