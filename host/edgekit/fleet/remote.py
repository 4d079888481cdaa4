"""Benchmark a device from the desk: ``run_benchmark`` through the command client, then save and compare reports.

The device answers ``accepted`` (or ``rejected``) at once and later ``succeeded`` with the report in its
result (or ``failed``/``expired``/``canceled``); it also publishes the report to ``bench/{run_id}/report``,
which is used when the answer carries none. Requests, answers and MQTT 3.1.1 are the command client's
business (:mod:`edgekit.fleet.command_client`).
"""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.fleet.command_client import CommandClient
from edgekit.fleet.connection import FleetLink
from edgekit.fleet.state import bucket_grid, finite_number, load_json
from edgekit_agent.contract.errors import CommandFailed, InputError, UsageError
from edgekit_agent.contract.topics import Schema, topic
from edgekit_agent.mqtt.client import Message


@dataclass(frozen=True, slots=True)
class RemoteBench:
    """One finished remote benchmark: who, what was asked, what came back."""

    device_id: str
    cmd_id: str
    args: dict[str, Any]
    report: dict[str, Any]
    round_trip_s: float
    states: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: what `edgekit bench --out` saves."""
        return {
            "device_id": self.device_id,
            "cmd_id": self.cmd_id,
            "args": self.args,
            "round_trip_s": self.round_trip_s,
            "states": list(self.states),
            "report": self.report,
        }


def _report_from(result: Mapping[str, Any]) -> dict[str, Any] | None:
    # Accept the report as the whole result or nested under "report" (both are reasonable agent choices).
    if not isinstance(result, Mapping):
        return None
    if result.get("schema") == Schema.BENCH_REPORT or "steady" in result:
        return dict(result)
    inner = result.get("report")
    return dict(inner) if isinstance(inner, Mapping) else None


def _published_report(reports: queue.Queue[Message], run_ids: set[str], deadline: float) -> dict[str, Any] | None:
    """The report published to ``bench/{run_id}/report`` for one of ``run_ids`` (waiting until ``deadline``)."""
    while (left := deadline - time.monotonic()) > 0:
        try:
            m = reports.get(timeout=left)
        except queue.Empty:
            return None
        doc = load_json(m.payload)
        parts = m.topic.split("/")
        if isinstance(doc, dict) and (parts[-2] in run_ids or doc.get("cmd_id") in run_ids):
            return _report_from(doc)
    return None


def request_benchmark(
    broker: str,
    device_id: str,
    *,
    num_runs: int = 100,
    warmup_runs: int = 5,
    num_threads: int | None = None,
    timeout: float = 120.0,
    requester: str | None = None,
    on_state: Callable[[str], None] | None = None,
    link: FleetLink | None = None,
    tls_ca: str | None = None,
) -> RemoteBench:
    """Ask ``device_id`` to benchmark its active bundle and wait for the report (up to ``timeout`` s).

    ``on_state`` is called with ``sent``, ``accepted`` and the final state (for a progress display).
    Raises :class:`BrokerError` when the device does not answer, :class:`CommandFailed` when it refuses
    or fails.
    """
    if num_runs < 1 or warmup_runs < 0 or (num_threads is not None and num_threads < 1):
        raise UsageError(
            f"--runs must be >= 1, --warmup >= 0, --threads >= 1 (got {num_runs}, {warmup_runs}, {num_threads})."
        )
    requester = requester or f"bench-{uuid.uuid4().hex[:8]}"
    res_topic = topic(device_id, "res", requester)
    report_topic = topic(device_id, "bench", "+", "report")
    own = link is None
    if link is None:
        link = FleetLink(
            broker, client_id=f"edgekit-{requester}", subscriptions=[(res_topic, 1), (report_topic, 1)], tls_ca=tls_ca
        )
        link.start()  # returns once the subscriptions are acknowledged: no answer can be missed
    else:
        link.subscribe(report_topic)
    args: dict[str, Any] = {"num_runs": int(num_runs), "warmup_runs": int(warmup_runs)}
    if num_threads:
        args["num_threads"] = int(num_threads)
    states = ["sent"]

    def seen(state: str) -> None:
        states.append(state)
        if on_state:
            on_state(state)

    reports: queue.Queue[Message] = queue.Queue()
    t0 = time.monotonic()
    try:
        with CommandClient(link, requester, on_message=reports.put) as client:
            pending = client.send(device_id, "run_benchmark", args, timeout_s=timeout)
            if on_state:
                on_state("sent")
            answer = client.finish(pending, timeout, on_answer=lambda a: seen(a.state))
            result = answer.result or {}
            report = _report_from(result)
            if report is None:  # no inline report: the bench/{run_id}/report message should follow shortly
                run_ids = {pending.request.cmd_id, str(result.get("run_id") or pending.request.cmd_id)}
                deadline = min(t0 + timeout, time.monotonic() + 5.0)
                report = _published_report(reports, run_ids, deadline)
    finally:
        if own:
            link.close()
    if report is None:
        raise CommandFailed(f"device '{device_id}' said the benchmark succeeded but sent no report; upgrade its agent.")
    return RemoteBench(device_id, pending.request.cmd_id, args, report, round(time.monotonic() - t0, 3), tuple(states))


# --------------------------------------------------------------------------------------------------
# Saving, plotting and comparing reports
# --------------------------------------------------------------------------------------------------
def save_report(bench: RemoteBench, out_dir: Path) -> tuple[Path, Path]:
    """Write ``bench-{device}-{time}.json`` and a latency picture ``.png`` beside it; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{bench.device_id}-{time.strftime('%Y%m%dT%H%M%S')}-{bench.cmd_id[-6:]}"
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(bench.to_dict(), indent=2, sort_keys=True) + "\n")
    png_path = plot_latency(
        bench.report, out_dir / f"{stem}.png", title=f"{bench.device_id}: {_model_name(bench.report)}"
    )
    return json_path, png_path


def _model_name(report: Mapping[str, Any]) -> str:
    model = report.get("model")
    return str(model.get("name") or "") if isinstance(model, Mapping) else ""


def plot_latency(report: Mapping[str, Any], path: Path, title: str = "") -> Path:
    """A latency picture for one report: a histogram of the samples or buckets when the report carries
    them (``steady.samples_ms`` or ``steady.histogram {le, cum}``), else the percentile profile."""
    import matplotlib

    matplotlib.use("Agg")  # no display on devices, CI or over ssh
    import matplotlib.pyplot as plt
    import numpy as np

    steady = report.get("steady") if isinstance(report.get("steady"), Mapping) else {}
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    samples = steady.get("samples_ms")
    if isinstance(samples, list):  # a report is device input: only finite numbers are drawn
        samples = [f for f in (finite_number(x) for x in samples) if f is not None]
    hist = steady.get("histogram")
    grid = bucket_grid(hist.get("le"), hist.get("cum")) if isinstance(hist, Mapping) else None
    if isinstance(samples, list) and samples:
        ax.hist(np.asarray(samples, float), bins=min(50, max(10, len(samples) // 10)), color="#4c72b0")
        ax.set_ylabel("runs")
    elif grid is not None:
        le = list(grid[0])
        cum = np.asarray(grid[1], float)
        counts = np.diff(np.concatenate([[0.0], cum]))
        finite = [i for i, x in enumerate(le) if np.isfinite(x)]
        lo = [0.0] + le[:-1]
        for i in finite:
            ax.bar(lo[i], counts[i], width=le[i] - lo[i], align="edge", color="#4c72b0", edgecolor="white")
        ax.set_xscale("log")
        ax.set_ylabel("runs")
    else:
        names = ["min", "p50", "p90", "p99", "max"]
        vals = [finite_number(steady.get(f"{n}_ms")) for n in names]
        ax.bar(names, [v or 0 for v in vals], color="#4c72b0")
        ax.set_ylabel("ms")
        ax.set_title("percentiles (the report carries no samples)", fontsize=9)
    for q, style in (("p50_ms", "--"), ("p99_ms", ":")):
        v = finite_number(steady.get(q))
        if v and (samples or grid is not None):
            ax.axvline(v, color="#c44e52", linestyle=style, label=f"{q[:3]} {v:.3f} ms")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.set_xlabel("latency (ms)" if (samples or grid is not None) else "")
    rt = report.get("runtime") if isinstance(report.get("runtime"), Mapping) else {}
    fig.suptitle(
        f"{title}\n{rt.get('engine', '?')} {rt.get('version', '')}, "
        f"{rt.get('delegate', '?')}, {rt.get('num_threads', '?')} threads, "
        f"{steady.get('count', '?')} runs",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


@dataclass(frozen=True, slots=True)
class CompareRow:
    """One report in a comparison table."""

    source: str
    device_id: str
    model: str
    engine: str
    delegate: str
    threads: int | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    throughput_ips: float | None
    peak_rss_mb: float | None
    p50_ratio: float | None  # this p50 / the first report's p50


def load_report(path: Path) -> dict[str, Any]:
    """A saved report: the ``edgekit bench`` wrapper or a bare ``edgekit-agent bench --json`` report."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"cannot read benchmark report {path}: {exc.strerror}.") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not JSON ({exc}); pass files written by `edgekit bench --out`.") from None
    if not isinstance(doc, dict) or not (_report_from(doc.get("report") or {}) or _report_from(doc)):
        raise InputError(
            f"{path} is not a benchmark report (no 'steady' latency); pass files written by `edgekit bench --out`."
        )
    return doc


def compare_reports(paths: Sequence[Path]) -> list[CompareRow]:
    """One row per report, with each p50 as a ratio to the first report's."""
    rows: list[CompareRow] = []
    base: float | None = None
    for p in paths:
        doc = load_report(p)
        rep = _report_from(doc.get("report") or {}) or _report_from(doc) or {}
        steady, rt, mem = rep.get("steady") or {}, rep.get("runtime") or {}, rep.get("memory") or {}
        p50 = steady.get("p50_ms")
        if base is None:
            base = p50
        rows.append(
            CompareRow(
                source=Path(p).name,
                device_id=str(doc.get("device_id") or (rep.get("system") or {}).get("hostname") or "local"),
                model=str((rep.get("model") or {}).get("name", "?")),
                engine=f"{rt.get('engine', '?')} {rt.get('version', '')}".strip(),
                delegate=str(rt.get("delegate", "?")),
                threads=rt.get("num_threads"),
                p50_ms=p50,
                p90_ms=steady.get("p90_ms"),
                p99_ms=steady.get("p99_ms"),
                mean_ms=steady.get("mean_ms"),
                throughput_ips=rep.get("throughput_ips"),
                peak_rss_mb=mem.get("peak_rss_mb"),
                p50_ratio=(p50 / base) if (p50 and base) else None,
            )
        )
    return rows
