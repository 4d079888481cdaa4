"""The command envelope both sides share (edgekit_agent.contract.envelope): what goes on the wire, and how an
untrusted answer is read."""

from __future__ import annotations

import json

from edgekit_agent.contract.envelope import (
    FINAL_STATES,
    Answer,
    CommandError,
    ErrorCode,
    Request,
    State,
    error_for,
)
from edgekit_agent.contract.errors import BusyError, IntegrityError, UsageError
from edgekit_agent.contract.topics import Schema


def test_a_request_carries_the_response_fields_in_its_payload_only_on_mqtt_311() -> None:
    r = Request.new("pi-1", "ping", {"x": 1}, requester="ops", timeout_s=30)
    assert r.topic == "edge/v1/pi-1/cmd/ping" and r.response_topic == "edge/v1/pi-1/res/ops"
    assert r.cmd_id.startswith("ops-") and r.correlation == r.cmd_id.encode()
    v5 = json.loads(r.payload(mqtt5=True))
    assert v5 == {"cmd_id": r.cmd_id, "name": "ping", "args": {"x": 1}, "expires_at": r.expires_at, "requester": "ops"}
    v311 = json.loads(r.payload(mqtt5=False))
    assert v311["response_topic"] == r.response_topic and v311["correlation_data"] == r.cmd_id
    assert Request.new("pi-1", "ping", {}, requester="ops", timeout_s=30).cmd_id != r.cmd_id


def test_answers_round_trip_and_untrusted_fields_of_the_wrong_type_are_left_out() -> None:
    sent = Answer("c-1", "ping", State.SUCCEEDED, {"pong": True}, correlation_data="k")
    body = sent.to_json()
    assert body["schema"] == Schema.COMMAND_RESPONSE and "error" not in body and "duplicate" not in body
    assert Answer.from_json(json.loads(json.dumps(body))) == sent and sent.final
    junk = Answer.from_json({"cmd_id": 7, "state": "failed", "result": [1], "error": "boom", "progress": "x"})
    assert junk.cmd_id is None and junk.result is None and junk.progress == {} and junk.final
    assert junk.error == CommandError("?", "no message", False)
    assert not Answer.from_json({"state": "progress", "progress": {"stage": "verified"}}).final
    assert FINAL_STATES == {"succeeded", "failed", "expired", "canceled", "rejected"}


def test_typed_errors_map_to_codes_and_retryable_flags() -> None:
    assert error_for(BusyError("later")) == CommandError(ErrorCode.BUSY, "later", True)
    assert error_for(IntegrityError("bad chunk")).code == ErrorCode.CHECKSUM_MISMATCH
    assert error_for(UsageError("no")).to_json() == {"code": "INVALID_ARGS", "message": "no", "retryable": False}
    internal = error_for(KeyError("k"))
    assert internal.code == ErrorCode.INTERNAL and internal.retryable and "KeyError" in internal.message
