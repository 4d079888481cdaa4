"""Hostile command payloads into a real agent's command handler (no broker needed: messages are handed to
the same ``submit`` the MQTT link calls). Every message gets one final answer, never an ``INTERNAL`` error
(that would be an untyped exception), nothing is written outside the data directory, and the agent still
serves afterwards."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.contract.envelope import FINAL_STATES
from edgekit_agent.contract.limits import MAX_COMMAND_BYTES, MAX_INFER_SAMPLES
from edgekit_agent.mqtt.client import Message
from edgekit_agent.mqtt.commands import CommandProcessor, CommandStore
from edgekit_agent.ota.manager import ACTIONS
from edgekit_agent.serve.agent import Agent, builtin_commands
from edgekit_agent.serve.config import load_settings

from fuzzing import fuzz_examples

DEVICE = "fuzz-dev"
BASE = f"edge/v1/{DEVICE}"
FUZZ = settings(
    max_examples=fuzz_examples(250),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# run_benchmark is left out: valid random arguments (100,000 runs) are slow, not hostile; its argument
# checking is the same table-driven code the other commands use.
NAMES = ["ping", "set_config", "infer", "swap_bundle", "reboot", "", "../../x", "cmd", "swap_bundle/extra"]


class Harness:
    """A started agent (no broker) and a command processor with its dispatch table, answering into a list."""

    def __init__(self, agent: Agent, data: Path) -> None:
        self.agent, self.data = agent, data
        self.cond = threading.Condition()
        self.answers: dict[bytes, list[dict[str, Any]]] = {}
        self.proc = CommandProcessor(DEVICE, self._respond, CommandStore(data / "fuzz-commands.sqlite"), queue_size=64)
        for spec in builtin_commands(agent):
            if spec.name != "run_benchmark":
                self.proc.register(spec)
        self.proc.register(agent.ota.command_spec())
        self.proc.start()

    def _respond(self, topic: str, body: dict[str, Any], corr: bytes | None) -> None:
        json.dumps(body)  # an answer must always be serialisable
        with self.cond:
            self.answers.setdefault(corr or b"", []).append(body)
            self.cond.notify_all()

    def send(self, topic: str, payload: bytes, timeout: float = 20.0) -> dict[str, Any]:
        corr = uuid.uuid4().bytes
        self.proc.submit(Message(topic, payload, response_topic=f"{BASE}/res/fuzz", correlation=corr))
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                final = [a for a in self.answers.get(corr, []) if a.get("state") in FINAL_STATES]
                if final:
                    assert len(final) == 1, final
                    return final[0]
                left = deadline - time.monotonic()
                assert left > 0, f"no final answer to {payload[:200]!r} on {topic}: {self.answers.get(corr)}"
                self.cond.wait(left)


def _started(bundle: Path, root: Path):
    data = root / "data"
    s = load_settings(None, device_id=DEVICE, data_dir=str(data), window_s=3600)
    agent = Agent(load_bundle(bundle), s)
    agent.start()
    h = Harness(agent, data)
    h.root = root  # type: ignore[attr-defined]
    yield h
    h.proc.close()
    agent.shutdown()


@pytest.fixture(scope="module")
def harness(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    yield from _started(digits_bundle, tmp_path_factory.mktemp("fuzz-commands"))


@pytest.fixture(scope="module", params=["audio", "sensor"])
def media_harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """An agent serving the tiny audio or sensor bundle: ``infer`` with raw ``samples``."""
    bundle = request.getfixturevalue(f"{request.param}_bundle")
    yield from _started(bundle, tmp_path_factory.mktemp(f"fuzz-{request.param}"))


def _check(h: Harness, topic: str, payload: bytes) -> dict[str, Any]:
    before = {p for p in h.root.iterdir()}  # type: ignore[attr-defined]
    answer = h.send(topic, payload)
    err = answer.get("error") or {}
    assert err.get("code") != "INTERNAL", (payload[:300], answer)
    assert set(err) in (set(), {"code", "message", "retryable"})
    assert {p for p in h.root.iterdir()} == before, "something was written outside the data directory"  # type: ignore[attr-defined]
    return answer


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**65), 2**65)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
ids = st.one_of(st.uuids().map(str), st.text(max_size=140), st.integers(), st.none(), st.just("../../etc"))
swap_args = st.fixed_dictionaries(
    {"action": st.sampled_from(ACTIONS) | st.text(max_size=8)},
    optional={
        "transfer_id": st.sampled_from(["t1", "t2", "../t", ".hidden", "a" * 65, ""]) | st.text(max_size=10),
        "archive_sha256": st.sampled_from(["0" * 64, "g" * 64, "ab"]) | st.text(max_size=70),
        "archive_bytes": st.integers(-5, 2**40),
        "chunk_bytes": st.integers(-5, 2**20),
        "index": st.integers(-5, 10**7),
        "data": st.sampled_from(["", "AAAA", "!!!", "QUJD"]) | st.text(max_size=50),
        "sha256": st.sampled_from(["0" * 64]) | st.text(max_size=70),
        "health": st.dictionaries(
            st.sampled_from(["window_s", "max_error_rate", "bogus", "min_labeled"]), json_values, max_size=3
        )
        | json_values,
        "name": json_values,
    },
)


@FUZZ
@given(st.sampled_from(NAMES), st.binary(max_size=2048))
def test_random_bytes(harness, name, payload):
    answer = _check(harness, f"{BASE}/cmd/{name}", payload)
    assert answer["state"] == "rejected"


@FUZZ
@given(st.sampled_from(NAMES), json_values)
def test_random_json(harness, name, doc):
    _check(harness, f"{BASE}/cmd/{name}", json.dumps(doc).encode())


@FUZZ
@given(
    st.sampled_from(NAMES),
    st.fixed_dictionaries(
        {"cmd_id": ids},
        optional={
            "name": st.sampled_from(NAMES) | json_values,
            "args": st.dictionaries(st.text(max_size=12), json_values, max_size=5) | json_values,
            "expires_at": st.one_of(st.none(), st.integers(0, 2**45), st.floats(allow_nan=False), st.text(max_size=5)),
            "requester": st.sampled_from(["fleet", "../x", "a/b", "+", ""]) | json_values,
        },
    ),
)
def test_command_shaped_documents(harness, name, doc):
    _check(harness, f"{BASE}/cmd/{name}", json.dumps(doc).encode())


@FUZZ
@given(swap_args)
def test_swap_bundle_arguments(harness, args):
    doc = {"cmd_id": f"s-{uuid.uuid4().hex}", "args": args}
    _check(harness, f"{BASE}/cmd/swap_bundle", json.dumps(doc).encode())
    # whatever was staged stays inside the data directory's ota/ tree
    staging = harness.data / "ota" / "staging"
    for p in staging.rglob("*") if staging.is_dir() else []:
        assert p.resolve().is_relative_to(staging.resolve())


@FUZZ
@given(
    st.sampled_from(
        ["", "+", "#", "edge/v1/other-dev/cmd/ping", f"{BASE}/cmd", f"{BASE}/res/x", f"{BASE}/cmd/ping/x", "\x00"]
    )
)
def test_commands_on_foreign_or_odd_topics_are_rejected(harness, topic):
    answer = _check(harness, topic, json.dumps({"cmd_id": uuid.uuid4().hex}).encode())
    assert answer["state"] == "rejected"


@FUZZ
@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**70), 2**70), min_size=64, max_size=64)
)
def test_infer_tensors_of_any_finite_json_numbers(harness, values):
    """JSON has no inf, but 1e39 is inf as float32 and 2**70 overflows nothing until it meets a window: refused
    or served, the telemetry window must stay strict JSON (an inf once stopped every later window)."""
    tensor = np.asarray(values, dtype=object).reshape(8, 8, 1).tolist()
    _check(
        harness,
        f"{BASE}/cmd/infer",
        json.dumps({"cmd_id": f"i-{uuid.uuid4().hex}", "args": {"tensor": tensor}}).encode(),
    )
    json.dumps(harness.agent.recorder.snapshot_and_reset(), allow_nan=False)


def _infer(h: Harness, args: Any) -> dict[str, Any]:
    doc = {"cmd_id": f"i-{uuid.uuid4().hex}", "args": args}
    answer = _check(h, f"{BASE}/cmd/infer", json.dumps(doc).encode())
    json.dumps(h.agent.recorder.snapshot_and_reset(), allow_nan=False)
    return answer


numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**70), 2**70)
samples_values = (
    st.lists(numbers, max_size=300)  # a waveform of any numbers (too short ones are padded)
    | st.lists(st.lists(numbers, min_size=0, max_size=5), max_size=80)  # rows, some of the wrong width
    | st.lists(json_values, max_size=6)
)


@FUZZ
@given(samples_values)
def test_infer_samples_of_any_shape_on_audio_and_sensor_bundles(media_harness, samples):
    """Raw samples, good or malformed: refused with a typed error (INVALID_ARGS, INPUT_INVALID) or served."""
    answer = _infer(media_harness, {"samples": samples})
    assert answer["state"] in ("succeeded", "rejected", "failed"), answer


@FUZZ
@given(samples_values)
def test_infer_samples_on_an_image_bundle(harness, samples):
    """An image bundle takes pixel rows as samples; anything else is refused, never an untyped error."""
    answer = _infer(harness, {"samples": samples})
    assert answer["state"] in ("succeeded", "rejected", "failed"), answer


@pytest.mark.parametrize(
    ("samples", "says"),
    [
        ([0] * (MAX_INFER_SAMPLES + 1), f"at most {MAX_INFER_SAMPLES} raw samples"),
        ([[0, 0, 1]] * (MAX_INFER_SAMPLES // 3 + 1), f"at most {MAX_INFER_SAMPLES} raw samples"),
        ([], "a non-empty list"),
        ([True, False] * 100, "list of numbers|rows of numbers"),
        (["0.5"] * 100, "list of numbers|rows of numbers"),
        ([40000] * 100, "must lie in -32768..32767|rows of 3 values"),
        ([1.5] * 100, r"must lie in \[-1, 1\]|rows of 3 values"),
        ([[0.1, 0.2]] * 40, "flat, non-empty list|rows of 3 values"),
        ([[0.1, 0.2, 0.3]] * 5, "flat, non-empty list|needs a window of 32"),
        ([[1, [2]], [3]], "list of numbers|rows of numbers"),
    ],
    ids=[
        "over-cap",
        "over-cap-rows",
        "empty",
        "booleans",
        "strings",
        "int16-range",
        "float-range",
        "rows-2",
        "short",
        "ragged",
    ],
)
def test_malformed_samples_get_clear_errors_and_never_stop_the_agent(media_harness, samples, says):
    answer = _infer(media_harness, {"samples": samples})
    assert answer["state"] in ("rejected", "failed"), answer
    assert answer["error"]["code"] in ("INVALID_ARGS", "INPUT_INVALID")
    assert re.search(says, answer["error"]["message"]), answer["error"]["message"]
    audio = media_harness.agent.manifest.preprocess.kind == "audio"
    assert _infer(media_harness, {"samples": [0.0] * 50 if audio else [[0.0, 0.0, 1.0]] * 40})["state"] == "succeeded"


def _nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize(
    "payload",
    [
        b"{" * 200_000,
        b"[" * 50_000 + b"]" * 50_000,
        json.dumps({"cmd_id": "huge", "args": {"x": "a" * (MAX_COMMAND_BYTES + 1)}}).encode(),
        b"\xff" * (MAX_COMMAND_BYTES + 10),
        json.dumps({"cmd_id": "nan", "expires_at": float("nan")}).encode(),
        b'{"cmd_id": "dup", "cmd_id": "dup2"}',
        json.dumps({"cmd_id": "deep", "args": {"tensor": _nested(40)}}).encode(),
    ],
    ids=["open-braces", "deep-array", "over-limit", "over-limit-binary", "nan", "duplicate-key", "deep-args"],
)
def test_documented_limits(harness, payload):
    answer = _check(harness, f"{BASE}/cmd/infer", payload)
    assert answer["state"] in ("rejected", "failed")


def test_agent_still_serves_after_the_fuzzing(harness):
    agent = harness.agent
    answer = _check(harness, f"{BASE}/cmd/ping", json.dumps({"cmd_id": f"p-{uuid.uuid4().hex}"}).encode())
    assert answer["state"] == "succeeded" and answer["result"]["pong"] is True
    x = np.zeros(agent.runtime.input_shape, agent.runtime.input_dtype)
    assert 0 <= agent.serve_tensor(x).index < len(agent.labels)
    assert agent.bundle.manifest.version  # still the bundle it started with (nothing was committed)
    json.dumps(agent.flush_window(), allow_nan=False)  # the window after all that is strict JSON
