"""Send commands to devices and wait for their answers: the one request/response client of the fleet tools
(remote bench, OTA deploy, ping), over a shared :class:`~edgekit.fleet.connection.FleetLink`.

Requests are built by :class:`edgekit_agent.contract.envelope.Request` (MQTT 5 properties, or the payload
fields on MQTT 3.1.1). A dispatcher thread takes every received message: an answer on ``res/{requester}`` is
matched to its request by the MQTT 5 CorrelationData property, else the payload's ``correlation_data``
(MQTT 3.1.1), else its ``cmd_id`` (older agents); every other message goes to ``on_message``.

A request the broker refuses (MQTT 5 PUBACK reason ≥ 0x80, e.g. 0x87 when the ACL does not let this user
command that device) never reaches a device: it is answered here at once, ``rejected`` with the code
``NOT_AUTHORIZED``, and :meth:`CommandClient.finish` raises :class:`NotAuthorizedError` (exit 8) instead of
waiting out a timeout. (MQTT 3.1.1 has no PUBACK reason codes: there a refused request stays unanswered.)
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from edgekit.fleet.connection import FleetLink, drain
from edgekit.fleet.state import load_json
from edgekit_agent.contract.envelope import Answer, CommandError, ErrorCode, Request, State
from edgekit_agent.contract.errors import BrokerError, CommandFailed, NotAuthorizedError
from edgekit_agent.contract.topics import parse_topic, topic
from edgekit_agent.mqtt.client import Message, check_rc, reason_text

AnswerFn = Callable[[Answer], None]


class Pending:
    """A request in flight: its answers as they come (``accepted``, ``progress``…, then a final one)."""

    def __init__(self, request: Request, wake: threading.Event | None = None) -> None:
        self.request = request
        self.states: list[str] = []
        self.final: Answer | None = None
        self._answers: queue.Queue[Answer] = queue.Queue()
        self._wake = wake

    def put(self, answer: Answer) -> None:
        """Dispatcher thread."""
        self._answers.put(answer)
        if self._wake is not None:
            self._wake.set()

    def _take(self, answer: Answer, on_answer: AnswerFn | None) -> None:
        self.states.append(answer.state)
        if on_answer is not None:
            on_answer(answer)
        if answer.final:
            self.final = answer

    def poll(self) -> Answer | None:
        """Take the answers that arrived, without waiting; the final answer once it came."""
        while self.final is None:
            try:
                answer = self._answers.get_nowait()
            except queue.Empty:
                break
            self._take(answer, None)
        return self.final

    def wait(self, timeout: float, on_answer: AnswerFn | None = None) -> Answer | None:
        """Wait up to ``timeout`` s for the final answer (None if it did not come), calling ``on_answer`` for
        every answer on the way."""
        deadline = time.monotonic() + timeout
        while self.final is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                answer = self._answers.get(timeout=left)
            except queue.Empty:
                break
            self._take(answer, on_answer)
        return self.final


class CommandClient:
    """Commands from ``requester`` over ``link`` (which the caller starts and closes). Use as a context
    manager, or :meth:`start` and :meth:`close`."""

    def __init__(self, link: FleetLink, requester: str, *, on_message: Callable[[Message], None] | None = None) -> None:
        self.link = link
        self.requester = requester
        self._on_message = on_message
        self._answer_kind = f"res/{requester}"
        self._pending: dict[str, Pending] = {}
        self._by_mid: dict[int, Pending] = {}  # requests until their PUBACK
        self._early: dict[int, int] = {}  # PUBACK reason codes that came before their request was registered
        self._lock = threading.Lock()
        link.on_puback = self._on_puback
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._dispatch, name=f"edgekit-{requester}", daemon=True)

    def start(self) -> CommandClient:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)

    def __enter__(self) -> CommandClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sending ------------------------------------------------------------------------------------------------
    def send(
        self,
        device_id: str,
        name: str,
        args: Mapping[str, Any],
        *,
        timeout_s: float,
        wake: threading.Event | None = None,
    ) -> Pending:
        """Publish one request (expiring after ``timeout_s``); ``wake`` is set whenever an answer to it arrives."""
        self._subscribe(topic(device_id, "res", self.requester))
        request = Request.new(device_id, name, args, requester=self.requester, timeout_s=timeout_s)
        pending = Pending(request, wake)
        with self._lock:  # before publishing: the answer may come before publish() returns
            self._pending[request.cmd_id] = pending
        self._publish(pending)
        return pending

    def resend(self, pending: Pending) -> None:
        """Publish ``pending``'s request again, same ``cmd_id``: a device that had it answers from its store
        (``duplicate``), one that lost it (it died before storing it) runs it now."""
        with self._lock:
            self._pending.setdefault(pending.request.cmd_id, pending)
        self._publish(pending)

    def _publish(self, pending: Pending) -> None:
        request = pending.request
        timeout_s = max(1, int((request.expires_at or 0) / 1000 - time.time()))
        info = self.link.publish(
            request.topic,
            request.payload(mqtt5=self.link.mqtt5),
            qos=1,
            response_topic=request.response_topic,
            correlation=request.correlation,
            expiry_s=timeout_s,
        )
        check_rc(info.rc, f"sending {request.name} to {request.device_id}")
        with self._lock:  # the PUBACK may have come already (paho's thread): then it waits in _early
            code = self._early.pop(info.mid, None)
            if code is None:
                self._by_mid[info.mid] = pending
        if code is not None and code >= 0x80:
            self._refuse(pending, code)

    def _on_puback(self, mid: int, code: int) -> None:
        """paho's thread: a refused request is answered here, since no device will."""
        with self._lock:
            pending = self._by_mid.pop(mid, None)
            if pending is None:  # before _publish registered it (or not ours): kept for _publish to find
                if len(self._early) >= 1024:
                    self._early.pop(next(iter(self._early)))
                self._early[mid] = code
        if pending is not None and code >= 0x80:
            self._refuse(pending, code)

    def _refuse(self, pending: Pending, code: int) -> None:
        r = self.link.address
        user = f"user '{r.username}'" if r.username else "an anonymous client"
        message = (
            f"the broker at {r.url} refused {pending.request.name} to device '{pending.request.device_id}' "
            f"(PUBACK {reason_text(code)}): {user} may not publish to {pending.request.topic}; check the broker's "
            'ACL (docs/trust.md, "Broker security") or use the fleet user\'s credentials.'
        )
        with self._lock:
            self._pending.pop(pending.request.cmd_id, None)
        error = CommandError(ErrorCode.NOT_AUTHORIZED if code == 0x87 else ErrorCode.UNAVAILABLE, message)
        pending.put(Answer(pending.request.cmd_id, pending.request.name, State.REJECTED, error=error))

    def finish(self, pending: Pending, timeout_s: float, on_answer: AnswerFn | None = None) -> Answer:
        """The ``succeeded`` answer to ``pending``; :class:`CommandFailed` (with the device's error code) when
        the device refused or failed it, :class:`BrokerError` when no final answer came within ``timeout_s``."""
        answer = pending.wait(timeout_s, on_answer)
        device_id, name = pending.request.device_id, pending.request.name
        if answer is None:
            seen = (
                f" (it said: {', '.join(pending.states)})"
                if pending.states
                else " (no answer at all: is it online? see `edgekit watch`)"
            )
            raise BrokerError(f"device '{device_id}' did not finish {name} within {timeout_s:g} s{seen}.")
        if answer.state != State.SUCCEEDED:
            err = answer.error or CommandError("?", "no message")
            if err.code == ErrorCode.NOT_AUTHORIZED:
                raise NotAuthorizedError(err.message)
            raise CommandFailed(
                f"device '{device_id}' answered {answer.state} to {name}: {err.code}: {err.message}",
                code=err.code,
                retryable=err.retryable,
            )
        return answer

    def call(
        self, device_id: str, name: str, args: Mapping[str, Any], *, timeout_s: float, on_answer: AnswerFn | None = None
    ) -> Answer:
        """:meth:`send` and :meth:`finish`."""
        return self.finish(self.send(device_id, name, args, timeout_s=timeout_s), timeout_s, on_answer)

    def _subscribe(self, name: str) -> None:
        with self._lock:
            if any(s == name for s, _ in self.link.subscriptions):
                return
        self.link.subscribe(name, 1)  # returns once acknowledged: no answer can be missed
        self.link.check_subscriptions()

    # --- receiving ----------------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while not self._stop.is_set():
            # No lingering for a batch: answers are few, and each waits for the one before (a ping, a chunk).
            for m in drain(self.link.messages, 0.2, linger=0):
                if not self._route(m) and self._on_message is not None:
                    self._on_message(m)

    def _route(self, m: Message) -> bool:
        """Hand an answer to its request; False when ``m`` is not an answer to this requester."""
        parsed = parse_topic(m.topic)
        if parsed is None or parsed[1] != self._answer_kind:
            return False
        doc = load_json(m.payload)
        if not isinstance(doc, dict):
            return True
        key = (
            m.correlation.decode("utf-8", "replace")
            if m.correlation is not None
            else doc.get("correlation_data", doc.get("cmd_id"))
        )
        answer = Answer.from_json(doc)
        with self._lock:
            pending = self._pending.get(key) if isinstance(key, str) else None
            if pending is not None and answer.final:
                del self._pending[key]
        if pending is not None:
            pending.put(answer)
        return True
