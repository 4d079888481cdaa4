"""The agent's MQTT version setting and the payload request/response fields (MQTT 3.1.1), without a broker:
settings are parsed and validated by the real config loader; commands go through the real CommandProcessor
with a real CommandStore, answering into a list (the function the agent hands it)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgekit_agent.contract.errors import UsageError
from edgekit_agent.mqtt.client import Message
from edgekit_agent.mqtt.commands import CommandProcessor, CommandSpec, CommandStore
from edgekit_agent.serve.config import load_settings

DEVICE = "dev-311"
BASE = f"edge/v1/{DEVICE}"


def test_mqtt_version_flag_config_key_and_default(tmp_path: Path) -> None:
    assert load_settings(None, device_id=DEVICE, broker="mqtt://h:1").broker.mqtt_version == "auto"
    assert (
        load_settings(None, device_id=DEVICE, broker="mqtt://h:1", mqtt_version="3.1.1").broker.mqtt_version == "3.1.1"
    )
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'device_id = "{DEVICE}"\n[broker]\nurl = "mqtt://h:1"\nmqtt_version = "5"\n')
    assert load_settings(cfg).broker.mqtt_version == "5"
    assert load_settings(cfg, mqtt_version="auto").broker.mqtt_version == "auto"  # the flag wins
    cfg.write_text(f'device_id = "{DEVICE}"\n[broker]\nurl = "mqtt://h:1"\nmqtt_version = "3"\n')
    with pytest.raises(UsageError, match=r"agent\.toml.*mqtt_version '3' must be one of auto, 5, 3\.1\.1"):
        load_settings(cfg)
    cfg.write_text(f'device_id = "{DEVICE}"\n[broker]\nurl = "mqtt://h:1"\nmqtt_versoin = "5"\n')
    with pytest.raises(UsageError, match="Did you mean 'mqtt_version'"):
        load_settings(cfg)


class Answers:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any], bytes | None]] = []
        self.cond = threading.Condition()

    def __call__(self, topic: str, body: dict[str, Any], correlation: bytes | None) -> None:
        with self.cond:
            self.items.append((topic, json.loads(json.dumps(body)), correlation))
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 5.0) -> list[tuple[str, dict[str, Any], bytes | None]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.items) < n:
                assert self.cond.wait(max(0.0, deadline - time.monotonic())), self.items
            return list(self.items)


@pytest.fixture()
def processor(tmp_path: Path):
    answers = Answers()
    proc = CommandProcessor(DEVICE, answers, CommandStore(tmp_path / "commands.sqlite"))
    proc.register(CommandSpec("ping", lambda cmd: {"pong": True}, inline=True))
    proc.register(CommandSpec("echo", lambda cmd: {"id": cmd.cmd_id}))  # queued: runs on the worker thread
    proc.start()
    yield proc, answers
    proc.close()
    proc.store.close()


def _msg(
    name: str, doc: dict[str, Any], *, response_topic: str | None = None, correlation: bytes | None = None
) -> Message:
    return Message(
        f"{BASE}/cmd/{name}", json.dumps(doc).encode(), response_topic=response_topic, correlation=correlation
    )


def test_payload_response_topic_and_correlation_data_are_used_and_echoed(processor) -> None:
    proc, answers = processor
    proc.submit(_msg("echo", {"cmd_id": "c1", "response_topic": f"{BASE}/res/mine", "correlation_data": "k-1"}))
    got = answers.wait(2)
    assert [(t, b["state"], b.get("correlation_data"), c) for t, b, c in got] == [
        (f"{BASE}/res/mine", "accepted", "k-1", b"k-1"),  # the MQTT 5 property too, when the link has one
        (f"{BASE}/res/mine", "succeeded", "k-1", b"k-1"),
    ]
    # a repeated cmd_id gets the stored answer on the new request's topic with the new correlation
    proc.submit(_msg("echo", {"cmd_id": "c1", "requester": "other", "correlation_data": "k-2"}))
    topic, body, corr = answers.wait(3)[2]
    assert (
        topic == f"{BASE}/res/other"
        and body["duplicate"] is True
        and body["correlation_data"] == "k-2"
        and corr == b"k-2"
    )


def test_mqtt5_properties_win_over_the_payload_fields(processor) -> None:
    proc, answers = processor
    proc.submit(
        _msg(
            "ping",
            {"cmd_id": "p1", "response_topic": f"{BASE}/res/payload", "correlation_data": "text"},
            response_topic=f"{BASE}/res/prop",
            correlation=b"\x00bin",
        )
    )
    got = answers.wait(2)
    assert {t for t, _, _ in got} == {f"{BASE}/res/prop"} and {c for _, _, c in got} == {b"\x00bin"}
    assert all(b["correlation_data"] == "text" for _, b, _ in got)  # the payload's copy is still echoed


def test_a_wildcard_response_topic_property_is_refused_on_the_default_topic(processor) -> None:
    """paho refuses to publish to a topic with + or #: such an answer would sit first in the outbox forever."""
    proc, answers = processor
    proc.submit(_msg("ping", {"cmd_id": "w1"}, response_topic="fleet/+/evil", correlation=b"c"))
    ((topic, body, corr),) = answers.wait(1)
    assert topic == f"{BASE}/res/fleet" and body["state"] == "rejected" and corr == b"c"
    assert body["error"]["code"] == "INVALID_PAYLOAD" and "ResponseTopic" in body["error"]["message"]


def test_no_correlation_fields_means_no_correlation_in_the_answer(processor) -> None:
    proc, answers = processor
    proc.submit(_msg("ping", {"cmd_id": "p2", "requester": "desk"}))
    got = answers.wait(2)
    assert all(t == f"{BASE}/res/desk" and "correlation_data" not in b and c is None for t, b, c in got)


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"cmd_id": "b1", "correlation_data": 7}, "correlation_data must be a string"),
        ({"cmd_id": "b2", "correlation_data": "x" * 257}, "correlation_data must be a string"),
        ({"cmd_id": "b3", "response_topic": "edge/v1/#"}, "response_topic must be an MQTT topic name"),
        ({"cmd_id": "b4", "response_topic": ""}, "response_topic must be an MQTT topic name"),
        ({"cmd_id": "b5", "reply_to": "x"}, "unknown field(s) ['reply_to']"),
    ],
)
def test_bad_payload_fields_are_rejected_with_a_clear_message(processor, doc: dict[str, Any], needle: str) -> None:
    proc, answers = processor
    proc.submit(_msg("ping", doc))
    topic, body, _ = answers.wait(1)[0]
    assert (
        body["state"] == "rejected"
        and body["error"]["code"] == "INVALID_PAYLOAD"
        and needle in body["error"]["message"]
    )
    assert topic == f"{BASE}/res/fleet"  # the only safe place left to answer
