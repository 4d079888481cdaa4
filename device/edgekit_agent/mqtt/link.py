"""The agent's link: its :class:`~edgekit_agent.mqtt.client.MqttClient`, fed from the outbox.

- The agent starts and serves even when the broker is down (telemetry waits in the outbox).
- Every CONNACK first publishes the retained birth (``status`` = online, with ``boot_id``), then the client
  resubscribes to ``cmd/+``. The LWT is ``offline``/``lwt`` with the same ``boot_id``; a clean stop publishes
  ``offline``/``shutdown`` itself (paho never sends the LWT on a clean disconnect).
- One worker thread (the client's) turns PUBACKs into outbox acknowledgements, delivers commands and feeds
  a small in-flight window from the outbox, so paho's memory queue never holds more than ``inflight``.
- A PUBACK with a reason code ≥ 0x80 (e.g. 0x87 refused by the ACL) is counted and the message is removed:
  retrying a refused message forever would block the outbox. It is logged once per topic and reason
  (an ACL that refuses telemetry would otherwise write a line per window, forever).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import paho.mqtt.client as mqtt

from edgekit_agent import __version__
from edgekit_agent.contract.errors import BrokerError
from edgekit_agent.contract.topics import Schema, Topics
from edgekit_agent.mqtt.client import BrokerSettings, Message, MqttClient, cap, check_rc, reason_text
from edgekit_agent.mqtt.outbox import Outbox, OutboxEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LinkStats:
    connected: bool
    connects: int
    inflight: int
    sent: int
    acked: int
    refused: int


def _nothing() -> None:
    """Posted by :meth:`Link.wake`: the worker then feeds the outbox."""


class Link(MqttClient):
    """One device's connection to the broker. ``start()``, then ``wake()`` after every outbox put; ``close()``."""

    def __init__(
        self,
        settings: BrokerSettings,
        device_id: str,
        boot_id: str,
        outbox: Outbox,
        on_message: Callable[[Message], None],
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.device_id = device_id
        self.boot_id = boot_id
        self.topics = Topics(device_id)
        super().__init__(settings, device_id, subscriptions=[(self.topics.commands, 1)], label=f"device '{device_id}'")
        self.outbox = outbox
        self._on_message = on_message
        self._on_connected = on_connected
        self._inflight: dict[int, OutboxEntry] = {}  # paho mid -> outbox entry (worker thread only)
        self.drained = threading.Event()
        self._sent = self._acked = self._refused = 0
        self._refusals_said: set[tuple[str, int]] = set()  # (topic, reason) already logged

    def status_message(self, state: str, reason: str) -> bytes:
        """A ``status`` payload. Status is state, not a stream: it bypasses the outbox and has no ``seq``."""
        doc = {
            "schema": Schema.STATUS,
            "device_id": self.device_id,
            "boot_id": self.boot_id,
            "epoch": self.outbox.epoch,
            "seq": None,
            "ts": int(time.time() * 1000),
            "agent_version": __version__,
            "state": state,
            "reason": reason,
            # A device whose outbox has no disk left says so in its retained state, not only in an event.
            "disk_full": self.outbox.disk_full is not None,
        }
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    # --- the client's hooks ------------------------------------------------------------------------------------
    def will(self) -> tuple[str, bytes]:
        # The LWT's ts is when it was registered (the broker sends it later, verbatim); boot_id tells a
        # consumer which agent run it belongs to, so a late LWT of an older connection is recognised.
        return self.topics.status, self.status_message("offline", "lwt")

    def announce(self) -> None:
        # Birth first, before paho resends anything it kept and before the worker feeds the window.
        self.publish(self.topics.status, self.status_message("online", "connected"), retain=True)

    def handle_message(self, msg: Message) -> None:
        self.post(partial(self._on_message, msg))

    def handle_puback(self, mid: int, code: int) -> None:
        self.post(partial(self._acknowledged, mid, code))

    def handle_connected(self) -> None:
        if self._on_connected is not None:
            self._on_connected()  # e.g. republish retained state a restarted broker may have lost

    def handle_idle(self) -> None:
        self._pump()

    def while_unreachable(self) -> str:
        return (
            f"; serving anyway: telemetry waits in the outbox (up to {self.outbox.max_messages} messages, "
            f"{self.outbox.max_bytes // (1024 * 1024)} MB) and is sent when the broker is back"
        )

    # --- the worker thread ----------------------------------------------------------------------------------------
    def wake(self) -> None:
        """Tell the worker the outbox has something new."""
        self.post(_nothing)

    def _acknowledged(self, mid: int, code: int) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        if code >= 0x80:
            self._refused += 1
            said = (entry.topic, code) in self._refusals_said
            if not said and len(self._refusals_said) < 100:
                self._refusals_said.add((entry.topic, code))
            log.log(
                logging.DEBUG if said else logging.ERROR,
                "%s: %s refused a message to %s (PUBACK %s%s): dropped, and so will be every later one it "
                "refuses there (counted as outbox.refused in telemetry, logged once); check the broker's ACL "
                "for user '%s' (docs/trust.md). Dropped: %s",
                self.device_id,
                self.address.url,
                entry.topic,
                reason_text(code),
                ", NOT_AUTHORIZED" if code == 0x87 else "",
                self.address.username,
                cap(entry.payload),
            )
        else:
            self._acked += 1
        self.outbox.ack(entry.id)

    def _pump(self) -> None:
        if not self.connected.is_set():
            return
        free = self.settings.inflight - len(self._inflight)
        if free > 0:
            # Messages already handed to paho stay there across reconnects (paho resends them itself).
            batch = self.outbox.head(free, exclude={e.id for e in self._inflight.values()}, pin=True)
            for i, entry in enumerate(batch):
                try:
                    info = self.publish(
                        entry.topic, entry.payload, qos=entry.qos, retain=entry.retain, correlation=entry.correlation
                    )
                except ValueError as exc:  # a topic or payload paho will never accept: drop it, or it blocks the rest
                    self._refused += 1
                    log.error(
                        "%s: dropped outbox message %d to %r that MQTT cannot carry (%s): %s",
                        self.device_id,
                        entry.id,
                        entry.topic,
                        exc,
                        cap(entry.payload),
                    )
                    self.outbox.ack(entry.id)
                    continue
                if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                    log.warning(
                        "%s: paho refused to queue outbox message %d (%s); will retry",
                        self.device_id,
                        entry.id,
                        mqtt.error_string(info.rc),
                    )
                    for rest in batch[i:]:
                        self.outbox.unpin(rest.id)
                    break
                self._inflight[info.mid] = entry
                self._sent += 1
        if self.outbox.depth == 0 and not self._inflight:
            self.drained.set()
        else:
            self.drained.clear()

    # --- direct publishing and shutdown ------------------------------------------------------------------------
    def publish_direct(self, topic: str, payload: bytes, *, retain: bool = False, wait_s: float = 0.0) -> bool:
        """Publish outside the outbox (status only); with ``wait_s`` wait for the PUBACK. True if acknowledged."""
        info = self.publish(topic, payload, retain=retain)
        check_rc(info.rc, f"publishing to {topic}")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                if info.is_published():
                    return True
            except (ValueError, RuntimeError):  # paho could not queue it: no acknowledgement will come
                return False
            time.sleep(0.01)
        return False

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty and every message acknowledged (or ``timeout`` s). True if drained."""
        deadline = time.monotonic() + timeout
        self.wake()
        while time.monotonic() < deadline:
            if self.drained.wait(0.05) and self.outbox.depth == 0:
                return True
            self.wake()
        return False

    def stats(self) -> LinkStats:
        return LinkStats(
            self.connected.is_set(), self.connects, len(self._inflight), self._sent, self._acked, self._refused
        )

    def close(self, *, timeout: float = 3.0) -> bool:
        """Publish ``offline``/``shutdown`` (retained), wait for its PUBACK, disconnect. True if it was acknowledged."""
        acked = False
        if self.connected.is_set():
            try:
                acked = self.publish_direct(
                    self.topics.status, self.status_message("offline", "shutdown"), retain=True, wait_s=timeout
                )
            except BrokerError as exc:
                log.warning("%s: could not publish the shutdown status: %s", self.device_id, exc)
        super().close()
        return acked

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._stopping.is_set():
            self.close()
