"""The agent on a locked-down mosquitto (the documented set-up: TLS from a test CA, a password, the client id bound
to the user name, the per-device ACL). A publish the ACL
refuses (PUBACK 0x87) is counted and dropped, never retried forever, and the agent keeps working."""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_security_broker import DEVICES, FLEET, Client, make_pki, make_users

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.serve.agent import Agent
from edgekit_agent.serve.config import load_settings

from brokers import Mosquitto

DEVICE = "dev-a"


@pytest.fixture()
def secure(tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    tls = (
        f"cafile {pki['ca']}",
        f"certfile {pki['server_cert']}",
        f"keyfile {pki['server_key']}",
        "tls_version tlsv1.2",
    )
    broker = Mosquitto(tmp_path / "broker", users=make_users(tmp_path), tls=tls).start()
    yield broker, pki
    broker.stop()


def next_message(cl: Client, pred: Any, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            topic, payload = cl.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        doc = json.loads(payload)
        if pred(topic, doc):
            return doc
    raise AssertionError("timed out waiting for a matching message")


def test_agent_over_tls_with_password_and_an_acl_refusal(secure, digits_bundle, tmp_path):
    broker, pki = secure
    settings = load_settings(
        None,
        device_id=DEVICE,
        broker=f"mqtts://{broker.host}:{broker.port}",
        tls_ca=str(pki["ca"]),
        username=DEVICE,
        password=DEVICES[DEVICE],
        data_dir=str(tmp_path / "data"),
        window_s=0.5,
    )
    agent = Agent(load_bundle(digits_bundle), settings)
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    fleet = Client(broker, *FLEET, ca=pki["ca"])
    try:
        assert fleet.connect() == "Success"
        fleet.subscribe(f"edge/v1/{DEVICE}/#")
        first = next_message(fleet, lambda t, d: t.endswith("/telemetry/inference"))
        assert first["device_id"] == DEVICE and first["outbox"]["refused"] == 0

        # The response topic belongs to another device: the ACL refuses the agent's answers (0x87).
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "edge/v1/dev-b/res/spy"
        fleet.c.publish(f"edge/v1/{DEVICE}/cmd/ping", json.dumps({"cmd_id": "acl-1"}), qos=1, properties=props)
        counted = next_message(fleet, lambda t, d: t.endswith("/telemetry/inference") and d["outbox"]["refused"] >= 2)
        assert counted["outbox"]["dropped"] == 0  # refused is not the same as dropped by the bound
        assert agent.outbox is not None
        deadline = time.monotonic() + 10
        while agent.outbox.depth > 1 and time.monotonic() < deadline:  # nothing stuck, retried forever
            time.sleep(0.1)
        assert agent.outbox.depth <= 1

        # Still healthy: an answer on its own topic goes through.
        props.ResponseTopic = f"edge/v1/{DEVICE}/res/ops"
        fleet.c.publish(f"edge/v1/{DEVICE}/cmd/ping", json.dumps({"cmd_id": "ok-1"}), qos=1, properties=props)
        pong = next_message(fleet, lambda t, d: t.endswith("/res/ops") and d.get("state") == "succeeded")
        assert pong["cmd_id"] == "ok-1" and pong["result"]["pong"] is True
    finally:
        fleet.close()
        agent.request_stop()
        runner.join(30)
