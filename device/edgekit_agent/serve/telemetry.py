"""Windowed inference telemetry: fixed-bucket latency histograms, counts, accuracy, predictions and drift.

The serving loop calls :meth:`WindowRecorder.record` once per inference; every ``window_s`` the agent
calls :meth:`WindowRecorder.snapshot_and_reset` and publishes the result as ``telemetry/inference``
(see docs/agent.md, "Topics and payloads").

``record`` is the hot path. It takes no lock and does no arithmetic: it appends one tuple to a
``collections.deque`` (atomic and thread-safe in CPython), and every :data:`FOLD_EVERY` records the
queue is folded into the window's aggregates with a few vectorised numpy calls (bucketing, class
counts, accuracy, drift bins), so the per-inference cost is about a microsecond, and memory stays
bounded even if nobody ever calls ``snapshot_and_reset``. ``scripts/bench_serving.py`` measures it.

Latency buckets are one fleet-wide tuple (:data:`LATENCY_BUCKETS_MS`) with Prometheus semantics
(``le`` = upper bound inclusive, counts cumulative, a last implicit ``+Inf`` bucket), so windows and
devices can be summed. Percentiles are exact while a window holds at most :data:`EXACT_SAMPLE` values
and estimated from the buckets (linear interpolation, as ``histogram_quantile`` does) beyond that.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np

from edgekit_agent.contract.topics import Schema

# Upper bounds in milliseconds, roughly 1-1.5-2-3-5-7.5 per decade: ~±20 % resolution from 50 µs to 5 s.
# fmt: off
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5,
    10.0, 15.0, 20.0, 30.0, 50.0, 75.0,
    100.0, 150.0, 200.0, 300.0, 500.0, 750.0,
    1000.0, 2000.0, 5000.0,
)
# fmt: on
# Per window, per latency series, this many raw values are kept for exact percentiles.
EXACT_SAMPLE = 4096
# Records queued before they are folded into the aggregates (bounds memory; amortises numpy's overhead).
FOLD_EVERY = 4096
CONFIDENCE_EDGES: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(11))
PSI_FLOOR = 1e-4
LATENCY_SERIES = ("total", "preprocess", "invoke")


def psi(actual: Sequence[float], expected: Sequence[float], floor: float = PSI_FLOOR) -> float:
    """Population stability index sum((a - e) * ln(a / e)) of two distributions (fractions floored at ``floor``).

    ``actual`` may be raw counts: it is normalised here. Returns ``nan`` when ``actual`` is empty or the
    lengths differ (no verdict is better than a wrong one).
    """
    total = float(sum(actual))
    if total <= 0 or len(actual) != len(expected) or not expected:
        return math.nan
    etotal = float(sum(expected)) or 1.0
    out = 0.0
    for a, e in zip(actual, expected):
        fa = max(a / total, floor)
        fe = max(e / etotal, floor)
        out += (fa - fe) * math.log(fa / fe)
    return out


class LatencyHistogram:
    """One latency series of one window. Values are added in nanoseconds, reported in milliseconds."""

    def __init__(self, bounds_ms: Sequence[float] = LATENCY_BUCKETS_MS, exact_sample: int = EXACT_SAMPLE) -> None:
        self.bounds_ms = tuple(float(b) for b in bounds_ms)
        if list(self.bounds_ms) != sorted(set(self.bounds_ms)):
            raise ValueError(f"latency bucket bounds must be strictly increasing, got {self.bounds_ms}")
        self._bounds_ns = np.asarray([b * 1e6 for b in self.bounds_ms], dtype=np.float64)
        self.buckets = np.zeros(len(self.bounds_ms) + 1, dtype=np.int64)  # the last one is +Inf
        self.count = 0
        self.sum_ns = 0.0
        self.min_ns = math.inf
        self.max_ns = -math.inf
        self._cap = exact_sample
        self._samples: list[np.ndarray] | None = []  # None once the window holds more than _cap values

    def add_many(self, ns: np.ndarray) -> None:
        """Add values (nanoseconds). Prometheus ``le``: a value equal to a bound goes into that bound's bucket."""
        ns = np.asarray(ns, dtype=np.float64).ravel()
        if ns.size == 0:
            return
        self.buckets += np.bincount(np.searchsorted(self._bounds_ns, ns, side="left"), minlength=len(self.buckets))
        self.count += int(ns.size)
        self.sum_ns += float(ns.sum())
        self.min_ns = min(self.min_ns, float(ns.min()))
        self.max_ns = max(self.max_ns, float(ns.max()))
        if self._samples is not None:
            self._samples.append(ns)
            if self.count > self._cap:
                self._samples = None

    def add(self, ns: float) -> None:
        """Add one value (nanoseconds)."""
        self.add_many(np.asarray([ns], dtype=np.float64))

    def cumulative(self) -> list[int]:
        """Cumulative counts per ``le`` bound, the last one being ``+Inf`` (equals ``count``)."""
        return [int(c) for c in np.cumsum(self.buckets)]

    @property
    def exact(self) -> bool:
        return self._samples is not None

    def quantile(self, q: float) -> float | None:
        """The q-quantile in ms: exact (nearest rank) while every value is kept, else from the buckets."""
        n = self.count
        if n == 0:
            return None
        if self._samples is not None:
            values = np.sort(np.concatenate(self._samples))
            return float(values[min(n - 1, max(0, math.ceil(q * n) - 1))]) / 1e6
        return self._bucket_quantile(q)

    def _bucket_quantile(self, q: float) -> float:
        # Prometheus histogram_quantile: find the bucket holding rank q*n, interpolate linearly inside it,
        # clamped to the observed min/max (which bounds the first and the +Inf bucket).
        rank = q * self.count
        running = 0
        lo_ms = 0.0
        lo_obs, hi_obs = self.min_ns / 1e6, self.max_ns / 1e6
        for i, c in enumerate(int(c) for c in self.buckets):
            hi_ms = self.bounds_ms[i] if i < len(self.bounds_ms) else hi_obs
            if c and running + c >= rank:
                lo, hi = max(lo_ms, lo_obs), min(hi_ms, hi_obs)
                return lo + (hi - lo) * max(0.0, rank - running) / c
            running += c
            lo_ms = hi_ms
        return hi_obs

    def to_dict(self) -> dict[str, Any]:
        """The ``latency_ms.<series>`` object of the payload."""
        n = self.count
        return {
            "count": n,
            "sum": round(self.sum_ns / 1e6, 6),
            "min": self.min_ns / 1e6 if n else None,
            "max": self.max_ns / 1e6 if n else None,
            "p50": self.quantile(0.50),
            "p90": self.quantile(0.90),
            "p99": self.quantile(0.99),
            "percentiles": "exact" if self.exact else "buckets",
            "le": list(self.bounds_ms) + ["+Inf"],
            "cum": self.cumulative(),
        }


class _Window:
    """The aggregates of one window (replaced wholesale by snapshot_and_reset)."""

    def __init__(self, num_classes: int, mean_bins: int, bounds_ms: Sequence[float]) -> None:
        self.start_ms = int(time.time() * 1000)
        self.start_mono = time.monotonic()
        self.requests = 0
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.dropped = 0
        self.lat = tuple(LatencyHistogram(bounds_ms) for _ in LATENCY_SERIES)
        self.class_counts = np.zeros(num_classes, dtype=np.int64)
        self.conf_bins = np.zeros(10, dtype=np.int64)
        self.labeled = 0
        self.correct = 0
        self.class_labeled = np.zeros(num_classes, dtype=np.int64)
        self.class_correct = np.zeros(num_classes, dtype=np.int64)
        self.mean_bins = np.zeros(max(1, mean_bins), dtype=np.int64)
        self.mean_n = 0
        self.mean_sum = 0.0


class WindowRecorder:
    """Accumulates one window of inference telemetry; thread-safe; cheap to record into.

    ``labels`` name the classes; ``reference`` is ``manifest["reference"]`` (may be empty: drift PSI is
    then ``null``); ``bundle`` and ``runtime`` are copied into every payload. With ``multilabel`` a predicted
    and a true class are label sets as bit masks (:class:`~edgekit_agent.infer.classify.MultiLabel`): class
    counts count each label of a set, accuracy is the exact-match rate and a label's per-class figure is
    the labelled inputs on which that label was decided right.
    """

    def __init__(
        self,
        labels: Sequence[str],
        reference: Mapping[str, Any] | None = None,
        *,
        bundle: Mapping[str, Any] | None = None,
        runtime: Mapping[str, Any] | None = None,
        bounds_ms: Sequence[float] = LATENCY_BUCKETS_MS,
        fold_every: int = FOLD_EVERY,
        multilabel: bool = False,
    ) -> None:
        self.labels = tuple(labels)
        self.multilabel = multilabel
        self._bits = np.arange(len(self.labels), dtype=np.int64)
        self.reference = dict(reference or {})
        self.bundle = dict(bundle or {})
        self.runtime = dict(runtime or {})
        self.bounds_ms = tuple(bounds_ms)
        edges = list((self.reference.get("input_mean") or {}).get("edges") or [])
        # Values below the first inner edge go to bin 0 and above the last to the last bin (the contract).
        self._mean_inner = np.asarray(edges[1:-1] if len(edges) >= 3 else [], dtype=np.float64)
        self._mean_bins = max(1, len(edges) - 1)
        self._fold_every = fold_every
        self._queue: deque[tuple[int, int, int, int, float, int, float]] = deque()
        self._append = self._queue.append  # the queue is never replaced: bound once
        self._lock = threading.Lock()  # taken by folds, errors and snapshots: never by record()
        self._w = self._new_window()

    def _new_window(self) -> _Window:
        return _Window(len(self.labels), self._mean_bins, self.bounds_ms)

    # --- hot path ------------------------------------------------------------------------------------------
    def record(
        self,
        total_ns: int,
        preprocess_ns: int,
        invoke_ns: int,
        predicted: int,
        confidence: float,
        label: int = -1,
        input_mean: float = math.nan,
    ) -> None:
        """One successful inference. ``label`` >= 0 marks a labelled input (feeds accuracy); ``input_mean``
        is the mean of the float input (NaN: not sampled). Lock-free: one tuple appended to a deque."""
        self._append((total_ns, preprocess_ns, invoke_ns, predicted, confidence, label, input_mean))
        if len(self._queue) >= self._fold_every:
            self.fold()

    def record_error(self, code: str) -> None:
        """One request that failed (``code`` such as ``INPUT_INVALID``, ``RUNTIME``, ``INTERNAL``)."""
        with self._lock:
            w = self._w
            w.requests += 1
            w.errors[code] = w.errors.get(code, 0) + 1

    def record_dropped(self, n: int = 1) -> None:
        """Inputs discarded without an inference (e.g. ``infer`` requests refused as BUSY)."""
        with self._lock:
            self._w.dropped += n

    # --- folding -------------------------------------------------------------------------------------------------
    def fold(self) -> None:
        """Move the queued records into the current window's aggregates."""
        with self._lock:
            self._fold_into(self._w)

    def _fold_into(self, w: _Window) -> None:
        q = self._queue
        n = len(q)  # records appended after this count belong to the next fold (or window): none is lost
        if n == 0:
            return
        pop = q.popleft
        # fromiter over the flattened tuples is ~5x faster than np.array(list_of_tuples);
        # ns values fit float64 exactly below 2**53 ns (104 days).
        flat = chain.from_iterable(pop() for _ in range(n))
        a = np.fromiter(flat, dtype=np.float64, count=n * 7).reshape(n, 7)
        w.requests += n
        w.ok += n
        for i, hist in enumerate(w.lat):
            hist.add_many(a[:, i])
        nc = len(w.class_counts)
        predicted = a[:, 3].astype(np.int64)
        if self.multilabel:
            predicted_bits = (predicted[:, None] >> self._bits) & 1
            w.class_counts += predicted_bits.sum(axis=0)
        else:
            w.class_counts += np.bincount(predicted, minlength=nc)[:nc]
        w.conf_bins += np.bincount(np.clip((a[:, 4] * 10).astype(np.int64), 0, 9), minlength=10)
        labels = a[:, 5].astype(np.int64)
        labelled = labels >= 0
        if labelled.any():
            hit = labelled & (labels == predicted)  # a label set: exact match
            w.labeled += int(labelled.sum())
            w.correct += int(hit.sum())
            if self.multilabel:
                truth_bits = (labels[labelled][:, None] >> self._bits) & 1
                w.class_labeled += int(labelled.sum())
                w.class_correct += (truth_bits == predicted_bits[labelled]).sum(axis=0)
            else:
                w.class_labeled += np.bincount(labels[labelled], minlength=nc)[:nc]
                w.class_correct += np.bincount(labels[hit], minlength=nc)[:nc]
        means = a[:, 6]
        means = means[np.isfinite(means)]  # NaN: not sampled; inf: a hostile tensor, never a statistic
        if means.size:
            w.mean_bins += np.bincount(
                np.searchsorted(self._mean_inner, means, side="right"), minlength=len(w.mean_bins)
            )
            w.mean_n += int(means.size)
            w.mean_sum += float(means.sum())

    # --- window end ------------------------------------------------------------------------------------------
    def snapshot_and_reset(
        self, *, system: Mapping[str, Any] | None = None, outbox: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Close the current window and return its ``telemetry/inference`` body (without the envelope).

        The caller adds the envelope (device_id, boot_id, epoch, seq, ts, agent_version).
        """
        fresh = self._new_window()
        with self._lock:
            self._fold_into(self._w)
            w, self._w = self._w, fresh
        end_ms = int(time.time() * 1000)
        elapsed = max(1e-9, time.monotonic() - w.start_mono)
        per_class = {
            self.labels[i]: {"labeled": int(w.class_labeled[i]), "correct": int(w.class_correct[i])}
            for i in range(len(self.labels))
            if w.class_labeled[i]
        }
        return {
            "schema": Schema.TELEMETRY,
            "window": {"start": w.start_ms, "end": end_ms, "duration_s": round(elapsed, 3)},
            "bundle": dict(self.bundle),
            "runtime": dict(self.runtime),
            "counts": {"requests": w.requests, "ok": w.ok, "errors": dict(w.errors), "dropped": w.dropped},
            "throughput_ips": round(w.ok / elapsed, 3),
            "latency_ms": {name: h.to_dict() for name, h in zip(LATENCY_SERIES, w.lat)},
            "accuracy": {
                "labeled": w.labeled,
                "correct": w.correct,
                "accuracy": (w.correct / w.labeled) if w.labeled else None,
                "per_class": per_class,
            },
            "predictions": {
                "class_counts": {self.labels[i]: int(c) for i, c in enumerate(w.class_counts)},
                "confidence_hist": {"edges": list(CONFIDENCE_EDGES), "counts": [int(c) for c in w.conf_bins]},
            },
            "drift": self._drift(w),
            "system": dict(system or {}),
            "outbox": dict(outbox or {}),
        }

    def _drift(self, w: _Window) -> dict[str, Any]:
        ref = self.reference
        mean_ref = ref.get("input_mean") or {}
        counts = [int(c) for c in w.mean_bins]
        out: dict[str, Any] = {
            "input_mean": {
                "n": w.mean_n,
                "mean": (w.mean_sum / w.mean_n) if w.mean_n else None,
                "edges": list(mean_ref.get("edges") or []),
                "counts": counts if mean_ref else [],
                "psi": _finite(psi(counts, mean_ref["freq"])) if mean_ref.get("freq") and w.mean_n else None,
            },
            "predicted_class": {
                "psi": _finite(psi([int(c) for c in w.class_counts], ref["class_freq"]))
                if ref.get("class_freq") and w.ok
                else None,
            },
        }
        conf_ref = ref.get("confidence") or {}
        if conf_ref.get("freq") and w.ok:
            out["confidence"] = {"psi": _finite(psi([int(c) for c in w.conf_bins], conf_ref["freq"]))}
        return out


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)
