"""The SQLite outbox: contiguous seq per epoch, persistence across restarts and kill -9, bound and drops, priority."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit_agent.contract.errors import StorageError
from edgekit_agent.mqtt.outbox import Outbox


def payloads(entries):
    return [json.loads(e.payload) for e in entries]


def test_seq_is_contiguous_and_epoch_is_stamped(tmp_path: Path):
    with Outbox(tmp_path / "o.sqlite") as ob:
        entries = [ob.put("t", {"i": i}) for i in range(5)]
        docs = payloads(ob.head(10))
        assert [d["seq"] for d in docs] == [1, 2, 3, 4, 5]
        assert {d["epoch"] for d in docs} == {ob.epoch} and len(ob.epoch) == 16
        assert [e.seq for e in entries] == [1, 2, 3, 4, 5] and ob.depth == 5


def test_epoch_and_seq_survive_reopening_and_acks(tmp_path: Path):
    path = tmp_path / "o.sqlite"
    with Outbox(path) as ob:
        epoch = ob.epoch
        first = [ob.put("t", {"i": i}) for i in range(3)]
        for e in first:
            assert ob.ack(e.id)
        assert not ob.ack(first[0].id)  # a duplicate PUBACK is harmless
        assert ob.depth == 0
    with Outbox(path) as ob:
        assert ob.epoch == epoch
        assert ob.put("t", {}).seq == 4  # the sequence continues even though every row was deleted
    other = Outbox(tmp_path / "other.sqlite")
    assert other.epoch != epoch  # a new database is a new epoch: consumers restart their gap tracking
    other.close()


def test_bound_drops_oldest_first_and_counts_drops(tmp_path: Path):
    path = tmp_path / "o.sqlite"
    with Outbox(path, max_messages=10) as ob:
        for i in range(25):
            ob.put("t", {"i": i})
        assert ob.depth == 10 and ob.dropped == 15
        assert [d["i"] for d in payloads(ob.head(100))] == list(range(15, 25))
    with Outbox(path, max_messages=10) as ob:
        assert ob.dropped == 15 and ob.stats().to_dict()["dropped"] == 15


def test_priority_overtakes_and_unsequenced_messages_keep_the_sequence_gapless(tmp_path: Path):
    with Outbox(tmp_path / "o.sqlite") as ob:
        ob.put("telemetry", {"n": 1})
        ob.put("telemetry", {"n": 2})
        resp = ob.put("res/fleet", {"state": "accepted"}, priority=1, sequenced=False, correlation=b"\x01\x02")
        ob.put("telemetry", {"n": 3})
        head = ob.head(10)
        assert head[0].topic == "res/fleet" and head[0].correlation == b"\x01\x02"
        assert json.loads(head[0].payload)["seq"] is None and resp.seq is None
        assert [e.seq for e in head[1:]] == [1, 2, 3]
        # ids already in flight are skipped
        assert [e.seq for e in ob.head(2, exclude={head[0].id, head[1].id})] == [2, 3]


def test_unusable_database_is_a_storage_error_naming_the_file(tmp_path: Path):
    bad = tmp_path / "o.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="o.sqlite"):
        Outbox(bad)


def test_messages_survive_kill_9(tmp_path: Path):
    path = tmp_path / "o.sqlite"
    code = (
        "import os, signal, sys\n"
        "from edgekit_agent.mqtt.outbox import Outbox\n"
        f"ob = Outbox({str(path)!r})\n"
        "for i in range(50): ob.put('t', {'i': i})\n"
        "print('written', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL and "written" in proc.stdout
    with Outbox(path) as ob:
        assert ob.depth == 50
        assert [d["seq"] for d in payloads(ob.head(100))] == list(range(1, 51))
    assert os.path.exists(path)


def test_rows_in_flight_are_not_dropped_by_the_bound(tmp_path: Path):
    with Outbox(tmp_path / "o.sqlite", max_messages=10) as ob:
        first = [ob.put("t", {"i": i}) for i in range(10)]
        for e in first[:3]:
            ob.pin(e.id)  # handed to paho: they will arrive, so dropping them would report a false loss
        for i in range(10, 14):
            ob.put("t", {"i": i})
        kept = [json.loads(e.payload)["i"] for e in ob.head(100)]
        assert kept == [0, 1, 2, 7, 8, 9, 10, 11, 12, 13] and ob.dropped == 4
        for e in first[:3]:
            assert ob.ack(e.id)
        assert ob.depth == 7
        for i in range(14, 18):  # 11 rows for 10 places: the oldest unpinned one goes
            ob.put("t", {"i": i})
        assert [json.loads(e.payload)["i"] for e in ob.head(100)][0] == 8 and ob.dropped == 5
