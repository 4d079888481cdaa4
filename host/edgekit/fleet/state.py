"""Fleet state shared by ``edgekit watch``, the Prometheus exporter and the remote bench client.

* :class:`FleetState` — what the fleet looks like, built from the device → fleet messages of the
  ``edge/v1`` contract (docs/agent.md, "Topics and payloads"). Delivery is at-least-once, so every
  message carrying ``(epoch, seq)`` is de-duplicated on ``(device_id, epoch, seq)``; a jump in ``seq``
  is counted as a visible loss. Latency histograms are summed bucket by bucket (the ``le`` bounds are the
  same fleet-wide), never by averaging percentiles.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from edgekit_agent.contract.errors import UsageError
from edgekit_agent.contract.topics import EVENTS, META, STATUS, TELEMETRY, every_device, parse_topic
from edgekit_agent.mqtt.client import Message

log = logging.getLogger(__name__)

STAGES = ("total", "preprocess", "invoke")
LOST_AFTER_WINDOWS = 3  # a device silent for this many telemetry windows is shown as "lost"
DEFAULT_WINDOW_S = 10.0
DEDUP_WINDOW = 4096  # how far back a late message can still fill a gap; older, never-seen seqs count as duplicates
MAX_EPOCHS = 4  # epochs remembered per device (memory stays bounded whatever a device sends)
# A seq further ahead than this is not a gap but junk (an outbox drops at most its bound, 10,000 by default):
# believing it would make every later real message look like an old duplicate.
MAX_SEQ_JUMP = 1_000_000
MAX_COUNT = 2**53  # counts beyond this are junk; clamped so sums and float() stay exact and finite
FORGET_AFTER_S = 7 * 24 * 3600.0  # a device silent this long is forgotten (memory and /metrics series)
MAX_ROUTES = 100_000  # topics whose routing is remembered (a few per device; invented topics cost up to this)


def load_json(payload: bytes) -> Any | None:
    """A payload as JSON, or None when it is not (bad UTF-8, bad JSON, nesting deep enough to exhaust the
    parser, integers too long to convert): what a rogue publisher sends must cost one message, not a thread."""
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def finite_number(v: Any) -> float | None:
    """A finite number, or None (not a number, a bool, inf/NaN, or too large for a float)."""
    if type(v) is float:  # what JSON gives for most fields: one type check, no conversion
        return v if math.isfinite(v) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _count(v: Any) -> int:
    """A count: 0 when absent, at most MAX_COUNT; anything else (text, negative, inf, a 400-digit integer) is a
    malformed message (ValueError: the message is counted invalid, the consumer goes on)."""
    if type(v) is int and 0 <= v <= MAX_COUNT:  # what every agent sends (type(): a bool is not a count)
        return v
    if v is None:
        return 0
    f = finite_number(v)
    if f is None or f < 0:
        raise ValueError(f"not a count: {str(v)[:40]!r}")
    return int(min(f, MAX_COUNT))


def _sum_errors(errors: Any) -> int:
    if isinstance(errors, dict):  # a JSON object; not Mapping: an ABC check per message costs more than the sum
        return min(sum(_count(v) for v in errors.values()), MAX_COUNT)
    return _count(errors)


# --------------------------------------------------------------------------------------------------
# De-duplication
# --------------------------------------------------------------------------------------------------
class Deduper:
    """Tells first deliveries from repeats per ``(device_id, epoch)`` and counts gaps (lost messages).

    Memory follows the losses, not the traffic: per stream it keeps the highest seq, the seqs still
    missing below it (at most DEDUP_WINDOW back) and the few seqs seen below the first one (a late message
    from before this consumer started). In-order traffic costs O(1)."""

    __slots__ = ("_seen", "_epochs", "duplicates", "rejected", "gaps")

    def __init__(self) -> None:
        # key -> [high seq, missing seqs (> high - DEDUP_WINDOW), first seq seen, seqs seen below it]
        self._seen: dict[tuple[str, str], list[Any]] = {}
        self._epochs: dict[str, list[str]] = {}  # device_id -> its epochs, oldest first
        self.duplicates = 0
        self.rejected = 0  # seqs too far ahead to be real
        self.gaps: dict[str, int] = {}  # device_id -> seqs skipped and not (yet) filled

    def first_time(self, device_id: str, epoch: str, seq: int) -> bool:
        """True the first time ``(device_id, epoch, seq)`` is offered, False for a repeat (or junk)."""
        key = (device_id, epoch)
        entry = self._seen.get(key)
        if entry is None:
            self._seen[key] = [seq, set(), seq, set()]
            epochs = self._epochs.setdefault(device_id, [])
            epochs.append(epoch)
            if len(epochs) > MAX_EPOCHS:  # a new epoch = a new outbox: old ones will not send again
                self._seen.pop((device_id, epochs.pop(0)), None)
            return True
        high, missing, low, below = entry
        if seq > high:
            if seq - high > MAX_SEQ_JUMP:
                self.rejected += 1
                return False
            if seq > high + 1:
                self.gaps[device_id] = self.gaps.get(device_id, 0) + seq - high - 1
                missing.update(range(max(high + 1, seq - DEDUP_WINDOW), seq))
            entry[0] = seq
            if len(missing) > DEDUP_WINDOW:  # forget what is too old to arrive (memory stays bounded)
                entry[1] = {m for m in missing if m > seq - DEDUP_WINDOW}
            return True
        if seq in missing:
            missing.discard(seq)
            self.gaps[device_id] = self.gaps.get(device_id, 0) - 1  # a late arrival fills a gap counted earlier
            return True
        if low - DEDUP_WINDOW < seq < low and seq not in below:  # sent before we started listening
            below.add(seq)
            return True
        self.duplicates += 1
        return False

    def forget(self, device_id: str) -> None:
        for epoch in self._epochs.pop(device_id, []):
            self._seen.pop((device_id, epoch), None)
        self.gaps.pop(device_id, None)


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
    disk_full: bool = False  # the device's outbox has no disk left (status, disk_full/disk_ok events, telemetry)

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

    def add(self, le: tuple[float, ...], cum: Sequence[int], total: float, count: int) -> bool:
        """Add one window's buckets; False (and nothing added) when its bucket grid differs."""
        # `is` first: bucket_grid hands out the one tuple of the grid every agent sends (no 31-bound compare).
        if (le is not self.le and le != self.le) or len(cum) != len(self.cum):
            return False
        self.cum = list(map(operator.add, self.cum, cum))
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
    # Kept for the exporter (it has no other way to them without parsing every payload twice):
    last_window: float | None = None  # our clock when the newest telemetry window arrived
    drift: dict[str, float] = field(default_factory=dict)  # PSI per signal of the newest window that had one
    rollbacks: int = 0  # OTA "rollback" events
    disk_full: bool = False
    disk_ts: float = -1.0  # device clock (envelope ts) of the message disk_full was taken from


_Handler = Callable[["FleetState", _Device, dict[str, Any], Message], None]
_last_grid: tuple[list[Any], tuple[float, ...]] = ([], ())  # the last bounds accepted, as received and parsed
_JUST_INT = {int}  # the types of counts every agent sends (type(): a bool is not a count)


def bucket_grid(le: Any, cum: Any) -> tuple[tuple[float, ...], list[int]] | None:
    """``(le, cum)`` of a histogram when they make one Prometheus accepts: bounds strictly increasing (the
    last may be "+Inf"), cumulative counts non-negative and non-decreasing, as many of each; else None."""
    global _last_grid
    if not isinstance(le, list) or not isinstance(cum, list) or not le or len(le) != len(cum) or len(le) > 256:
        return None
    # Every agent sends the same bounds and plain integer counts: one list comparison and a type check
    # replace validating 60 numbers one by one, the larger part of applying a window (scripts/bench_fleet.py).
    seen_le, seen_bounds = _last_grid
    if le == seen_le and set(map(type, cum)) == _JUST_INT:
        ordered = sorted(cum)  # integers are non-decreasing exactly when sorting changes nothing
        if ordered != cum or cum[0] < 0 or cum[-1] > MAX_COUNT:
            return None
        return seen_bounds, ordered
    bounds: list[float] = []
    for i, x in enumerate(le):
        if x == "+Inf" and i == len(le) - 1:
            bounds.append(math.inf)
            continue
        f = finite_number(x)
        if f is None or (bounds and f <= bounds[-1]):
            return None
        bounds.append(f)
    counts = [finite_number(c) for c in cum]
    if any(c is None or c < 0 or c > MAX_COUNT for c in counts) or any(b < a for a, b in zip(counts, counts[1:])):
        return None
    _last_grid = (list(le), tuple(bounds))
    return _last_grid[1], [int(c) for c in counts]  # type: ignore[arg-type]


class FleetState:
    """Everything known about the fleet, fed one message at a time with :meth:`apply` (not thread-safe:
    one consumer thread applies, readers take :attr:`lock`)."""

    def __init__(
        self,
        lost_after_windows: int = LOST_AFTER_WINDOWS,
        histogram_stages: Sequence[str] = STAGES,
        forget_after_s: float = FORGET_AFTER_S,
    ) -> None:
        """``histogram_stages``: which latency series to sum bucket by bucket (the exporter needs them,
        the watch table does not: it passes ``()`` and saves the work). A device not heard from for
        ``forget_after_s`` is forgotten (a long-running exporter must not keep every device that ever was)."""
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
        self.forget_after_s = forget_after_s
        self._forgot_at = 0.0
        # topic -> (device id, kind, handler), or None when the topic is not fleet state: one dict lookup per
        # message instead of splitting the topic and choosing the handler again (issue 15).
        self._routes: dict[str, tuple[str, str, _Handler] | None] = {}
        self.lock = threading.Lock()

    # --- feeding ------------------------------------------------------------------------------------
    def apply(self, msg: Message) -> str | None:
        """Account for one message; returns the device id it changed, or None (duplicate, foreign, bad)."""
        try:
            route = self._routes[msg.topic]
        except KeyError:
            route = self._route(msg.topic)
        if route is None:
            return None
        device_id, kind, handler = route
        if msg.retain and kind not in (STATUS, META):
            return None  # only status and meta are retained by agents; a retained window would count at every start
        doc = load_json(msg.payload)
        if not isinstance(doc, dict):
            self.invalid += 1
            log.warning("ignored a message on %s that is not a JSON object: %r", msg.topic, msg.payload[:80])
            return None
        epoch, seq = doc.get("epoch"), doc.get("seq")
        # Retained status/meta are snapshots (re-sent on every subscribe): de-dup only live messages.
        if epoch is not None and type(seq) is int and not msg.retain:  # type(): a bool is not a seq
            if not self.dedup.first_time(device_id, str(epoch), seq):
                return None
        self.messages += 1
        dev = self.devices.get(device_id)
        if dev is None:
            dev = self.devices[device_id] = _Device(device_id)
        ts = finite_number(doc.get("ts"))
        if ts is not None:
            ts /= 1000.0
            if dev.last_seen is None or ts > dev.last_seen:
                dev.last_seen = ts
        if not msg.retain:
            dev.last_heard = msg.received
            if (
                kind != STATUS
                and dev.status == "offline"
                and dev.status_reason == "lwt"
                and doc.get("boot_id") == dev.boot_id
            ):
                # Live traffic after a last will of the same run: the will was an old connection's
                # (reconnect/takeover); the device is evidently connected again.
                dev.status, dev.status_reason = "online", "reconnected"
        try:
            handler(self, dev, doc, msg)
        except (TypeError, ValueError, AttributeError, KeyError, ArithmeticError) as exc:
            # Payloads are untrusted input: a malformed field must cost one message, never the consumer
            # thread (the exporter would silently stop counting). Fields applied before the error stay.
            self.invalid += 1
            log.warning("ignored a malformed %s message from %s (%s: %s)", kind, device_id, type(exc).__name__, exc)
        if msg.received - self._forgot_at > 60.0:  # cheap, and at most once a minute
            self._forgot_at = msg.received
            self.forget_silent(msg.received)
        return device_id

    def _route(self, name: str) -> tuple[str, str, _Handler] | None:
        parsed = parse_topic(name)
        route = None
        if parsed is not None:
            device_id, kind = parsed
            handler = _HANDLERS.get(kind) or (_on_bench_or_other if kind.startswith(("bench/", "res/")) else None)
            # Commands (fleet → device) and unknown kinds are not fleet state: None.
            route = (device_id, kind, handler) if handler is not None else None
        if len(self._routes) >= MAX_ROUTES:
            self._routes.clear()
        self._routes[name] = route
        return route

    def forget_silent(self, now: float | None = None) -> list[str]:
        """Forget devices whose last live message is older than ``forget_after_s``; returns their ids.
        (Devices known only from a retained status were never heard live and stay: they are the roster.)"""
        now = time.time() if now is None else now
        gone = [
            d
            for d, dev in self.devices.items()
            if dev.last_heard is not None and now - dev.last_heard > self.forget_after_s
        ]
        for d in gone:
            del self.devices[d]
            self.dedup.forget(d)
        if gone:
            self._routes.clear()  # the forgotten devices' topics with them; the others' are found again
            log.info("forgot %d device(s) silent for more than %.0f s", len(gone), self.forget_after_s)
        return gone

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
            str(x)
            for x in (
                r.get("engine"),
                r.get("version"),
                r.get("delegate"),
                f"x{r['num_threads']}" if r.get("num_threads") else None,
            )
            if x
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
            disk_full=dev.disk_full,
        )

    def snapshot(self, now: float | None = None) -> tuple[DeviceRow, ...]:
        """Every known device's row, sorted by device id."""
        return tuple(self.row(d, now) for d in sorted(self.devices))


# --- per-topic handlers (a table, not an if-chain) --------------------------------------------------
def _disk(dev: _Device, doc: dict[str, Any], full: Any) -> None:
    """Take the disk state a message reports unless a newer message (device clock) already did: a backlog
    sent after an outage must not overwrite the state the device reported since."""
    ts = finite_number(doc.get("ts"))
    if isinstance(full, bool) and ts is not None and ts >= dev.disk_ts:
        dev.disk_full, dev.disk_ts = full, ts


def _on_status(state: FleetState, dev: _Device, doc: dict[str, Any], msg: Message) -> None:
    value = str(doc.get("state") or doc.get("status") or "unknown")
    ts = (finite_number(doc.get("ts")) or 0.0) / 1000.0
    boot = str(doc["boot_id"]) if doc.get("boot_id") else None
    if boot and dev.boot_id and boot != dev.boot_id and ts <= dev.status_ts:
        return  # from an older run of the agent (e.g. its last will, arriving after the new birth)
    # Within one run, an LWT carries the time it was *registered* (at connect), older than the birth:
    # an "offline" of the current run always counts; an older "online" does not.
    if boot == dev.boot_id and value == "online" and ts < dev.status_ts:
        return
    dev.status, dev.status_reason, dev.status_ts = (
        value,
        str(doc.get("reason") or ""),
        max(ts, dev.status_ts if boot == dev.boot_id else ts),
    )
    if boot:
        dev.boot_id = boot
    if value == "online":  # an LWT carries the disk state of when it was registered
        _disk(dev, doc, doc.get("disk_full"))
    if value == "online" and msg.retain and dev.last_heard is None:
        # A retained birth says nothing about now; count from our start so a device is not "lost" at once.
        dev.last_heard = msg.received


def _on_meta(state: FleetState, dev: _Device, doc: dict[str, Any], msg: Message) -> None:
    dev.meta = doc
    cfg = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    window = finite_number(cfg.get("window_s")) or finite_number(doc.get("window_s"))
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
    dev.last_window = msg.received
    # A window rebuilt after a crash (docs/agent.md) spans the replayed images, not the window length, and has
    # no rate: its counts add up, its timing says nothing.
    recovered = doc.get("recovered") is True
    window = doc.get("window") or {}
    if isinstance(window, dict) and not recovered:
        start, end = finite_number(window.get("start")), finite_number(window.get("end"))
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
    acc = doc.get("accuracy") or {}
    # Every count read (and checked) before any is added: a malformed window counts nothing.
    requests, ok, errors = _count(counts.get("requests")), _count(counts.get("ok")), _sum_errors(counts.get("errors"))
    labeled, correct = _count(acc.get("labeled")), _count(acc.get("correct"))
    dev.requests = min(dev.requests + requests, MAX_COUNT)
    dev.ok = min(dev.ok + ok, MAX_COUNT)
    dev.errors = min(dev.errors + errors, MAX_COUNT)
    if not recovered:
        dev.throughput = finite_number(doc.get("throughput_ips"))
    dev.labeled = min(dev.labeled + labeled, MAX_COUNT)
    dev.correct = min(dev.correct + min(correct, labeled), MAX_COUNT)  # never more right answers than questions
    drift = doc.get("drift")
    if isinstance(drift, dict):
        for signal in ("input_mean", "predicted_class", "confidence"):
            psi = finite_number(drift[signal].get("psi")) if isinstance(drift.get(signal), dict) else None
            if psi is not None:
                dev.drift[signal] = psi
    outbox = doc.get("outbox") or {}
    if isinstance(outbox, dict) and finite_number(outbox.get("dropped")) is not None:
        # Cumulative per outbox database (= per epoch): keep the largest seen, add epochs up.
        epoch = str(doc.get("epoch", ""))[:64]
        dev.outbox_dropped_by_epoch[epoch] = max(dev.outbox_dropped_by_epoch.get(epoch, 0), _count(outbox["dropped"]))
        if len(dev.outbox_dropped_by_epoch) > MAX_EPOCHS:
            dev.outbox_dropped_by_epoch.pop(next(iter(dev.outbox_dropped_by_epoch)))
    if isinstance(outbox, dict):
        _disk(dev, doc, outbox.get("disk_full"))
    lat = doc.get("latency_ms") or {}
    total = lat.get("total") if isinstance(lat, dict) else None
    # Percentiles of the latest window that had requests: an idle window says nothing about latency,
    # and blanking the column every quiet second makes the live view flicker.
    if isinstance(total, dict) and _count(total.get("count")) > 0:
        dev.p50, dev.p99 = finite_number(total.get("p50")), finite_number(total.get("p99"))
    for stage in state.histogram_stages:
        s = lat.get(stage) if isinstance(lat, dict) else None
        if not isinstance(s, dict):
            continue
        h = s.get("histogram") or s
        grid = bucket_grid(h.get("le"), h.get("cum")) if isinstance(h, dict) else None
        if grid is None:
            state.rejected_histograms += 1
            continue
        le, cum = grid
        total_ms, n = finite_number(s.get("sum")) or 0.0, _count(s.get("count"))
        existing = dev.hist.get(stage)
        if existing is None or not existing.add(le, cum, total_ms, n):
            if existing is not None:  # a new grid (an agent upgrade): a new series, as after a counter reset
                log.warning(
                    "%s: latency buckets changed (le=%s); the %s histogram starts again", dev.device_id, le, stage
                )
            dev.hist[stage] = Histogram(le, cum, total_ms, n)


def _on_events(state: FleetState, dev: _Device, doc: dict[str, Any], msg: Message) -> None:
    # Otherwise an event only refreshes last seen (and, live, keeps the device from turning "lost").
    if doc.get("event") == "rollback":
        dev.rollbacks = min(dev.rollbacks + 1, MAX_COUNT)
    elif doc.get("event") in ("disk_full", "disk_ok"):
        _disk(dev, doc, doc["event"] == "disk_full")


def _on_bench_or_other(state: FleetState, dev: _Device, doc: dict[str, Any], msg: Message) -> None:
    pass


_HANDLERS: dict[str, _Handler] = {
    STATUS: _on_status,
    META: _on_meta,
    TELEMETRY: _on_telemetry,
    EVENTS: _on_events,
}

FLEET_SUBSCRIPTIONS: tuple[tuple[str, int], ...] = tuple((every_device(kind), 1) for kind in _HANDLERS)
