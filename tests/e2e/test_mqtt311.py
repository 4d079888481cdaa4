"""MQTT 3.1.1 end to end on the embedded development broker (amqtt 0.12, which refuses MQTT 5): a real
edgekit-agent process falls back to 3.1.1 by itself and serves the edge/v1 contract with the request/response
fields in the payload; `edgekit bench --device` works there; and, against mosquitto, an MQTT 5 command without
properties is answered through the payload fields too (one code path for both protocols)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from test_agent_mqtt import write_digits

from edgekit.fleet.dev_broker import start_dev_broker
from edgekit_agent.contract.envelope import FINAL_STATES
from edgekit_agent.contract.errors import ExitStatus

DEVICE = "pi-311"
BASE = f"edge/v1/{DEVICE}"


class Client311:
    """A fleet-side paho client speaking MQTT 3.1.1 (no properties at all), recording edge/v1/#."""

    def __init__(self, host: str, port: int, protocol: int = mqtt.MQTTv311) -> None:
        self.msgs: list[tuple[str, Any, bool]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=protocol
        )
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe("edge/v1/#", qos=1)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(m.payload)
        except ValueError:
            doc = {}
        with self.cond:
            self.msgs.append((m.topic, doc, bool(m.retain)))
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[str, Any, bool], bool], timeout: float = 30.0) -> tuple[str, Any, bool]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.msgs:
                    if pred(*m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; seen: {[(t, d.get('state')) for t, d, _ in self.msgs[-8:]]}")
                self.cond.wait(left)

    def command(self, name: str, body: dict[str, Any]) -> None:
        self.client.publish(f"{BASE}/cmd/{name}", json.dumps(body), qos=1).wait_for_publish(5)

    def final(self, topic: str, cmd_id: str, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait_for(
            lambda t, d, _r: t == topic and d.get("cmd_id") == cmd_id and d.get("state") in FINAL_STATES, timeout
        )[1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def amqtt_broker():
    broker = start_dev_broker(engine="amqtt", port=0)
    assert broker.engine == "amqtt" and not broker.mqtt5
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def agent_311(amqtt_broker, digits_bundle, tmp_path_factory):
    """One agent process (default --mqtt-version auto) on amqtt, watching a folder of labelled digits."""
    home = tmp_path_factory.mktemp("agent311")
    write_digits(home / "inbox", range(40))
    cmd = [
        sys.executable,
        "-m",
        "edgekit_agent.cli",
        "run",
        str(digits_bundle),
        "--allow-unsigned",
        "--broker",
        amqtt_broker.url,
        "--device-id",
        DEVICE,
        "--data-dir",
        str(home / "data"),
        "--watch",
        str(home / "inbox"),
        "--window",
        "1",
        "-v",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(home / "agent.log", "wb"))  # noqa: SIM115
    yield proc, home / "agent.log"
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


@pytest.fixture(scope="module")
def fleet(amqtt_broker, agent_311):
    c = Client311(amqtt_broker.host, amqtt_broker.port)
    yield c
    c.close()


def test_agent_falls_back_to_311_birth_retained_meta_and_a_telemetry_window(amqtt_broker, agent_311, fleet):
    _, log = agent_311
    birth = fleet.wait_for(lambda t, d, r: t == f"{BASE}/status" and d.get("state") == "online", 40)[1]
    meta = fleet.wait_for(lambda t, d, r: t == f"{BASE}/meta" and d.get("mqtt_version"), 40)[1]
    assert meta["mqtt_version"] == "3.1.1" and meta["broker"] == amqtt_broker.url
    window = fleet.wait_for(lambda t, d, r: t == f"{BASE}/telemetry/inference" and d["counts"]["requests"] > 0, 40)[1]
    assert window["device_id"] == DEVICE and window["boot_id"] == birth["boot_id"] and window["accuracy"]["labeled"] > 0
    # retained on the 3.1.1 broker: a consumer connecting now still learns status and meta
    late = Client311(amqtt_broker.host, amqtt_broker.port)
    try:
        _, doc, retained = late.wait_for(lambda t, d, r: t == f"{BASE}/status", 10)
        assert retained and doc["state"] == "online" and doc["boot_id"] == birth["boot_id"]
        assert late.wait_for(lambda t, d, r: t == f"{BASE}/meta", 10)[2]
    finally:
        late.close()
    text = log.read_text(errors="replace")
    assert text.count("using MQTT 3.1.1") == 1, text[-2000:]  # logged once


def test_ping_answers_on_the_payload_response_topic_with_correlation_data_echoed(fleet, agent_311):
    fleet.wait_for(lambda t, d, r: t == f"{BASE}/meta" and d.get("mqtt_version"), 40)
    topic = f"{BASE}/res/payload-topic"
    fleet.command("ping", {"cmd_id": "ping-311", "args": {}, "response_topic": topic, "correlation_data": "corr-7"})
    answer = fleet.final(topic, "ping-311", 20)
    assert answer["state"] == "succeeded" and answer["result"]["pong"] is True
    assert answer["correlation_data"] == "corr-7"
    accepted = fleet.wait_for(
        lambda t, d, r: t == topic and d.get("cmd_id") == "ping-311" and d["state"] == "accepted"
    )[1]
    assert accepted["correlation_data"] == "corr-7"
    # a rejection reaches the payload's topic too, still correlated
    fleet.command("pnig", {"cmd_id": "typo-311", "response_topic": topic, "correlation_data": "corr-8"})
    rej = fleet.final(topic, "typo-311", 20)
    assert (
        rej["state"] == "rejected" and rej["error"]["code"] == "UNKNOWN_COMMAND" and rej["correlation_data"] == "corr-8"
    )


def test_run_benchmark_round_trip_on_res_requester_with_payload_correlation(fleet, agent_311):
    fleet.wait_for(lambda t, d, r: t == f"{BASE}/meta" and d.get("mqtt_version"), 40)
    fleet.command(
        "run_benchmark",
        {
            "cmd_id": "bench-311",
            "args": {"num_runs": 20, "warmup_runs": 1},
            "requester": "desk",
            "correlation_data": "b-1",
            "expires_at": int(time.time() * 1000) + 60_000,
        },
    )
    answer = fleet.final(f"{BASE}/res/desk", "bench-311", 60)
    assert answer["state"] == "succeeded", answer
    assert answer["correlation_data"] == "b-1" and answer["result"]["report"]["steady"]["count"] == 20
    report = fleet.wait_for(lambda t, d, r: t == f"{BASE}/bench/bench-311/report", 20)[1]
    assert report["cmd_id"] == "bench-311"


def test_edgekit_bench_device_on_the_embedded_broker(amqtt_broker, agent_311, fleet, tmp_path):
    fleet.wait_for(lambda t, d, r: t == f"{BASE}/meta" and d.get("mqtt_version"), 40)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit",
            "bench",
            "--device",
            DEVICE,
            "--broker",
            amqtt_broker.url,
            "--runs",
            "20",
            "--warmup",
            "1",
            "--timeout",
            "60",
            "--out",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == ExitStatus.OK, out.stdout[-2000:] + out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["device_id"] == DEVICE and doc["report"]["steady"]["count"] == 20
    # the request carried the 3.1.1 payload fields, and the answers echoed them
    req = fleet.wait_for(lambda t, d, r: t == f"{BASE}/cmd/run_benchmark" and d.get("cmd_id") == doc["cmd_id"])[1]
    assert req["correlation_data"] == doc["cmd_id"] and req["response_topic"].startswith(f"{BASE}/res/bench-")
    final = fleet.final(req["response_topic"], doc["cmd_id"], 10)
    assert final["correlation_data"] == doc["cmd_id"]
    assert len(list(tmp_path.glob("bench-*.json"))) == 1


def test_lwt_after_kill_9_on_the_embedded_broker(fleet, agent_311):
    proc, _ = agent_311
    birth = fleet.wait_for(lambda t, d, r: t == f"{BASE}/status" and d.get("state") == "online", 40)[1]
    proc.kill()
    proc.wait(10)
    lwt = fleet.wait_for(lambda t, d, r: t == f"{BASE}/status" and d.get("state") == "offline", 90)[1]
    assert lwt["reason"] == "lwt" and lwt["boot_id"] == birth["boot_id"]


def test_mqtt_version_5_pinned_against_a_311_broker_fails_with_a_clear_message(amqtt_broker, digits_bundle, tmp_path):
    # amqtt never answers our MQTT 5 CONNECT (it chokes on the will), so pinned 5 cannot connect: the agent
    # must not fall back by itself. It keeps retrying; we only check it never came online as 3.1.1.
    fleet = Client311(amqtt_broker.host, amqtt_broker.port)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgekit_agent.cli",
            "run",
            str(digits_bundle),
            "--allow-unsigned",
            "--broker",
            amqtt_broker.url,
            "--device-id",
            "pinned5",
            "--data-dir",
            str(tmp_path / "d"),
            "--mqtt-version",
            "5",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(9)  # longer than the auto mode's CONNACK timeout
        assert proc.poll() is None
        assert not [m for m in fleet.msgs if m[0].startswith("edge/v1/pinned5/")]
    finally:
        proc.terminate()
        proc.wait(20)
        fleet.close()
    assert "using MQTT 3.1.1" not in proc.stderr.read()


def test_mqtt5_command_without_properties_is_answered_through_the_payload_fields(mosquitto, digits_bundle, tmp_path):
    """One code path: on MQTT 5 (mosquitto) a request with no ResponseTopic/CorrelationData but payload fields."""
    fleet = Client311(mosquitto.host, mosquitto.port, protocol=mqtt.MQTTv5)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgekit_agent.cli",
            "run",
            str(digits_bundle),
            "--allow-unsigned",
            "--broker",
            mosquitto.url,
            "--device-id",
            DEVICE,
            "--data-dir",
            str(tmp_path / "d"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        meta = fleet.wait_for(lambda t, d, r: t == f"{BASE}/meta" and d.get("mqtt_version"), 40)[1]
        assert meta["mqtt_version"] == "5"
        topic = f"{BASE}/res/p5"
        fleet.command("ping", {"cmd_id": "ping-5", "response_topic": topic, "correlation_data": "c5"})
        answer = fleet.final(topic, "ping-5", 20)
        assert answer["state"] == "succeeded" and answer["correlation_data"] == "c5"
    finally:
        proc.terminate()
        proc.wait(20)
        fleet.close()


def test_short_demo_on_the_embedded_amqtt_broker(tmp_path, digits_bundle):
    """`edgekit demo --short --broker-engine amqtt`: agents and tools negotiate 3.1.1 and the tour completes."""
    import re
    import shutil

    from edgekit.fleet.dev_broker import port_in_use

    work = tmp_path / "demo"
    shutil.copytree(digits_bundle, work / "bundles" / "digits-raspberry-pi-4")  # reused: no training in this test
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit", "demo", "--short", "--workdir", str(work), "--broker-engine", "amqtt"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-2000:]
    assert re.search(r"broker mqtt://127\.0\.0\.1:\d+ \(amqtt\); Prometheus exporter \S+ \(MQTT 3\.1\.1\)", out), out[
        -3000:
    ]
    assert re.search(r"agents online on amqtt mqtt://127\.0\.0\.1:\d+, speaking MQTT 3\.1\.1\n", out), out[-3000:]
    assert (
        "stopped: agent pi-kitchen (exit 0), agent pi-garage (exit 0), agent esp32-sim (exit 0), "
        "exporter, broker (amqtt)" in out
    )
    counted = out[out.index("what the Prometheus exporter counted") :]
    for device in ("pi-kitchen", "pi-garage", "esp32-sim"):
        assert int(re.search(rf"│ {device}\s+│\s+(\d+)", counted).group(1)) > 0, counted[:1500]
    assert len(list((work / "bench").glob("bench-pi-kitchen-*.json"))) == 1
    port = int(re.search(r"broker mqtt://127\.0\.0\.1:(\d+)", out).group(1))
    assert not port_in_use("127.0.0.1", port)


def test_deploy_over_the_embedded_broker_commits_with_payload_correlation(amqtt_broker, digits_bundle, tmp_path):
    """`edgekit deploy` (OTA: begin, chunks, commit, health window) to an agent that negotiated 3.1.1."""
    import shutil

    from edgekit.fleet.deploy import deploy
    from edgekit.package.keys import new_keypair

    from ota_support import AgentProc, Feeder, Observer, make_variant, version_of

    key = new_keypair(tmp_path / "keys", "release")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copyfile(key.public_path, trusted / key.public_path.name)
    archives = {}
    for version in ("1.0.0", "2.0.0"):
        (tmp_path / version).mkdir()
        archives[version] = make_variant(digits_bundle, tmp_path / version, version=version, key=key.private_path)
    v1, v2 = archives["1.0.0"], archives["2.0.0"]
    obs = Observer(amqtt_broker.url)
    assert not obs.link.mqtt5
    agent = AgentProc("ota-311", v1, amqtt_broker.url, tmp_path, trusted)
    try:
        assert version_of(agent.start(obs)) == "1.0.0"
        meta = obs.wait(lambda t, d: t == "edge/v1/ota-311/meta" and d.get("mqtt_version"), 30)  # sent once connected
        assert meta["mqtt_version"] == "3.1.1"
        with Feeder([agent.watch]):
            time.sleep(2.0)  # labelled traffic on v1: the health window compares against it
            report = deploy(
                v2,
                ["ota-311"],
                amqtt_broker.url,
                health={"window_s": 2.0, "max_p99_ratio": 20.0, "max_accuracy_drop": 0.3},
                chunk_bytes=32 * 1024,
                timeout=120,
            )
        (dev,) = report.devices
        assert dev.outcome == "committed", dev.to_dict()
        assert dev.chunks > 1 and dev.stages[:3] == ("received", "verified", "selftested")
        cmds = obs.all(lambda t, d: t == "edge/v1/ota-311/cmd/swap_bundle")
        answers = obs.all(lambda t, d: t.startswith("edge/v1/ota-311/res/deploy-") and d.get("state") == "succeeded")
        assert cmds and all(
            c["correlation_data"] == c["cmd_id"] and c["response_topic"].startswith("edge/v1/ota-311/res/deploy-")
            for c in cmds
        )
        assert len(answers) >= dev.chunks + 2 and all(a["correlation_data"] == a["cmd_id"] for a in answers)
        assert obs.wait(lambda t, d: t == "edge/v1/ota-311/meta" and version_of(d) == "2.0.0", 30)
    finally:
        agent.stop()
        obs.close()
