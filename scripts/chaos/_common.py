"""What the chaos scenarios share: a private mosquitto, a real agent process, a feeder and a counting consumer.

Scenario modules (``scripts/chaos/*.py``) receive a :class:`ChaosEnv` from ``scripts/bench_chaos.py`` and
return one result dict each (see that script). The tests use these helpers too (``tests/e2e/test_chaos.py``),
so the benchmark reproduces exactly what they check.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

AGENT = [sys.executable, "-c", "import sys; from edgekit_agent.cli import main; sys.exit(main())"]


@dataclass(frozen=True)
class ChaosEnv:
    """What the driver hands every scenario."""

    workdir: Path  # a fresh temporary directory per scenario
    mosquitto: str  # path of the binary
    python: str  # sys.executable
    repo: Path
    quick: bool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not found:
        raise RuntimeError("mosquitto is not installed: apt-get install mosquitto")
    return found


# --- the broker -------------------------------------------------------------------------------------------------
class Broker:
    """A mosquitto on a free loopback port that can be killed (SIGKILL) and restarted on the same port."""

    def __init__(self, binary: str, workdir: Path, *, persistence: bool = False) -> None:
        self.binary, self.workdir, self.persistence = binary, Path(workdir), persistence
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Broker:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            "user root",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "",
        ]
        conf.write_text("\n".join(lines))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


# --- the fleet side -------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    """One device's sequenced stream as received: telemetry per (epoch, seq), duplicates, gaps."""

    windows: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    seqs: dict[str, set[int]] = field(default_factory=dict)  # epoch -> every seq seen (telemetry, events, meta)
    births: list[tuple[float, str]] = field(default_factory=list)  # (agent's ts in s, boot_id) of status online

    @property
    def counted(self) -> int:
        """Images (requests: served and failed) over unique windows."""
        return sum(int(w["counts"]["requests"]) for w in self.windows.values())

    @property
    def recovered(self) -> int:
        return sum(1 for w in self.windows.values() if w.get("recovered"))

    @property
    def dropped_reported(self) -> int:
        """The outbox's dropped (cumulative per epoch: the largest seen) plus inputs dropped in windows."""
        per_epoch: dict[str, int] = {}
        for (epoch, _), w in self.windows.items():
            per_epoch[epoch] = max(per_epoch.get(epoch, 0), int((w.get("outbox") or {}).get("dropped") or 0))
        return sum(per_epoch.values()) + sum(int(w["counts"].get("dropped") or 0) for w in self.windows.values())

    def gaps(self) -> int:
        """Missing seqs between 1 and the highest seen, summed over epochs."""
        return sum(max(s) - len(s) for s in self.seqs.values() if s)


class Consumer:
    """Subscribes to edge/v1/# on a persistent MQTT 5 session and tallies every device's stream."""

    def __init__(self, url: str, client_id: str = "chaos-consumer") -> None:
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.tallies: dict[str, Tally] = {}
        self.lock = threading.Condition()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.reconnect_delay_set(0.05, 0.1)  # back before the agents, so a broker without persistence loses nothing
        self.subscribed = threading.Event()
        self.subscribed_at: list[float] = []  # Unix time of every SUBACK: a broker without persistence forgets
        c.on_connect = lambda cl, *_: cl.subscribe("edge/v1/#", qos=1)
        c.on_subscribe = lambda *_: (self.subscribed_at.append(time.time()), self.subscribed.set())
        c.on_message = self._on_message
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect_async(host, int(port), clean_start=False, properties=props)
        c.loop_start()
        self.client = c

    def tally(self, device: str) -> Tally:
        with self.lock:
            return self.tallies.setdefault(device, Tally())

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) < 4:
            return
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        with self.lock:
            t = self.tallies.setdefault(parts[2], Tally())
            epoch, seq = str(doc.get("epoch")), doc.get("seq")
            if isinstance(seq, int) and not msg.retain:
                t.seqs.setdefault(epoch, set()).add(seq)
            if parts[3] == "telemetry" and isinstance(seq, int):
                if (epoch, seq) in t.windows:
                    t.duplicates += 1
                else:
                    t.windows[(epoch, seq)] = doc
            elif parts[3] == "status" and doc.get("state") == "online":
                # Retained too: a consumer back after the agent gets the birth as the retained status.
                t.births.append((doc.get("ts", 0) / 1000.0, str(doc.get("boot_id"))))
            self.lock.notify_all()

    def wait_for(self, device: str, pred: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not pred(self.tallies.setdefault(device, Tally())):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(min(left, 0.2))
            return True

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --- the device side ------------------------------------------------------------------------------------------------
def digits_bundle(out: Path) -> Path:
    """The digits demo bundle (2 epochs; the model does not matter here), built once into ``out``."""
    done = out / "bundle-path.txt"
    if done.exists() and Path(done.read_text()).is_dir():
        return Path(done.read_text())
    from edgekit.build import build
    from edgekit.pipeline.data import write_digits

    dataset = write_digits(out / "digits").directory
    bundle = build(dataset, ["raspberry-pi-4"], out / "bundles", epochs=2, seed=0).profiles[0].directory
    done.write_text(str(bundle))
    return bundle


class AgentProc:
    """One real ``edgekit-agent run`` process (unsigned bundle allowed) with its data and watch directories."""

    def __init__(self, device_id: str, bundle: Path, url: str, workdir: Path, *, window_s: int = 2) -> None:
        self.device_id, self.bundle, self.url, self.window_s = device_id, bundle, url, window_s
        self.data, self.watch = workdir / f"{device_id}-data", workdir / f"{device_id}-in"
        self.watch.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"{device_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *AGENT,
                    "run",
                    str(self.bundle),
                    "--broker",
                    self.url,
                    "--device-id",
                    self.device_id,
                    "--data-dir",
                    str(self.data),
                    "--watch",
                    str(self.watch),
                    "--window",
                    str(self.window_s),
                    "--allow-unsigned",
                    "-v",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(20)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the agent sends its last window), SIGKILL if it does not exit; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode

    def moved(self) -> int:
        """Images out of the watched folder (served into .processed, failed into .failed)."""
        return sum(1 for sub in (".processed", ".failed") for _ in (self.watch / sub).glob("**/*.png"))

    def pending(self) -> int:
        return sum(1 for p in self.watch.glob("**/*.png") if not p.relative_to(self.watch).parts[0].startswith("."))


class Feeder:
    """Writes labelled digit PNGs into watch directories at ``rate_hz`` (atomic renames), counting them."""

    def __init__(self, dirs: list[Path], rate_hz: float = 20.0) -> None:
        import numpy as np
        from PIL import Image
        from sklearn.datasets import load_digits

        d = load_digits()
        self.samples = []
        for i in range(1500, 1600):
            buf = io.BytesIO()
            Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), "L").save(buf, format="PNG")
            self.samples.append((int(d.target[i]), buf.getvalue()))
        self.dirs, self.period = dirs, 1.0 / rate_hz
        self.fed = Counter[Path]()
        self._k = 0
        self._stop = threading.Event()
        self._t: threading.Thread | None = None

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += self.period
            label, png = self.samples[self._k % len(self.samples)]
            for d in self.dirs:
                (d / str(label)).mkdir(exist_ok=True)
                tmp = d / str(label) / f".{self._k}.png.tmp"
                tmp.write_bytes(png)
                os.replace(tmp, d / str(label) / f"{self._k}.png")
                self.fed[d] += 1
            self._k += 1
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> Feeder:
        self._stop.clear()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._t is not None:
            self._t.join(5)


def wait_until(pred: Any, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())
