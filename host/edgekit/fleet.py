"""Fleet state shared by ``edgekit watch``, the Prometheus exporter and the remote bench client.

Two halves:

* :class:`MqttLink` — one paho client (MQTT 5, callback API 2) whose callbacks only put messages on a
  queue (paho holds its lock while calling back, so doing work there invites deadlocks). When the
  broker refuses MQTT 5 (amqtt, the pure-Python development broker, speaks only 3.1.1) the link
  reconnects with 3.1.1 and says so: retained messages, QoS 1 and the last will still work, but shared
  subscriptions and MQTT 5 request/response properties do not.
* :class:`FleetState` — what the fleet looks like, built from the device → fleet messages of the
  ``edge/v1`` contract (``/work/shared/design/telemetry.md``). Delivery is at-least-once, so every
  message carrying ``(epoch, seq)`` is de-duplicated on ``(device_id, epoch, seq)``; a jump in ``seq``
  is counted as a visible loss. Latency histograms are summed bucket by bucket (the ``le`` bounds are the
  same fleet-wide), never by averaging percentiles.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgekit_agent.errors import BrokerError, UsageError

log = logging.getLogger(__name__)

ROOT = "edge/v1"
STAGES = ("total", "preprocess", "invoke")
LOST_AFTER_WINDOWS = 3  # a device silent for this many telemetry windows is shown as "lost"
DEFAULT_WINDOW_S = 10.0
DEDUP_WINDOW = 4096  # seqs kept per (device, epoch); an older, never-seen seq counts as a duplicate

# Reason codes after which retrying cannot help (Home Assistant stops its backoff on these too).
_FATAL_CONNECT = {"Bad user name or password", "Not authorized", "Banned", "Client identifier not valid"}
_UNSUPPORTED_PROTOCOL = "Unsupported protocol version"


def topic(device_id: str, *parts: str) -> str:
    """``edge/v1/{device_id}/part/...``"""
    return "/".join((ROOT, device_id, *parts))


def parse_topic(name: str) -> tuple[str, str] | None:
    """``edge/v1/dev-1/telemetry/inference`` → ``("dev-1", "telemetry/inference")``; None outside the contract."""
    parts = name.split("/", 3)
    if len(parts) < 4 or parts[0] != "edge" or parts[1] != "v1" or not parts[2]:
        return None
    return parts[2], parts[3]


# --------------------------------------------------------------------------------------------------
# Broker connection
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where a broker listens, parsed from ``mqtt://[user[:password]@]host[:port]`` (``mqtts://`` for TLS)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> "BrokerAddress":
        if "://" not in url:
            url = "mqtt://" + url
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise UsageError(f"broker URL '{url}': use mqtt://HOST:PORT (or mqtts:// for TLS).")
        if not parts.hostname:
            raise UsageError(f"broker URL '{url}' has no host; use mqtt://HOST:PORT.")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise UsageError(f"broker URL '{url}' has a bad port.") from None
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


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
        self.address = broker if isinstance(broker, BrokerAddress) else BrokerAddress.parse(broker)
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
        # SUBSCRIBE packet ids sent and acknowledged: some brokers (amqtt) apply a subscription only
        # when they send the SUBACK, so "subscribed" means acknowledged.
        self._sub_sent: set[int] = set()
        self._sub_acked: set[int] = set()

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

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any = None) -> None:
        self._sub_acked.add(mid)

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
                raise BrokerError(f"TLS set-up for {self.address.url} failed ({exc}); check the --tls-ca file.") from None
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.reconnect_delay_set(0.2, 5)
        return c

    def start(self, timeout: float = 10.0) -> "MqttLink":
        """Connect (in the background, paho reconnects by itself) and wait for the first CONNACK."""
        for attempt in range(2):
            self._connected.clear()
            self._client = self._make_client()
            if self.mqtt5:
                props = Properties(PacketTypes.CONNECT)
                if self.session_expiry_s:
                    props.SessionExpiryInterval = int(self.session_expiry_s)
                self._client.connect_async(self.address.host, self.address.port, keepalive=30,
                                           clean_start=not self.session_expiry_s, properties=props)
            else:
                self._client.connect_async(self.address.host, self.address.port, keepalive=30)
            self._client.loop_start()
            if not self._connected.wait(timeout):
                self.close()
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
                    "properties carried in the JSON payload)", self.address.url
                )
                self.mqtt5 = False
                continue
            hint = "check the user name and password in the URL" if refused in _FATAL_CONNECT else "check the broker's log"
            raise BrokerError(f"the MQTT broker at {self.address.url} refused the connection ({refused}); {hint}.")
        raise BrokerError(f"cannot connect to {self.address.url}.")  # pragma: no cover - loop always returns/raises

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
                log.warning("%s: the broker did not acknowledge every subscription within %g s", self.address.url, timeout)
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.disconnect()
            finally:
                self._client.loop_stop()
            self._client = None

    def __enter__(self) -> "MqttLink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# De-duplication
# --------------------------------------------------------------------------------------------------
class Deduper:
    """Remembers the seqs seen per ``(device_id, epoch)``; counts duplicates and gaps (lost messages)."""

    __slots__ = ("_seen", "duplicates", "gaps")

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], list[Any]] = {}  # key -> [high seq, set of seqs near high]
        self.duplicates = 0
        self.gaps: dict[str, int] = {}  # device_id -> seqs skipped and not (yet) filled

    def first_time(self, device_id: str, epoch: str, seq: int) -> bool:
        """True the first time ``(device_id, epoch, seq)`` is offered, False for a repeat."""
        key = (device_id, epoch)
        entry = self._seen.get(key)
        if entry is None:
            self._seen[key] = [seq, {seq}]
            return True
        high, seen = entry
        if seq in seen or seq <= high - DEDUP_WINDOW:
            self.duplicates += 1
            return False
        seen.add(seq)
        if seq > high:
            if seq > high + 1:
                self.gaps[device_id] = self.gaps.get(device_id, 0) + seq - high - 1
            entry[0] = seq
            if len(seen) > 2 * DEDUP_WINDOW:  # keep memory flat on long runs
                entry[1] = {s for s in seen if s > seq - DEDUP_WINDOW}
        else:
            self.gaps[device_id] = self.gaps.get(device_id, 0) - 1  # a late arrival fills a gap counted earlier
        return True


# --------------------------------------------------------------------------------------------------
# Fleet state
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One device as ``edgekit watch`` shows it (latest window for rates, totals since the watcher started)."""

    device_id: str
    status: str  # online / offline / lost / unknown
    status_reason: str
    bundle: str  # "name version"
    profile: str
    runtime: str  # "litert 2.3 xnnpack x2"
    throughput_ips: float | None
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    labeled: int
    correct: int
    errors: int
    outbox_dropped: int
    lost_messages: int
    last_seen: float | None  # Unix time (s)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labeled if self.labeled else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy"] = self.accuracy
        return d


@dataclass(slots=True)
class Histogram:
    """A cumulative latency histogram (ms), Prometheus semantics; windows add up bucket by bucket."""

    le: tuple[float, ...]
    cum: list[int]
    sum: float = 0.0
    count: int = 0
    le_raw: list[Any] = field(default_factory=list, repr=False)  # as received: compared cheaply (hot path)

    def add(self, le_raw: list[Any], cum: Sequence[int], total: float, count: int) -> bool:
        if le_raw != self.le_raw or len(cum) != len(self.cum):
            return False
        self.cum = [a + int(b) for a, b in zip(self.cum, cum)]
        self.sum += float(total)
        self.count += int(count)
        return True


@dataclass(slots=True)
class _Device:
    device_id: str
    status: str = "unknown"
    status_reason: str = ""
    boot_id: str | None = None
    status_ts: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    bundle: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    window_s: float = DEFAULT_WINDOW_S
    throughput: float | None = None
    p50: float | None = None
    p99: float | None = None
    requests: int = 0
    ok: int = 0
    errors: int = 0
    labeled: int = 0
    correct: int = 0
    outbox_dropped_by_epoch: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    last_seen: float | None = None  # device clock (envelope ts) of the newest message
    last_heard: float | None = None  # our clock when the newest live (non-retained) message arrived
    hist: dict[str, Histogram] = field(default_factory=dict)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _sum_errors(errors: Any) -> int:
    if isinstance(errors, Mapping):
        return int(sum(v for v in errors.values() if isinstance(v, (int, float))))
    return int(errors) if isinstance(errors, (int, float)) else 0


class FleetState:
    """Everything known about the fleet, fed one message at a time with :meth:`apply` (not thread-safe:
    one consumer thread applies, readers take :attr:`lock`)."""

    def __init__(self, lost_after_windows: int = LOST_AFTER_WINDOWS, histogram_stages: Sequence[str] = STAGES) -> None:
        """``histogram_stages``: which latency series to sum bucket by bucket (the exporter needs them,
        the watch table does not: it passes ``()`` and saves the work)."""
        unknown = set(histogram_stages) - set(STAGES)
        if unknown:
            raise UsageError(f"unknown latency stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}.")
        self.histogram_stages = tuple(histogram_stages)
        self.devices: dict[str, _Device] = {}
        self.dedup = Deduper()
        self.lost_after_windows = lost_after_windows
        self.messages = 0
        self.invalid = 0
        self.rejected_histograms = 0
        self.lock = threading.Lock()

    # --- feeding ------------------------------------------------------------------------------------
    def apply(self, msg: Message) -> str | None:
        """Account for one message; returns the device id it changed, or None (duplicate, foreign, bad)."""
        parsed = parse_topic(msg.topic)
        if parsed is None:
            return None
        device_id, kind = parsed
        handler = _HANDLERS.get(kind) or (_on_bench_or_other if kind.startswith(("bench/", "res/")) else None)
        if handler is None:
            return None  # commands (fleet → device) and unknown kinds are not fleet state
        try:
            doc = json.loads(msg.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            self.invalid += 1
            log.warning("ignored a non-JSON message on %s: %r", msg.topic, msg.payload[:80])
            return None
        if not isinstance(doc, dict):
            self.invalid += 1
            return None
        epoch, seq = doc.get("epoch"), doc.get("seq")
        # Retained status/meta are snapshots (re-sent on every subscribe): de-dup only live messages.
        if epoch is not None and isinstance(seq, int) and not msg.retain:
            if not self.dedup.first_time(device_id, str(epoch), seq):
                return None
        self.messages += 1
        dev = self.devices.get(device_id)
        if dev is None:
            dev = self.devices[device_id] = _Device(device_id)
        ts = _num(doc.get("ts"))
        if ts is not None:
            ts /= 1000.0
            if dev.last_seen is None or ts > dev.last_seen:
                dev.last_seen = ts
        if not msg.retain:
            dev.last_heard = msg.received
            if kind != "status" and dev.status == "offline" and dev.status_reason == "lwt" and doc.get("boot_id") == dev.boot_id:
                # Live traffic after a last will of the same run: the will was an old connection's
                # (reconnect/takeover); the device is evidently connected again.
                dev.status, dev.status_reason = "online", "reconnected"
        handler(self, dev, doc, msg)
        return device_id

    def apply_many(self, messages: Iterable[Message]) -> set[str]:
        changed = set()
        for m in messages:
            d = self.apply(m)
            if d is not None:
                changed.add(d)
        return changed

    # --- reading ------------------------------------------------------------------------------------
    def status_of(self, dev: _Device, now: float | None = None) -> str:
        if dev.status != "online":
            return dev.status
        now = time.time() if now is None else now
        heard = dev.last_heard if dev.last_heard is not None else dev.last_seen
        if heard is not None and now - heard > self.lost_after_windows * dev.window_s:
            return "lost"
        return "online"

    def row(self, device_id: str, now: float | None = None) -> DeviceRow:
        dev = self.devices[device_id]
        b, r = dev.bundle, dev.runtime
        runtime = " ".join(
            str(x) for x in (r.get("engine"), r.get("version"), r.get("delegate"), f"x{r['num_threads']}" if r.get("num_threads") else None) if x
        )
        return DeviceRow(
            device_id=device_id,
            status=self.status_of(dev, now),
            status_reason=dev.status_reason,
            bundle=" ".join(str(x) for x in (b.get("name"), b.get("version")) if x),
            profile=str(b.get("profile") or ""),
            runtime=runtime,
            throughput_ips=dev.throughput,
            p50_ms=dev.p50,
            p99_ms=dev.p99,
            requests=dev.requests,
            labeled=dev.labeled,
            correct=dev.correct,
            errors=dev.errors,
            outbox_dropped=sum(dev.outbox_dropped_by_epoch.values()),
            lost_messages=self.dedup.gaps.get(device_id, 0),
            last_seen=dev.last_seen,
        )

    def snapshot(self, now: float | None = None) -> tuple[DeviceRow, ...]:
        return tuple(self.row(d, now) for d in sorted(self.devices))


# --- per-topic handlers (a table, not an if-chain) --------------------------------------------------
def _on_status(state: FleetState, dev: _Device, doc: dict[str, Any], msg: Message) -> None:
    value = str(doc.get("state") or doc.get("status") or "unknown")
    ts = (_num(doc.get("ts")) or 0.0) / 1000.0
    boot = str(doc["boot_id"]) if doc.get("boot_id") else None
    if boot and dev.boot_id and boot != dev.boot_id and ts <= dev.status_ts:
        return  # from an older run of the agent (e.g. its last will, arriving after the new birth)
    # Within one run, an LWT carries the time it was *registered* (at connect), older than the birth:
    # an "offline" of the current run always counts; an older "online" does not.
    if boot == dev.boot_id and value == "online" and ts < dev.status_ts:
        return
    dev.status, dev.status_reason, dev.status_ts = value, str(doc.get("reason") or ""), max(ts, dev.status_ts if boot == dev.boot_id else ts)
    if boot:
        dev.boot_id = boot
    if value == "online" and msg.retain and dev.last_heard is None:
        # A retained birth says nothing about now; count from our start so a device is not "lost" at once.
        dev.last_heard = msg.received


def _on_meta(state: FleetState, dev: _Device, doc: dict[str, Any], msg: Message) -> None:
    dev.meta = doc
    cfg = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    window = _num(cfg.get("window_s")) or _num(doc.get("window_s"))
    if window:
        dev.window_s = window
    # meta is re-published (retained) whenever the active bundle or runtime changes (OTA, set_config).
    bundle = doc.get("bundle") or doc.get("active_bundle")
    if isinstance(bundle, dict):
        dev.bundle = bundle
    runtime = doc.get("runtime")
    if isinstance(runtime, dict):
        dev.runtime = runtime


def _on_telemetry(state: FleetState, dev: _Device, doc: dict[str, Any], msg: Message) -> None:
    dev.windows += 1
    window = doc.get("window") or {}
    if isinstance(window, dict):
        start, end = _num(window.get("start")), _num(window.get("end"))
        if start is not None and end is not None and end > start:
            # ms per the envelope convention; tolerate seconds from an agent that sends them.
            span = (end - start) / 1000.0 if end > 1e11 else end - start
            if span > 0:
                dev.window_s = span
    if isinstance(doc.get("bundle"), dict):
        dev.bundle = doc["bundle"]
    if isinstance(doc.get("runtime"), dict):
        dev.runtime = doc["runtime"]
    counts = doc.get("counts") or {}
    dev.requests += int(counts.get("requests") or 0)
    dev.ok += int(counts.get("ok") or 0)
    dev.errors += _sum_errors(counts.get("errors"))
    dev.throughput = _num(doc.get("throughput_ips"))
    acc = doc.get("accuracy") or {}
    dev.labeled += int(acc.get("labeled") or 0)
    dev.correct += int(acc.get("correct") or 0)
    outbox = doc.get("outbox") or {}
    if isinstance(outbox, dict) and isinstance(outbox.get("dropped"), (int, float)):
        # Cumulative per outbox database (= per epoch): keep the largest seen, add epochs up.
        epoch = str(doc.get("epoch", ""))
        dev.outbox_dropped_by_epoch[epoch] = max(dev.outbox_dropped_by_epoch.get(epoch, 0), int(outbox["dropped"]))
    lat = doc.get("latency_ms") or {}
    total = lat.get("total") if isinstance(lat, dict) else None
    # Percentiles of the latest window that had requests: an idle window says nothing about latency,
    # and blanking the column every quiet second makes the live view flicker.
    if isinstance(total, dict) and (total.get("count") or 0) > 0:
        dev.p50, dev.p99 = _num(total.get("p50")), _num(total.get("p99"))
    for stage in state.histogram_stages:
        s = lat.get(stage) if isinstance(lat, dict) else None
        if not isinstance(s, dict):
            continue
        h = s.get("histogram") or s
        le, cum = h.get("le"), h.get("cum")
        if not isinstance(le, list) or not isinstance(cum, list) or len(le) != len(cum):
            continue
        existing = dev.hist.get(stage)
        if existing is None:
            dev.hist[stage] = Histogram(tuple(float(x) for x in le), [int(c) for c in cum], float(s.get("sum") or 0.0),
                                        int(s.get("count") or 0), list(le))
        elif not existing.add(le, cum, float(s.get("sum") or 0.0), int(s.get("count") or 0)):
            state.rejected_histograms += 1
            log.warning("%s: latency buckets changed (le=%s); histogram window skipped", dev.device_id, le)


def _on_events(state: FleetState, dev: _Device, doc: dict[str, Any], msg: Message) -> None:
    pass  # events only refresh last_seen; watch --json shows them as they come


def _on_bench_or_other(state: FleetState, dev: _Device, doc: dict[str, Any], msg: Message) -> None:
    pass


_HANDLERS: dict[str, Callable[[FleetState, _Device, dict[str, Any], Message], None]] = {
    "status": _on_status,
    "meta": _on_meta,
    "telemetry/inference": _on_telemetry,
    "events": _on_events,
}

FLEET_SUBSCRIPTIONS: tuple[tuple[str, int], ...] = (
    (f"{ROOT}/+/status", 1),
    (f"{ROOT}/+/meta", 1),
    (f"{ROOT}/+/telemetry/inference", 1),
    (f"{ROOT}/+/events", 1),
)


def drain(q: "queue.Queue[Message]", first_timeout: float, limit: int = 10_000, linger: float = 0.01) -> list[Message]:
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
