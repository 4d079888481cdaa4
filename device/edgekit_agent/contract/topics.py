"""The edge/v1 topic tree and payload schema names (docs/agent.md, "Topics and payloads").

Every topic is ``edge/v1/{device_id}/{kind}``; the root is written here and nowhere else. Device → fleet
kinds: ``status``, ``meta``, ``telemetry/inference``, ``events``, ``bench/{run_id}/report`` and
``res/{requester}`` (command answers); fleet → device: ``cmd/{name}`` (the request envelope is in
:mod:`edgekit_agent.contract.envelope`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

ROOT = "edge/v1"
#: Every edge/v1 payload is JSON; MQTT 5 messages say so in their ContentType property.
CONTENT_TYPE = "application/json"

# The kinds a fleet consumer follows (what comes after the device id).
STATUS = "status"
META = "meta"
TELEMETRY = "telemetry/inference"
EVENTS = "events"


class Schema(StrEnum):
    """The ``schema`` field of each payload (a ``str``: compares and serialises as its value)."""

    STATUS = "edge.status/1"
    META = "edge.meta/1"
    TELEMETRY = "edge.telemetry.inference/1"
    EVENT = "edge.event/1"
    BENCH_REPORT = "edge.bench.report/1"
    COMMAND_RESPONSE = "edge.command.response/1"


def topic(device_id: str, *parts: str) -> str:
    """``edge/v1/{device_id}/part/...`` (``device_id`` may be the ``+`` wildcard of a subscription filter)."""
    return "/".join((ROOT, device_id, *parts))


def every_device(kind: str) -> str:
    """The subscription filter for ``kind`` from every device: ``edge/v1/+/{kind}``."""
    return topic("+", kind)


def parse_topic(name: str) -> tuple[str, str] | None:
    """``edge/v1/dev-1/telemetry/inference`` → ``("dev-1", "telemetry/inference")``; None outside the tree."""
    root, sep, rest = name.partition(f"{ROOT}/")
    device_id, sep2, kind = rest.partition("/")
    if root or not sep or not device_id or not sep2 or not kind:
        return None
    return device_id, kind


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names of one device."""

    device_id: str

    @property
    def status(self) -> str:
        return topic(self.device_id, STATUS)

    @property
    def meta(self) -> str:
        return topic(self.device_id, META)

    @property
    def telemetry(self) -> str:
        return topic(self.device_id, TELEMETRY)

    @property
    def events(self) -> str:
        return topic(self.device_id, EVENTS)

    @property
    def commands(self) -> str:
        """The subscription filter for every command to this device."""
        return topic(self.device_id, "cmd", "+")

    def command(self, name: str) -> str:
        return topic(self.device_id, "cmd", name)

    def command_name(self, name: str) -> str | None:
        """The command a ``cmd/{name}`` topic of this device names; None for any other topic."""
        prefix = topic(self.device_id, "cmd", "")
        if not name.startswith(prefix) or "/" in name[len(prefix) :]:
            return None
        return name[len(prefix) :]

    def bench(self, run_id: str) -> str:
        return topic(self.device_id, "bench", run_id, "report")

    def res(self, requester: str) -> str:
        return topic(self.device_id, "res", requester)
