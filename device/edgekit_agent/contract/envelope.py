"""The command envelope of edge/v1 (docs/agent.md, "Commands"): the request a fleet tool publishes to
``cmd/{name}``, the answers a device sends back, their states and the error codes.

A request is ``{cmd_id, name, args, expires_at (ms since the epoch) | null, requester}``. On MQTT 5 the
ResponseTopic and CorrelationData (= ``cmd_id``) are properties; MQTT 3.1.1 has no properties, so there the
payload carries ``response_topic`` and ``correlation_data`` too. Every answer is
``{schema, cmd_id, name, state, result | error, correlation_data?}``: ``accepted`` or ``rejected`` at once,
then (for an accepted command) ``progress`` answers and exactly one final state. Errors are
``{code, message, retryable}``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from edgekit_agent.contract import errors as E
from edgekit_agent.contract.topics import Schema, topic

#: The requester a request names when it names none: answers then go to ``res/fleet``.
DEFAULT_REQUESTER = "fleet"


class State(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"  # expired while it waited in the device's queue
    CANCELED = "canceled"  # the agent stopped (or restarted) before it ran


#: After one of these no further answer comes for that ``cmd_id``.
FINAL_STATES = frozenset({State.SUCCEEDED, State.FAILED, State.EXPIRED, State.CANCELED, State.REJECTED})


class ErrorCode(StrEnum):
    INVALID_PAYLOAD = "INVALID_PAYLOAD"  # not JSON / not an object / bad envelope field / too large
    UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
    INVALID_ARGS = "INVALID_ARGS"
    EXPIRED = "EXPIRED"
    BUSY = "BUSY"  # the device's command queue is full
    SELFTEST_FAILED = "SELFTEST_FAILED"
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"
    UNAVAILABLE = "UNAVAILABLE"
    STORAGE = "STORAGE"
    FAILED = "FAILED"  # any other typed error
    INTERNAL = "INTERNAL"  # an untyped exception in a handler
    AGENT_RESTARTED = "AGENT_RESTARTED"  # the agent died while the command ran
    SHUTTING_DOWN = "SHUTTING_DOWN"
    # Never sent by a device: the broker refused the request (PUBACK reason >= 0x80, e.g. 0x87 from its ACL),
    # so no device saw it. The fleet tools answer it themselves (edgekit.fleet.command_client).
    NOT_AUTHORIZED = "NOT_AUTHORIZED"


#: A handler's typed error -> (code, retryable); first match wins, so subclasses come before their bases.
ERROR_CODES: tuple[tuple[type[BaseException], ErrorCode, bool], ...] = (
    (E.SelfTestError, ErrorCode.SELFTEST_FAILED, False),
    (E.SignatureError, ErrorCode.SIGNATURE_INVALID, False),
    (E.IntegrityError, ErrorCode.CHECKSUM_MISMATCH, False),
    (E.InputError, ErrorCode.INVALID_ARGS, False),
    (E.UsageError, ErrorCode.INVALID_ARGS, False),
    (E.BusyError, ErrorCode.BUSY, True),
    (E.BrokerError, ErrorCode.UNAVAILABLE, True),
    (E.RuntimeUnavailableError, ErrorCode.UNAVAILABLE, False),
    (E.DelegateError, ErrorCode.UNAVAILABLE, False),
    (E.StorageError, ErrorCode.STORAGE, True),
    (E.EdgekitError, ErrorCode.FAILED, False),
)


@dataclass(frozen=True, slots=True)
class CommandError:
    """The ``error`` of an answer. ``code`` is an :class:`ErrorCode` from this agent; a string from another."""

    code: str
    message: str
    retryable: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}

    @classmethod
    def from_json(cls, doc: Any) -> CommandError:
        """Read a device's error object (untrusted: missing or mistyped fields become ``?`` / empty)."""
        doc = doc if isinstance(doc, Mapping) else {}
        return cls(str(doc.get("code") or "?"), str(doc.get("message") or "no message"), doc.get("retryable") is True)


def error_for(exc: BaseException) -> CommandError:
    """The error answer for an exception a handler raised."""
    for typ, code, retryable in ERROR_CODES:
        if isinstance(exc, typ):
            return CommandError(code, str(exc), retryable)
    return CommandError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", True)


@dataclass(frozen=True, slots=True)
class Request:
    """A command request as a fleet tool sends it: build one with :meth:`new`, publish :meth:`payload` to
    :attr:`topic` with ResponseTopic :attr:`response_topic` and CorrelationData :attr:`correlation`."""

    device_id: str
    cmd_id: str
    name: str
    args: Mapping[str, Any]
    requester: str
    expires_at: int | None  # ms since the epoch (UTC)

    @classmethod
    def new(cls, device_id: str, name: str, args: Mapping[str, Any], *, requester: str, timeout_s: float) -> Request:
        """A request with a fresh ``cmd_id`` that expires ``timeout_s`` from now."""
        cmd_id = f"{requester}-{uuid.uuid4().hex[:20]}"
        return cls(device_id, cmd_id, name, dict(args), requester, int((time.time() + timeout_s) * 1000))

    @property
    def topic(self) -> str:
        return topic(self.device_id, "cmd", self.name)

    @property
    def response_topic(self) -> str:
        return topic(self.device_id, "res", self.requester)

    @property
    def correlation(self) -> bytes:
        """CorrelationData: the ``cmd_id`` (also the payload's ``correlation_data`` on MQTT 3.1.1)."""
        return self.cmd_id.encode()

    def payload(self, *, mqtt5: bool) -> bytes:
        body: dict[str, Any] = {
            "cmd_id": self.cmd_id,
            "name": self.name,
            "args": dict(self.args),
            "expires_at": self.expires_at,
            "requester": self.requester,
        }
        if not mqtt5:  # no properties on 3.1.1: the request/response fields travel in the payload
            body.update(response_topic=self.response_topic, correlation_data=self.cmd_id)
        return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer to a command. ``result`` and ``progress`` are the command's own JSON objects, as sent."""

    cmd_id: str | None
    name: str | None
    state: str
    result: Mapping[str, Any] | None = None
    error: CommandError | None = None
    progress: Mapping[str, Any] = field(default_factory=dict)
    correlation_data: str | None = None  # the request's, echoed (how a 3.1.1 requester matches answers)
    duplicate: bool = False  # a repeated cmd_id: the stored answer again

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "schema": Schema.COMMAND_RESPONSE,
            "cmd_id": self.cmd_id,
            "name": self.name,
            "state": self.state,
        }
        if self.result is not None:
            body["result"] = dict(self.result)
        if self.error is not None:
            body["error"] = self.error.to_json()
        if self.progress:
            body["progress"] = dict(self.progress)
        if self.correlation_data is not None:
            body["correlation_data"] = self.correlation_data
        if self.duplicate:
            body["duplicate"] = True
        return body

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Answer:
        """Read an answer a device sent (untrusted: fields of the wrong type are left out)."""

        def text(key: str) -> str | None:
            v = doc.get(key)
            return v if isinstance(v, str) else None

        result, progress = doc.get("result"), doc.get("progress")
        return cls(
            cmd_id=text("cmd_id"),
            name=text("name"),
            state=str(doc.get("state")),
            result=result if isinstance(result, Mapping) else None,
            error=CommandError.from_json(doc["error"]) if "error" in doc else None,
            progress=progress if isinstance(progress, Mapping) else {},
            correlation_data=text("correlation_data"),
            duplicate=doc.get("duplicate") is True,
        )
