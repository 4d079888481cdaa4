"""Chaos: a full disk (issue 9, item 2). The agent's data directory is on a 2 MB tmpfs, as in the issue.

Both scenarios start a real ``edgekit-agent run`` on the digits bundle *archive* (unpacked into the tmpfs, as a
device does), with the broker down, feed it labelled images, and take most of the tmpfs with a filler file
(another process's logs) so that the outbox meets a full disk within seconds instead of minutes:

- ``broker_down``: the disk fills while the broker is down; then the broker comes back, then the space;
- ``broker_back``: the same, but the last byte is taken too before the broker comes back (the issue's
  re-send storm), and the agent is restarted while the disk is still full (the issue's second unpacking).

Each returns the driver's dict (``fed``, ``counted``, ``duplicates``, ``dropped_reported``, ``recover_s``: from the
space freed to the ``disk_ok`` event) and more: ``seq_gap`` (seqs a consumer never saw; must equal
``dropped_reported``), ``dup_while_full`` (repeats while the broker was back and the disk full), ``log_bytes``
(what the agent logged meanwhile), ``unpacked_again``. Mounting needs root; otherwise the outcome says why.
``tests/e2e/test_agent_disk_full.py`` runs :func:`run` and asserts on the same figures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TESTS = Path(__file__).resolve().parents[2] / "tests"
sys.path.insert(0, str(TESTS))
from small_disk import fill, mount_error, unmount  # noqa: E402

from brokers import Mosquitto  # noqa: E402

DEVICE = "disk-1"
DISK_SIZE = "2m"  # the tmpfs
LEAVE_FREE = 700 * 1024  # the filler leaves this: the outbox's 512 KiB reserve and ~40 windows


class Consumer:
    """A fleet consumer with a persistent session (the broker keeps its messages while it is away)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.lock = threading.Lock()
        self.seqs: Counter[tuple[str, int]] = Counter()  # live deliveries per (epoch, seq)
        self.retained: set[tuple[str, int]] = set()  # meta seen only as a retained copy still arrived
        self.requests: dict[tuple[str, int], int] = {}
        self.dropped = 0
        self.events: list[tuple[float, str]] = []
        self.births: list[dict[str, Any]] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"chaos-disk-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5
        )
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(f"edge/v1/{DEVICE}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        # clean_start False: paho reconnects with the same flag, and a clean start would wipe the queued messages.
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("the chaos consumer could not subscribe")

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(m.payload)
        except ValueError:
            return
        with self.lock:
            if m.topic.endswith("/status") and doc.get("state") == "online":
                self.births.append(doc)
            if not isinstance(doc.get("seq"), int):
                return
            key = (str(doc.get("epoch")), doc["seq"])
            if m.retain:
                self.retained.add(key)
                return
            self.seqs[key] += 1
            if m.topic.endswith("/telemetry/inference"):
                self.requests[key] = int(doc["counts"]["requests"])
                self.dropped = max(self.dropped, int(doc["outbox"]["dropped"]))
            elif m.topic.endswith("/events") and self.seqs[key] == 1:  # a re-sent event counts once, as seq says
                self.events.append((time.monotonic(), str(doc.get("event"))))

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.seqs.values())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


def _images(folder: Path, n: int) -> None:
    """``n`` labelled 8x8 digits as PNGs in ``folder/LABEL/``, written at about 50 a second."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i in range(n):
        label = folder / str(int(d.target[i]))
        label.mkdir(parents=True, exist_ok=True)
        pixels = (d.images[i] / 16.0 * 255).round().astype("uint8")
        tmp = label / f".d{i}.png"
        Image.fromarray(pixels, "L").save(tmp)
        tmp.rename(label / f"d{i}.png")  # appears whole: the agent never reads half a file
        time.sleep(0.02)


def _served(folder: Path) -> int:
    return sum(1 for _ in (folder / ".processed").rglob("*.png")) if (folder / ".processed").is_dir() else 0


class _Agent:
    def __init__(self, python: str, config: Path, log: Path) -> None:
        self.cmd = [python, "-m", "edgekit_agent.cli", "run", "--config", str(config), "--allow-unsigned"]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        rc, self.proc = self.proc.returncode, None
        return rc

    def logged(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def run(
    env: Any, archive: Path, *, broker_back_while_full: bool, images: int = 200, window_s: float = 0.2
) -> dict[str, Any]:
    """One full-disk run (see the module docstring); ``env`` is the driver's ChaosEnv (workdir, python)."""
    work = Path(env.workdir)
    disk = work / "disk"
    why = mount_error(disk, DISK_SIZE)
    if why:
        return {
            "fault": "data dir on a 2 MB tmpfs",
            "fed": 0,
            "counted": 0,
            "duplicates": 0,
            "dropped_reported": 0,
            "recover_s": None,
            "outcome": f"skipped: {why}",
            "skipped": why,
        }
    broker = Mosquitto(work / "broker", extra_config=f"persistence true\npersistence_location {work / 'broker'}/\n")
    agent: _Agent | None = None
    fillers: list[Path] = []
    try:
        broker.start()
        fleet = Consumer(broker)
        broker.stop()
        inbox = work / "in"
        inbox.mkdir()
        config = work / "agent.toml"
        config.write_text(
            f'bundle = "{archive}"\ndevice_id = "{DEVICE}"\ndata_dir = "{disk / "data"}"\nwindow_s = {window_s}\n'
            f'[broker]\nurl = "{broker.url}"\nreconnect_min_s = 1\nreconnect_max_s = 1\n'
            f'[watch]\ndir = "{inbox}"\npoll_s = 0.05\n'
        )
        agent = _Agent(env.python, config, work / "agent.log")
        agent.start()
        outbox = disk / "data" / "outbox.sqlite"
        _wait(outbox.exists, 60, "the agent to open its outbox")
        unpacked = sorted((disk / "data" / "bundles").glob("*/*/model.tflite"))
        model_ino = unpacked[0].stat().st_ino if unpacked else None
        fillers.append(fill(disk, LEAVE_FREE, "other-logs"))
        t_fill = time.monotonic()
        _images(inbox, images)
        _wait(lambda: "disk is full" in agent.logged(), 120, "the agent to meet the full disk")
        full_s = round(time.monotonic() - t_fill, 1)
        _wait(lambda: _served(inbox) >= images, 60, "every image to be served")
        if broker_back_while_full:
            fillers.append(fill(disk, 0, "last-byte"))  # someone else takes the rest: SQLite can write nothing
        log_before = len(agent.logged())
        broker.start()
        t_back = time.monotonic()
        _wait(lambda: any(ev == "disk_full" for _, ev in fleet.events), 30, "the disk_full event")
        time.sleep(5.0)  # the issue saw 50,303 repeats in 68 s here
        dup_while_full = fleet.duplicates()
        log_bytes = len(agent.logged()) - log_before
        observed_s = round(time.monotonic() - t_back, 1)
        unpacked_again = None
        if broker_back_while_full:
            agent.stop()
            agent.start()  # the disk is still full: the bundle must not be unpacked again
            _wait(lambda: len({b.get("boot_id") for b in fleet.births}) >= 2, 60, "the restarted agent's birth")
            again = sorted((disk / "data" / "bundles").glob("*/*/model.tflite"))
            unpacked_again = not again or again[0].stat().st_ino != model_ino
        for f in fillers:
            f.unlink()
        t_free = time.monotonic()
        _wait(lambda: any(ev == "disk_ok" and t > t_free for t, ev in fleet.events), 60, "the disk_ok event")
        recover_s = round(max(t for t, ev in fleet.events if ev == "disk_ok") - t_free, 2)
        time.sleep(2.0)  # the backlog drains
        agent.stop()
        time.sleep(1.0)
        fleet.close()
        with fleet.lock:
            seen = set(fleet.seqs) | fleet.retained
            counted = sum(fleet.requests.values())
            dropped = fleet.dropped
            epochs = {e for e, _ in seen}
            gap = sum(max(s for e2, s in seen if e2 == e) - sum(1 for e2, _ in seen if e2 == e) for e in epochs)
            duplicates = sum(n - 1 for n in fleet.seqs.values())
            disk_events = Counter(ev for _, ev in fleet.events if ev in ("disk_full", "disk_ok"))
        return {
            "fault": f"data dir on a 2 MB tmpfs, {images} images, broker down until the disk is full"
            + (
                ", then the last byte taken, broker back, agent restarted; space freed"
                if broker_back_while_full
                else "; broker back, then space freed"
            ),
            "fed": images,
            "counted": counted,
            "duplicates": duplicates,
            "dropped_reported": dropped,
            "recover_s": recover_s,
            "outcome": (
                f"full after {full_s} s; {dup_while_full} repeats and {log_bytes} log bytes in the {observed_s} s "
                f"after the broker's return; seq gap {gap} = dropped {dropped}: {gap == dropped}; "
                f"disk_full x{disk_events['disk_full']}, disk_ok x{disk_events['disk_ok']}"
                + (f"; restart unpacked again: {unpacked_again}" if unpacked_again is not None else "")
            ),
            "seq_gap": gap,
            "dup_while_full": dup_while_full,
            "log_bytes": log_bytes,
            "disk_events": dict(disk_events),
            "unpacked_again": unpacked_again,
            "images_lost": images - counted,
        }
    finally:
        if agent is not None:
            agent.stop()
        broker.stop()
        unmount(disk)


def _archive(env: Any) -> Path:
    """The digits demo bundle archive, built once (real training, 2 epochs) into ``out/chaos-disk``."""
    from fixtures_models import build_digits_bundle, current_digits_bundle

    out = Path(env.repo) / "out" / "chaos-disk"
    bundle = current_digits_bundle(out) or build_digits_bundle(out)
    return bundle.parent / f"{bundle.name}.tar.gz"


SCENARIOS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "broker_down": lambda env: run(env, _archive(env), broker_back_while_full=False, images=100 if env.quick else 300),
    "broker_back": lambda env: run(env, _archive(env), broker_back_while_full=True, images=100 if env.quick else 300),
}

if os.environ.get("TF_CPP_MIN_LOG_LEVEL") is None:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # building the bundle the first time
