"""The workstation's MQTT link: one paho client (MQTT 5, callback API 2) whose callbacks only queue messages.

paho holds its lock while calling back, so doing work there invites deadlocks: :class:`MqttLink` puts every
message on :attr:`MqttLink.messages` and the fleet tools consume it with :func:`drain`. When the broker
refuses MQTT 5 (amqtt, the pure-Python development broker, speaks only 3.1.1) the link reconnects with
3.1.1 and says so: retained messages, QoS 1 and the last will still work, shared subscriptions and MQTT 5
request/response properties do not. Used by watch, the exporter, remote bench and deploy (re-exported by
:mod:`edgekit.fleet.state`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgekit_agent.contract.errors import BrokerError, UsageError
from edgekit_agent.mqtt.link import BrokerUrl, no_delay, why_unreachable

log = logging.getLogger(__name__)

# Reason codes after which retrying cannot help (Home Assistant stops its backoff on these too).
_FATAL_CONNECT = {"Bad user name or password", "Not authorized", "Banned", "Client identifier not valid"}
_UNSUPPORTED_PROTOCOL = "Unsupported protocol version"
# How long every connect attempt may fail (refused, unreachable, TLS) before start() gives up early.
CONNECT_GRACE_S = 2.0


#: Where a broker listens (host, port, tls, username, password; ``.url`` without credentials): the agent's
#: URL parser, so that both sides read ``mqtt://user@host:port`` the same way.
BrokerAddress = BrokerUrl


@dataclass(frozen=True, slots=True)
class Message:
    """One received MQTT message (what the link's callback puts on the queue)."""

    topic: str
    payload: bytes
    retain: bool
    received: float  # time.time() when it arrived
    correlation_data: bytes | None = None


class MqttLink:
    """A connected paho client feeding :attr:`messages`; resubscribes in every ``on_connect``.

    ``protocol`` is ``"auto"`` (MQTT 5, falling back to 3.1.1 when the broker refuses 5), ``"5"`` or
    ``"3.1.1"``. After :meth:`start`, :attr:`mqtt5` says which one is in use.
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
    ) -> None:
        self.address = broker if isinstance(broker, BrokerUrl) else BrokerUrl.parse(broker, password_env=True)
        self.client_id = client_id or f"edgekit-{uuid.uuid4().hex[:10]}"
        self.subscriptions = list(subscriptions)
        if protocol not in ("auto", "5", "3.1.1"):
            raise UsageError(f"MQTT protocol '{protocol}': use auto, 5 or 3.1.1.")
        self.protocol = protocol
        # A private CA (a lab broker's self-made certificate); None: the system's trusted CAs.
        self.tls_ca = str(tls_ca) if tls_ca else None
        self.mqtt5 = protocol != "3.1.1"
        self.messages: queue.Queue[Message] = queue.Queue(max_queue)
        # > 0: a persistent session (MQTT 5 clean_start=False): the broker queues QoS 1 messages while
        # we are away and delivers them on reconnect with the same client_id.
        self.session_expiry_s = session_expiry_s
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._refused: str | None = None
        self._first_failure: float | None = None  # monotonic time of the first failed TCP/TLS connect (paho's thread)
        # SUBSCRIBE packet ids sent and acknowledged: some brokers (amqtt) apply a subscription only
        # when they send the SUBACK, so "subscribed" means acknowledged.
        self._sub_sent: set[int] = set()
        self._sub_acked: set[int] = set()
        # Message ids of our publishes the broker refused (MQTT 5 PUBACK reason >= 0x80, e.g. 0x87 from an ACL).
        self.refused_publishes: set[int] = set()

    # paho callbacks: only hand work over (see the module docstring) ------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            self._connected.set()
            return
        self._sub_sent.clear()
        self._sub_acked.clear()
        for name, qos in self.subscriptions:
            self._sub_sent.add(client.subscribe(self._filter(name), qos)[1])
        self._refused = None
        self._connected.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any, *_: Any) -> None:
        if self._first_failure is None:
            self._first_failure = time.monotonic()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, *_: Any) -> None:
        if not self._connected.is_set():  # closed before any CONNACK: the peer does not speak MQTT (to us)
            self._on_connect_fail(client, userdata)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any = None) -> None:
        self._sub_acked.add(mid)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            self.refused_publishes.add(mid)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        corr = None
        if self.mqtt5 and msg.properties is not None:
            corr = getattr(msg.properties, "CorrelationData", None)
        try:
            self.messages.put_nowait(Message(msg.topic, msg.payload, bool(msg.retain), time.time(), corr))
        except queue.Full:  # a bounded queue drops the newest rather than block paho's network thread
            log.warning("message queue full: dropped a message on %s", msg.topic)

    def _filter(self, name: str) -> str:
        # MQTT 3.1.1 has no shared subscriptions: "$share/G/x" would be a literal topic that never matches.
        if not self.mqtt5 and name.startswith("$share/"):
            return name.split("/", 2)[2]
        return name

    def _make_client(self) -> mqtt.Client:
        proto = mqtt.MQTTv5 if self.mqtt5 else mqtt.MQTTv311
        kwargs: dict[str, Any] = {"client_id": self.client_id, "protocol": proto}
        if not self.mqtt5:
            kwargs["clean_session"] = not self.session_expiry_s
        c = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        if self.address.username:
            c.username_pw_set(self.address.username, self.address.password)
        if self.address.tls or self.tls_ca:
            try:
                c.tls_set(ca_certs=self.tls_ca)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise BrokerError(
                    f"TLS set-up for {self.address.url} failed ({exc}); check the --tls-ca file."
                ) from None
        c.on_socket_open = lambda _c, _u, sock: no_delay(sock)  # no 40 ms Nagle wait per request/response
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        c.reconnect_delay_set(0.2, 5)
        return c

    def start(self, timeout: float = 10.0) -> MqttLink:
        """Connect (in the background, paho reconnects by itself) and wait for the first CONNACK."""
        for attempt in range(2):
            self._connected.clear()
            self._first_failure = None
            self._client = self._make_client()
            if self.mqtt5:
                props = Properties(PacketTypes.CONNECT)
                if self.session_expiry_s:
                    props.SessionExpiryInterval = int(self.session_expiry_s)
                self._client.connect_async(
                    self.address.host,
                    self.address.port,
                    keepalive=30,
                    clean_start=not self.session_expiry_s,
                    properties=props,
                )
            else:
                self._client.connect_async(self.address.host, self.address.port, keepalive=30)
            self._client.loop_start()
            if not self._wait_connected(timeout):
                failed = self._first_failure is not None
                self.close()
                if failed:
                    why, listening = why_unreachable(self.address.host, self.address.port, self.address.tls)
                    advice = (
                        ""
                        if listening
                        else (
                            " Is a broker running there? Start a development broker with "
                            "`edgekit broker`, or pass --broker mqtt://HOST:PORT."
                        )
                    )
                    raise BrokerError(f"cannot reach the MQTT broker at {self.address.url}: {why}.{advice}")
                raise BrokerError(
                    f"no answer from the MQTT broker at {self.address.url} within {timeout:g} s: is it running? "
                    "Start a development broker with `edgekit broker`, or pass --broker mqtt://HOST:PORT."
                )
            if self._refused is None:
                self.wait_subscribed(timeout)
                return self
            refused = self._refused
            self.close()
            if refused == _UNSUPPORTED_PROTOCOL and self.protocol == "auto" and attempt == 0:
                log.warning(
                    "broker %s refuses MQTT 5; using MQTT 3.1.1 (no shared subscriptions, request/response "
                    "properties carried in the JSON payload)",
                    self.address.url,
                )
                self.mqtt5 = False
                continue
            hint = (
                "check the user name and password in the URL" if refused in _FATAL_CONNECT else "check the broker's log"
            )
            raise BrokerError(f"the MQTT broker at {self.address.url} refused the connection ({refused}); {hint}.")
        raise BrokerError(f"cannot connect to {self.address.url}.")  # pragma: no cover - loop always returns/raises

    def _wait_connected(self, timeout: float) -> bool:
        """Wait for a CONNACK; give up early when every connect attempt has failed for CONNECT_GRACE_S (nothing
        listens, a wrong host, a TLS handshake that fails): a broker still starting up gets that long."""
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.05):
            now = time.monotonic()
            first = self._first_failure
            if now >= deadline or (first is not None and now - first >= CONNECT_GRACE_S):
                return False
        return True

    def publish(
        self,
        name: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        expiry_s: int | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """Publish; the MQTT 5 properties are only set on an MQTT 5 link (callers put them in the payload for 3.1.1)."""
        if self._client is None:
            raise BrokerError(f"not connected to {self.address.url}; call start() first.")
        props = None
        if self.mqtt5:
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "application/json"
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
            if expiry_s:
                props.MessageExpiryInterval = int(expiry_s)
        return self._client.publish(name, payload, qos=qos, retain=retain, properties=props)

    def subscribe(self, name: str, qos: int = 1, timeout: float = 5.0) -> None:
        """Subscribe now and after every reconnect; returns once the broker acknowledged it."""
        self.subscriptions.append((name, qos))
        if self._client is not None:
            self._sub_sent.add(self._client.subscribe(self._filter(name), qos)[1])
            self.wait_subscribed(timeout)

    def wait_subscribed(self, timeout: float = 5.0) -> bool:
        """Wait until every subscription sent has been acknowledged (False on timeout)."""
        deadline = time.monotonic() + timeout
        while not self._sub_sent <= self._sub_acked:
            if time.monotonic() > deadline:
                log.warning(
                    "%s: the broker did not acknowledge every subscription within %g s", self.address.url, timeout
                )
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        """Disconnect cleanly and stop paho's network thread."""
        if self._client is not None:
            try:
                self._client.disconnect()
            finally:
                self._client.loop_stop()
            self._client = None

    def __enter__(self) -> MqttLink:
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
