"""The outbox's byte budget, its priorities and a full disk (a real tmpfs), with a real SQLite file: the oldest
telemetry goes first and is counted, answers and events stay, a delivered message is never handed out again."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekit_agent.mqtt.outbox import MEMORY_MESSAGES, Outbox

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from small_disk import fill, free_bytes, mount_error, unmount  # noqa: E402

WINDOW = {"counts": {"requests": 1}, "pad": "x" * 3000}  # about the size of a real telemetry window


def seqs(entries) -> list[int | None]:
    return [json.loads(e.payload)["seq"] for e in entries]


def test_the_byte_budget_drops_the_oldest_telemetry_first_and_counts_it(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path, max_bytes=40_000) as ob:
        ob.put("edge/v1/d/events", {"event": "bundle_activated"})
        answer = ob.put("edge/v1/d/res/fleet", {"state": "accepted"}, priority=1, sequenced=False)
        for _ in range(30):
            ob.put("edge/v1/d/telemetry/inference", WINDOW, expendable=True)
        kept = ob.head(100)
        assert ob.stats().bytes <= 40_000
        # The answer (priority) and the event stay; telemetry is cut from its oldest end.
        assert kept[0].id == answer.id and kept[1].topic.endswith("events")
        tele = [json.loads(e.payload)["seq"] for e in kept[2:]]
        assert tele == list(range(32 - len(tele), 32)) and ob.dropped == 30 - len(tele) > 0
        # What a consumer sees: the seq gap is exactly what the outbox reports as dropped.
        assert tele[0] - 1 - 1 == ob.dropped
        dropped = ob.dropped
    with Outbox(path, max_bytes=40_000) as ob:
        assert ob.dropped == dropped and ob.stats().to_dict()["bytes"] <= 40_000


def test_events_are_dropped_only_when_no_telemetry_is_left(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", max_bytes=10_000) as ob:
        ob.put("edge/v1/d/telemetry/inference", WINDOW, expendable=True)
        for i in range(6):
            ob.put("edge/v1/d/events", {"event": "e", "i": i, "pad": "y" * 2000})
        assert all(e.topic.endswith("events") for e in ob.head(100))
        assert ob.dropped == 3 and ob.stats().bytes <= 10_000  # the window first, then the oldest events


def test_an_outbox_written_before_the_byte_budget_opens_and_counts_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, seq INTEGER, topic TEXT NOT NULL, payload BLOB NOT NULL,"
        " qos INTEGER NOT NULL, retain INTEGER NOT NULL, priority INTEGER NOT NULL, correlation BLOB);"
        "INSERT INTO meta VALUES ('epoch', 'e0'), ('next_seq', '2'), ('dropped', '0');"
        "INSERT INTO messages VALUES (1, 1, 't', X'7B7D', 1, 0, 0, NULL);"
    )
    db.commit()
    db.close()
    with Outbox(path) as ob:
        assert ob.depth == 1 and ob.stats().bytes == 3 and ob.put("t", {}).seq == 2


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "disk"
    why = mount_error(where, "1m")
    if why:
        pytest.skip(why)
    try:
        yield where
    finally:
        unmount(where)


def test_a_full_disk_turns_the_oldest_telemetry_over_and_keeps_answers_and_events(small_disk: Path) -> None:
    with Outbox(small_disk / "o.sqlite", reserve_bytes=128 * 1024) as ob:
        for _ in range(400):  # ~1.2 MB of windows into a 1 MB file system
            ob.put("edge/v1/d/telemetry/inference", WINDOW, expendable=True)
        assert ob.disk_full and ob.dropped > 0 and ob.check_disk() is not None
        assert free_bytes(small_disk) > 64 * 1024  # the outbox left its reserve; the rows turned over instead
        event = ob.put("edge/v1/d/events", {"event": "disk_full"})
        filler = fill(small_disk)  # someone else takes the last byte
        answer = ob.put("edge/v1/d/res/fleet", {"state": "succeeded"}, priority=1, sequenced=False)
        assert ob.head(1)[0].id == answer.id and ob.contains(event.id)
        assert ob.stats().bytes < 1024 * 1024
        filler.unlink()
        # Everything that was put is waiting or counted as dropped.
        waiting = [s for s in seqs(ob.head(100_000)) if s is not None]
        assert len(waiting) + ob.dropped == ob.stats().next_seq - 1
        assert ob.check_disk() is not None  # the outbox itself still fills the disk: nothing was delivered yet
        for e in ob.head(100_000):  # the broker is back
            assert ob.ack(e.id)
        assert ob.check_disk() is None and ob.depth == 0  # the file keeps its size; its free pages count as space


def test_a_delivered_message_whose_row_cannot_be_deleted_is_never_handed_out_again(small_disk: Path) -> None:
    with Outbox(small_disk / "o.sqlite", reserve_bytes=128 * 1024) as ob:
        first = [ob.put("edge/v1/d/telemetry/inference", {"i": i}, expendable=True) for i in range(5)]
        event = ob.put("edge/v1/d/events", {"event": "x"})
        filler = fill(small_disk)  # the disk is full before SQLite checkpointed: no write, no delete goes through
        answer = ob.put("edge/v1/d/res/fleet", {"state": "succeeded"}, priority=1, sequenced=False)
        assert answer.id < 0 and ob.disk_full  # it waits in memory, first in line
        sent = ob.head(8, pin=True)
        assert [e.id for e in sent] == [answer.id] + [e.id for e in first] + [event.id]
        for e in sent:
            assert ob.ack(e.id)  # delivered; the rows cannot be deleted now, and that is not an error
        for _ in range(20):
            assert ob.head(8) == [], "a delivered message was handed out again"
        assert ob.depth == 0 and ob.check_disk() is not None
        # Telemetry keeps coming while the disk is full: memory holds a bounded amount, the oldest windows go first.
        for i in range(MEMORY_MESSAGES + 10):
            ob.put("edge/v1/d/telemetry/inference", {"i": i}, expendable=True)
        later = ob.put("edge/v1/d/events", {"event": "y"})
        assert ob.stats().memory == MEMORY_MESSAGES and ob.dropped == 11 and ob.contains(later.id)
        # Space comes back: the remembered rows are deleted, memory goes to disk, the state clears.
        filler.unlink()
        assert ob.check_disk() is None and not ob.disk_full
        waiting = ob.head(100_000)
        assert ob.stats().memory == 0 and ob.depth == len(waiting) == MEMORY_MESSAGES
        assert all(e.id > 0 for e in waiting) and seqs(waiting)[-1] == later.seq
        assert not {e.seq for e in sent} & {e.seq for e in waiting}
        assert len(waiting) + 6 + ob.dropped == ob.stats().next_seq - 1  # waiting + delivered + dropped


def test_seqs_handed_out_while_the_disk_was_full_are_not_reused_after_a_restart(small_disk: Path) -> None:
    path = small_disk / "o.sqlite"
    with Outbox(path, reserve_bytes=128 * 1024) as ob:
        ob.put("edge/v1/d/events", {"event": "x"})
        filler = fill(small_disk)
        in_memory = [ob.put("edge/v1/d/telemetry/inference", {"i": i}, expendable=True) for i in range(3)]
        assert all(e.id < 0 for e in in_memory)
        assert [e.id for e in ob.head(2, pin=True)] == [1, in_memory[0].id]
        assert ob.ack(in_memory[0].id)  # sent from memory: seq 2 reached consumers
    # Stopped with the disk still full: the two messages still in memory are lost, and counted.
    filler.unlink()
    with Outbox(path, reserve_bytes=128 * 1024) as ob:
        assert ob.dropped == 2 and ob.put("edge/v1/d/events", {"event": "y"}).seq == 5
        assert seqs(ob.head(10)) == [1, 5]
