"""A Prometheus exporter for the fleet: telemetry in over MQTT, ``/metrics`` out over HTTP.

Telemetry is consumed through an MQTT 5 shared subscription
(``$share/GROUP/edge/v1/+/telemetry/inference``): the broker hands each message to exactly one exporter
of the group, so N exporters split a large fleet and Prometheus adds their series up
(``sum by (device)``) without double counting. Each exporter de-duplicates on ``(device_id, epoch, seq)``
what it receives. (A redelivered duplicate that the broker hands to *another* member of the group cannot
be recognised by either; that is the price of splitting per message, and is rare: it needs a lost PUBACK.)

Status and meta are retained and not shared (the broker sends no retained messages to shared
subscriptions), so every exporter knows every device's up/down state: take ``max by (device)`` of
``edgekit_device_up`` when several exporters run.

No "lost telemetry" (seq gap) metric: behind a shared subscription each exporter sees only part of each
device's sequence, and events are not consumed, so gaps would be noise; ``edgekit watch`` (which sees every
sequenced topic) shows them.

Latency histograms are real Prometheus histograms, summed bucket by bucket from the devices' ``le``/``cum``
counts (converted from ms to seconds, the Prometheus base unit), so ``histogram_quantile`` works across
windows and devices.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from edgekit.fleet.link import FleetLink, drain
from edgekit.fleet.state import FleetState
from edgekit_agent.contract.errors import UsageError
from edgekit_agent.contract.topics import META, STATUS, TELEMETRY, every_device

log = logging.getLogger(__name__)

DEFAULT_GROUP = "edgekit-exporter"
# A 1-2-5 subset of the agent's bucket grid. Cumulative counts at a subset of the bounds are still
# exact, and it halves the series per device (1,000 devices x 30 buckets is a lot of scrape).
COARSE_LE_MS = frozenset({0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0})


class FleetCollector(Collector):
    """A custom collector: builds every metric family from a :class:`FleetState` at scrape time."""

    def __init__(self, state: FleetState, buckets: str = "coarse") -> None:
        if buckets not in ("coarse", "full"):
            raise UsageError(f"buckets '{buckets}': use coarse (1-2-5 bounds) or full (every bound the devices send).")
        self.state = state
        self.coarse = buckets == "coarse"

    def collect(self) -> Iterator[Metric]:
        """Called by prometheus-client at every scrape: metric families from the current state."""
        st = self.state
        up = GaugeMetricFamily(
            "edgekit_device_up",
            "1 while the device is online (birth seen, not silent for 3 windows)",
            labels=["device"],
        )
        info = GaugeMetricFamily(
            "edgekit_device_info",
            "the bundle and runtime a device last reported (value 1)",
            labels=["device", "bundle", "version", "profile", "engine", "delegate"],
        )
        counters = {
            "requests": CounterMetricFamily("edgekit_inference_requests", "inference requests", labels=["device"]),
            "errors": CounterMetricFamily("edgekit_inference_errors", "failed inference requests", labels=["device"]),
            "labeled": CounterMetricFamily(
                "edgekit_inference_labeled", "inferences on labelled inputs", labels=["device"]
            ),
            "correct": CounterMetricFamily(
                "edgekit_inference_correct", "labelled inferences predicted correctly", labels=["device"]
            ),
            "dropped": CounterMetricFamily(
                "edgekit_outbox_dropped", "telemetry records the device's outbox dropped when full", labels=["device"]
            ),
            "windows": CounterMetricFamily(
                "edgekit_telemetry_windows", "telemetry records received (after de-duplication)", labels=["device"]
            ),
        }
        hist = HistogramMetricFamily(
            "edgekit_inference_latency_seconds",
            "inference latency per stage, summed from device histograms",
            labels=["device", "stage"],
        )
        dup = CounterMetricFamily("edgekit_exporter_duplicates", "duplicate messages dropped by this exporter")
        with st.lock:
            now = None
            for device_id in sorted(st.devices):
                dev = st.devices[device_id]
                up.add_metric([device_id], 1.0 if st.status_of(dev, now) == "online" else 0.0)
                b, r = dev.bundle, dev.runtime
                if b or r:
                    info.add_metric(
                        [
                            device_id,
                            str(b.get("name", "")),
                            str(b.get("version", "")),
                            str(b.get("profile", "")),
                            str(r.get("engine", "")),
                            str(r.get("delegate", "")),
                        ],
                        1.0,
                    )
                values = {
                    "requests": dev.requests,
                    "errors": dev.errors,
                    "labeled": dev.labeled,
                    "correct": dev.correct,
                    "dropped": sum(dev.outbox_dropped_by_epoch.values()),
                    "windows": dev.windows,
                }
                for key, fam in counters.items():
                    fam.add_metric([device_id], float(values[key]))
                for stage in st.histogram_stages:
                    h = dev.hist.get(stage)
                    if h is None:
                        continue
                    keep = [(le, c) for le, c in zip(h.le, h.cum) if not math.isinf(le)]
                    if self.coarse and any(le in COARSE_LE_MS for le, _ in keep):
                        keep = [(le, c) for le, c in keep if le in COARSE_LE_MS]
                    buckets = [(floatToGoString(le / 1000.0), float(c)) for le, c in keep]
                    # +Inf is the count; never below a finite bucket, or Prometheus would refuse the page
                    buckets.append(("+Inf", float(max([h.count, *(c for _, c in keep)]))))
                    hist.add_metric([device_id, stage], buckets, h.sum / 1000.0)
            dup.add_metric([], float(st.dedup.duplicates))
        yield up
        yield info
        yield from counters.values()
        yield hist
        yield dup


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
        tls_ca: str | None = None,
    ) -> None:
        """``stages``: latency series exported as histograms (``total``, ``preprocess``, ``invoke``);
        ``buckets``: ``coarse`` (a 1-2-5 subset of the devices' bounds, exact) or ``full``."""
        telemetry = every_device(TELEMETRY)
        subs = [
            (every_device(STATUS), 1),
            (every_device(META), 1),
            (f"$share/{group}/{telemetry}" if shared else telemetry, 1),
        ]
        self.link = FleetLink(
            broker,
            client_id=client_id or f"edgekit-exporter-{uuid.uuid4().hex[:8]}",
            subscriptions=subs,
            protocol=protocol,
            tls_ca=tls_ca,
        )
        self.state = FleetState(histogram_stages=stages)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetCollector(self.state, buckets))
        self.host, self.port, self.group = host, port, group
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._httpd = None

    @property
    def url(self) -> str:
        """Where /metrics is served."""
        return f"http://{self.host}:{self.port}/metrics"

    def start(self, timeout: float = 10.0) -> Exporter:
        """Connect to the broker, serve /metrics and start consuming telemetry."""
        from prometheus_client import start_http_server

        self.link.start(timeout)
        self._httpd, _ = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._consume, name="edgekit-exporter", daemon=True)
        self._thread.start()
        return self

    def _consume(self) -> None:
        while not self._stop.is_set():
            batch = drain(self.link.messages, 0.2)
            if batch:
                with self.state.lock:
                    try:
                        self.state.apply_many(batch)
                    except Exception:  # noqa: BLE001 - a dead consumer thread would freeze /metrics silently
                        log.exception("exporter: a batch of %d messages could not be applied", len(batch))

    def processed(self) -> int:
        """Messages applied so far (after de-duplication)."""
        with self.state.lock:
            return self.state.messages

    def stop(self) -> None:
        """Stop consuming, disconnect and stop the HTTP server."""
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self.link.close()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Exporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
