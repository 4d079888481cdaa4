"""The agent against a real mosquitto: birth/LWT, telemetry from a labelled folder, broker outages, commands,
SIGTERM and bad credentials. In-process agents for speed; subprocess agents where a process must die."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from PIL import Image

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.contract.errors import ExitStatus
from edgekit_agent.infer.preprocess import Preprocessor
from edgekit_agent.infer.runtime import Runtime
from edgekit_agent.serve.agent import Agent
from edgekit_agent.serve.config import load_settings

from brokers import Mosquitto
from fixtures_models import digits_arrays

DEVICE = "pi-test"
BASE = f"edge/v1/{DEVICE}"


# --- helpers ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Msg:
    topic: str
    doc: Any
    retain: bool
    correlation: bytes | None


class Subscriber:
    """A fleet-side paho client that records every message under edge/v1/#."""

    def __init__(self, broker: Mosquitto, *, client_id: str | None = None, persistent: bool = False) -> None:
        self.msgs: list[Msg] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"fleet-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe("edge/v1/#", qos=1)
        self.client.reconnect_delay_set(1, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300 if persistent else 0
        self.client.connect(broker.host, broker.port, clean_start=not persistent, properties=props)
        self.client.loop_start()
        assert subscribed.wait(10), "the test subscriber could not subscribe"

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(m.payload)
        except ValueError:
            doc = {"_raw": m.payload[:100]}
        corr = getattr(m.properties, "CorrelationData", None) if m.properties else None
        with self.cond:
            self.msgs.append(Msg(m.topic, doc, bool(m.retain), corr))
            self.cond.notify_all()

    def matching(self, pred: Callable[[Msg], bool]) -> list[Msg]:
        with self.cond:
            return [m for m in self.msgs if pred(m)]

    def wait_for(self, pred: Callable[[Msg], bool], timeout: float = 15.0, count: int = 1) -> list[Msg]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [m for m in self.msgs if pred(m)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    topics = [
                        (m.topic, m.retain, m.doc.get("state") if isinstance(m.doc, dict) else None)
                        for m in self.msgs[:6]
                    ]
                    raise AssertionError(f"timed out waiting for {count} message(s); last seen: {topics}")
                self.cond.wait(left)

    def command(self, name: str, payload: Any, *, correlation: bytes | None = None, raw: bytes | None = None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{BASE}/res/tester"
        if correlation is not None:
            props.CorrelationData = correlation
        data = raw if raw is not None else json.dumps(payload).encode()
        self.client.publish(f"{BASE}/cmd/{name}", data, qos=1, properties=props).wait_for_publish(5)

    def answers(self, cmd_id: str | None) -> list[dict[str, Any]]:
        return [
            m.doc for m in self.matching(lambda m: m.topic == f"{BASE}/res/tester" and m.doc.get("cmd_id") == cmd_id)
        ]

    def final(self, cmd_id: str, timeout: float = 15.0) -> dict[str, Any]:
        final_states = ("rejected", "succeeded", "failed", "expired", "canceled")
        return self.wait_for(
            lambda m: (
                m.topic.startswith(f"{BASE}/res/")
                and m.doc.get("cmd_id") == cmd_id
                and m.doc.get("state") in final_states
            ),
            timeout,
        )[-1].doc

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def telemetry(m: Msg) -> bool:
    return m.topic == f"{BASE}/telemetry/inference"


def status(state: str, reason: str | None = None) -> Callable[[Msg], bool]:
    return lambda m: (
        m.topic == f"{BASE}/status"
        and m.doc.get("state") == state
        and (reason is None or m.doc.get("reason") == reason)
    )


def write_digits(root: Path, indices: range, *, labelled: bool = True) -> list[tuple[Path, int]]:
    """sklearn digits as 8x8 grey PNGs: ROOT/LABEL/i.png when labelled, ROOT/i.png otherwise."""
    x, y = digits_arrays()
    out = []
    for i in indices:
        folder = root / str(int(y[i])) if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"d{i}.png"
        Image.fromarray((x[i, :, :, 0] * 255).round().astype("uint8"), "L").save(path)
        out.append((path, int(y[i])))
    return out


def expected_predictions(bundle_dir: Path, files: list[Path]) -> list[int]:
    """What the model predicts for these files, computed directly with the runtime (not through the agent)."""
    b = load_bundle(bundle_dir)
    pre = Preprocessor(b.manifest.preprocess, b.manifest.inputs[0])
    rt = Runtime(b.model_path, num_threads=1)
    return [int(np.argmax(rt.invoke(pre(p)))) for p in files]


def sum_windows(msgs: list[Msg], key: Callable[[dict[str, Any]], int]) -> int:
    return sum(key(m.doc) for m in msgs)


@pytest.fixture()
def agent_factory(digits_bundle: Path, tmp_path: Path):
    """Start in-process agents (each in a thread); stopped at the end of the test."""
    running: list[tuple[Agent, threading.Thread]] = []

    def start(broker: Mosquitto, **flags: Any) -> Agent:
        flags.setdefault("window_s", 1.0)
        settings = load_settings(
            None, device_id=DEVICE, broker=broker.url, data_dir=str(tmp_path / "agent-data"), **flags
        )
        agent = Agent(load_bundle(digits_bundle), settings)
        t = threading.Thread(target=agent.run, daemon=True)
        t.start()
        running.append((agent, t))
        return agent

    yield start
    for agent, t in running:
        agent.request_stop()
        t.join(30)


def agent_process(
    bundle: Path, broker_url: str, data_dir: Path, *extra: str, python: str = sys.executable
) -> subprocess.Popen[str]:
    cmd = [
        python,
        "-m",
        "edgekit_agent.cli",
        "run",
        str(bundle),
        "--allow-unsigned",
        "--broker",
        broker_url,
        "--device-id",
        DEVICE,
        "--data-dir",
        str(data_dir),
        *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --- tests ----------------------------------------------------------------------------------------------------
def test_retained_birth_with_boot_id_then_lwt_after_kill_9(mosquitto, digits_bundle, tmp_path):
    proc = agent_process(digits_bundle, mosquitto.url, tmp_path / "data", "--window", "1")
    try:
        fleet = Subscriber(mosquitto)
        birth = fleet.wait_for(status("online"), timeout=30)[0]
        boot_id = birth.doc["boot_id"]
        assert birth.doc["device_id"] == DEVICE and len(boot_id) == 16 and birth.doc["seq"] is None
        # retained: a consumer that connects later still learns the device is online
        late = Subscriber(mosquitto)
        retained = late.wait_for(status("online"))[0]
        assert retained.retain and retained.doc["boot_id"] == boot_id
        meta = late.wait_for(lambda m: m.topic == f"{BASE}/meta")[0].doc  # live or retained: it may follow the birth
        assert meta["bundle"]["name"] == "digits" and "infer" in meta["capabilities"]["commands"]
        proc.kill()
        proc.wait(10)
        lwt = fleet.wait_for(status("offline", "lwt"), timeout=20)[0]
        assert lwt.doc["boot_id"] == boot_id  # consumers can tell which run the will belongs to
        fleet.close()
        late.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_labelled_folder_gives_correct_counts_and_accuracy(mosquitto, agent_factory, digits_bundle, tmp_path):
    watch = tmp_path / "watch"
    labelled = write_digits(watch, range(1400, 1430))
    unlabelled = write_digits(watch, range(1430, 1435), labelled=False)
    (watch / "3" / "broken.png").write_bytes(b"not an image at all")
    (watch / "notes.txt").write_text("not an image suffix: ignored")
    fleet = Subscriber(mosquitto)
    agent_factory(mosquitto, watch=str(watch))

    predicted = expected_predictions(digits_bundle, [p for p, _ in labelled + unlabelled])
    truth = [y for _, y in labelled]
    correct = sum(int(p == t) for p, t in zip(predicted, truth))

    def served(msgs: list[Msg]) -> int:
        return sum_windows(msgs, lambda d: d["counts"]["requests"])

    deadline = time.monotonic() + 30
    while served(fleet.matching(telemetry)) < 36 and time.monotonic() < deadline:
        time.sleep(0.2)
    windows = fleet.matching(telemetry)
    assert served(windows) == 36
    assert sum_windows(windows, lambda d: d["counts"]["ok"]) == 35
    assert sum_windows(windows, lambda d: d["counts"]["errors"].get("INPUT_INVALID", 0)) == 1
    assert sum_windows(windows, lambda d: d["accuracy"]["labeled"]) == 30
    assert sum_windows(windows, lambda d: d["accuracy"]["correct"]) == correct
    for label in "0123456789":
        got = sum_windows(windows, lambda d, label=label: d["predictions"]["class_counts"][label])
        assert got == predicted.count(int(label)), label
    first = windows[0].doc
    assert first["schema"] == "edge.telemetry.inference/1" and first["device_id"] == DEVICE
    assert first["runtime"]["engine"] and first["bundle"]["sha256"]
    assert set(first["latency_ms"]) == {"total", "preprocess", "invoke"}
    assert first["system"]["rss_mb"] > 0 and first["outbox"]["dropped"] == 0
    # served files are moved away (not re-read), the broken one kept aside for inspection
    assert not [p for p in watch.rglob("*.png") if not p.relative_to(watch).parts[0].startswith(".")]
    assert len(list((watch / ".processed").rglob("*.png"))) == 35
    assert (watch / ".failed" / "3" / "broken.png").is_file() and (watch / "notes.txt").is_file()


def test_broker_outage_every_window_arrives_with_contiguous_seq(agent_factory, tmp_path):
    broker_dir = tmp_path / "broker"
    broker = Mosquitto(broker_dir, extra_config=f"persistence true\npersistence_location {broker_dir}/\n").start()
    try:
        # A persistent session: the broker (which persists it) queues what arrives while we are away.
        fleet = Subscriber(broker, client_id="fleet-outage", persistent=True)
        agent = agent_factory(broker, window_s=0.3)
        fleet.wait_for(telemetry, count=2)
        broker.stop()
        time.sleep(3.0)  # ~10 windows go into the outbox
        assert agent.outbox is not None and agent.outbox.depth >= 5
        broker.start()  # same port
        before_stop = max(m.doc["seq"] for m in fleet.matching(telemetry))
        fleet.wait_for(lambda m: telemetry(m) and m.doc["seq"] >= before_stop + 12, timeout=40)
        seqs = sorted({m.doc["seq"] for m in fleet.matching(telemetry)})
        everything = sorted(
            {m.doc["seq"] for m in fleet.matching(lambda m: isinstance(m.doc.get("seq"), int) and not m.retain)}
        )
        assert everything == list(range(everything[0], everything[-1] + 1)), "a gap in seq: a window was lost"
        assert len(seqs) >= 14
        assert {m.doc["epoch"] for m in fleet.matching(telemetry)} == {agent.outbox.epoch}
        assert all(m.doc["outbox"]["dropped"] == 0 for m in fleet.matching(telemetry))
        fleet.close()
    finally:
        broker.stop()


def test_bad_commands_get_error_answers_and_the_agent_keeps_serving(mosquitto, agent_factory, tmp_path):
    fleet = Subscriber(mosquitto)
    agent_factory(mosquitto)
    fleet.wait_for(status("online"))
    now_ms = int(time.time() * 1000)
    fleet.command("ping", None, raw=b"{this is not json", correlation=b"c-malformed")
    fleet.command("reboot_now", {"cmd_id": "u1"})
    fleet.command("ping", {"cmd_id": "e1", "expires_at": now_ms - 1000})
    fleet.command("run_benchmark", {"cmd_id": "t1", "args": {"num_runs": "ten"}})
    fleet.command("run_benchmark", {"cmd_id": "t2", "args": {"num_run": 10}})
    fleet.command("set_config", {"cmd_id": "t3", "args": {"window_s": True}})
    fleet.command("infer", {"cmd_id": "t4", "args": {"image": "%%%not base64%%%"}})
    fleet.command("ping", None, raw=json.dumps({"cmd_id": "big", "args": {"x": "a" * 300_000}}).encode())
    fleet.command("ping", [1, 2, 3])

    malformed = fleet.wait_for(lambda m: m.topic == f"{BASE}/res/tester" and m.correlation == b"c-malformed")[0].doc
    assert malformed["state"] == "rejected" and malformed["error"]["code"] == "INVALID_PAYLOAD"
    unknown = fleet.final("u1")
    assert unknown["error"]["code"] == "UNKNOWN_COMMAND" and "ping" in unknown["error"]["message"]
    assert fleet.final("e1")["error"]["code"] == "EXPIRED"
    wrong_type = fleet.final("t1")
    assert (
        wrong_type["state"] == "rejected"
        and wrong_type["error"]["code"] == "INVALID_ARGS"
        and "num_runs" in wrong_type["error"]["message"]
    )
    assert "Did you mean 'num_runs'" in fleet.final("t2")["error"]["message"]
    assert fleet.final("t3")["error"]["code"] == "INVALID_ARGS"  # a bool is not a number of seconds
    bad_image = fleet.final("t4")
    assert bad_image["state"] == "failed" and bad_image["error"]["code"] == "INVALID_ARGS"
    for doc in (unknown, wrong_type, bad_image):
        assert set(doc["error"]) == {"code", "message", "retryable"}
    fleet.wait_for(lambda m: m.topic.endswith("/res/tester") and m.doc.get("cmd_id") is None, count=3)

    # Still alive and serving: ping answers with the correlation data echoed, and an infer works.
    fleet.command("ping", {"cmd_id": "p1"}, correlation=b"\x00\x01corr")
    pong = fleet.final("p1")
    assert pong["state"] == "succeeded" and pong["result"]["pong"] is True
    assert [a["state"] for a in fleet.answers("p1")] == ["accepted", "succeeded"]
    assert {m.correlation for m in fleet.matching(lambda m: "/res/" in m.topic and m.doc.get("cmd_id") == "p1")} == {
        b"\x00\x01corr"
    }
    png = write_digits(tmp_path / "one", range(1500, 1501), labelled=False)[0][0]
    fleet.command("infer", {"cmd_id": "i1", "args": {"image": base64.b64encode(png.read_bytes()).decode()}})
    assert fleet.final("i1")["state"] == "succeeded"


def test_duplicate_cmd_id_gets_the_stored_answer_and_runs_once(mosquitto, agent_factory, tmp_path, digits_bundle):
    fleet = Subscriber(mosquitto)
    agent_factory(mosquitto, window_s=0.5)
    fleet.wait_for(status("online"))
    png, _ = write_digits(tmp_path / "img", range(1600, 1601), labelled=False)[0]
    payload = {"cmd_id": "dup-1", "args": {"image": base64.b64encode(png.read_bytes()).decode()}}
    fleet.command("infer", payload)
    first = fleet.final("dup-1")
    fleet.command("infer", payload)
    again = fleet.wait_for(lambda m: m.doc.get("cmd_id") == "dup-1" and m.doc.get("duplicate"))[0].doc
    assert again["state"] == first["state"] == "succeeded" and again["result"] == first["result"]
    assert first["result"]["index"] == expected_predictions(digits_bundle, [png])[0]
    time.sleep(1.2)  # let the windows that could hold a second inference close
    assert sum_windows(fleet.matching(telemetry), lambda d: d["counts"]["requests"]) == 1


def test_benchmark_and_set_config_commands(mosquitto, agent_factory):
    fleet = Subscriber(mosquitto)
    agent = agent_factory(mosquitto)
    fleet.wait_for(status("online"))
    fleet.command("run_benchmark", {"cmd_id": "b1", "args": {"warmup_runs": 2, "num_runs": 30, "num_threads": 1}})
    done = fleet.final("b1", timeout=60)
    assert done["state"] == "succeeded" and done["result"]["report_topic"] == f"{BASE}/bench/b1/report"
    report = fleet.wait_for(lambda m: m.topic == f"{BASE}/bench/b1/report")[0].doc
    assert report["steady"]["count"] >= 30 and report["runtime"]["num_threads"] == 1 and report["run_id"] == "b1"
    fleet.command("set_config", {"cmd_id": "s1", "args": {"window_s": 0.4}})
    assert fleet.final("s1")["result"]["applied"] == {"window_s": 0.4}
    assert agent.settings.window_s == 0.4
    event = fleet.wait_for(lambda m: m.topic == f"{BASE}/events" and m.doc.get("event") == "config_applied")[0].doc
    assert event["changes"] == {"window_s": 0.4}
    fleet.wait_for(lambda m: m.topic == f"{BASE}/meta" and m.doc["config"]["window_s"] == 0.4)


def test_sigterm_flushes_the_last_window_and_publishes_shutdown(mosquitto, digits_bundle, tmp_path):
    watch = tmp_path / "watch"
    watch.mkdir()
    fleet = Subscriber(mosquitto)
    proc = agent_process(digits_bundle, mosquitto.url, tmp_path / "data", "--window", "600", "--watch", str(watch))
    try:
        fleet.wait_for(status("online"), timeout=30)
        write_digits(watch, range(1700, 1705))
        deadline = time.monotonic() + 20
        while len(list((watch / ".processed").rglob("*.png"))) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == ExitStatus.OK, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    last = fleet.wait_for(telemetry)[0].doc  # the 600 s window was cut short by the stop
    assert last["counts"]["ok"] == 5 and last["accuracy"]["labeled"] == 5
    shutdown = fleet.wait_for(status("offline", "shutdown"))[0]
    assert shutdown.doc["boot_id"] == last["boot_id"]
    assert not fleet.matching(status("offline", "lwt"))  # a clean stop never triggers the will
    topics = [m.topic for m in fleet.msgs]
    assert topics.index(f"{BASE}/telemetry/inference") < topics.index(
        f"{BASE}/status", topics.index(f"{BASE}/telemetry/inference")
    )


def test_bad_credentials_stop_the_agent_with_exit_status_not_authorized(digits_bundle, tmp_path):
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), DEVICE, "right-password"], check=True, capture_output=True)
    os.chmod(pw, 0o600)
    broker = Mosquitto(tmp_path / "broker", extra_config=f"password_file {pw}", allow_anonymous=False).start()
    try:
        proc = agent_process(digits_bundle, broker.url, tmp_path / "data", "--username", DEVICE, "--password", "wrong")
        code = proc.wait(45)
        err = proc.stderr.read() if proc.stderr else ""
        assert code == ExitStatus.NOT_AUTHORIZED, err
        assert "refused" in err and "NOT_AUTHORIZED" in err and "not retrying" in err
    finally:
        broker.stop()


def test_outbox_bound_during_an_outage_drops_oldest_and_reports_it(agent_factory, tmp_path):
    broker_dir = tmp_path / "broker"
    broker = Mosquitto(broker_dir, extra_config=f"persistence true\npersistence_location {broker_dir}/\n").start()
    try:
        fleet = Subscriber(broker, client_id="fleet-bound", persistent=True)  # the broker keeps our session
        broker.stop()
        agent = agent_factory(broker, window_s=0.1, outbox_max=10)  # starts with the broker down
        time.sleep(2.5)  # ~25 windows (+ meta, event) into a 10-message outbox
        assert agent.outbox is not None and agent.outbox.depth == 10
        dropped = agent.outbox.dropped
        assert dropped >= 10
        broker.start()
        assert agent.link is not None and agent.link.connected.wait(30)
        deadline = time.monotonic() + 20
        while agent.outbox.depth > 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        final = agent.outbox.dropped  # drained: no more drops from here on
        fleet.wait_for(lambda m: telemetry(m) and m.doc["outbox"]["dropped"] == final, timeout=30)
        stream = sorted(
            {m.doc["seq"] for m in fleet.matching(lambda m: isinstance(m.doc.get("seq"), int) and not m.retain)}
        )
        # The count the device reported is exactly the number of seqs a consumer never sees: the oldest telemetry
        # first (meta, seq 1, and the bundle_activated event, seq 2, stay), except rows in flight when it was hit.
        missing = sorted(set(range(1, stream[-1] + 1)) - set(stream))
        assert len(missing) == final and missing[: final - 5] == list(range(3, final - 2))
        assert {1, 2} <= set(stream)
        # meta (retained state) is sent again on every connect
        fleet.wait_for(lambda m: m.topic == f"{BASE}/meta" and m.doc["seq"] > final)
        fleet.close()
    finally:
        broker.stop()


def test_a_full_queue_answers_busy_queued_commands_expire_or_are_canceled_at_stop(mosquitto, agent_factory, tmp_path):
    fleet = Subscriber(mosquitto)
    agent = agent_factory(mosquitto, window_s=0.5)
    fleet.wait_for(status("online"))
    # A long benchmark occupies the (single) command worker.
    fleet.command(
        "run_benchmark", {"cmd_id": "long", "args": {"warmup_runs": 0, "num_runs": 100_000, "num_threads": 1}}
    )
    fleet.wait_for(lambda m: m.doc.get("cmd_id") == "long" and m.doc.get("state") == "accepted")
    png = write_digits(tmp_path / "img", range(1790, 1791), labelled=False)[0][0]
    image = base64.b64encode(png.read_bytes()).decode()
    soon = int(time.time() * 1000) + 300
    fleet.command("ping", {"cmd_id": "q-expiring", "expires_at": soon + 10**9})  # inline: answered at once
    fleet.command("set_config", {"cmd_id": "q-expire", "args": {"drift_every": 2}, "expires_at": soon})
    for i in range(5):
        fleet.command("infer", {"cmd_id": f"q-infer-{i}", "args": {"image": image}})
    busy = [fleet.final(f"q-infer-{i}") for i in range(3, 5)]  # 4 places: the expiring one + 3 infers
    assert all(b["state"] == "rejected" and b["error"]["code"] == "BUSY" and b["error"]["retryable"] for b in busy)
    assert fleet.final("q-expiring")["state"] == "succeeded"
    agent.request_stop()  # the benchmark finishes; what still waits is canceled, the expired one expires
    assert fleet.final("q-expire", timeout=60)["state"] == "expired"
    assert {fleet.final(f"q-infer-{i}")["state"] for i in range(3)} == {"canceled"}
    assert fleet.final("long")["state"] == "succeeded"
    fleet.wait_for(status("offline", "shutdown"), timeout=30)  # after the last window
    dropped = sum_windows(fleet.matching(telemetry), lambda d: d["counts"]["dropped"])
    assert dropped == 2  # the two infers refused as BUSY never reached the model


LEGACY_PYTHON = Path(__file__).resolve().parents[2] / ".venv-legacy" / "bin" / "python"


@pytest.mark.skipif(not LEGACY_PYTHON.exists(), reason="no .venv-legacy (scripts/setup-legacy.sh makes it)")
def test_the_agent_serves_on_tflite_runtime_2_14_with_numpy_1(mosquitto, digits_bundle, tmp_path):
    """The fallback runtime environment: tflite-runtime 2.14, numpy < 2, no TensorFlow."""
    watch = tmp_path / "watch"
    write_digits(watch, range(1750, 1760))
    fleet = Subscriber(mosquitto)
    proc = agent_process(
        digits_bundle,
        mosquitto.url,
        tmp_path / "data",
        "--window",
        "0.5",
        "--watch",
        str(watch),
        python=str(LEGACY_PYTHON),
    )
    try:
        fleet.wait_for(status("online"), timeout=60)
        deadline = time.monotonic() + 30
        while sum_windows(fleet.matching(telemetry), lambda d: d["counts"]["ok"]) < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == ExitStatus.OK
    finally:
        if proc.poll() is None:
            proc.kill()
    windows = fleet.matching(telemetry)
    assert sum_windows(windows, lambda d: d["counts"]["ok"]) == 10
    assert {m.doc["runtime"]["engine"] for m in windows} == {"tflite_runtime"}
    fleet.wait_for(status("offline", "shutdown"))
