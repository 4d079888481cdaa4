"""The benchmark_model-style benchmark on the real digits model (shape of the report, not timings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.contract.errors import InputError, UsageError
from edgekit_agent.infer.benchmark import (
    REPORT_SAMPLES,
    LatencyStats,
    benchmark_bundle,
    random_input,
    run_benchmark,
)


@pytest.fixture(scope="module")
def bundle(digits_bundle: Path):
    return load_bundle(digits_bundle)


def test_report_is_consistent(bundle):
    r = benchmark_bundle(bundle, num_threads=1, warmup_runs=3, num_runs=40)
    s = r.steady
    assert s.count == 40 and r.warmup_runs == 3
    assert 0 < s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
    assert s.min_ms <= s.mean_ms <= s.max_ms and s.std_ms >= 0
    assert r.init_ms is not None and r.init_ms > 0 and r.first_inference_ms > 0
    assert r.model_sha256 == bundle.manifest.model.sha256
    assert r.runtime.engine == "litert" and r.runtime.num_threads == 1
    assert r.rss_mb is not None and 0 < r.rss_mb <= r.peak_rss_mb
    d = json.loads(json.dumps(r.to_dict()))
    assert d["steady"]["count"] == 40 and d["runtime"]["delegate"] in ("xnnpack", "none")
    assert d["throughput_ips"] == pytest.approx(1000 / s.mean_ms)
    assert {"model", "runtime", "init_ms", "first_inference_ms", "warmup", "memory", "system"} <= d.keys()
    # The runs themselves travel with the report (the fleet's histogram picture is drawn from them).
    samples = np.asarray(d["steady"]["samples_ms"])
    assert samples.size == 40
    assert samples.min() == pytest.approx(s.min_ms, abs=1e-4) and samples.max() == pytest.approx(s.max_ms, abs=1e-4)
    assert float(np.percentile(samples, 50)) == pytest.approx(s.p50_ms, abs=1e-4)


def test_a_long_run_carries_an_evenly_thinned_sample() -> None:
    ns = np.arange(1, 5001, dtype=np.int64) * 1_000  # 1 µs .. 5 ms
    s = LatencyStats.from_ns(ns)
    assert s.count == 5000 and len(s.samples_ms) == REPORT_SAMPLES
    assert s.samples_ms[0] == 0.001 and s.samples_ms[-1] == 5.0  # both ends kept
    assert list(s.samples_ms) == sorted(s.samples_ms)  # run order kept (this run was increasing)
    assert np.median(s.samples_ms) == pytest.approx(s.p50_ms, rel=0.01)


def test_runtime_info_follows_the_delegate(bundle):
    with bundle.open_runtime(num_threads=1, delegate="none") as rt:
        r = run_benchmark(rt, warmup_runs=1, num_runs=5)
    assert r.runtime.delegate == "none" == r.requested_delegate and r.init_ms is None


def test_min_seconds_extends_the_run(bundle):
    with bundle.open_runtime(num_threads=1) as rt:
        r = run_benchmark(rt, warmup_runs=0, num_runs=1, min_seconds=0.05)
    assert r.warmup_runs == 1  # the first inference is always timed on its own
    assert r.steady.count > 1


def test_given_input_is_used_and_checked(bundle):
    with bundle.open_runtime(num_threads=1) as rt:
        x = random_input(rt, seed=1)
        assert x.dtype == rt.input_dtype and x.shape == rt.input_shape
        run_benchmark(rt, num_runs=2, input=x)
        with pytest.raises(InputError, match="the model takes int8"):
            run_benchmark(rt, num_runs=2, input=x.astype(np.float32))
        with pytest.raises(UsageError):
            run_benchmark(rt, num_runs=0)
