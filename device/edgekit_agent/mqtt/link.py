"""The MQTT link: paho-mqtt wrapped the way Home Assistant does it (style.md #8), fed from the outbox.

- ``CallbackAPIVersion.VERSION2``, MQTT 5, ``connect_async`` + ``loop_start``: the agent starts and serves
  even when the broker is down; paho reconnects with the backoff of ``reconnect_delay_set``.
- Every ``on_connect`` first publishes the retained birth (``status`` = online, with ``boot_id``), then
  resubscribes (a broker restart without a persistent session forgets subscriptions). The LWT is
  ``offline``/``lwt`` with the same ``boot_id``; a clean stop publishes ``offline``/``shutdown`` itself
  (paho never sends the LWT on a clean disconnect).
- paho calls callbacks holding its own lock, so callbacks only put events on a queue; one worker thread
  turns them into outbox acknowledgements and command deliveries, and feeds a small in-flight window
  from the outbox. paho's memory queue therefore never holds more than ``inflight`` messages.
- A PUBACK with a reason code ≥ 0x80 (e.g. 0x87 refused by the ACL) is logged and counted and the message
  is removed: retrying a refused message forever would block the outbox.
- Bad credentials (CONNACK 0x86/0x87, or 0x04/0x05 from an MQTT 3 broker) stop reconnecting:
  :attr:`Link.fatal` holds the :class:`BrokerError` and :attr:`Link.failed` is set.
- ``mqtt_version`` ``auto`` (default) connects with MQTT 5 and, when the broker refuses that protocol
  (CONNACK 0x84 "unsupported protocol version", or return code 1 from a 3.1.1 broker; amqtt does this),
  reconnects once with MQTT 3.1.1 and logs it once. amqtt 0.12 answers a bare MQTT 5 CONNECT with 0x84 but
  chokes on one carrying a will or properties (as ours does) and never sends a CONNACK: so in auto mode a
  socket that got no CONNACK within :data:`CONNACK_TIMEOUT_S` also means "speak 3.1.1" (a real MQTT 5
  broker answers in milliseconds; a slow one merely gets 3.1.1, which serves the same contract). On 3.1.1 there are no properties: commands carry
  ``response_topic``/``correlation_data`` in their JSON payload (see :mod:`edgekit_agent.mqtt.commands`), the
  persistent session is ``clean_session=False``. ``5`` or ``3.1.1`` pin the protocol.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgekit_agent import __version__
from edgekit_agent.contract.errors import BrokerError, UsageError
from edgekit_agent.mqtt.outbox import Outbox, OutboxEntry

log = logging.getLogger(__name__)

PREFIX = "edge/v1"
CONTENT_TYPE = "application/json"
STATUS_SCHEMA = "edge.status/1"
# CONNACK reason codes that mean "these credentials will never work": retrying only hammers the broker.
BAD_CREDENTIALS = {
    0x04: "bad user name or password (MQTT 3)",
    0x05: "not authorised (MQTT 3)",
    0x86: "bad user name or password",
    0x87: "not authorised",
    0x8C: "bad authentication method",
}
LOG_PAYLOAD_CHARS = 200
MQTT_VERSIONS = ("auto", "5", "3.1.1")
# CONNACK codes for "I do not speak this protocol version": 0x84 (MQTT 5 reason code) or 1 (3.1.1 return code).
_UNSUPPORTED_PROTOCOL = {0x84, 0x01}
CONNACK_TIMEOUT_S = 5.0
_OK_RC = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)  # NO_CONN: a QoS 1 message paho keeps and sends later


class _PahoNoise(logging.Filter):
    """paho 2.2 logs "Client is not connected" at ERROR on every loop pass without a socket (broker down,
    clean stop); the link's own warnings already say that once, so these records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_PAHO_LOG = logging.getLogger(f"{__name__}.paho")
_PAHO_LOG.addFilter(_PahoNoise())


def cap(payload: bytes | str, limit: int = LOG_PAYLOAD_CHARS) -> str:
    """A payload shortened for a log line (a 200 KB image in a log helps nobody)."""
    text = payload.decode("utf-8", "replace") if isinstance(payload, (bytes, bytearray)) else str(payload)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def check_rc(rc: int, what: str) -> None:
    """The one place paho's integer return codes become exceptions."""
    if rc not in _OK_RC:
        raise BrokerError(f"{what}: {mqtt.error_string(rc)} (paho rc {int(rc)}).")


@dataclass(frozen=True, slots=True)
class Topics:
    """The edge/v1 topic names of one device (telemetry.md)."""

    device_id: str

    @property
    def base(self) -> str:
        return f"{PREFIX}/{self.device_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def meta(self) -> str:
        return f"{self.base}/meta"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry/inference"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def commands(self) -> str:
        """The subscription filter for commands."""
        return f"{self.base}/cmd/+"

    def bench(self, run_id: str) -> str:
        return f"{self.base}/bench/{run_id}/report"

    def res(self, requester: str) -> str:
        return f"{self.base}/res/{requester}"


PASSWORD_ENV = "EDGEKIT_MQTT_PASSWORD"


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """Where a broker listens, from ``mqtt://[user[:password]@]host[:port]`` (``mqtts://`` for TLS). The agent's
    :class:`BrokerSettings` and the workstation's fleet tools (as ``edgekit.fleet.link.BrokerAddress``) both use it."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, *, tls: bool = False, password_env: bool = False) -> BrokerUrl:
        """``tls``: TLS even for ``mqtt://`` (a CA or client certificate was given; the default port is then
        8883). ``password_env``: a user name without a password takes the password from
        ``EDGEKIT_MQTT_PASSWORD`` (so it need not appear in shell history or a process list)."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise UsageError(f"broker URL '{url}' must look like mqtt://HOST:PORT (or mqtts://HOST:PORT for TLS).")
        tls = tls or parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise UsageError(f"broker URL '{url}': the port is not a number between 1 and 65535.") from None
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if password is None and username and password_env:
            password = os.environ.get(PASSWORD_ENV)
        return cls(parts.hostname, port, tls, username, password)

    @property
    def url(self) -> str:
        """The address without credentials (safe for logs and meta)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


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


def why_unreachable(host: str, port: int, tls: bool) -> tuple[str, bool]:
    """Why connecting to a broker failed, in words, and whether anything listens there: one plain TCP
    connection tells a refused port or an unknown host (the OS's words) from a failed TLS or MQTT handshake."""
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__, False
    if tls:
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
    """Where and how to connect. ``url`` is ``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]`` (TLS)."""

    host: str
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    keepalive: int = 30
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    inflight: int = 8
    session_expiry_s: int = 3600
    mqtt_version: str = "auto"  # auto (5, falling back to 3.1.1 when refused), 5 or 3.1.1

    def __post_init__(self) -> None:
        if self.mqtt_version not in MQTT_VERSIONS:
            raise UsageError(f"broker.mqtt_version '{self.mqtt_version}' must be one of {', '.join(MQTT_VERSIONS)}.")

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> BrokerSettings:
        """Parse ``mqtt://user:pass@host:port``; TLS options switch TLS on even for ``mqtt://``."""
        u = BrokerUrl.parse(url, tls=any(kwargs.get(k) for k in ("tls_ca", "tls_cert", "tls_key")))
        if u.username and not kwargs.get("username"):
            kwargs["username"] = u.username
        if u.password and not kwargs.get("password"):
            kwargs["password"] = u.password
        return cls(host=u.host, port=u.port, tls=u.tls, **kwargs)

    @property
    def url(self) -> str:
        """The broker address without credentials (safe for logs and meta)."""
        return BrokerUrl(self.host, self.port, self.tls).url


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message the broker delivered (a command)."""

    topic: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None
    received_mono: float


@dataclass(frozen=True, slots=True)
class LinkStats:
    connected: bool
    connects: int
    inflight: int
    sent: int
    acked: int
    refused: int


def json_properties(correlation: bytes | None = None, *, mqtt5: bool = True) -> Properties | None:
    """PUBLISH properties (content type, echoed correlation); None on an MQTT 3.1.1 connection."""
    if not mqtt5:
        return None
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = CONTENT_TYPE
    if correlation is not None:
        props.CorrelationData = correlation
    return props


class Link:
    """One device's connection to the broker. ``start()``, then ``wake()`` after every outbox put; ``close()``."""

    def __init__(
        self,
        settings: BrokerSettings,
        device_id: str,
        boot_id: str,
        outbox: Outbox,
        on_message: Callable[[Incoming], None],
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.boot_id = boot_id
        self.topics = Topics(device_id)
        self.outbox = outbox
        self._on_message = on_message
        self._on_connected = on_connected
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._inflight: dict[int, OutboxEntry] = {}  # paho mid -> outbox entry (worker thread only)
        self.connected = threading.Event()
        self.failed = threading.Event()
        self.drained = threading.Event()
        self.fatal: BrokerError | None = None
        self._stopping = threading.Event()
        self._connects = self._sent = self._acked = self._refused = 0
        self._worker = threading.Thread(target=self._work, name="edgekit-link", daemon=True)
        # auto starts with MQTT 5 (the contract's protocol) and falls back once; read by paho's thread too.
        self.mqtt5 = settings.mqtt_version != "3.1.1"
        self._connack_wait: float | None = None  # monotonic time of the first socket still without a CONNACK
        self._unreachable_said = False  # the current outage has been logged (worker thread only)
        self._client = self._make_client()

    @property
    def mqtt_version(self) -> str:
        """The protocol in use (or being tried): ``"5"`` or ``"3.1.1"``."""
        return "5" if self.mqtt5 else "3.1.1"

    # --- set-up ----------------------------------------------------------------------------------------------
    def status_message(self, state: str, reason: str) -> bytes:
        """A ``status`` payload. Status is state, not a stream: it bypasses the outbox and has no ``seq``."""
        doc = {
            "schema": STATUS_SCHEMA,
            "device_id": self.device_id,
            "boot_id": self.boot_id,
            "epoch": self.outbox.epoch,
            "seq": None,
            "ts": int(time.time() * 1000),
            "agent_version": __version__,
            "state": state,
            "reason": reason,
        }
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        version: dict[str, Any] = {"protocol": mqtt.MQTTv5}
        if not self.mqtt5:  # a persistent session, as SessionExpiryInterval gives on MQTT 5
            version = {"protocol": mqtt.MQTTv311, "clean_session": s.session_expiry_s == 0}
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.device_id, reconnect_on_failure=True, **version
        )
        client.enable_logger(_PAHO_LOG)
        # The LWT's ts is when it was registered (the broker sends it later, verbatim); boot_id tells a
        # consumer which agent run it belongs to, so a late LWT of an older connection is recognised.
        client.will_set(
            self.topics.status,
            self.status_message("offline", "lwt"),
            qos=1,
            retain=True,
            properties=json_properties(mqtt5=self.mqtt5),
        )
        if s.username:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            try:
                client.tls_set(ca_certs=s.tls_ca, certfile=s.tls_cert, keyfile=s.tls_key, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise BrokerError(
                    f"TLS set-up for {s.url} failed ({exc}); check --tls-ca/--tls-cert/--tls-key paths and formats."
                ) from None
        client.reconnect_delay_set(
            min_delay=max(1, s.reconnect_min_s), max_delay=max(s.reconnect_min_s, s.reconnect_max_s)
        )
        # Room for the window plus birth/shutdown status, which must never wait behind telemetry.
        client.max_inflight_messages_set(s.inflight + 4)
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_publish = self._cb_publish
        client.on_message = self._cb_message
        client.on_subscribe = self._cb_subscribe
        client.on_socket_open = self._cb_socket_open
        client.on_connect_fail = self._cb_connect_fail
        return client

    def start(self) -> None:
        """Begin connecting in the background (returns at once; the broker may be down)."""
        self._connect()
        self._worker.start()

    def _connect(self) -> None:
        s = self.settings
        try:
            if self.mqtt5:
                props = Properties(PacketTypes.CONNECT)
                # A session that outlives short outages: commands sent meanwhile are delivered after reconnect.
                props.SessionExpiryInterval = s.session_expiry_s
                self._client.connect_async(s.host, s.port, keepalive=s.keepalive, clean_start=False, properties=props)
            else:
                self._client.connect_async(s.host, s.port, keepalive=s.keepalive)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot start connecting to {s.url}: {exc}.") from None
        check_rc(self._client.loop_start(), f"starting the MQTT loop for {s.url}")

    def _fall_back_to_311(self, why: str) -> None:
        """Worker thread: the broker refused MQTT 5 (auto mode): a new paho client speaking 3.1.1."""
        old = self._client
        self.mqtt5 = False
        self._connack_wait = None
        self._inflight.clear()  # never connected: nothing was handed to the old client's window
        log.warning(
            "%s: %s %s; using MQTT 3.1.1 (request/response fields travel in the JSON payload)",
            self.device_id,
            self.settings.url,
            why,
        )
        self._client = self._make_client()  # first: the retired client's disconnect callback is then ignored
        old.disconnect()  # ends paho's reconnect loop (again, if the CONNACK callback did already)
        old.loop_stop()
        self._connect()

    # --- paho callbacks: never block, never take application locks ---------------------------------------------
    def _cb_connect(self, client: mqtt.Client, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        if rc.is_failure:
            code = int(rc.value)
            downgrade = code in _UNSUPPORTED_PROTOCOL and self.mqtt5 and self.settings.mqtt_version == "auto"
            if (
                code in BAD_CREDENTIALS
                or downgrade
                or (code in _UNSUPPORTED_PROTOCOL and self.settings.mqtt_version != "auto")
            ):
                client.disconnect()  # ends paho's reconnect loop; the worker records why (or reconnects with 3.1.1)
            self._events.put(("downgrade",) if downgrade else ("refused", code, str(rc)))
            return
        # Birth first, before paho resends anything it kept and before the worker feeds the window.
        client.publish(
            self.topics.status,
            self.status_message("online", "connected"),
            qos=1,
            retain=True,
            properties=json_properties(mqtt5=self.mqtt5),
        )
        client.subscribe(self.topics.commands, qos=1)
        self._events.put(("connected",))

    def _cb_connect_fail(self, *_: Any) -> None:
        self._events.put(("connect_failed",))

    def _cb_socket_open(self, _c: Any, _u: Any, sock: Any) -> None:
        no_delay(sock)
        self._events.put(("socket_open", time.monotonic()))

    def _cb_disconnect(self, client: Any, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        if client is self._client:  # not the MQTT 5 client retired by a fall-back to 3.1.1
            self._events.put(("disconnected", str(rc)))

    def _cb_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _props: Any) -> None:
        self._events.put(("puback", mid, int(rc.value)))

    def _cb_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        self._events.put(
            (
                "message",
                Incoming(
                    topic=msg.topic,
                    payload=bytes(msg.payload),
                    response_topic=getattr(props, "ResponseTopic", None),
                    correlation=getattr(props, "CorrelationData", None),
                    received_mono=time.monotonic(),
                ),
            )
        )

    def _cb_subscribe(self, _c: Any, _u: Any, _mid: int, rcs: Any, _props: Any) -> None:
        for rc in rcs:
            if rc.is_failure:
                self._events.put(("subscribe_failed", str(rc)))

    # --- the worker thread ----------------------------------------------------------------------------------------
    def wake(self) -> None:
        """Tell the worker the outbox has something new."""
        self._events.put(("wake",))

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                event = self._events.get(timeout=0.5)
            except queue.Empty:
                event = ("wake",)
            try:
                self._handle(event)
                while True:  # drain what else is waiting before touching the outbox
                    self._handle(self._events.get_nowait())
            except queue.Empty:
                pass
            except Exception:  # noqa: BLE001 - the link must outlive one bad event; the log says what it was
                log.exception("%s: MQTT link worker error on %s", self.device_id, event[0])
            waited = self._connack_wait
            if (
                waited is not None
                and self.mqtt5
                and self.settings.mqtt_version == "auto"
                and time.monotonic() - waited > CONNACK_TIMEOUT_S
            ):
                self._fall_back_to_311(f"sent no CONNACK to an MQTT 5 CONNECT within {CONNACK_TIMEOUT_S:g} s")
            try:
                self._pump()
            except Exception:  # noqa: BLE001
                log.exception("%s: cannot feed the outbox to the broker", self.device_id)
                time.sleep(0.5)

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind in ("connected", "refused", "downgrade"):
            self._connack_wait = None  # a CONNACK came (success or not)
        if kind == "socket_open":
            if self._connack_wait is None:
                self._connack_wait = event[1]
        elif kind == "puback":
            _, mid, code = event
            entry = self._inflight.pop(mid, None)
            if entry is None:
                return
            if code >= 0x80:
                self._refused += 1
                log.warning(
                    "%s: the broker refused a message to %s (reason code 0x%02X; check its ACL); dropped: %s",
                    self.device_id,
                    entry.topic,
                    code,
                    cap(entry.payload),
                )
            else:
                self._acked += 1
            self.outbox.ack(entry.id)
        elif kind == "message":
            self._on_message(event[1])
        elif kind == "connected":
            self._connects += 1
            self._unreachable_said = False
            self.connected.set()
            log.info("%s: connected to %s", self.device_id, self.settings.url)
            if self._on_connected is not None:
                self._on_connected()  # e.g. republish retained state a restarted broker may have lost
        elif kind == "connect_failed":
            if not self._unreachable_said:  # once per outage: paho retries with backoff, the log stays readable
                self._unreachable_said = True
                s = self.settings
                why, _ = why_unreachable(s.host, s.port, s.tls)
                log.warning(
                    "%s: cannot reach %s (%s); serving anyway: telemetry waits in the outbox (up to %d "
                    "messages) and is sent when the broker is back; retrying every %d-%d s",
                    self.device_id,
                    s.url,
                    why,
                    self.outbox.max_messages,
                    s.reconnect_min_s,
                    s.reconnect_max_s,
                )
        elif kind == "disconnected":
            self.connected.clear()
            if not self._stopping.is_set():
                log.warning("%s: disconnected from %s (%s); reconnecting", self.device_id, self.settings.url, event[1])
        elif kind == "downgrade":
            self._fall_back_to_311("refuses MQTT 5 (CONNACK: unsupported protocol version)")
        elif kind == "refused":
            _, code, text = event
            if code in _UNSUPPORTED_PROTOCOL and self.settings.mqtt_version != "auto":
                self.fatal = BrokerError(
                    f"{self.settings.url} refused device '{self.device_id}': it does not speak MQTT {self.mqtt_version} "
                    f"(CONNACK 0x{code:02X}). Use --mqtt-version auto (or the version the broker speaks); not retrying."
                )
                log.error("%s", self.fatal)
                self.failed.set()
            elif code in BAD_CREDENTIALS:
                self.fatal = BrokerError(
                    f"{self.settings.url} refused device '{self.device_id}': {BAD_CREDENTIALS[code]} (CONNACK 0x{code:02X}). "
                    "Check --username/--password (or the client certificate) and the broker's ACL; not retrying."
                )
                log.error("%s", self.fatal)
                self.failed.set()
            else:
                log.warning("%s: %s refused the connection (%s); retrying", self.device_id, self.settings.url, text)
        elif kind == "subscribe_failed":
            log.error(
                "%s: subscribing to %s failed (%s): commands will not arrive; check the broker ACL.",
                self.device_id,
                self.topics.commands,
                event[1],
            )

    def _pump(self) -> None:
        if not self.connected.is_set():
            return
        free = self.settings.inflight - len(self._inflight)
        if free > 0:
            # Messages already handed to paho stay there across reconnects (paho resends them itself).
            batch = self.outbox.head(free, exclude={e.id for e in self._inflight.values()}, pin=True)
            for i, entry in enumerate(batch):
                try:
                    info = self._client.publish(
                        entry.topic,
                        entry.payload,
                        qos=entry.qos,
                        retain=entry.retain,
                        properties=json_properties(entry.correlation, mqtt5=self.mqtt5),
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
                if info.rc not in _OK_RC:
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
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=json_properties(mqtt5=self.mqtt5))
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
            self.connected.is_set(), self._connects, len(self._inflight), self._sent, self._acked, self._refused
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
        self._stopping.set()
        self._client.disconnect()
        self._client.loop_stop()
        if self._worker.is_alive():
            self._worker.join(timeout=2.0)
        return acked

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._stopping.is_set():
            self.close()


def decode_json(payload: bytes) -> Mapping[str, Any]:
    """Helper for consumers and tests: a JSON object payload."""
    return json.loads(payload.decode("utf-8"))
