"""The one paho-mqtt wrapper: the agent's link (:mod:`edgekit_agent.mqtt.link`) and the fleet tools' link
(``edgekit.fleet.connection``) are thin layers on top of :class:`MqttClient`.

- ``CallbackAPIVersion.VERSION2``, ``connect_async`` + ``loop_start``: paho reconnects by itself, waiting
  what :meth:`MqttClient._next_wait` draws before each try (the delay doubles from ``reconnect_min_s`` up to
  ``reconnect_max_s``, each wait drawn uniformly from its upper half, so a fleet does not reconnect in one
  burst when its broker returns; paho's own backoff has no jitter); every CONNACK resubscribes (a broker
  restarted without a persistent session forgets subscriptions). Every socket sends each packet at once
  (TCP_NODELAY, :func:`no_delay`), unless ``BrokerSettings.no_delay`` is off (a pure consumer).
- paho calls callbacks holding its own lock, so callbacks only hand work over: connection events go to one
  worker thread (which also runs the layer's :meth:`MqttClient.handle_idle`), messages and PUBACKs to the
  layer's :meth:`~MqttClient.handle_message` / :meth:`~MqttClient.handle_puback`, which must not block.
- ``mqtt_version`` ``auto`` connects with MQTT 5 and, when the broker refuses that protocol (CONNACK 0x84, or
  return code 1 from a 3.1.1 broker; amqtt does this), reconnects once with MQTT 3.1.1 and logs it once.
  amqtt 0.12 answers a bare MQTT 5 CONNECT with 0x84 but chokes on one carrying a will or properties and
  never sends a CONNACK: so before the first connection a socket without a CONNACK within
  :data:`CONNACK_TIMEOUT_S` also means "speak 3.1.1". On 3.1.1 there are no properties (request/response
  fields travel in the JSON payload, see :mod:`edgekit_agent.contract.envelope`) and a persistent session is
  ``clean_session=False``. ``5`` or ``3.1.1`` pin the protocol.
- CONNACK reason codes become a typed :class:`BrokerError`: credentials that will never work, a ban, or a
  protocol the broker refuses stop reconnecting (:attr:`MqttClient.fatal`, :attr:`MqttClient.failed`);
  other refusals are retried. An unreachable broker is logged once per outage, with the reason
  (:func:`why_unreachable`). Refusals of who we are or what we may do (CONNACK "not authorised", bad
  credentials, banned; a SUBACK reason ≥ 0x80) are :class:`NotAuthorizedError` and logged once; PUBACK
  reasons reach the layer's :meth:`MqttClient.handle_puback`, named by :func:`reason_text`.
"""

from __future__ import annotations

import logging
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgekit_agent.contract.broker import PASSWORD_ENV, BrokerAddress
from edgekit_agent.contract.errors import BrokerError, NotAuthorizedError, UsageError
from edgekit_agent.contract.topics import CONTENT_TYPE

log = logging.getLogger(__name__)

MQTT_VERSIONS = ("auto", "5", "3.1.1")
# CONNACK codes after which retrying cannot help: only hammers the broker (Home Assistant stops here too).
FATAL_CONNACK = {
    0x02: "client identifier rejected (MQTT 3)",
    0x04: "bad user name or password (MQTT 3)",
    0x05: "not authorised (MQTT 3)",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorised",
    0x8A: "banned",
    0x8C: "bad authentication method",
}
# The FATAL_CONNACK codes that say "not you" or "not allowed" (the rest: a client id or protocol problem).
NOT_AUTHORIZED_CONNACK = {0x04, 0x05, 0x86, 0x87, 0x8A, 0x8C}
# PUBACK/SUBACK reason codes >= 0x80 (MQTT 5, 3.2.2.2): what a broker says when it refuses a packet.
REFUSALS = {
    0x80: "unspecified error",
    0x83: "implementation specific error",
    0x87: "not authorized",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
    0x9E: "shared subscriptions not supported",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}
# CONNACK codes for "I do not speak this protocol version": 0x84 (MQTT 5 reason code) or 1 (3.1.1 return code).
UNSUPPORTED_PROTOCOL = {0x84, 0x01}
CONNACK_TIMEOUT_S = 5.0
LOG_PAYLOAD_CHARS = 200
_OK_RC = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)  # NO_CONN: a QoS 1 message paho keeps and sends later


class _PahoNoise(logging.Filter):
    """paho 2.2 logs "Client is not connected" at ERROR on every loop pass without a socket (broker down,
    clean stop); the client's own warnings already say that once, so these records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_PAHO_LOG = logging.getLogger(f"{__name__}.paho")
_PAHO_LOG.addFilter(_PahoNoise())


def cap(payload: bytes | str, limit: int = LOG_PAYLOAD_CHARS) -> str:
    """A payload shortened for a log line (a 200 KB image in a log helps nobody)."""
    text = payload.decode("utf-8", "replace") if isinstance(payload, (bytes, bytearray)) else str(payload)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def reason_text(code: int) -> str:
    """``0x87 not authorized``: a PUBACK/SUBACK reason code, in words."""
    return f"0x{code:02X} {REFUSALS.get(code, 'refused')}"


def check_rc(rc: int, what: str) -> None:
    """The one place paho's integer return codes become exceptions."""
    if rc not in _OK_RC:
        raise BrokerError(f"{what}: {mqtt.error_string(rc)} (paho rc {int(rc)}).")


def no_delay(sock: Any) -> None:
    """paho's ``on_socket_open``: send each MQTT packet at once (TCP_NODELAY).

    With Nagle's algorithm a small packet written while an earlier one is still unacknowledged (a PUBACK
    followed by a command's answer) waits for the peer's delayed ACK: about 40 ms on Linux, on every
    request/response round trip. Brokers do the same on their side unless told not to (mosquitto:
    ``set_tcp_nodelay true``)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError, ValueError):  # not a TCP socket (e.g. a websocket wrapper): leave it
        log.debug("TCP_NODELAY not set on %r", sock)


def why_unreachable(address: BrokerAddress) -> tuple[str, bool]:
    """Why connecting to a broker failed, in words, and whether anything listens there: one plain TCP
    connection tells a refused port or an unknown host (the OS's words) from a failed TLS or MQTT handshake."""
    try:
        with socket.create_connection((address.host, address.port), timeout=3):
            pass
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__, False
    if address.tls:
        return (
            "the port accepts connections but the TLS handshake failed: check the CA file (--tls-ca) and the "
            "host name, or use mqtt:// for a broker without TLS"
        ), True
    return (
        "the port accepts connections but the MQTT handshake failed: a TLS-only port needs mqtts://, "
        "or this is not an MQTT broker"
    ), True


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """How to connect: the broker's :class:`BrokerAddress` and what else a connection needs."""

    address: BrokerAddress
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    keepalive: int = 30
    reconnect_min_s: float = 1
    reconnect_max_s: float = 3  # back within about 3 s of a broker's return (jittered: see _next_wait)
    inflight: int = 8  # QoS 1 messages in flight (paho's window is this plus room for status messages)
    session_expiry_s: int = 3600  # 0: a clean session; else the broker keeps it (and queues QoS 1) this long
    mqtt_version: str = "auto"  # auto (5, falling back to 3.1.1 when refused), 5 or 3.1.1
    # TCP_NODELAY (no_delay()). Off only for a pure consumer: nothing it sends waits for an answer, and with
    # Nagle on the PUBACKs of a burst share TCP segments instead of costing one transmit each.
    no_delay: bool = True

    def __post_init__(self) -> None:
        if self.mqtt_version not in MQTT_VERSIONS:
            raise UsageError(f"broker.mqtt_version '{self.mqtt_version}' must be one of {', '.join(MQTT_VERSIONS)}.")

    @classmethod
    def from_url(
        cls, url: str, *, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> BrokerSettings:
        """Parse ``mqtt://user:pass@host:port``; TLS options switch TLS on even for ``mqtt://``; ``username``
        and ``password`` given here win over the URL's."""
        a = BrokerAddress.parse(url, tls=any(kwargs.get(k) for k in ("tls_ca", "tls_cert", "tls_key")))
        a = BrokerAddress(a.host, a.port, a.tls, username or a.username, password or a.password)
        return cls(a, **kwargs)

    @property
    def url(self) -> str:
        """The broker address without credentials (safe for logs and meta)."""
        return self.address.url


@dataclass(frozen=True, slots=True)
class Message:
    """A message the broker delivered. ``received`` is ``time.time()`` at arrival; ``response_topic`` and
    ``correlation`` are the MQTT 5 properties (None on 3.1.1)."""

    topic: str
    payload: bytes
    retain: bool = False
    received: float = 0.0
    response_topic: str | None = None
    correlation: bytes | None = None


class MqttClient:
    """One connection to a broker. :meth:`start` returns at once (the broker may be down); ``close()``.

    A layer on top overrides the hooks: :meth:`will`, :meth:`announce`, :meth:`handle_message`,
    :meth:`handle_puback` (paho's thread: hand over, never block) and :meth:`handle_connected`,
    :meth:`handle_idle`, :meth:`while_unreachable` (the worker thread). ``label`` names the client in
    errors and logs ("device 'pi-1'").
    """

    def __init__(
        self,
        settings: BrokerSettings,
        client_id: str,
        *,
        subscriptions: Sequence[tuple[str, int]] = (),
        label: str | None = None,
    ) -> None:
        self.settings = settings
        self.address = settings.address
        self.client_id = client_id
        self.label = label or f"client '{client_id}'"
        self.subscriptions = list(subscriptions)
        # auto starts with MQTT 5 (the contract's protocol) and falls back once; read by paho's thread too.
        self.mqtt5 = settings.mqtt_version != "3.1.1"
        self.connected = threading.Event()
        self.failed = threading.Event()
        self.fatal: BrokerError | None = None
        self.refused: str | None = None  # the last refusal being retried (e.g. "Server busy")
        self.unreachable_since: float | None = None  # monotonic time of this outage's first failed connect
        self.connects = 0
        self._announce_outages = True
        self._events: queue.Queue[Callable[[], None]] = queue.Queue()
        self._stopping = threading.Event()
        self._client: mqtt.Client | None = None
        self._worker: threading.Thread | None = None
        self._connack_wait: float | None = None  # worker: monotonic time of the first socket still without CONNACK
        self._socket_acked = False  # paho thread: the current socket got a CONNACK
        self._outage_said = False  # worker: this outage has been logged
        self._retries = 0  # paho thread: failed or lost connections since the last CONNACK
        self._sub_lock = threading.Lock()
        self._sub_pending: dict[int, str] = {}  # SUBSCRIBE mid -> filter, until the SUBACK
        self.refused_subscriptions: dict[str, int] = {}  # filter -> the SUBACK reason code that refused it

    @property
    def mqtt_version(self) -> str:
        """The protocol in use (or being tried): ``"5"`` or ``"3.1.1"``."""
        return "5" if self.mqtt5 else "3.1.1"

    # --- hooks for the layer on top ------------------------------------------------------------------------
    def will(self) -> tuple[str, bytes] | None:
        """The last will (topic, payload; QoS 1, retained), registered with every new paho client."""
        return None

    def announce(self) -> None:
        """paho's thread, on every CONNACK, before subscribing: publish what must come first."""

    def handle_message(self, msg: Message) -> None:
        """paho's thread: a delivered message."""

    def handle_puback(self, mid: int, code: int) -> None:
        """paho's thread: the broker acknowledged (code < 0x80) or refused (≥ 0x80) publish ``mid``."""

    def handle_connected(self) -> None:
        """Worker thread: after every successful connect."""

    def handle_idle(self) -> None:
        """Worker thread: after each batch of events, and at least every 0.5 s."""

    def while_unreachable(self) -> str:
        """Worker thread: appended to the once-per-outage "cannot reach" warning."""
        return ""

    # --- connecting --------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin connecting in the background (returns at once; paho retries until :meth:`close`). Started
        already: nothing to do."""
        if self._client is not None:
            return
        self._stopping.clear()
        self.failed.clear()
        self.fatal = self.refused = self.unreachable_since = None
        self._connack_wait = None
        self._client = self._make_client()
        self._worker = threading.Thread(target=self._work, name="edgekit-mqtt", daemon=True)
        self._worker.start()
        self._connect()

    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the worker thread (from a paho callback, or to wake :meth:`handle_idle`)."""
        self._events.put(fn)

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        version: dict[str, Any] = {"protocol": mqtt.MQTTv5}
        if not self.mqtt5:  # a persistent session, as SessionExpiryInterval gives on MQTT 5
            version = {"protocol": mqtt.MQTTv311, "clean_session": s.session_expiry_s == 0}
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, reconnect_on_failure=True, **version
        )
        client.enable_logger(_PAHO_LOG)
        will = self.will()
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True, properties=self._properties())
        if self.address.username:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            import ssl  # here, not at the top: OpenSSL costs 5 MiB of RSS (see paho_import)

            try:
                client.tls_set(ca_certs=s.tls_ca, certfile=s.tls_cert, keyfile=s.tls_key, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise BrokerError(
                    f"TLS set-up for {self.address.url} failed ({exc}); check --tls-ca/--tls-cert/--tls-key paths "
                    "and formats."
                ) from None
        self._retries = 0
        self._next_wait(client)
        # Room for the window plus status messages, which must never wait behind it.
        client.max_inflight_messages_set(s.inflight + 4)
        client.on_connect = self._cb_connect
        client.on_connect_fail = self._cb_connect_fail
        client.on_disconnect = self._cb_disconnect
        client.on_publish = self._cb_publish
        client.on_message = self._cb_message
        client.on_subscribe = self._cb_subscribe
        client.on_socket_open = self._cb_socket_open
        return client

    def _connect(self) -> None:
        s, client = self.settings, self._client
        assert client is not None
        try:
            if self.mqtt5:
                props = Properties(PacketTypes.CONNECT)
                if s.session_expiry_s:  # a session that outlives short outages: QoS 1 messages wait for us
                    props.SessionExpiryInterval = s.session_expiry_s
                client.connect_async(
                    self.address.host,
                    self.address.port,
                    keepalive=s.keepalive,
                    clean_start=s.session_expiry_s == 0,
                    properties=props,
                )
            else:
                client.connect_async(self.address.host, self.address.port, keepalive=s.keepalive)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot start connecting to {self.address.url}: {exc}.") from None
        check_rc(client.loop_start(), f"starting the MQTT loop for {self.address.url}")

    def _filter(self, name: str) -> str:
        # MQTT 3.1.1 has no shared subscriptions: "$share/G/x" would be a literal topic that never matches.
        if not self.mqtt5 and name.startswith("$share/"):
            return name.split("/", 2)[2]
        return name

    # --- paho callbacks: never block, never take application locks ---------------------------------------------
    def _cb_connect(self, client: mqtt.Client, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        if client is not self._client:  # the MQTT 5 client retired by a fall-back to 3.1.1
            return
        self._socket_acked = True
        if rc.is_failure:
            code = int(rc.value)
            downgrade = code in UNSUPPORTED_PROTOCOL and self.mqtt5 and self.settings.mqtt_version == "auto"
            if code in FATAL_CONNACK or code in UNSUPPORTED_PROTOCOL:
                client.disconnect()  # ends paho's reconnect loop; the worker records why (or falls back)
            self.post(
                partial(self._fall_back, "refuses MQTT 5") if downgrade else partial(self._on_refusal, code, str(rc))
            )
            return
        self._retries = 0
        self.announce()
        with self._sub_lock:
            self._sub_pending.clear()
            for name, qos in self.subscriptions:
                self._sub_pending[client.subscribe(self._filter(name), qos)[1]] = name
        self.post(self._connected)

    def _cb_connect_fail(self, client: mqtt.Client, *_: Any) -> None:
        if client is self._client:
            self._next_wait(client)
            self.post(self._connect_failed)

    def _next_wait(self, client: mqtt.Client) -> None:
        # Called before paho waits to reconnect: a fixed delay set now is the one it sleeps next.
        s = self.settings
        ceiling = min(max(s.reconnect_min_s, s.reconnect_max_s), s.reconnect_min_s * 2.0 ** min(self._retries, 16))
        self._retries += 1
        wait = random.uniform(ceiling / 2, ceiling)
        client.reconnect_delay_set(min_delay=wait, max_delay=wait)  # type: ignore[arg-type]  # paho takes floats

    def _cb_socket_open(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        if self.settings.no_delay:
            no_delay(sock)
        if client is self._client:
            self._socket_acked = False
            self.post(partial(self._socket_opened, time.monotonic()))

    def _cb_disconnect(self, client: mqtt.Client, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        if client is not self._client:
            return
        self._next_wait(client)
        # Closed before any CONNACK: the peer does not speak MQTT (to us), as good as unreachable.
        self.post(partial(self._disconnected, str(rc)) if self._socket_acked else self._connect_failed)

    def _cb_publish(self, client: mqtt.Client, _u: Any, mid: int, rc: Any, _props: Any) -> None:
        self.handle_puback(mid, int(rc.value))

    def _cb_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        fields = vars(props) if self.mqtt5 and props is not None else {}
        self.handle_message(
            Message(
                msg.topic,
                msg.payload,
                bool(msg.retain),
                time.time(),
                fields.get("ResponseTopic"),
                fields.get("CorrelationData"),
            )
        )

    def _cb_subscribe(self, client: mqtt.Client, _u: Any, mid: int, rcs: Any, _props: Any) -> None:
        with self._sub_lock:
            name = self._sub_pending.pop(mid, None)
        for rc in rcs:
            if rc.is_failure:
                if name is not None:  # before the worker logs it: subscribe() reads it once the SUBACK came
                    self.refused_subscriptions[name] = int(rc.value)
                self.post(partial(self._subscribe_failed, name, int(rc.value)))

    # --- the worker thread ----------------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                fn: Callable[[], None] | None = self._events.get(timeout=0.5)
            except queue.Empty:
                fn = None
            try:
                if fn is not None:
                    fn()
                while True:  # run what else is waiting before the layer's idle work
                    self._events.get_nowait()()
            except queue.Empty:
                pass
            except Exception:  # noqa: BLE001 - the client must outlive one bad event; the log says what it was
                log.exception("%s: MQTT worker error", self.label)
            waited = self._connack_wait
            if (
                waited is not None
                and self.mqtt5
                and not self.connects  # a broker that served MQTT 5 speaks it: a slow CONNACK is load, not amqtt
                and self.settings.mqtt_version == "auto"
                and time.monotonic() - waited > CONNACK_TIMEOUT_S
            ):
                self._fall_back(f"sent no CONNACK to an MQTT 5 CONNECT within {CONNACK_TIMEOUT_S:g} s")
            try:
                self.handle_idle()
            except Exception:  # noqa: BLE001
                log.exception("%s: MQTT worker error", self.label)
                time.sleep(0.5)

    def _socket_opened(self, at: float) -> None:
        if self._connack_wait is None:
            self._connack_wait = at

    def _connected(self) -> None:
        self._connack_wait = None
        self.connects += 1
        self.refused = self.unreachable_since = None
        self._outage_said = False
        self.connected.set()
        log.info("%s: connected to %s (MQTT %s)", self.label, self.address.url, self.mqtt_version)
        self.handle_connected()

    def _connect_failed(self) -> None:
        if self.unreachable_since is None:
            self.unreachable_since = time.monotonic()
        if self._announce_outages and not self._outage_said:  # once per outage: paho retries with backoff
            self._outage_said = True
            why, _ = why_unreachable(self.address)
            log.warning(
                "%s: cannot reach %s (%s)%s; retrying every %g-%g s",
                self.label,
                self.address.url,
                why,
                self.while_unreachable(),
                self.settings.reconnect_min_s,
                self.settings.reconnect_max_s,
            )

    def _disconnected(self, why: str) -> None:
        self.connected.clear()
        if not self._stopping.is_set() and not self.failed.is_set():
            log.warning("%s: disconnected from %s (%s); reconnecting", self.label, self.address.url, why)

    def _on_refusal(self, code: int, text: str) -> None:
        self._connack_wait = None
        if code in UNSUPPORTED_PROTOCOL:
            self._fail(
                f"{self.address.url} refused {self.label}: it does not speak MQTT {self.mqtt_version} "
                f"(CONNACK 0x{code:02X}). Use MQTT version auto (edgekit-agent --mqtt-version, edgekit --mqtt) "
                "or the version the broker speaks; not retrying."
            )
        elif code in FATAL_CONNACK:
            user = f"user '{self.address.username}'" if self.address.username else "no user name"
            self._fail(
                f"{self.address.url} refused {self.label} ({user}): {FATAL_CONNACK[code]} (CONNACK 0x{code:02X}"
                f"{', NOT_AUTHORIZED' if code in NOT_AUTHORIZED_CONNACK else ''}). Check the user name and password "
                f"(in the URL, --username/--password or {PASSWORD_ENV}), the client certificate and the broker's "
                "password file and ACL; not retrying.",
                NotAuthorizedError if code in NOT_AUTHORIZED_CONNACK else BrokerError,
            )
        else:
            self.refused = text
            log.warning("%s: %s refused the connection (%s); retrying", self.label, self.address.url, text)

    def _fail(self, message: str, kind: type[BrokerError] = BrokerError) -> None:
        self.fatal = kind(message)
        log.error("%s", message)
        self.failed.set()

    def _fall_back(self, why: str) -> None:
        """The broker refused MQTT 5 (auto mode): a new paho client speaking 3.1.1."""
        old = self._client
        self.mqtt5 = False
        self._connack_wait = self.unreachable_since = None
        log.warning(
            "%s: %s %s; using MQTT 3.1.1 (no shared subscriptions; request/response fields travel in the JSON payload)",
            self.label,
            self.address.url,
            why,
        )
        self._client = self._make_client()  # first: the retired client's callbacks are then ignored
        if old is not None:
            old.disconnect()  # ends paho's reconnect loop (again, if the CONNACK callback did already)
            old.loop_stop()
        self._connect()

    def _subscribe_failed(self, name: str | None, code: int) -> None:
        log.error(
            "%s: %s refused the subscription to %s (SUBACK %s%s): its messages will not arrive; check the "
            "broker's ACL for user '%s'.",
            self.label,
            self.address.url,
            name,
            reason_text(code),
            ", NOT_AUTHORIZED" if code == 0x87 else "",
            self.address.username,
        )

    def check_subscriptions(self) -> None:
        """:class:`NotAuthorizedError` when the broker refused a subscription (with its reason code)."""
        if self.refused_subscriptions:
            name, code = next(iter(self.refused_subscriptions.items()))
            user = f"user '{self.address.username}'" if self.address.username else "an anonymous client"
            raise NotAuthorizedError(
                f"{self.address.url} refused {self.label} ({user}) the subscription to {name} (SUBACK "
                f'{reason_text(code)}): check the broker\'s ACL (docs/trust.md, "Broker security").'
            )

    # --- using the connection ------------------------------------------------------------------------------------
    def _properties(
        self, correlation: bytes | None = None, response_topic: str | None = None, expiry_s: int | None = None
    ) -> Properties | None:
        """PUBLISH properties (content type, request/response, expiry); None on an MQTT 3.1.1 connection."""
        if not self.mqtt5:
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = CONTENT_TYPE
        if response_topic:
            props.ResponseTopic = response_topic
        if correlation is not None:
            props.CorrelationData = correlation
        if expiry_s:
            props.MessageExpiryInterval = int(expiry_s)
        return props

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        expiry_s: int | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """Publish; the MQTT 5 properties are only sent on MQTT 5 (the envelope carries them on 3.1.1)."""
        client = self._client
        if client is None:
            raise BrokerError(f"not connected to {self.address.url}; call start() first.")
        props = self._properties(correlation, response_topic, expiry_s)
        return client.publish(topic, payload, qos=qos, retain=retain, properties=props)

    def subscribe(self, name: str, qos: int = 1, timeout: float = 5.0) -> None:
        """Subscribe now and after every reconnect; returns once the broker acknowledged it (or ``timeout``)."""
        self.subscriptions.append((name, qos))
        client = self._client
        if client is not None and self.connected.is_set():
            with self._sub_lock:
                self._sub_pending[client.subscribe(self._filter(name), qos)[1]] = name
            self.wait_subscribed(timeout)

    def wait_subscribed(self, timeout: float = 5.0) -> bool:
        """Wait until every subscription sent has been acknowledged (False on timeout). Some brokers (amqtt)
        apply a subscription only when they send the SUBACK, so "subscribed" means acknowledged."""
        deadline = time.monotonic() + timeout
        while self._sub_pending:
            if time.monotonic() > deadline:
                log.warning(
                    "%s: %s did not acknowledge every subscription within %g s", self.label, self.address.url, timeout
                )
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        """Disconnect cleanly and stop paho's network thread and the worker."""
        self._stopping.set()
        client, self._client = self._client, None
        if client is not None:
            try:
                client.disconnect()
            finally:
                client.loop_stop()
        self.connected.clear()
        worker = self._worker
        if worker is not None and worker.is_alive() and worker is not threading.current_thread():
            worker.join(timeout=2.0)
