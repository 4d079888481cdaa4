"""Fleet state shared by ``edgekit watch``, the Prometheus exporter and the remote bench client.

* :class:`FleetState` — what the fleet looks like, built from the device → fleet messages of the
  ``edge/v1`` contract (``/work/shared/design/telemetry.md``). Delivery is at-least-once, so every
  message carrying ``(epoch, seq)`` is de-duplicated on ``(device_id, epoch, seq)``; a jump in ``seq``
  is counted as a visible loss. Latency histograms are summed bucket by bucket (the ``le`` bounds are the
  same fleet-wide), never by averaging percentiles.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from edgekit_agent.errors import UsageError

# The MQTT link lives in edgekit.link; re-exported here because the fleet tools (and deploy) import it from here.
from .link import BrokerAddress, Message, MqttLink, drain  # noqa: F401

log = logging.getLogger(__name__)

ROOT = "edge/v1"
STAGES = ("total", "preprocess", "invoke")
LOST_AFTER_WINDOWS = 3  # a device silent for this many telemetry windows is shown as "lost"
DEFAULT_WINDOW_S = 10.0
DEDUP_WINDOW = 4096  # seqs kept per (device, epoch); an older, never-seen seq counts as a duplicate
MAX_EPOCHS = 4  # epochs remembered per device (memory stays bounded whatever a device sends)


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
# De-duplication
# --------------------------------------------------------------------------------------------------
class Deduper:
    """Remembers the seqs seen per ``(device_id, epoch)``; counts duplicates and gaps (lost messages)."""

    __slots__ = ("_seen", "_epochs", "duplicates", "gaps")

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], list[Any]] = {}  # key -> [high seq, set of seqs near high]
        self._epochs: dict[str, list[str]] = {}  # device_id -> its epochs, oldest first
        self.duplicates = 0
        self.gaps: dict[str, int] = {}  # device_id -> seqs skipped and not (yet) filled

    def first_time(self, device_id: str, epoch: str, seq: int) -> bool:
        """True the first time ``(device_id, epoch, seq)`` is offered, False for a repeat."""
        key = (device_id, epoch)
        entry = self._seen.get(key)
        if entry is None:
            self._seen[key] = [seq, {seq}]
            epochs = self._epochs.setdefault(device_id, [])
            epochs.append(epoch)
            if len(epochs) > MAX_EPOCHS:  # a new epoch = a new outbox: old ones will not send again
                self._seen.pop((device_id, epochs.pop(0)), None)
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
        """correct / labelled since the watcher started (None before any labelled input)."""
        return self.correct / self.labeled if self.labeled else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the `edgekit watch --json` line), with `accuracy`."""
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
        """Add one window's buckets; False (and nothing added) when its bucket grid differs."""
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
        try:
            handler(self, dev, doc, msg)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            # Payloads are untrusted input: a malformed field must cost one message, never the consumer
            # thread (the exporter would silently stop counting). Fields applied before the error stay.
            self.invalid += 1
            log.warning("ignored a malformed %s message from %s (%s: %s)", kind, device_id, type(exc).__name__, exc)
        return device_id

    def apply_many(self, messages: Iterable[Message]) -> set[str]:
        """:meth:`apply` each message; the ids of the devices that changed."""
        changed = set()
        for m in messages:
            d = self.apply(m)
            if d is not None:
                changed.add(d)
        return changed

    # --- reading ------------------------------------------------------------------------------------
    def status_of(self, dev: _Device, now: float | None = None) -> str:
        """online / offline / unknown as the device said, or "lost" when online but silent for 3 windows."""
        if dev.status != "online":
            return dev.status
        now = time.time() if now is None else now
        heard = dev.last_heard if dev.last_heard is not None else dev.last_seen
        if heard is not None and now - heard > self.lost_after_windows * dev.window_s:
            return "lost"
        return "online"

    def row(self, device_id: str, now: float | None = None) -> DeviceRow:
        """The :class:`DeviceRow` of one known device (``now``: Unix time for the lost check, default the clock)."""
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
        """Every known device's row, sorted by device id."""
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
    pass  # an event only refreshes last seen (and, live, keeps the device from turning "lost")


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
