"""The fleet tools with real agents: two `edgekit-agent run` processes (real LiteRT, real bundle) on a real
mosquitto, fed labelled images; watch and the exporter must agree with what the agents served, and a
remote benchmark must round-trip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from edgekit.fleet.exporter import Exporter
from edgekit.fleet.remote import compare_reports, request_benchmark, save_report
from edgekit.fleet.watch import FleetWatcher

AGENT = [sys.executable, "-c", "import sys; from edgekit_agent.cli import main; sys.exit(main())"]


def write_images(directory: Path, n: int, seed: int) -> list[int]:
    """n labelled digit images as DIR/LABEL/i.png; returns the labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.random.default_rng(seed).choice(len(d.images), n, replace=False)
    for k, i in enumerate(idx):
        (directory / str(d.target[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), "L").save(directory / str(d.target[i]) / f"{k}.png")
    return [int(d.target[i]) for i in idx]


def start_agent(bundle: Path, url: str, device_id: str, tmp: Path) -> tuple[subprocess.Popen, Path]:
    watch = tmp / f"{device_id}-in"
    watch.mkdir()
    log = open(tmp / f"{device_id}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            *AGENT,
            "run",
            str(bundle),
            "--allow-unsigned",
            "--broker",
            url,
            "--device-id",
            device_id,
            "--watch",
            str(watch),
            "--window",
            "0.5",
            "--data-dir",
            str(tmp / f"{device_id}-data"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, watch


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    return proc.wait(20)


def labels(device_id: str, *more: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """Sorted labels of a per-device series of the digits bundle."""
    return tuple(sorted((("device", device_id), ("model", "digits"), ("profile", "raspberry-pi-4"), *more)))


def metrics(url: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(urllib.request.urlopen(url, timeout=5).read().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture()
def agents(digits_bundle, mosquitto, tmp_path):
    procs = []

    def start(device_id: str):
        proc, watch = start_agent(digits_bundle, mosquitto.url, device_id, tmp_path)
        procs.append(proc)
        return proc, watch

    yield start
    for p in procs:
        stop(p, signal.SIGKILL)


def test_watch_and_exporter_agree_with_two_real_agents(mosquitto, agents, tmp_path, capsys):
    from edgekit.cli import main as edgekit_main
    from edgekit.fleet.connection import FleetLink, drain
    from edgekit.fleet.exporter import COARSE_LE_MS

    # A raw subscriber records exactly what the agents sent, to compare the exporter's numbers against.
    raw = FleetLink(mosquitto.url, subscriptions=[("edge/v1/+/telemetry/inference", 1)]).start()
    with FleetWatcher(mosquitto.url) as w, Exporter(mosquitto.url, port=0, per_device="histograms") as exp:
        (pa, wa), (pb, wb) = agents("pi-a"), agents("pi-b")
        assert _wait(lambda: _statuses(w) == {"pi-a": "online", "pi-b": "online"}, 60), _logs(tmp_path)
        assert edgekit_main(["watch", "--broker", mosquitto.url, "--once", "--json"]) == 0
        once = {r["device_id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
        assert {d: (r["status"], r["bundle"], r["profile"]) for d, r in once.items()} == {
            d: ("online", "digits 1.0.0", "raspberry-pi-4") for d in ("pi-a", "pi-b")
        }  # from the retained status + meta
        n_a, n_b = len(write_images(wa, 30, 1)), len(write_images(wb, 20, 2))
        assert _wait(lambda: _requests(w) == {"pi-a": n_a, "pi-b": n_b}, 60), (_requests(w), _logs(tmp_path))
        rows = {r.device_id: r for r in w.snapshot()}
        assert _wait(lambda: exp.processed() and _metric_requests(exp.url) == {"pi-a": n_a, "pi-b": n_b}, 20)
        m = metrics(exp.url)
        sent: dict[str, dict] = {}
        for msg in drain(raw.messages, 1.0, limit=100_000):
            doc = json.loads(msg.payload)
            sent.setdefault(doc["device_id"], {})[(doc["epoch"], doc["seq"])] = doc  # de-duplicated like the consumers
        raw.close()
        for dev, docs in sent.items():
            total = [d["latency_ms"]["total"] for d in docs.values()]
            assert (
                sum(t["count"] for t in total)
                == m[("edgekit_inference_latency_seconds_count", labels(dev, ("stage", "total")))]
            )
            assert sum(t["sum"] for t in total) / 1000 == pytest.approx(
                m[("edgekit_inference_latency_seconds_sum", labels(dev, ("stage", "total")))]
            )
            for i, le in enumerate(total[0]["le"]):
                if le in COARSE_LE_MS:
                    key = labels(dev, ("le", _go(le / 1000)), ("stage", "total"))
                    assert sum(t["cum"][i] for t in total) == m[("edgekit_inference_latency_seconds_bucket", key)], le
            assert (
                sum(d["accuracy"]["correct"] for d in docs.values())
                == m[("edgekit_inference_correct_total", labels(dev))]
            )
        for dev, n in (("pi-a", n_a), ("pi-b", n_b)):
            r = rows[dev]
            assert r.labeled == n and r.errors == 0 and r.bundle.startswith("digits") and r.profile == "raspberry-pi-4"
            assert r.lost_messages == 0 and r.outbox_dropped == 0  # every sequenced message arrived
            assert 0.5 < r.accuracy <= 1.0  # the digits CNN is far better than chance (0.1)
            assert m[("edgekit_inference_labeled_total", labels(dev))] == n
            assert m[("edgekit_inference_correct_total", labels(dev))] == r.correct
            assert m[("edgekit_inference_latency_seconds_count", labels(dev, ("stage", "total")))] == n
            assert m[("edgekit_device_up", (("device", dev),))] == 1.0
        # A clean stop says "shutdown"; a killed agent is reported by its last will.
        assert stop(pa) == 0
        os.killpg(pb.pid, signal.SIGKILL)
        pb.wait(10)
        assert _wait(lambda: _statuses(w) == {"pi-a": "offline", "pi-b": "offline"}, 30), _statuses(w)
        reasons = {r.device_id: r.status_reason for r in w.snapshot()}
        assert reasons == {"pi-a": "shutdown", "pi-b": "lwt"}
        assert _wait(lambda: metrics(exp.url)[("edgekit_device_up", (("device", "pi-a"),))] == 0.0, 10)


def test_remote_benchmark_round_trip_with_a_real_agent(mosquitto, agents, tmp_path, capsys):
    agents("pi-bench")
    with FleetWatcher(mosquitto.url) as w:
        assert _wait(lambda: _statuses(w).get("pi-bench") == "online", 60), _logs(tmp_path)
    states = []
    bench = request_benchmark(
        mosquitto.url, "pi-bench", num_runs=30, warmup_runs=2, num_threads=1, timeout=60, on_state=states.append
    )
    assert states[:2] == ["sent", "accepted"] and states[-1] == "succeeded"
    rep = bench.report
    assert rep["steady"]["count"] == 30 and rep["warmup"]["runs"] == 2
    assert rep["runtime"]["num_threads"] == 1 and rep["runtime"]["engine"] in ("litert", "tflite_runtime", "tensorflow")
    assert rep["steady"]["min_ms"] <= rep["steady"]["p50_ms"] <= rep["steady"]["p99_ms"] <= rep["steady"]["max_ms"]
    json_path, png_path = save_report(bench, tmp_path / "reports")
    assert json.loads(json_path.read_text())["device_id"] == "pi-bench"
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The CLI: a second run, then --compare of both.
    from edgekit.cli import main

    assert (
        main(
            [
                "bench",
                "--device",
                "pi-bench",
                "--broker",
                mosquitto.url,
                "--runs",
                "20",
                "--warmup",
                "1",
                "--out",
                str(tmp_path / "reports"),
            ]
        )
        == 0
    )
    assert "remote benchmark of pi-bench" in capsys.readouterr().out
    reports = sorted((tmp_path / "reports").glob("*.json"))
    assert len(reports) == 2
    rows = compare_reports(reports)
    assert [r.device_id for r in rows] == ["pi-bench", "pi-bench"] and rows[0].p50_ratio == 1.0
    # A bad argument comes back as a rejection, not a hang.
    from edgekit_agent.contract.errors import CommandFailed

    with pytest.raises(CommandFailed, match="INVALID_ARGS"):
        request_benchmark(mosquitto.url, "pi-bench", num_runs=10**6, timeout=20)


def test_bench_of_an_absent_device_times_out_with_advice(mosquitto):
    from edgekit_agent.contract.errors import BrokerError

    with pytest.raises(BrokerError, match="no answer at all"):
        request_benchmark(mosquitto.url, "nobody", num_runs=5, timeout=1.5)


# --- helpers ------------------------------------------------------------------------------------------
def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return bool(pred())


def _statuses(w: FleetWatcher) -> dict:
    w.poll(0.05)
    return {r.device_id: r.status for r in w.snapshot()}


def _requests(w: FleetWatcher) -> dict:
    w.poll(0.05)
    return {r.device_id: r.requests for r in w.snapshot()}


def _metric_requests(url: str) -> dict:
    return {dict(k[1])["device"]: v for k, v in metrics(url).items() if k[0] == "edgekit_inference_requests_total"}


def _go(v: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(v)


def _logs(tmp: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in tmp.glob("*.log"))
