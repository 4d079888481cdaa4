"""sysinfo degrades to None instead of failing; classify applies softmax only to logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.contract.manifest import TensorSpec
from edgekit_agent.infer.classify import SMALL_OUTPUT, TopOne, probabilities, top1
from edgekit_agent.serve import sysinfo


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_memory_and_system_description_on_linux():
    # In a fresh interpreter: inside a long test session the allocator may reuse freed pages, so RSS need not grow.
    code = (
        "import numpy as np; from edgekit_agent.serve import sysinfo; before = sysinfo.rss_mb(); "
        "block = np.ones(32 << 20, dtype=np.uint8); "
        # RSS first, then the peak: read the other way round, RSS can grow between the two reads (seen under load).
        "now = sysinfo.rss_mb(); print(now - before, sysinfo.peak_rss_mb() >= now)"
    )
    grew, peak_ok = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert float(grew) > 24 and peak_ok == "True"  # touching 32 MiB shows in RSS
    info = sysinfo.system_info()
    assert info.cpu_count >= 1 and info.mem_total_mb and info.mem_total_mb > 0 and info.os
    stats = sysinfo.system_stats()
    assert set(stats) == {"cpu_temp_c", "rss_mb", "load1"} and json.dumps(stats)


def test_absent_sensors_are_none(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(sysinfo, "_THERMAL", tmp_path / "no-thermal")
    monkeypatch.setattr(sysinfo, "_PROC_STATUS", tmp_path / "no-status")
    assert sysinfo.cpu_temp_c() is None and sysinfo.rss_mb() is None
    assert sysinfo.peak_rss_mb() is not None  # falls back to getrusage


def test_cpu_temperature_prefers_the_cpu_zone(monkeypatch, tmp_path: Path):
    for i, (kind, milli) in enumerate([("battery", 30000), ("cpu-thermal", 51234)]):
        zone = tmp_path / f"thermal_zone{i}"
        zone.mkdir()
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{milli}\n")
    monkeypatch.setattr(sysinfo, "_THERMAL", tmp_path)
    assert sysinfo.cpu_temp_c() == pytest.approx(51.234)


def test_softmax_only_for_logits():
    t = TensorSpec("out", (1, 3), "int8", 0.1, 0)
    raw = np.array([[10, 20, 0]], dtype=np.int8)
    p = probabilities(raw, t, "logits")
    assert (
        p.sum() == pytest.approx(1.0)
        and p.argmax() == 1
        and p[1] == pytest.approx(np.exp(2) / (np.exp(1) + np.exp(2) + 1))
    )
    assert np.allclose(probabilities(raw, t, "probabilities"), [1.0, 1.0, 0.0])  # dequantised, clipped to [0, 1]


def test_top1_on_the_real_bundle(digits_bundle: Path):
    b = load_bundle(digits_bundle)
    with np.load(digits_bundle / "golden.npz") as g:
        raw, want = g["outputs"][0], int(g["outputs"][0].argmax())
    p = top1(raw, b.manifest)
    assert p.index == want and p.label == b.manifest.labels[want] and 0 < p.confidence <= 1
    assert p.to_dict() == {"index": want, "label": p.label, "confidence": p.confidence}  # no timings outside the agent


@pytest.mark.parametrize("kind", ["logits", "probabilities"])
@pytest.mark.parametrize(
    "dtype, scale, zero",
    [("int8", 0.1, 3), ("int8", 0.00390625, -128), ("uint8", 0.05, 128), ("int16", 0.001, 0), ("float32", 0.0, 0)],
)
@pytest.mark.parametrize("classes", [3, SMALL_OUTPUT, SMALL_OUTPUT + 1, 1000])
def test_top_one_agrees_with_the_probabilities(kind, dtype, scale, zero, classes):
    """TopOne's table look-ups (pure Python below SMALL_OUTPUT classes, numpy above) give the argmax and the
    top probability of the dequantised outputs: softmax for logits, the clipped value for probabilities."""
    rng = np.random.default_rng(classes)
    t = TensorSpec("out", (1, classes), dtype, scale, zero)
    top_one = TopOne(t, kind, tuple(f"c{i}" for i in range(classes)))
    for _ in range(20):
        if dtype == "float32":
            raw = rng.normal(0, 3 if kind == "logits" else 0.4, size=(1, classes)).astype(np.float32)
        else:
            info = np.iinfo(dtype)
            raw = rng.integers(info.min, info.max, size=(1, classes), endpoint=True).astype(dtype)
        want = probabilities(raw, t, kind)
        p = top_one(raw)
        assert p.index == int(np.argmax(raw)) and p.label == f"c{p.index}"  # clipped probabilities can tie
        assert p.confidence == pytest.approx(float(want.max()), rel=1e-5, abs=1e-7)
