"""A Prometheus exporter for the fleet: telemetry in over MQTT, ``/metrics`` out over HTTP.

Telemetry and events are consumed through MQTT 5 shared subscriptions
(``$share/GROUP/edge/v1/+/telemetry/inference``, ``…/+/events``): the broker hands each message to exactly
one exporter of the group, so N exporters split a large fleet and Prometheus adds their series up
(``sum``) without double counting. Each exporter de-duplicates on ``(device_id, epoch, seq)`` what it
receives. (A redelivered duplicate that the broker hands to *another* member of the group cannot be
recognised by either; that is the price of splitting per message, and is rare: it needs a lost PUBACK.)

Status and meta are retained and not shared (the broker sends no retained messages to shared
subscriptions), so every exporter knows every device's up/down state and labels: take ``max by (device)``
of ``edgekit_device_up`` when several exporters run. What is per exporter and how to aggregate it is said
in each metric's HELP (docs/fleet.md has the table).

Cardinality is a choice (``per_device``): ``counters`` (default) keeps a dozen series per device and
latency histograms per (model, profile) only; ``histograms`` adds per-device histograms; ``off`` keeps
only ``edgekit_device_up`` per device and aggregates the counters by (model, profile). The text is
rendered here, not by prometheus-client: each device's label strings and sample lines are kept between
scrapes and formatted again only when the device changed, which is what lets 10,000 devices scrape in under
a second on two shared cores (scripts/bench_fleet.py, docs/fleet.md "At scale").

Latency histograms are real Prometheus histograms, summed bucket by bucket from the devices' ``le``/``cum``
counts (ms → seconds), so ``histogram_quantile`` works across windows, devices and exporters.
"""

from __future__ import annotations

import gzip
import logging
import math
import operator
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.utils import floatToGoString

from edgekit.fleet.connection import FleetLink
from edgekit.fleet.state import FleetState
from edgekit_agent.contract.errors import BundleError, UsageError
from edgekit_agent.contract.manifest import MANIFEST_NAME, Manifest
from edgekit_agent.contract.topics import EVENTS, META, STATUS, TELEMETRY, every_device
from edgekit_agent.mqtt.client import Message

log = logging.getLogger(__name__)

DEFAULT_GROUP = "edgekit-exporter"
PER_DEVICE = ("off", "counters", "histograms")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A 1-2-5 subset of the agent's bucket grid. Cumulative counts at a subset of the bounds are still
# exact, and it halves the series of every histogram.
COARSE_LE_MS = frozenset({0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0})
MAX_LABEL = 128  # label values come from devices: bounded, so a rogue one cannot bloat every scrape

SUM, MAX = "; each exporter of a group counts what it received: sum over exporters", "; max over exporters"
# Every family: type and HELP. The HELP says how to aggregate over the exporters of a group: that is what
# a query must do, and it is what differs from family to family.
_FAMILIES: dict[str, tuple[str, str]] = {
    "edgekit_device_up": (
        "gauge",
        "1 while the device is online (birth seen, not silent for 3 windows); every exporter knows every device" + MAX,
    ),
    "edgekit_device_info": ("gauge", "the bundle and runtime a device last reported (value 1)"),
    "edgekit_device_disk_full": (
        "gauge",
        "1 while the device reports a full disk (its outbox drops the oldest telemetry; status, events)" + MAX,
    ),
    "edgekit_inference_requests_total": ("counter", "inference requests" + SUM),
    "edgekit_inference_errors_total": ("counter", "failed inference requests" + SUM),
    "edgekit_inference_labeled_total": ("counter", "inferences on labelled inputs" + SUM),
    "edgekit_inference_correct_total": ("counter", "labelled inferences predicted correctly" + SUM),
    "edgekit_outbox_dropped_total": (
        "counter",
        "telemetry records the device's outbox dropped when full (the device's own running figure, so every "
        "exporter that received a window of it has it)" + MAX,
    ),
    "edgekit_telemetry_windows_total": ("counter", "telemetry windows received (after de-duplication)" + SUM),
    "edgekit_ota_rollbacks_total": ("counter", "OTA rollbacks the device reported (rollback events)" + SUM),
    "edgekit_telemetry_last_window_timestamp_seconds": (
        "gauge",
        "when this exporter last received a telemetry window from the device (Unix time)" + MAX,
    ),
    "edgekit_drift_psi": (
        "gauge",
        "population stability index of the device's latest window with data against the bundle's reference "
        "(latest this exporter received)" + MAX,
    ),
    "edgekit_model_inference_latency_seconds": (
        "histogram",
        "inference latency per stage of every device of a model, from the device histograms" + SUM,
    ),
    "edgekit_inference_latency_seconds": (
        "histogram",
        "inference latency per stage of one device, from its histograms (--per-device histograms)" + SUM,
    ),
    "edgekit_model_reference_accuracy": (
        "gauge",
        "int8 accuracy edgekit build measured on the held-out split, a fraction (--bundles)",
    ),
    "edgekit_profile_latency_budget_seconds": (
        "gauge",
        "the p95 latency budget of a device profile (--latency-budget)",
    ),
    "edgekit_exporter_devices": ("gauge", "devices this exporter knows"),
    "edgekit_exporter_duplicates_total": (
        "counter",
        "duplicate messages this exporter dropped (a duplicate handed to another exporter of the group is not seen)",
    ),
}
# The per-device counters, in the order of the values the collector reads from each device.
_COUNTERS = (
    "edgekit_inference_requests_total",
    "edgekit_inference_errors_total",
    "edgekit_inference_labeled_total",
    "edgekit_inference_correct_total",
    "edgekit_outbox_dropped_total",
    "edgekit_telemetry_windows_total",
    "edgekit_ota_rollbacks_total",
)


@dataclass(frozen=True, slots=True)
class ModelReference:
    """What ``edgekit build`` measured for a bundle: its accuracy alerts compare the fleet with."""

    model: str
    version: str
    profile: str
    accuracy: float  # int8 accuracy on the held-out test split, a fraction
    source: str  # the manifest it came from


def load_references(paths: Iterable[str | Path]) -> tuple[ModelReference, ...]:
    """The build-time accuracy of each bundle in ``paths``: a bundle directory, or a folder of them (what
    ``edgekit build --out`` wrote). A manifest without ``metrics.int8_accuracy`` is skipped (logged)."""
    refs: list[ModelReference] = []
    for p in map(Path, paths):
        manifests = [p / MANIFEST_NAME] if (p / MANIFEST_NAME).is_file() else sorted(p.glob(f"*/{MANIFEST_NAME}"))
        if not manifests:
            raise UsageError(
                f"{p}: no bundle here ({MANIFEST_NAME} in it or in its sub-folders); "
                "pass a bundle directory or the folder `edgekit build --out` wrote."
            )
        for path in manifests:
            try:
                m = Manifest.load(path)
            except OSError as exc:
                raise BundleError(f"{path}: cannot read the manifest ({exc}); check the file's permissions.") from exc
            acc = m.metrics.get("int8_accuracy")
            if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 1:
                log.warning("%s: no metrics.int8_accuracy; no reference accuracy for %s", path, m.name)
                continue
            refs.append(ModelReference(m.name, m.version, m.profile_name, float(acc), str(path)))
    return tuple(refs)


def _label(value: Any) -> str:
    v = str(value)[:MAX_LABEL]
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _header(name: str, extra: str = "") -> str:
    kind, help_text = _FAMILIES[name]
    return f"# HELP {name} {help_text}{extra}\n# TYPE {name} {kind}\n"


class _Grid:
    """How one device bucket grid is exported: which of its bounds, as which ``le`` strings."""

    __slots__ = ("keep", "le")

    def __init__(self, le_ms: tuple[float, ...], coarse: bool) -> None:
        finite = [(i, le) for i, le in enumerate(le_ms) if not math.isinf(le)]
        if coarse and any(le in COARSE_LE_MS for _, le in finite):
            finite = [(i, le) for i, le in finite if le in COARSE_LE_MS]
        self.keep = tuple(i for i, _ in finite)
        self.le = tuple(floatToGoString(le / 1000.0) for _, le in finite)

    def pick(self, cum: list[int]) -> tuple[int, ...]:
        return tuple(map(cum.__getitem__, self.keep))


_Hist = tuple[_Grid, tuple[int, ...], float, int]  # grid, cumulative counts at its bounds, sum (ms), count


class _Row:
    """One device as the collector last rendered it: label strings escaped once, sample lines formatted
    again only when the device's values changed, and what was last added to its model's totals."""

    __slots__ = (
        "key",
        "model",
        "profile",
        "dl",
        "dml",
        "info",
        "up",
        "disk",
        "prefixes",
        "counts",
        "lines",
        "extra",
        "hists",
    )

    def __init__(self, device_id: str, key: tuple[Any, ...], has_info: bool) -> None:
        name, profile, version, engine, delegate = (str(v if v is not None else "")[:MAX_LABEL] for v in key)
        self.key, self.model, self.profile = key, name, profile
        self.dl = dl = f'device="{_label(device_id)}"'
        self.dml = dml = f'{dl},model="{_label(name)}",profile="{_label(profile)}"'
        self.info = (
            f'edgekit_device_info{{{dml},version="{_label(version)}",engine="{_label(engine)}",'
            f'delegate="{_label(delegate)}"}} 1\n'
            if has_info
            else ""
        )
        self.up = (f"edgekit_device_up{{{dl}}} 0\n", f"edgekit_device_up{{{dl}}} 1\n")
        self.disk = (f"edgekit_device_disk_full{{{dl}}} 0\n", f"edgekit_device_disk_full{{{dl}}} 1\n")
        self.prefixes = tuple(f"{metric}{{{dml}}} " for metric in _COUNTERS)
        self.counts: tuple[int, ...] = (0,) * len(_COUNTERS)  # what was added to the model totals so far
        self.hists: dict[str, _Hist] = {}
        self.lines: list[str] = []  # the counter lines of ``counts``
        self.extra: tuple[str, str] = ("", "")  # the last-window line and the drift lines

    def format(self, dev: Any) -> None:
        self.lines = [p + str(v) + "\n" for p, v in zip(self.prefixes, self.counts)]
        seen = (
            f"edgekit_telemetry_last_window_timestamp_seconds{{{self.dl}}} {dev.last_window:.3f}\n"
            if dev.last_window is not None
            else ""
        )
        drift = "".join(f'edgekit_drift_psi{{{self.dml},signal="{k}"}} {v!r}\n' for k, v in dev.drift.items())
        self.extra = (seen, drift)


class _ModelTotals:
    """Counters and histograms per (model, profile) that only ever grow.

    Summing the devices' totals at each scrape would not do: a device that moves to another model (OTA) or
    is forgotten would make a model's counter go *down*, which Prometheus reads as a reset and turns into a
    spike. Instead each render adds what every device gained since the previous render to the (model,
    profile) it reports now (so a switch is attributed at scrape resolution)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], list[int]] = {}
        self.hist: dict[tuple[str, str, str], list[Any]] = {}  # -> [grid, cum, sum_ms, count]

    def add(self, row: _Row, counts: tuple[int, ...], hists: dict[str, _Hist]) -> None:
        """Add what the device gained since ``row.counts``/``row.hists``, and remember the new values there."""
        acc = self.counts.get((row.model, row.profile))
        if acc is None:
            acc = self.counts[(row.model, row.profile)] = [0] * len(counts)
        deltas = tuple(map(operator.sub, counts, row.counts))
        if min(deltas) < 0:  # a count went down: the device was forgotten and came back, all of it is new
            deltas = tuple(c if d < 0 else d for c, d in zip(counts, deltas))
        acc[:] = map(operator.add, acc, deltas)
        for stage, (grid, cum, total, n) in hists.items():
            prev = row.hists.get(stage)
            d_cum = tuple(map(operator.sub, cum, prev[1])) if prev is not None and prev[0] is grid else ()
            if d_cum and n >= prev[3] and min(d_cum) >= 0:
                d_sum, d_n = total - prev[2], n - prev[3]
            else:  # new, or restarted (a new grid, a forgotten device back): all of it is new
                d_cum, d_sum, d_n = cum, total, n
            slot = self.hist.get((row.model, row.profile, stage))
            if slot is None:
                self.hist[(row.model, row.profile, stage)] = [grid, d_cum, d_sum, d_n]
            elif slot[0] is grid:  # grids are one object per bucket grid (FleetCollector._grid)
                slot[1] = tuple(map(operator.add, slot[1], d_cum))
                slot[2] += d_sum
                slot[3] += d_n
            else:  # another bucket grid in the same model (an agent upgrade): never mixed in
                log.warning(
                    "%s: latency buckets differ from the rest of %s/%s; not summed", row.dl, row.model, row.profile
                )
        row.counts, row.hists = counts, hists


class FleetCollector:
    """Renders the Prometheus text exposition of a :class:`FleetState` at scrape time (:meth:`render`)."""

    def __init__(
        self,
        state: FleetState,
        buckets: str = "coarse",
        *,
        per_device: str = "counters",
        references: Iterable[ModelReference] = (),
        latency_budgets_ms: Mapping[str, float] | None = None,
    ) -> None:
        """``per_device``: off | counters | histograms (module docstring); ``references``: build-time accuracy
        per bundle (:func:`load_references`); ``latency_budgets_ms``: profile name → p95 budget in ms."""
        if buckets not in ("coarse", "full"):
            raise UsageError(f"buckets '{buckets}': use coarse (1-2-5 bounds) or full (every bound the devices send).")
        if per_device not in PER_DEVICE:
            raise UsageError(f"per_device '{per_device}': use one of {', '.join(PER_DEVICE)}.")
        budgets = dict(latency_budgets_ms or {})
        bad = {
            p: ms for p, ms in budgets.items() if not (isinstance(ms, (int, float)) and ms > 0 and math.isfinite(ms))
        }
        if bad:
            raise UsageError(f"latency budgets must be positive milliseconds; got {bad}.")
        self.state = state
        self.coarse = buckets == "coarse"
        self.per_device = per_device
        self.references = tuple(references)
        self.budgets_ms = budgets
        self.totals = _ModelTotals()
        self._grids: dict[tuple[float, ...], _Grid] = {}
        # Every device has its own (equal) le tuple: found by identity first, since hashing 30 floats is slow.
        self._grid_of: dict[int, tuple[tuple[float, ...], _Grid]] = {}
        self._rows: dict[str, _Row] = {}

    def _grid(self, le_ms: tuple[float, ...]) -> _Grid:
        hit = self._grid_of.get(id(le_ms))
        if hit is None or hit[0] is not le_ms:
            if len(self._grid_of) > 2 * len(self.state.devices) + 64:  # le tuples of forgotten devices
                self._grid_of.clear()
            g = self._grids.get(le_ms)
            if g is None:
                g = self._grids[le_ms] = _Grid(le_ms, self.coarse)
            hit = self._grid_of[id(le_ms)] = (le_ms, g)
        return hit[1]

    def _hists(self, dev: Any) -> dict[str, _Hist]:
        out = {}
        for stage in self.state.histogram_stages:
            h = dev.hist.get(stage)
            if h is not None:
                g = self._grid(h.le)
                out[stage] = (g, g.pick(h.cum), h.sum, h.count)
        return out

    def render(self) -> str:
        """The whole ``/metrics`` page."""
        st = self.state
        per_device = self.per_device != "off"
        up: list[str] = []
        disk: list[str] = []
        shown: list[_Row] = []
        dev_hist: list[str] = []
        rows = self._rows
        with st.lock:
            now = time.time()
            for device_id, dev in st.devices.items():
                b, r = dev.bundle, dev.runtime
                key = (
                    b.get("name", ""),
                    b.get("profile", ""),
                    b.get("version", ""),
                    r.get("engine"),
                    r.get("delegate"),
                )
                row = rows.get(device_id)
                if row is None or row.key != key:
                    old, row = row, _Row(device_id, key, bool(b or r))
                    if old is not None:  # new labels (an OTA): what was counted so far stays counted
                        row.counts, row.hists = old.counts, old.hists
                        row.format(dev)
                    rows[device_id] = row
                up.append(row.up[st.status_of(dev, now) == "online"])
                disk.append(row.disk[dev.disk_full])
                counts = (
                    dev.requests,
                    dev.errors,
                    dev.labeled,
                    dev.correct,
                    sum(dev.outbox_dropped_by_epoch.values()),
                    dev.windows,
                    dev.rollbacks,
                )
                hists = None
                # Histograms, drift and the last window only change with a telemetry window, which counts.
                if counts != row.counts or not row.lines:
                    hists = self._hists(dev)
                    self.totals.add(row, counts, hists)
                    row.format(dev)
                shown.append(row)
                if self.per_device == "histograms":
                    for stage, (g, cum, total, n) in (hists or self._hists(dev)).items():
                        labels = f'{row.dml},stage="{stage}"'
                        dev_hist += _histogram("edgekit_inference_latency_seconds", labels, g, cum, total, n)
            if len(rows) > len(st.devices):
                self._rows = {d: v for d, v in rows.items() if d in st.devices}
            n_devices, duplicates = len(st.devices), st.dedup.duplicates
        # Output in the order of the state (insertion), not sorted: sorting 10,000 ids costs more than it helps.
        out = [_header("edgekit_device_up"), *up]
        if per_device:
            out += [_header("edgekit_device_info"), *(row.info for row in shown)]
            out += [_header("edgekit_device_disk_full"), *disk]
            for i, name in enumerate(_COUNTERS):
                out += [_header(name), *(row.lines[i] for row in shown)]
            out += [_header("edgekit_telemetry_last_window_timestamp_seconds"), *(row.extra[0] for row in shown)]
            out += [_header("edgekit_drift_psi"), *(row.extra[1] for row in shown)]
        else:
            for i, name in enumerate(_COUNTERS):
                out.append(_header(name, "; --per-device off: summed over the devices of each model and profile"))
                out += [
                    f'{name}{{model="{_label(m)}",profile="{_label(p)}"}} {c[i]}\n'
                    for (m, p), c in sorted(self.totals.counts.items())
                ]
        out.append(_header("edgekit_model_inference_latency_seconds"))
        for (m, p, stage), (g, cum, total, n) in sorted(self.totals.hist.items(), key=lambda kv: kv[0]):
            labels = f'model="{_label(m)}",profile="{_label(p)}",stage="{stage}"'
            out += _histogram("edgekit_model_inference_latency_seconds", labels, g, cum, total, n)
        if self.per_device == "histograms":
            out += [_header("edgekit_inference_latency_seconds"), *dev_hist]
        out.append(_header("edgekit_model_reference_accuracy"))
        for r in self.references:
            labels = f'model="{_label(r.model)}",version="{_label(r.version)}",profile="{_label(r.profile)}"'
            out.append(f"edgekit_model_reference_accuracy{{{labels}}} {r.accuracy!r}\n")
        out.append(_header("edgekit_profile_latency_budget_seconds"))
        for p, ms in sorted(self.budgets_ms.items()):
            out.append(f'edgekit_profile_latency_budget_seconds{{profile="{_label(p)}"}} {ms / 1000.0!r}\n')
        out += [_header("edgekit_exporter_devices"), f"edgekit_exporter_devices {n_devices}\n"]
        out += [_header("edgekit_exporter_duplicates_total"), f"edgekit_exporter_duplicates_total {duplicates}\n"]
        return "".join(out)


def _histogram(name: str, labels: str, g: _Grid, cum: Iterable[int], total_ms: float, count: int) -> list[str]:
    lines = [f'{name}_bucket{{{labels},le="{le}"}} {c}\n' for le, c in zip(g.le, cum)]
    top = max(count, *cum) if lines else count  # +Inf never below a finite bucket, or Prometheus refuses the page
    lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {top}\n')
    lines.append(f"{name}_sum{{{labels}}} {total_ms / 1000.0!r}\n")
    lines.append(f"{name}_count{{{labels}}} {count}\n")
    return lines


class _MetricsHandler(BaseHTTPRequestHandler):
    server: _MetricsServer

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "edgekit exporter: see /metrics")
            return
        body = self.server.collector.render().encode()
        gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
        if gzipped:
            body = gzip.compress(body, compresslevel=1)  # level 1: 10,000 devices compress in tens of ms, not seconds
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the scraper gave up (its scrape_timeout): its business
            log.info("%s closed the connection before /metrics was sent (%d bytes)", self.address_string(), len(body))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        log.debug("%s - %s", self.address_string(), format % args)


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], collector: FleetCollector) -> None:
        self.collector = collector
        super().__init__(address, _MetricsHandler)


class Exporter:
    """MQTT consumer + HTTP ``/metrics`` server. ``port=0`` picks a free port (see :attr:`port`)."""

    def __init__(
        self,
        broker: str,
        *,
        port: int = 9108,
        host: str = "127.0.0.1",
        group: str = DEFAULT_GROUP,
        client_id: str | None = None,
        protocol: str = "auto",
        shared: bool = True,
        stages: tuple[str, ...] = ("total",),
        buckets: str = "coarse",
        per_device: str = "counters",
        references: Iterable[ModelReference] = (),
        latency_budgets_ms: Mapping[str, float] | None = None,
        tls_ca: str | None = None,
    ) -> None:
        """``stages``: latency series exported as histograms (``total``, ``preprocess``, ``invoke``);
        ``buckets``: ``coarse`` (a 1-2-5 subset of the devices' bounds, exact) or ``full``; ``per_device``,
        ``references``, ``latency_budgets_ms``: see :class:`FleetCollector`."""
        split = [every_device(TELEMETRY), every_device(EVENTS)]
        subs = [
            (every_device(STATUS), 1),
            (every_device(META), 1),
            *((f"$share/{group}/{t}" if shared else t, 1) for t in split),
        ]
        self.link = FleetLink(
            broker,
            client_id=client_id or f"edgekit-exporter-{uuid.uuid4().hex[:8]}",
            subscriptions=subs,
            protocol=protocol,
            tls_ca=tls_ca,
            on_message=self._apply,
            no_delay=False,  # a pure consumer: it sends nothing but PUBACKs
        )
        self.state = FleetState(histogram_stages=stages)
        self.collector = FleetCollector(
            self.state,
            buckets,
            per_device=per_device,
            references=references,
            latency_budgets_ms=latency_budgets_ms,
        )
        self.host, self.port, self.group = host, port, group
        self._httpd: _MetricsServer | None = None

    @property
    def url(self) -> str:
        """Where /metrics is served."""
        return f"http://{self.host}:{self.port}/metrics"

    def start(self, timeout: float = 10.0) -> Exporter:
        """Connect to the broker, serve /metrics and start consuming telemetry."""
        self.link.start(timeout)
        self._httpd = _MetricsServer((self.host, self.port), self.collector)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, name="edgekit-exporter-http", daemon=True).start()
        return self

    def _apply(self, msg: Message) -> None:
        """Apply one message on paho's network thread: a queue and a consumer thread in between cost about a
        quarter of the ingest rate (issue 15, scripts/bench_fleet.py)."""
        with self.state.lock:
            try:
                self.state.apply(msg)
            except Exception:  # noqa: BLE001 - an exception here would end paho's loop and freeze /metrics
                log.exception("exporter: a message on %s could not be applied", msg.topic)

    def processed(self) -> int:
        """Messages applied so far (after de-duplication)."""
        with self.state.lock:
            return self.state.messages

    def stop(self) -> None:
        """Stop consuming, disconnect and stop the HTTP server."""
        self.link.close()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Exporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
