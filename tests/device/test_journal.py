"""The telemetry journal's crash points, one by one, on real SQLite files (serve/journal.py): what a restart
finds after a crash between each step of "journal, move" and "mark, put into the outbox, trim"."""

from __future__ import annotations

from pathlib import Path

from edgekit_agent.mqtt.outbox import Outbox
from edgekit_agent.serve.journal import TelemetryJournal

REC = (1_500_000, 200_000, 1_000_000, 3, 0.9, 3)


def _image(root: Path, name: str) -> tuple[Path, Path]:
    src = root / "7" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(b"png")
    return src, root / ".processed" / "7" / name


def test_a_crash_between_journal_and_move_finishes_the_move_and_counts_the_image(tmp_path: Path) -> None:
    j = TelemetryJournal(tmp_path / "journal.sqlite")
    src, dst = _image(tmp_path / "in", "a.png")
    j.append(1000, src, dst, REC)
    j.close()  # the crash: the file was never moved
    with Outbox(tmp_path / "outbox.sqlite") as ob:
        found = TelemetryJournal(tmp_path / "journal.sqlite").recover(ob.epoch, ob.stats().next_seq)
    assert found.moves_finished == 1 and not src.exists() and dst.read_bytes() == b"png"
    assert [r.as_record()[:6] for r in found.records] == [REC]
    assert found.close_finished is None


def test_a_crash_before_the_window_reached_the_outbox_keeps_the_rows(tmp_path: Path) -> None:
    j = TelemetryJournal(tmp_path / "journal.sqlite")
    ob = Outbox(tmp_path / "outbox.sqlite")
    ob.put("t", {"k": "meta"})
    j.append(1000, tmp_path / "gone-a.png", tmp_path / "a.png", REC)
    j.append(1001, tmp_path / "gone-b.png", None, None, "INPUT_INVALID")
    stats = ob.stats()
    j.begin_close(stats.epoch, stats.next_seq)
    j.close()  # the crash: put never happened
    found = TelemetryJournal(tmp_path / "journal.sqlite").recover(ob.epoch, ob.stats().next_seq)
    assert found.close_finished is False
    assert [(r.error, r.dst) for r in found.records] == [(None, str(tmp_path / "a.png")), ("INPUT_INVALID", None)]
    ob.close()


def test_a_crash_after_the_window_reached_the_outbox_trims_the_rows(tmp_path: Path) -> None:
    j = TelemetryJournal(tmp_path / "journal.sqlite")
    ob = Outbox(tmp_path / "outbox.sqlite")
    j.append(1000, tmp_path / "gone.png", tmp_path / "a.png", REC)
    stats = ob.stats()
    j.begin_close(stats.epoch, stats.next_seq)
    ob.put("telemetry", {"counts": {"requests": 1}})
    ob.put("events", {"event": "x"})  # later puts do not change the verdict
    j.close()  # the crash: the rows were never trimmed
    j2 = TelemetryJournal(tmp_path / "journal.sqlite")
    found = j2.recover(ob.epoch, ob.stats().next_seq)
    assert found.close_finished is True and found.records == () and j2.pending == 0
    ob.close()


def test_a_marker_from_another_outbox_epoch_does_not_count_as_stored(tmp_path: Path) -> None:
    j = TelemetryJournal(tmp_path / "journal.sqlite")
    j.append(1000, tmp_path / "gone.png", tmp_path / "a.png", REC)
    j.begin_close("old-epoch", 1)
    found = j.recover("new-epoch", 5)  # the outbox file was replaced: its seq says nothing about the window
    assert found.close_finished is False and len(found.records) == 1


def test_rows_after_the_marked_ones_survive_a_close(tmp_path: Path) -> None:
    j = TelemetryJournal(tmp_path / "journal.sqlite")
    for i in range(3):
        j.append(1000 + i, tmp_path / f"{i}.png", None, REC)
    j.begin_close("e", 1, upto=2)  # an OTA switch: rows 1-2 belong to the replaced bundle's window
    j.end_close()
    assert j.pending == 1 and j.abort_close() == []
