"""Windowed telemetry: histogram semantics, percentiles, counts, accuracy, drift, and lossless concurrent recording."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from edgekit_agent.serve.telemetry import LATENCY_BUCKETS_MS, LatencyHistogram, WindowRecorder, psi

LABELS = [str(i) for i in range(10)]
UNIFORM = [0.1] * 10
REFERENCE = {
    "input_mean": {"edges": [i / 10 for i in range(11)], "freq": UNIFORM},
    "class_freq": UNIFORM,
    "confidence": {"edges": [i / 10 for i in range(11)], "freq": UNIFORM},
}


def test_bucket_bounds_are_inclusive_upper_bounds_like_prometheus():
    h = LatencyHistogram((1.0, 2.0, 5.0))
    for ms in (0.5, 1.0, 1.0000001, 2.0, 5.0, 7.0):
        h.add(ms * 1e6)
    # le=1: 0.5 and 1.0; le=2: + 1.0000001, 2.0; le=5: + 5.0; +Inf: + 7.0
    assert h.cumulative() == [2, 4, 5, 6]
    d = h.to_dict()
    assert d["le"] == [1.0, 2.0, 5.0, "+Inf"] and d["count"] == 6
    assert d["min"] == pytest.approx(0.5) and d["max"] == pytest.approx(7.0)
    assert d["sum"] == pytest.approx(0.5 + 1 + 1.0000001 + 2 + 5 + 7)


def test_exact_percentiles_match_numpy_nearest_rank():
    rng = np.random.default_rng(1)
    values_ms = rng.lognormal(mean=0.0, sigma=1.0, size=999)
    h = LatencyHistogram()
    h.add_many(values_ms * 1e6)
    s = np.sort(values_ms)
    for q in (0.5, 0.9, 0.99):
        assert h.quantile(q) == pytest.approx(s[math.ceil(q * len(s)) - 1])
    assert h.to_dict()["percentiles"] == "exact"


def test_bucket_percentiles_stay_inside_the_right_bucket_once_the_sample_overflows():
    rng = np.random.default_rng(2)
    values_ms = rng.uniform(0.2, 40.0, size=5000)
    h = LatencyHistogram(exact_sample=100)
    for chunk in np.array_split(values_ms * 1e6, 7):
        h.add_many(chunk)
    assert h.to_dict()["percentiles"] == "buckets"
    bounds = (0.0,) + LATENCY_BUCKETS_MS
    for q in (0.5, 0.9, 0.99):
        true = float(np.quantile(values_ms, q))
        est = h.quantile(q)
        # the estimate lies in the same bucket as the true quantile (that is all a histogram can promise)
        i = int(np.searchsorted(LATENCY_BUCKETS_MS, true, side="left"))
        assert bounds[i] - 1e-9 <= est <= bounds[i + 1] + 1e-9, (q, true, est)


def test_window_counts_accuracy_predictions_and_reset():
    rec = WindowRecorder(LABELS, REFERENCE, bundle={"name": "digits"}, runtime={"engine": "litert"})
    truth = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 3]
    pred = [0, 1, 2, 3, 4, 5, 6, 7, 8, 1, 3, 5]  # 9 -> 1 and 3 -> 5 are wrong
    for t, p in zip(truth, pred):
        rec.record(2_000_000, 500_000, 1_400_000, p, 0.93, t, 0.45)
    rec.record(1_000_000, 0, 900_000, 4, 0.31)  # unlabelled
    rec.record_error("INPUT_INVALID")
    rec.record_error("INPUT_INVALID")
    rec.record_dropped(3)
    body = rec.snapshot_and_reset(system={"rss_mb": 50.0}, outbox={"depth": 0, "dropped": 0})
    json.dumps(body, allow_nan=False)  # the payload is strict JSON
    assert body["counts"] == {"requests": 15, "ok": 13, "errors": {"INPUT_INVALID": 2}, "dropped": 3}
    assert body["accuracy"]["labeled"] == 12 and body["accuracy"]["correct"] == 10
    assert body["accuracy"]["per_class"]["3"] == {"labeled": 3, "correct": 2}
    assert body["accuracy"]["per_class"]["9"] == {"labeled": 1, "correct": 0}
    assert body["predictions"]["class_counts"]["1"] == 2 and body["predictions"]["class_counts"]["4"] == 2
    assert (
        body["predictions"]["confidence_hist"]["counts"][9] == 12
        and body["predictions"]["confidence_hist"]["counts"][3] == 1
    )
    assert body["latency_ms"]["total"]["count"] == 13 and body["latency_ms"]["invoke"]["max"] == pytest.approx(1.4)
    assert body["latency_ms"]["total"]["cum"][-1] == 13
    assert body["drift"]["input_mean"]["n"] == 12  # the unlabelled one had no input mean (NaN)
    assert body["bundle"] == {"name": "digits"} and body["system"] == {"rss_mb": 50.0}
    empty = rec.snapshot_and_reset()
    assert empty["counts"] == {"requests": 0, "ok": 0, "errors": {}, "dropped": 0}
    assert empty["latency_ms"]["total"]["p50"] is None and empty["drift"]["predicted_class"]["psi"] is None


def test_psi_definition_and_floor():
    assert psi([10, 10], [0.5, 0.5]) == pytest.approx(0.0)
    a, e = [0.7, 0.3], [0.5, 0.5]
    assert psi(a, e) == pytest.approx((0.7 - 0.5) * math.log(0.7 / 0.5) + (0.3 - 0.5) * math.log(0.3 / 0.5))
    # an empty bin is floored at 1e-4 instead of making PSI infinite
    assert psi([1.0, 0.0], [0.5, 0.5]) == pytest.approx(
        (1 - 0.5) * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    )
    assert math.isnan(psi([], [])) and math.isnan(psi([1, 2], [1.0]))


def test_drift_bins_out_of_range_values_go_to_the_end_bins_and_psi_grows_with_shift():
    rec = WindowRecorder(LABELS, REFERENCE)
    for m in (-5.0, 0.05, 0.95, 7.0):
        rec.record(1, 1, 1, 0, 0.5, -1, m)
    body = rec.snapshot_and_reset()
    assert body["drift"]["input_mean"]["counts"] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]

    def window_psi(means: np.ndarray) -> float:
        for i, m in enumerate(means):
            rec.record(1, 1, 1, i % 10, 0.5, -1, float(m))
        return rec.snapshot_and_reset()["drift"]["input_mean"]["psi"]

    rng = np.random.default_rng(3)
    same = window_psi(rng.uniform(0, 1, 2000))
    shifted = window_psi(rng.uniform(0.5, 1.5, 2000))
    assert same < 0.05 < 0.5 < shifted


def test_predicted_class_psi_detects_a_collapsed_model():
    rec = WindowRecorder(LABELS, REFERENCE)
    for i in range(1000):
        rec.record(1, 1, 1, i % 10, 0.9)
    healthy = rec.snapshot_and_reset()["drift"]["predicted_class"]["psi"]
    for _ in range(1000):
        rec.record(1, 1, 1, 7, 0.9)
    collapsed = rec.snapshot_and_reset()["drift"]["predicted_class"]["psi"]
    assert healthy == pytest.approx(0.0, abs=1e-9) and collapsed > 1.0


def test_no_reference_means_null_psi_not_zero():
    rec = WindowRecorder(LABELS, {})
    rec.record(1, 1, 1, 0, 0.9, -1, 0.3)
    drift = rec.snapshot_and_reset()["drift"]
    assert drift["input_mean"]["psi"] is None and drift["predicted_class"]["psi"] is None
    assert drift["input_mean"]["mean"] == pytest.approx(0.3)


def test_concurrent_recording_with_snapshots_loses_nothing():
    # Small folds so folding, recording and snapshots interleave many times.
    rec = WindowRecorder(LABELS, REFERENCE, fold_every=64)
    per_thread, threads = 20_000, 3
    totals = {"ok": 0, "labeled": 0, "sum": 0.0}
    done = threading.Event()

    def worker(k: int) -> None:
        for i in range(per_thread):
            rec.record(1000 + i, 10, 900, (i + k) % 10, 0.5, i % 10, 0.5)

    def snapper() -> None:
        while not done.is_set():
            body = rec.snapshot_and_reset()
            totals["ok"] += body["counts"]["ok"]
            totals["labeled"] += body["accuracy"]["labeled"]
            totals["sum"] += body["latency_ms"]["total"]["sum"]

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    s = threading.Thread(target=snapper)
    s.start()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    done.set()
    s.join()
    last = rec.snapshot_and_reset()
    assert totals["ok"] + last["counts"]["ok"] == per_thread * threads
    assert totals["labeled"] + last["accuracy"]["labeled"] == per_thread * threads
    expected_sum_ms = threads * sum(1000 + i for i in range(per_thread)) / 1e6
    assert totals["sum"] + last["latency_ms"]["total"]["sum"] == pytest.approx(expected_sum_ms, rel=1e-9)


def test_memory_is_bounded_without_snapshots():
    rec = WindowRecorder(LABELS, {}, fold_every=128)
    for i in range(10_000):
        rec.record(i, 0, i, i % 10, 0.5)
    assert len(rec._queue) < 128  # noqa: SLF001 - the bound is the point of this test
    assert rec.snapshot_and_reset()["counts"]["ok"] == 10_000
