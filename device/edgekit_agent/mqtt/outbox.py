"""A bounded on-disk outbox (SQLite, WAL): every sequenced message is written here before it is sent.

The link publishes from the head of the outbox and deletes a row only when the broker acknowledged it
(PUBACK), so a broker outage or an agent crash loses nothing until the bound is hit; then the oldest
rows are dropped first and the drops are counted (and reported in telemetry's ``outbox`` object).

Each database gets a random ``epoch`` when it is created, and ``seq`` increases by one for every message
put into the sequenced stream (telemetry, events, meta; persisted with the message, in the same
transaction), so a consumer de-duplicates on ``(device_id, epoch, seq)`` and sees any loss as a gap.
Messages with an identity of their own (command responses: ``cmd_id`` + state; benchmark reports:
``run_id``) are stored and delivered the same way but carry ``"seq": null``: a fleet consumer that
subscribes only to telemetry must not see the responses it never asked for as gaps. ``priority`` lets
command responses overtake a telemetry backlog.
"""

from __future__ import annotations

import json
import logging
import math
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
    correlation BLOB
);
CREATE INDEX IF NOT EXISTS messages_order ON messages (priority DESC, id);
"""


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
    """One stored message, ready to publish (``id``: storage order; ``seq``: the envelope's, or None)."""

    id: int
    seq: int | None
    topic: str
    payload: bytes
    qos: int
    retain: bool
    priority: int
    correlation: bytes | None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    epoch: str
    depth: int
    dropped: int
    next_seq: int

    def to_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "dropped": self.dropped, "epoch": self.epoch, "next_seq": self.next_seq}


class Outbox:
    """Thread-safe bounded outbox at ``path`` (created with its parent directory if missing)."""

    def __init__(self, path: str | Path, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        if max_messages < 1:
            raise StorageError(f"{path}: max_messages must be at least 1, got {max_messages}.")
        self.path = Path(path)
        self.max_messages = int(max_messages)
        self._lock = threading.Lock()
        # Rows handed to paho and not yet acknowledged: never dropped by the bound (they will arrive, and
        # counting them as dropped would report a loss the consumer never sees). Memory only: after a
        # restart nothing is in flight.
        self._pinned: set[int] = set()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False: the agent puts from its threads, the link pops from its own; _lock serialises.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a crash of the process (kill -9), not necessarily a power cut: a
            # deliberate trade for SD-card wear and latency; FULL would fsync every telemetry window.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            with self._db:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (uuid.uuid4().hex[:16],))
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('next_seq', '1')")
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', '0')")
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            raise StorageError(
                f"{self.path}: cannot open the outbox database ({exc}); check the data directory's permissions "
                "and free space, or move the damaged file away (its unsent telemetry is then lost)."
            ) from None
        self.epoch: str = meta["epoch"]
        self._next_seq = int(meta["next_seq"])
        self._dropped = int(meta["dropped"])
        self._depth = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

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
    ) -> OutboxEntry:
        """Store ``message`` (a JSON object) with this outbox's ``epoch`` and the next ``seq`` filled in
        (``seq`` null when not ``sequenced``)."""
        with self._lock:
            seq = self._next_seq if sequenced else None
            doc = dict(message)
            doc["epoch"], doc["seq"] = self.epoch, seq
            payload = _encode(doc, topic)
            try:
                with self._db:  # one transaction: the row and the counter move together
                    row_id = self._db.execute(
                        "INSERT INTO messages VALUES (NULL, ?, ?, ?, ?, ?, ?, ?)",
                        (seq, topic, payload, qos, int(retain), priority, correlation),
                    ).lastrowid
                    if seq is not None:
                        self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(seq + 1),))
                    over = self._depth + 1 - self.max_messages
                    if over > 0:
                        # Oldest first, whatever the priority (the bound protects the SD card), except rows in
                        # flight and the new row: with every other row in flight the bound overshoots briefly.
                        pinned = [*sorted(self._pinned), row_id]
                        over = self._db.execute(
                            "DELETE FROM messages WHERE id IN (SELECT id FROM messages "
                            f"WHERE id NOT IN ({','.join('?' * len(pinned))}) ORDER BY id LIMIT ?)",
                            (*pinned, over),
                        ).rowcount
                        self._db.execute(
                            "UPDATE meta SET value = ? WHERE key = 'dropped'", (str(self._dropped + over),)
                        )
            except sqlite3.Error as exc:
                raise StorageError(
                    f"{self.path}: cannot store a message for {topic} ({exc}); is the disk full?"
                ) from None
            if seq is not None:
                self._next_seq = seq + 1
            if over > 0:
                self._dropped += over
                self._depth += 1 - over
            else:
                self._depth += 1
            return OutboxEntry(int(row_id), seq, topic, payload, qos, retain, priority, correlation)

    # --- reading ---------------------------------------------------------------------------------------------
    def head(
        self, limit: int, exclude: set[int] | frozenset[int] = frozenset(), *, pin: bool = False
    ) -> list[OutboxEntry]:
        """Up to ``limit`` entries to send next (highest priority, then oldest), skipping ``exclude`` ids.

        ``pin`` pins them in the same step (see :meth:`pin`), so a concurrent :meth:`put` cannot drop a row
        between being read here and being handed to the broker connection.
        """
        if limit <= 0:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT id, seq, topic, payload, qos, retain, priority, correlation FROM messages "
                "ORDER BY priority DESC, id LIMIT ?",
                (limit + len(exclude),),
            ).fetchall()
            out = [
                OutboxEntry(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]), r[6], r[7])
                for r in rows
                if r[0] not in exclude
            ]
            out = out[:limit]
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
        """Delete a delivered (or refused) message by ``id``; False when it was already gone."""
        with self._lock:
            self._pinned.discard(id)
            try:
                with self._db:
                    n = self._db.execute("DELETE FROM messages WHERE id = ?", (id,)).rowcount
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: cannot delete delivered message {id} ({exc}).") from None
            self._depth -= n
            return n > 0

    def contains(self, id: int) -> bool:  # noqa: A002
        with self._lock:
            return self._db.execute("SELECT 1 FROM messages WHERE id = ?", (id,)).fetchone() is not None

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def dropped(self) -> int:
        return self._dropped

    def stats(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(self.epoch, self._depth, self._dropped, self._next_seq)

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
