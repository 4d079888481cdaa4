"""Helpers for OTA tests and scripts/bench_ota.py: bundle variants, a fleet-side observer, agent processes
and a feeder of labelled images (shared so the benchmark measures exactly what the tests check)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgekit.fleet.connection import FleetLink, drain
from edgekit.package.keys import sign_bundle
from edgekit.package.writer import write_archive
from edgekit_agent.contract.manifest import dump_manifest
from edgekit_agent.contract.topics import topic

AGENT = [sys.executable, "-c", "import sys; from edgekit_agent.cli import main; sys.exit(main())"]


# --- bundles ----------------------------------------------------------------------------------------------------
def make_variant(
    src: Path, out: Path, *, version: str, key: Path | None, labels: list[str] | None = None, tamper_model: bool = False
) -> Path:
    """A copy of the digits bundle with another version (and labels), signed with ``key``; returns its archive."""
    d = out / src.name
    shutil.copytree(src, d)
    (d / "manifest.sig").unlink(missing_ok=True)
    doc = json.loads((d / "manifest.json").read_text())
    doc["version"] = version
    if labels is not None:
        doc["labels"] = labels
    (d / "manifest.json").write_bytes(dump_manifest(doc))
    archive = write_archive(d, out / f"{d.name}.tar.gz")
    if key is not None:
        sign_bundle(d, key)
    if tamper_model:
        model = bytearray((d / "model.tflite").read_bytes())
        model[len(model) // 2] ^= 0x5A
        (d / "model.tflite").write_bytes(bytes(model))
        write_archive(d, archive)
    return archive


# --- fleet side -------------------------------------------------------------------------------------------------
class Observer:
    """Every message under edge/v1/#, decoded, with waiting helpers."""

    def __init__(self, url: str) -> None:
        self.link = FleetLink(url, subscriptions=[("edge/v1/#", 1)]).start()
        self.msgs: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for m in drain(self.link.messages, 0.1):
                try:
                    doc = json.loads(m.payload)
                except ValueError:
                    continue
                with self.cond:
                    self.msgs.append((m.topic, doc if isinstance(doc, dict) else {"_": doc}))
                    self.cond.notify_all()

    def wait(self, pred: Callable[[str, dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, d in self.msgs:
                    if pred(t, d):
                        return d
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        "timed out; last messages: "
                        f"{[(t, d.get('state') or d.get('event')) for t, d in self.msgs[-8:]]}"
                    )
                self.cond.wait(left)

    def all(self, pred: Callable[[str, dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self.cond:
            return [d for t, d in self.msgs if pred(t, d)]

    def command(self, device: str, args: dict[str, Any]) -> str:
        cmd_id = f"t-{uuid.uuid4().hex[:12]}"
        body = {"cmd_id": cmd_id, "args": args, "requester": "tester"}
        self.link.publish(
            topic(device, "cmd", "swap_bundle"),
            json.dumps(body),
            response_topic=topic(device, "res", "tester"),
            correlation=cmd_id.encode(),
        )
        return cmd_id

    def final(self, device: str, cmd_id: str, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait(
            lambda t, d: (
                t == topic(device, "res", "tester")
                and d.get("cmd_id") == cmd_id
                and d.get("state") in ("succeeded", "failed", "rejected")
            ),
            timeout,
        )

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.link.close()


class AgentProc:
    """One ``edgekit-agent run`` process with its data and watch directories."""

    def __init__(self, device_id: str, bundle: Path, url: str, tmp: Path, trusted: Path) -> None:
        self.device_id, self.bundle, self.url, self.trusted = device_id, bundle, url, trusted
        self.data, self.watch = tmp / f"{device_id}-data", tmp / f"{device_id}-in"
        self.watch.mkdir(parents=True, exist_ok=True)
        self.log = tmp / f"{device_id}.log"
        self.proc: subprocess.Popen | None = None
        self.boot_ids: list[str] = []

    def start(self, obs: Observer, env: dict[str, str] | None = None) -> dict[str, Any]:
        """Start and wait until its meta (published once commands run) carries the new boot_id."""
        seen = {d.get("boot_id") for d in obs.all(lambda t, d: t == topic(self.device_id, "status"))}
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
                    "1",
                    "--trusted-keys",
                    str(self.trusted),
                    "-v",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        status = obs.wait(
            lambda t, d: (
                t == topic(self.device_id, "status") and d.get("state") == "online" and d.get("boot_id") not in seen
            ),
            90,
        )
        boot = status["boot_id"]
        self.boot_ids.append(boot)
        return obs.wait(lambda t, d: t == topic(self.device_id, "meta") and d.get("boot_id") == boot, 60)

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()


class Feeder:
    """Writes labelled digit images into watch directories at a steady rate (atomic renames)."""

    def __init__(self, dirs: list[Path], rate_hz: float = 25.0) -> None:
        from sklearn.datasets import load_digits

        d = load_digits()
        self.samples = []
        for i in range(1500, 1700):
            buf = io.BytesIO()
            Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), "L").save(buf, format="PNG")
            self.samples.append((int(d.target[i]), buf.getvalue()))
        self.dirs, self.period = dirs, 1.0 / rate_hz
        self.written = {d: 0 for d in dirs}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        k = 0
        while not self._stop.wait(self.period):
            label, png = self.samples[k % len(self.samples)]
            for d in self.dirs:
                (d / str(label)).mkdir(exist_ok=True)
                tmp = d / str(label) / f".{k}.png.tmp"
                tmp.write_bytes(png)
                os.replace(tmp, d / str(label) / f"{k}.png")
                self.written[d] += 1
            k += 1

    def __enter__(self) -> Feeder:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(5)


def pending(watch: Path) -> int:
    return sum(1 for p in watch.glob("*/*.png"))


def counted(watch: Path, sub: str) -> int:
    return sum(1 for p in (watch / sub).glob("**/*.png")) if (watch / sub).is_dir() else 0


def served_ok(obs: Observer, device: str) -> int:
    """Inferences the agent reported as ok, de-duplicated on (epoch, seq)."""
    seen, total = set(), 0
    for d in obs.all(lambda t, d: t == topic(device, "telemetry/inference")):
        key = (d.get("epoch"), d.get("seq"))
        if key not in seen:
            seen.add(key)
            total += d["counts"]["ok"]
    return total


def version_of(meta: dict[str, Any]) -> str:
    return meta["bundle"]["version"]
