"""On-device benchmark in the style of TFLite's ``benchmark_model`` (which is not on PyPI).

Reports, like it: init time, first inference, warm-up average, steady-state count/min/max/mean/std and
percentiles, and memory (RSS now and peak) — plus what benchmark_model leaves implicit: which
interpreter ran, its version, whether XNNPACK actually took the graph, the thread count, and which
model (name and sha256). :meth:`BenchReport.to_dict` is the JSON of ``edgekit-agent bench --json`` and
the payload of the MQTT ``bench/{run_id}/report`` message.

The timing loop is a bare ``invoke()`` on a tensor set once (as benchmark_model does), with the
garbage collector paused so a collection does not land in a sample.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit_agent import __version__
from edgekit_agent.contract.errors import InputError, UsageError
from edgekit_agent.contract.topics import Schema
from edgekit_agent.infer.runtime import RuntimeInfo
from edgekit_agent.serve import sysinfo

if TYPE_CHECKING:
    from edgekit_agent.bundle.load import Bundle
    from edgekit_agent.infer.runtime import Runtime

#: Most latency samples a report carries (about 10 KB of JSON); longer runs are thinned evenly.
REPORT_SAMPLES = 1000


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Steady-state latency in milliseconds."""

    count: int
    min_ms: float
    max_ms: float
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    # The runs themselves, in run order (at most REPORT_SAMPLES, evenly spaced, to 0.1 µs): the report's
    # histogram picture and any later statistics come from these, not from the percentiles alone.
    samples_ms: tuple[float, ...] = field(default=(), repr=False)

    @classmethod
    def from_ns(cls, samples_ns: np.ndarray) -> LatencyStats:
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        kept = ms if ms.size <= REPORT_SAMPLES else ms[np.linspace(0, ms.size - 1, REPORT_SAMPLES).round().astype(int)]
        return cls(
            count=int(ms.size),
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            mean_ms=float(ms.mean()),
            std_ms=float(ms.std()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            samples_ms=tuple(round(float(v), 4) for v in kept),
        )


@dataclass(frozen=True, slots=True)
class BenchReport:
    """One benchmark run. Times in ms, memory in MiB (None where the OS does not say)."""

    model_name: str
    model_sha256: str | None
    runtime: RuntimeInfo
    requested_delegate: str
    init_ms: float | None
    first_inference_ms: float
    warmup_runs: int
    warmup_mean_ms: float
    steady: LatencyStats
    rss_mb: float | None
    peak_rss_mb: float | None
    started: str  # UTC, ISO 8601
    agent_version: str = __version__
    system: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput_ips(self) -> float:
        """Inferences per second at the steady-state mean."""
        return 1000.0 / self.steady.mean_ms if self.steady.mean_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``bench/{run_id}/report`` payload; the agent adds the envelope)."""
        return {
            "schema": Schema.BENCH_REPORT,
            "started": self.started,
            "agent_version": self.agent_version,
            "model": {"name": self.model_name, "sha256": self.model_sha256},
            "runtime": {**self.runtime.to_dict(), "requested_delegate": self.requested_delegate},
            "init_ms": self.init_ms,
            "first_inference_ms": self.first_inference_ms,
            "warmup": {"runs": self.warmup_runs, "mean_ms": self.warmup_mean_ms},
            "steady": {**asdict(self.steady), "samples_ms": list(self.steady.samples_ms)},
            "throughput_ips": self.throughput_ips,
            "memory": {"rss_mb": self.rss_mb, "peak_rss_mb": self.peak_rss_mb},
            "system": dict(self.system),
        }

    def rows(self) -> list[tuple[str, str]]:
        """(quantity, value) pairs for a plain-text table."""

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.4g} ms"  # 4 significant digits: µs-scale models stay readable

        def mb(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f} MiB"

        s, rt = self.steady, self.runtime
        return [
            ("model", f"{self.model_name} ({(self.model_sha256 or '?')[:12]})"),
            ("runtime", f"{rt.engine} {rt.version}"),
            (
                "delegate",
                rt.delegate
                + ("" if rt.delegate == self.requested_delegate else f" (asked for {self.requested_delegate})"),
            ),
            ("threads", str(rt.num_threads)),
            ("init", ms(self.init_ms)),
            ("first inference", ms(self.first_inference_ms)),
            (f"warm-up mean ({self.warmup_runs} runs)", ms(self.warmup_mean_ms)),
            ("steady-state count", str(s.count)),
            ("min / max", f"{s.min_ms:.4g} / {s.max_ms:.4g} ms"),
            ("mean ± std", f"{s.mean_ms:.4g} ± {s.std_ms:.4g} ms"),
            ("p50 / p90 / p99", f"{s.p50_ms:.4g} / {s.p90_ms:.4g} / {s.p99_ms:.4g} ms"),
            ("throughput", f"{self.throughput_ips:,.0f} inferences/s"),
            ("RSS now / peak", f"{mb(self.rss_mb)} / {mb(self.peak_rss_mb)}"),
        ]


def random_input(runtime: Runtime, seed: int = 0) -> np.ndarray:
    """A random input tensor of the model's shape and dtype (benchmark_model also feeds random data)."""
    rng = np.random.default_rng(seed)
    dtype = runtime.input_dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, int(info.max) + 1, size=runtime.input_shape, dtype=dtype)
    return rng.standard_normal(runtime.input_shape).astype(dtype)


def run_benchmark(
    runtime: Runtime,
    *,
    warmup_runs: int = 5,
    num_runs: int = 100,
    min_seconds: float = 0.0,
    input: np.ndarray | None = None,  # noqa: A002 - the contract's name
    init_ms: float | None = None,
    model_sha256: str | None = None,
    model_name: str | None = None,
    include_system: bool = True,
) -> BenchReport:
    """Benchmark a loaded model: ``warmup_runs`` (the first one timed on its own), then at least
    ``num_runs`` timed invocations and, if ``min_seconds`` > 0, more until that much time has passed.

    ``input`` defaults to random data (fixed seed). ``init_ms`` is the model load time when the caller
    measured it (see :func:`benchmark_bundle`); ``model_sha256`` identifies the model in the report.
    """
    if num_runs < 1 or warmup_runs < 0 or min_seconds < 0:
        raise UsageError(
            f"num_runs must be >= 1, warmup_runs and min_seconds >= 0 (got {num_runs}, {warmup_runs}, {min_seconds})."
        )
    x = random_input(runtime) if input is None else np.asarray(input)
    if x.shape != runtime.input_shape or x.dtype != runtime.input_dtype:
        raise InputError(
            f"benchmark input is {x.dtype}{list(x.shape)}, "
            f"the model takes {runtime.input_dtype}{list(runtime.input_shape)}."
        )
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    runtime.set_input(x)
    invoke = runtime.invoke_only
    clock = time.perf_counter_ns

    # The first inference is reported on its own: it pays for lazy allocation and XNNPACK packing.
    warm = max(1, warmup_runs)
    warm_ns = np.empty(warm, dtype=np.int64)
    for i in range(warm):
        t0 = clock()
        invoke()
        warm_ns[i] = clock() - t0

    samples: list[int] = []
    append = samples.append
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        deadline = clock() + int(min_seconds * 1e9)
        n = 0
        while n < num_runs or clock() < deadline:
            t0 = clock()
            invoke()
            append(clock() - t0)
            n += 1
    finally:
        if gc_was_enabled:
            gc.enable()

    return BenchReport(
        model_name=model_name or runtime.model_name,
        model_sha256=model_sha256,
        runtime=runtime.info,
        requested_delegate=getattr(runtime, "requested_delegate", runtime.info.delegate),
        init_ms=init_ms,
        first_inference_ms=float(warm_ns[0]) / 1e6,
        warmup_runs=warm,
        warmup_mean_ms=float(warm_ns.mean()) / 1e6,
        steady=LatencyStats.from_ns(np.asarray(samples)),
        rss_mb=sysinfo.rss_mb(),
        peak_rss_mb=sysinfo.peak_rss_mb(),
        started=started,
        system=sysinfo.system_info().to_dict() if include_system else {},
    )


def benchmark_bundle(
    bundle: Bundle,
    *,
    num_threads: int | None = None,
    delegate: str | None = None,
    engine: str | None = None,
    warmup_runs: int = 5,
    num_runs: int = 100,
    min_seconds: float = 0.0,
) -> BenchReport:
    """Load the bundle's model (timing the load as ``init_ms``) and :func:`run_benchmark` it."""
    t0 = time.perf_counter_ns()
    runtime = bundle.open_runtime(num_threads=num_threads, delegate=delegate, engine=engine)
    init_ms = (time.perf_counter_ns() - t0) / 1e6
    try:
        return run_benchmark(
            runtime,
            warmup_runs=warmup_runs,
            num_runs=num_runs,
            min_seconds=min_seconds,
            init_ms=init_ms,
            model_sha256=bundle.manifest.model.sha256,
            model_name=f"{bundle.manifest.name} {bundle.manifest.version} ({bundle.manifest.profile_name})",
        )
    finally:
        runtime.close()
