"""Saved benchmark reports: pictures for every report shape, comparisons, and refusing files that are not reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.fleet.remote import compare_reports, plot_latency
from edgekit_agent.contract.errors import InputError


def report(p50: float, **steady_extra) -> dict:
    return {
        "schema": "edge.bench.report/1",
        "model": {"name": "digits 1 (raspberry-pi-4)"},
        "runtime": {"engine": "litert", "version": "2.3", "delegate": "xnnpack", "num_threads": 2},
        "steady": {
            "count": 100,
            "min_ms": p50 / 2,
            "p50_ms": p50,
            "p90_ms": p50 * 1.2,
            "p99_ms": p50 * 2,
            "max_ms": p50 * 3,
            "mean_ms": p50 * 1.1,
            **steady_extra,
        },
        "throughput_ips": 1000 / (p50 * 1.1),
        "memory": {"peak_rss_mb": 60.0},
    }


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"samples_ms": list(np.random.default_rng(0).gamma(2, 0.5, 300))},
        {"histogram": {"le": [0.5, 1, 2, 5, "+Inf"], "cum": [10, 60, 95, 100, 100]}},
    ],
)
def test_every_report_shape_gets_a_picture(tmp_path, extra):
    png = plot_latency(report(1.0, **extra), tmp_path / "r.png", title="pi")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_a_junk_report_still_gets_a_picture_not_a_traceback(tmp_path):
    """A report is what a device sent: strings, inf, a broken histogram or a null model must not crash
    `edgekit bench`."""
    junk = report(1.0, samples_ms=["x", float("inf"), None, 0.5, 0.7], histogram={"le": [2, 1], "cum": [5, 1]})
    junk.update(model=None, runtime="litert")
    junk["steady"]["p99_ms"] = "slow"
    data = plot_latency(junk, tmp_path / "j.png", title="pi").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    only_junk = report(1.0, samples_ms=["x"], histogram={"le": [2, 1], "cum": [5, 1]})
    assert plot_latency(only_junk, tmp_path / "k.png").read_bytes()[:4] == b"\x89PNG"  # the percentile profile


def test_compare_gives_ratios_to_the_first_report_and_refuses_non_reports(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"device_id": "pi-4", "report": report(2.0)}))
    b.write_text(json.dumps(report(0.5)))  # a bare `edgekit-agent bench --json` report
    rows = compare_reports([a, b])
    assert [r.device_id for r in rows] == ["pi-4", "local"]
    assert rows[0].p50_ratio == 1.0 and rows[1].p50_ratio == pytest.approx(0.25)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(InputError, match="not a benchmark report"):
        compare_reports([a, bad])
    with pytest.raises(InputError, match="cannot read"):
        compare_reports([tmp_path / "missing.json"])
