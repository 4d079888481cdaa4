"""OTA with real agents (``edgekit-agent run`` processes), a real mosquitto and real signed bundles:
a successful update of two agents that keep serving, refusals, a rollback forced by a failing health
window, and ``kill -9`` at each stage of an update."""

from __future__ import annotations

import base64
import hashlib
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
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from edgekit.bundle import write_archive
from edgekit.deploy import deploy
from edgekit.fleet import MqttLink, drain, topic
from edgekit.keys import new_keypair, sign_bundle
from edgekit_agent.limits import OTA_CHUNK_BYTES
from edgekit_agent.manifest import dump_manifest
from edgekit_agent.ota import read_pointer

AGENT = [sys.executable, "-c", "import sys; from edgekit_agent.cli import main; sys.exit(main())"]
GOOD_HEALTH = {"window_s": 2.0, "max_p99_ratio": 20.0, "max_accuracy_drop": 0.3}


# --- bundles ----------------------------------------------------------------------------------------------------
def make_variant(src: Path, out: Path, *, version: str, key: Path | None, labels: list[str] | None = None,
                 tamper_model: bool = False) -> Path:  # fmt: skip
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


@pytest.fixture(scope="module")
def bundles(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ota-bundles")
    key = new_keypair(root / "keys", "release")
    rogue = new_keypair(root / "rogue-key", "rogue")
    trusted = root / "trusted"
    trusted.mkdir()
    shutil.copyfile(key.public_path, trusted / key.public_path.name)
    labels = json.loads((digits_bundle / "manifest.json").read_text())["labels"]
    out: dict[str, Path] = {"trusted": trusted}
    specs = {
        "v1": dict(version="1.0.0", key=key.private_path),
        "v2": dict(version="2.0.0", key=key.private_path),
        # Same model, labels rotated: the self-test passes (it compares raw outputs), accuracy collapses.
        "bad": dict(version="2.0.0-bad", key=key.private_path, labels=labels[1:] + labels[:1]),
        "unsigned": dict(version="2.0.0", key=None),
        "rogue": dict(version="2.0.0", key=rogue.private_path),
        "tampered": dict(version="2.0.0", key=key.private_path, tamper_model=True),
    }
    for name, spec in specs.items():
        (root / name).mkdir()
        out[name] = make_variant(digits_bundle, root / name, **spec)  # type: ignore[arg-type]
    return out


# --- fleet side -------------------------------------------------------------------------------------------------
class Observer:
    """Every message under edge/v1/#, decoded, with waiting helpers."""

    def __init__(self, url: str) -> None:
        self.link = MqttLink(url, subscriptions=[("edge/v1/#", 1)]).start()
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
                    raise AssertionError(f"timed out; last messages: {[(t, d.get('state') or d.get('event')) for t, d in self.msgs[-8:]]}")
                self.cond.wait(left)

    def all(self, pred: Callable[[str, dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self.cond:
            return [d for t, d in self.msgs if pred(t, d)]

    def command(self, device: str, args: dict[str, Any]) -> str:
        cmd_id = f"t-{uuid.uuid4().hex[:12]}"
        body = {"cmd_id": cmd_id, "args": args, "requester": "tester"}
        self.link.publish(topic(device, "cmd", "swap_bundle"), json.dumps(body), response_topic=topic(device, "res", "tester"),
                          correlation_data=cmd_id.encode())  # fmt: skip
        return cmd_id

    def final(self, device: str, cmd_id: str, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait(lambda t, d: t == topic(device, "res", "tester") and d.get("cmd_id") == cmd_id
                         and d.get("state") in ("succeeded", "failed", "rejected"), timeout)  # fmt: skip

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
                [*AGENT, "run", str(self.bundle), "--broker", self.url, "--device-id", self.device_id, "--data-dir", str(self.data),
                 "--watch", str(self.watch), "--window", "1", "--trusted-keys", str(self.trusted), "-v"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})},
            )  # fmt: skip
        status = obs.wait(lambda t, d: t == topic(self.device_id, "status") and d.get("state") == "online"
                          and d.get("boot_id") not in seen, 90)  # fmt: skip
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

    def __enter__(self) -> "Feeder":
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


@pytest.fixture()
def fleet(mosquitto, bundles, tmp_path):
    obs = Observer(mosquitto.url)
    agents: list[AgentProc] = []

    def agent(device_id: str, bundle: str = "v1") -> AgentProc:
        a = AgentProc(device_id, bundles[bundle], mosquitto.url, tmp_path, bundles["trusted"])
        agents.append(a)
        return a

    yield obs, agent
    for a in agents:
        if a.proc is not None and a.proc.poll() is None:
            a.kill9()
    obs.close()


def version_of(meta: dict[str, Any]) -> str:
    return meta["bundle"]["version"]


# --- tests --------------------------------------------------------------------------------------------------------
def test_ota_to_two_agents_commits_keeps_serving_and_survives_restart(mosquitto, bundles, fleet):
    obs, agent = fleet
    a, b = agent("ota-a"), agent("ota-b")
    assert version_of(a.start(obs)) == version_of(b.start(obs)) == "1.0.0"
    with Feeder([a.watch, b.watch]) as feeder:
        time.sleep(2.0)  # some labelled traffic on v1: the health window compares against it
        report = deploy(bundles["v2"], ["ota-a", "ota-b"], mosquitto.url, health=GOOD_HEALTH, chunk_bytes=32 * 1024, timeout=120)
        time.sleep(1.0)
    outcomes = {d.device_id: d.outcome for d in report.devices}
    assert outcomes == {"ota-a": "committed", "ota-b": "committed"}, [d.to_dict() for d in report.devices]
    for d in report.devices:
        assert d.chunks > 1 and d.resumed_chunks == 0
        assert 0 < d.transfer_s <= d.activate_s <= d.committed_s
        assert d.stages[:3] == ("received", "verified", "selftested")
        assert d.health["verdict"] == "passed" and d.health["stats"]["requests"] > 0
    for ag in (a, b):
        p = read_pointer(ag.data)
        assert p.current.version == "2.0.0" and p.previous.version == "1.0.0" and p.state == "committed"
        activated = obs.wait(lambda t, d, ag=ag: t == topic(ag.device_id, "events") and d.get("event") == "bundle_activated"
                             and d.get("phase") == "trial")  # fmt: skip
        assert activated["bundle"]["version"] == "2.0.0" and activated["bundle"]["signed_by"]

    # Nothing was lost while the interpreter changed under the serving loop.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (pending(a.watch) or pending(b.watch)):
        time.sleep(0.2)
    time.sleep(2.5)  # the last telemetry windows
    for ag in (a, b):
        written = feeder.written[ag.watch]
        assert counted(ag.watch, ".failed") == 0
        assert counted(ag.watch, ".processed") == written
        assert served_ok(obs, ag.device_id) == written
    windows = obs.all(lambda t, d: t == topic("ota-a", "telemetry/inference"))
    assert {w["bundle"]["version"] for w in windows} == {"1.0.0", "2.0.0"}

    # A restart with the old bundle on the command line serves the installed one.
    a.stop()
    assert version_of(a.start(obs)) == "2.0.0"


@pytest.mark.parametrize(
    "variant,code,words",
    [
        ("unsigned", "SIGNATURE_INVALID", "not signed"),
        ("rogue", "SIGNATURE_INVALID", "unknown key id"),
        ("tampered", "CHECKSUM_MISMATCH", "model.tflite"),
    ],
)
def test_refused_bundles_leave_the_old_one_serving(mosquitto, bundles, fleet, variant, code, words):
    obs, agent = fleet
    a = agent(f"ota-{variant}")
    a.start(obs)
    report = deploy(bundles[variant], [a.device_id], mosquitto.url, health=GOOD_HEALTH, timeout=60)
    (d,) = report.devices
    assert d.outcome == "failed" and d.error["code"] == code and words in d.error["message"], d.to_dict()
    ev = obs.wait(lambda t, e: t == topic(a.device_id, "events") and e.get("event") == "bundle_rejected")
    assert words in ev["reason"]
    assert read_pointer(a.data).current.version == "1.0.0"
    assert not any((a.data / "ota" / "staging").iterdir())  # the refused archive is not kept…
    assert not any((a.data / "ota" / "store").iterdir())  # …nor what was extracted from it


def test_corrupt_chunk_is_refused_and_can_be_resent(mosquitto, bundles, fleet):
    obs, agent = fleet
    a = agent("ota-chunk")
    a.start(obs)
    data = bundles["v2"].read_bytes()
    tid, size = "t-corrupt", OTA_CHUNK_BYTES
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    begin = obs.final(a.device_id, obs.command(a.device_id, {"action": "begin", "transfer_id": tid, "archive_bytes": len(data),
                      "archive_sha256": hashlib.sha256(data).hexdigest(), "chunk_bytes": size}))  # fmt: skip
    assert begin["state"] == "succeeded" and begin["result"]["have"] == [], begin.get("error")

    def send(i: int, payload: bytes) -> dict[str, Any]:
        return obs.final(a.device_id, obs.command(a.device_id, {"action": "chunk", "transfer_id": tid, "index": i,
                         "data": base64.b64encode(payload).decode(), "sha256": hashlib.sha256(chunks[i]).hexdigest()}))  # fmt: skip

    bad = bytearray(chunks[0])
    bad[10] ^= 1
    ans = send(0, bytes(bad))
    assert ans["state"] == "failed" and ans["error"]["code"] == "CHECKSUM_MISMATCH" and "chunk 0" in ans["error"]["message"]
    for i in range(1, len(chunks)):
        assert send(i, chunks[i])["state"] == "succeeded"
    ans = obs.final(a.device_id, obs.command(a.device_id, {"action": "commit", "transfer_id": tid}))
    assert ans["error"]["code"] == "INVALID_ARGS" and "misses chunks [0]" in ans["error"]["message"]
    assert send(0, chunks[0])["state"] == "succeeded"
    ans = obs.final(a.device_id, obs.command(a.device_id, {"action": "commit", "transfer_id": tid, "health": {"window_s": 0.5}}))
    assert ans["state"] == "succeeded" and ans["result"]["phase"] == "trial"
    obs.wait(lambda t, e: t == topic(a.device_id, "events") and e.get("event") == "health_check" and e.get("verdict") == "passed")


def test_failing_health_window_rolls_back_by_itself(mosquitto, bundles, fleet):
    obs, agent = fleet
    a = agent("ota-bad")
    a.start(obs)
    with Feeder([a.watch]):
        time.sleep(2.0)
        report = deploy(bundles["bad"], [a.device_id], mosquitto.url, health={"window_s": 3.0, "max_accuracy_drop": 0.3}, timeout=120)
    (d,) = report.devices
    assert d.outcome == "rolled_back", d.to_dict()
    assert d.error["code"] == "HEALTH_CHECK_FAILED" and "accuracy" in d.error["message"]
    assert d.health["verdict"] == "failed"
    acc = next(c for c in d.health["checks"] if c["name"] == "accuracy")
    assert not acc["passed"] and acc["value"] < acc["limit"]
    assert d.rollback["to"]["version"] == "1.0.0" and d.rollback["took_ms"] >= 0
    p = read_pointer(a.data)
    assert p.current.version == "1.0.0" and p.state == "committed"
    time.sleep(1.0)
    metas = obs.all(lambda t, m: t == topic(a.device_id, "meta"))
    assert [version_of(m) for m in metas][-2:] == ["2.0.0-bad", "1.0.0"]  # switched, then back


@pytest.mark.parametrize("stage", ["staging", "selftested", "switched", "health_window"])
def test_kill_9_during_an_update_leaves_a_working_bundle(mosquitto, bundles, fleet, stage):
    obs, agent = fleet
    a = agent(f"ota-kill-{stage}")
    pause = {"selftested": "selftested:60", "switched": "switched:60"}.get(stage)
    a.start(obs, env={"EDGEKIT_OTA_PAUSE": pause} if pause else None)
    data = bundles["v2"].read_bytes()
    size = 64 * 1024
    tid = f"{hashlib.sha256(data).hexdigest()[:16]}-{size}"  # what `edgekit deploy` uses: it can resume
    n = -(-len(data) // size)
    assert n >= 3
    ans = obs.final(a.device_id, obs.command(a.device_id, {"action": "begin", "transfer_id": tid, "archive_bytes": len(data),
                    "archive_sha256": hashlib.sha256(data).hexdigest(), "chunk_bytes": size}))  # fmt: skip
    assert ans["state"] == "succeeded"
    sent = n // 2 if stage == "staging" else n
    for i in range(sent):
        chunk = data[i * size : (i + 1) * size]
        ans = obs.final(a.device_id, obs.command(a.device_id, {"action": "chunk", "transfer_id": tid, "index": i,
                        "data": base64.b64encode(chunk).decode(), "sha256": hashlib.sha256(chunk).hexdigest()}))  # fmt: skip
        assert ans["state"] == "succeeded"
    if stage != "staging":
        obs.command(a.device_id, {"action": "commit", "transfer_id": tid, "health": {"window_s": 60}})
        if stage == "selftested":
            obs.wait(lambda t, d: t == topic(a.device_id, "res", "tester") and (d.get("progress") or {}).get("stage") == "selftested")
        else:  # the pointer says "trial": the switch happened (paused right after it, or in the health window)
            deadline = time.monotonic() + 60
            while (p := read_pointer(a.data)) is None or p.state != "trial":
                assert time.monotonic() < deadline, "the switch never happened"
                time.sleep(0.05)
            if stage == "health_window":
                obs.wait(lambda t, e: t == topic(a.device_id, "events") and e.get("event") == "bundle_activated" and e.get("phase") == "trial")
    a.kill9()

    meta = a.start(obs)  # no pause this time
    assert version_of(meta) == "1.0.0"
    p = read_pointer(a.data)
    assert p.current.version == "1.0.0" and p.state == "committed"
    if stage in ("switched", "health_window"):
        ev = obs.wait(lambda t, e: t == topic(a.device_id, "events") and e.get("event") == "rollback" and e.get("boot_id") == a.boot_ids[-1])
        assert "restarted during the health window" in ev["reason"] and ev["from"]["version"] == "2.0.0"
    store = a.data / "ota" / "store"
    assert not store.is_dir() or not any(store.iterdir())  # the half-installed bundle was cleaned up

    # The device still takes the update afterwards (and resumes an interrupted transfer).
    report = deploy(bundles["v2"], [a.device_id], mosquitto.url, health={"window_s": 0.5}, chunk_bytes=size, timeout=120)
    (d,) = report.devices
    assert d.outcome == "committed", d.to_dict()
    if stage == "staging":
        assert d.resumed_chunks == n // 2  # the chunks received before the kill were kept
    assert read_pointer(a.data).current.version == "2.0.0"
