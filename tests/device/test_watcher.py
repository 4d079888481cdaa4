"""The watched folder wakes the agent at once (inotify), and the cheaper listing and move keep the documented
behaviour: path order, labelled subfolders, ``.processed``/``.failed``, a taken name kept, a removed
``.processed`` made again."""

from __future__ import annotations

import io
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.serve.agent import Agent
from edgekit_agent.serve.config import AgentSettings
from edgekit_agent.serve.watcher import DirectoryWaker

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


@linux_only
def test_a_file_written_into_a_watched_folder_ends_the_wait(tmp_path: Path) -> None:
    waker = DirectoryWaker()
    try:
        assert waker.active
        sub = tmp_path / "7"
        sub.mkdir()
        waker.watch([str(tmp_path), str(sub)])
        assert waker.wait(0) is False  # nothing happened yet
        (sub / "a.png").write_bytes(b"x")
        assert waker.wait(30) is True
        assert waker.wait(0) is False  # the event was consumed
        (tmp_path / "new-label").mkdir()  # a label folder made later wakes it too
        assert waker.wait(30) is True
    finally:
        waker.close()


def test_interrupt_ends_a_long_wait_from_another_thread(tmp_path: Path) -> None:
    waker = DirectoryWaker()
    try:
        waker.watch([str(tmp_path)])
        threading.Timer(0.05, waker.interrupt).start()
        assert waker.wait(60) is False
    finally:
        waker.close()


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8), "L").save(buf, "PNG")
    path.write_bytes(buf.getvalue())


def _settled(root: Path) -> None:
    past = time.time() - 60
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (past, past))


def test_scan_order_labels_and_where_files_go(digits_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(digits_bundle)
    labels = bundle.manifest.labels
    inbox = tmp_path / "inbox"
    for name in ("b.png", "a.png"):
        _png(inbox / labels[3] / name, 40)
    _png(inbox / "z.png", 200)
    (inbox / "broken.png").write_bytes(b"not a png")
    (inbox / "notes.txt").write_text("not an image")
    _png(inbox / ".hidden.png", 1)
    _settled(inbox)
    agent = Agent(bundle, AgentSettings(device_id="w", data_dir=tmp_path / "d", watch_dir=inbox))
    served: list[str] = []
    serve_file = agent.serve_file

    def spy(source, **kw):  # noqa: ANN001, ANN003 - records the order, serves for real
        served.append(os.path.relpath(source, inbox))
        return serve_file(source, **kw)

    agent.serve_file = spy  # type: ignore[method-assign]
    # A file of the same name already in .processed (served in an earlier run) is kept, the new one tagged.
    _png(inbox / ".processed" / labels[3] / "a.png", 0)
    assert agent.scan_once() == 4
    assert served == [f"{labels[3]}/a.png", f"{labels[3]}/b.png", "broken.png", "z.png"]
    counts = agent.recorder.snapshot_and_reset()["counts"]
    assert counts["ok"] == 3 and counts["errors"] == {"INPUT_INVALID": 1}
    done = sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*") if p.is_file())
    assert done[:2] == [".failed/broken.png", ".hidden.png"]
    assert sum(1 for d in done if d.startswith(f".processed/{labels[3]}/a.")) == 2
    assert f".processed/{labels[3]}/b.png" in done and ".processed/z.png" in done and "notes.txt" in done

    # Someone empties .processed while the agent runs: the folder is made again, nothing is lost or re-served.
    shutil.rmtree(inbox / ".processed")
    _png(inbox / labels[3] / "c.png", 90)
    _settled(inbox)
    assert agent.scan_once() == 1
    assert (inbox / ".processed" / labels[3] / "c.png").is_file()
    assert agent.scan_once() == 0


@linux_only
def test_the_running_agent_serves_a_dropped_file_long_before_its_poll(digits_bundle: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings = AgentSettings(device_id="w", data_dir=tmp_path / "d", watch_dir=inbox, poll_s=60, skip_selftest=True)
    agent = Agent(load_bundle(digits_bundle), settings)
    agent.start()
    try:
        time.sleep(0.2)  # the watcher is in its first 60 s wait
        _png(inbox / "7" / "x.png", 50)  # freshly written: served once it settled (50 ms), woken by inotify
        deadline = time.monotonic() + 30  # half the poll: only a wake-up can make it
        while not (inbox / ".processed" / "7" / "x.png").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (inbox / ".processed" / "7" / "x.png").exists()
    finally:
        t0 = time.monotonic()
        agent.shutdown()
    assert time.monotonic() - t0 < 30  # the 60 s wait was interrupted, not waited out
