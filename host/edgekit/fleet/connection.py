"""The fleet tools' link: the one MQTT client (:class:`edgekit_agent.mqtt.client.MqttClient`) plus what only a
consumer on the workstation needs: a start that waits for the broker and says why it failed, a queue of
received messages and :func:`drain` to take them in batches (or, with ``on_message``, each message handed to a
function on paho's thread, no queue). Used by watch, the exporter, remote bench, deploy and the demo.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections.abc import Callable, Sequence

from edgekit_agent.contract.broker import BrokerAddress
from edgekit_agent.contract.errors import BrokerError
from edgekit_agent.mqtt.client import BrokerSettings, Message, MqttClient, why_unreachable

log = logging.getLogger(__name__)

# How long every connect attempt may fail (refused, unreachable, TLS) before start() gives up early.
CONNECT_GRACE_S = 2.0
_START_ADVICE = "Start a development broker with `edgekit broker`, or pass --broker mqtt://HOST:PORT."


class FleetLink(MqttClient):
    """A connected client feeding :attr:`messages` (paho's thread puts, one consumer takes with :func:`drain`).

    ``broker`` is a URL (a user name without a password takes it from ``EDGEKIT_MQTT_PASSWORD``) or a
    :class:`BrokerAddress`; ``protocol`` is ``auto`` (MQTT 5, falling back to 3.1.1), ``5`` or ``3.1.1``;
    ``session_expiry_s`` > 0 keeps a persistent session (the broker queues QoS 1 messages while we are away).
    ``on_message`` takes each message on paho's network thread instead of :attr:`messages` (it must be quick
    and must not raise: the exporter applies there, saving a queue and a thread hop per message).
    ``no_delay=False`` leaves Nagle's algorithm on, for a pure consumer (watch, the exporter): it sends only
    PUBACKs, which then share TCP segments in a burst like a bare paho client's; anything that sends requests
    and waits for answers keeps the default (docs/mqtt311.md: 44 ms a round trip otherwise).
    """

    def __init__(
        self,
        broker: str | BrokerAddress,
        *,
        client_id: str | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        protocol: str = "auto",
        max_queue: int = 0,
        session_expiry_s: int = 0,
        tls_ca: str | None = None,
        on_message: Callable[[Message], None] | None = None,
        no_delay: bool = True,
    ) -> None:
        tls_ca = str(tls_ca) if tls_ca else None  # a private CA (a lab broker's); None: the system's CAs
        if not isinstance(broker, BrokerAddress):
            broker = BrokerAddress.parse(broker, tls=bool(tls_ca), password_env=True)
        settings = BrokerSettings(
            broker,
            tls_ca=tls_ca,
            reconnect_min_s=0.2,
            reconnect_max_s=5,
            inflight=16,  # paho's default window of 20
            session_expiry_s=session_expiry_s,
            mqtt_version=protocol,
            no_delay=no_delay,
        )
        super().__init__(settings, client_id or f"edgekit-{uuid.uuid4().hex[:10]}", subscriptions=subscriptions)
        self.messages: queue.Queue[Message] = queue.Queue(max_queue)
        # Our publishes the broker refused: message id -> MQTT 5 PUBACK reason >= 0x80 (e.g. 0x87 from an ACL).
        self.refused_publishes: dict[int, int] = {}
        # paho's thread, on every PUBACK (mid, reason code): how CommandClient fails a refused request at once.
        self.on_puback: Callable[[int, int], None] | None = None
        self._on_message = on_message

    def handle_message(self, msg: Message) -> None:
        if self._on_message is not None:
            self._on_message(msg)
            return
        try:
            self.messages.put_nowait(msg)
        except queue.Full:  # a bounded queue drops the newest rather than block paho's network thread
            log.warning("message queue full: dropped a message on %s", msg.topic)

    def handle_puback(self, mid: int, code: int) -> None:
        if code >= 0x80:
            self.refused_publishes[mid] = code
        if self.on_puback is not None:
            self.on_puback(mid, code)

    def start(self, timeout: float = 10.0) -> FleetLink:
        """Connect, wait for the first CONNACK and the subscriptions' SUBACKs; :class:`BrokerError` if the
        broker cannot be reached or refuses us (with the reason and what to do), :class:`NotAuthorizedError`
        when it refuses the credentials or a subscription. Started already: returns."""
        if self._client is not None:
            return self
        self._announce_outages = False  # the error below says it; a warning too would say it twice
        super().start()
        try:
            self._wait_connected(timeout)
        except BrokerError:
            self.close()
            raise
        finally:
            self._announce_outages = True
        self.wait_subscribed(timeout)
        try:
            self.check_subscriptions()
        except BrokerError:
            self.close()
            raise
        return self

    def _wait_connected(self, timeout: float) -> None:
        """Give up early when every connect attempt has failed for CONNECT_GRACE_S (nothing listens, a wrong
        host, a TLS handshake that fails): a broker still starting up gets that long."""
        url = self.address.url
        deadline = time.monotonic() + timeout
        while not self.connected.wait(0.05):
            if self.fatal is not None:
                raise self.fatal
            if self.refused is not None:
                raise BrokerError(f"the MQTT broker at {url} refused the connection ({self.refused}); check its log.")
            now, first = time.monotonic(), self.unreachable_since
            if first is not None and now - first >= CONNECT_GRACE_S:
                why, listening = why_unreachable(self.address)
                advice = "" if listening else f" Is a broker running there? {_START_ADVICE}"
                raise BrokerError(f"cannot reach the MQTT broker at {url}: {why}.{advice}")
            if now >= deadline:
                raise BrokerError(
                    f"no answer from the MQTT broker at {url} within {timeout:g} s: is it running? {_START_ADVICE}"
                )

    def __enter__(self) -> FleetLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def drain(q: queue.Queue[Message], first_timeout: float, limit: int = 10_000, linger: float = 0.01) -> list[Message]:
    """Wait up to ``first_timeout`` for one message, then take whatever else is queued (up to ``limit``).

    After the first message it lingers ``linger`` seconds so that a burst is taken as one batch: waking
    the consumer once per message costs a GIL hand-over with paho's thread each time, which halved
    the throughput in scripts/bench_fleet.py.
    """
    out: list[Message] = []
    try:
        out.append(q.get(timeout=first_timeout) if first_timeout > 0 else q.get_nowait())
    except queue.Empty:
        return out
    if linger > 0 and q.qsize() < limit:
        time.sleep(linger)
    while len(out) < limit:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            break
    return out
