"""The exporter under a real Prometheus (Debian's binary, started here with a 1 s scrape and evaluation interval).

One scenario for the whole module (module fixture ``fleet``): a real mosquitto, two exporters in one
shared-subscription group, two real agents (`edgekit-agent run`, LiteRT, the session's digits bundle) fed
labelled images — pi-a correctly labelled, pi-b mislabelled — and four protocol-level devices that publish
a known number of windows. Prometheus scrapes both exporters and evaluates the shipped rules
(alerts/edgekit-rules.yml, with their ``for`` durations shortened to 1 s). PromQL answers are compared with
what the agents sent (recorded by a plain subscriber) and with the known windows.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image
from prometheus_server import Prometheus, binary

from edgekit.fleet.connection import FleetLink, drain
from edgekit.fleet.exporter import COARSE_LE_MS, Exporter, load_references

from brokers import Mosquitto

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "alerts" / "edgekit-rules.yml"
AGENT = [sys.executable, "-c", "import sys; from edgekit_agent.cli import main; sys.exit(main())"]
N_A, N_B = 40, 40  # images served by pi-a (correct labels) and pi-b (every label wrong)
SIM, SIM_WINDOWS = 4, 25  # protocol-level devices and the windows each one sends


@pytest.fixture(scope="module")
def prometheus_available() -> None:
    if binary("prometheus") and binary("promtool"):
        return
    if os.geteuid() == 0:  # CI is root: scripts/test.sh installs it, so a missing binary is a broken set-up
        pytest.fail("prometheus/promtool not installed although we are root: scripts/test.sh installs them")
    pytest.skip("prometheus is not installed and cannot be here without root: sudo apt-get install prometheus")


def test_promtool_checks_and_unit_tests_the_shipped_rules(prometheus_available):
    for cmd in (["check", "rules", str(RULES)], ["test", "rules", str(RULES.with_name("edgekit-rules.test.yml"))]):
        done = subprocess.run([binary("promtool"), *cmd], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


# ------------------------------------------------------------------------------------------- the scenario
def write_images(directory: Path, n: int, seed: int, mislabel: bool) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    for k, i in enumerate(np.random.default_rng(seed).choice(len(d.images), n, replace=False)):
        label = (int(d.target[i]) + 1) % 10 if mislabel else int(d.target[i])
        (directory / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), "L").save(directory / str(label) / f"{k}.png")


def start_agent(bundle: Path, url: str, device_id: str, tmp: Path) -> tuple[subprocess.Popen, Path]:
    watch = tmp / f"{device_id}-in"
    watch.mkdir()
    args = ["run", str(bundle), "--allow-unsigned", "--broker", url, "--device-id", device_id, "--watch", str(watch)]
    args += ["--window", "0.5", "--data-dir", str(tmp / f"{device_id}-data")]
    log = open(tmp / f"{device_id}.log", "wb")  # noqa: SIM115 - the child owns it
    return subprocess.Popen([*AGENT, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True), watch


def publish_sim_windows(url: str) -> dict[str, dict[str, int]]:
    """SIM devices of model "sim" on esp32-s3, SIM_WINDOWS windows each (10 s windows, one request more each
    time); returns what each sent."""
    host, port = url.removeprefix("mqtt://").split(":")
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sim-publisher", protocol=mqtt.MQTTv5)
    c.connect(host, int(port))
    c.loop_start()
    sent: dict[str, dict[str, int]] = {}
    le = [0.1, 1.0, 10.0, "+Inf"]
    infos = []
    now = int(time.time() * 1000)
    for d in range(SIM):
        dev, epoch = f"sim-{d}", uuid.uuid4().hex
        bundle = {"name": "sim", "version": "2", "profile": "esp32-s3"}
        env = {"device_id": dev, "boot_id": epoch, "epoch": epoch, "ts": now, "agent_version": "test"}
        c.publish(f"edge/v1/{dev}/status", json.dumps({**env, "seq": None, "state": "online"}), qos=1, retain=True)
        c.publish(f"edge/v1/{dev}/meta", json.dumps({**env, "seq": 1, "bundle": bundle}), qos=1, retain=True)
        sent[dev] = {"requests": 0, "windows": 0}
        for w in range(SIM_WINDOWS):
            n = w + 1
            doc = {
                **env,
                "seq": w + 2,
                "window": {"start": now - 10_000, "end": now, "duration_s": 10.0},
                "bundle": bundle,
                "counts": {"requests": n, "ok": n, "errors": {}},
                "accuracy": {"labeled": n, "correct": n},
                "latency_ms": {"total": {"count": n, "sum": 2.0 * n, "le": le, "cum": [0, 0, n, n]}},
                "outbox": {"dropped": 0},
            }
            infos.append(c.publish(f"edge/v1/{dev}/telemetry/inference", json.dumps(doc), qos=1))
            sent[dev]["requests"] += n
            sent[dev]["windows"] += 1
    for info in infos:
        info.wait_for_publish(10)
    c.disconnect()
    c.loop_stop()
    return sent


def shortened_rules(tmp: Path) -> Path:
    """The shipped rules with every ``for`` at 1 s: the expressions under test are exactly the shipped ones."""
    path = tmp / "edgekit-rules.yml"
    path.write_text(re.sub(r"(?m)^(\s+for:) \S+$", r"\1 1s", RULES.read_text()))
    return path


@pytest.fixture(scope="module")
def fleet(prometheus_available, digits_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus-fleet")
    broker = Mosquitto(tmp / "broker").start()
    raw = FleetLink(broker.url, subscriptions=[("edge/v1/+/telemetry/inference", 1)]).start()
    # A budget no real inference meets: the p95 alert must fire for the real agents' model.
    opts = dict(
        group="g", references=load_references([digits_bundle.parent]), latency_budgets_ms={"raspberry-pi-4": 0.001}
    )
    exporters = [Exporter(broker.url, port=0, **opts).start() for _ in range(2)]
    prom = Prometheus(tmp / "prometheus", [f"127.0.0.1:{e.port}" for e in exporters], [shortened_rules(tmp)]).start()
    agents = {d: start_agent(digits_bundle, broker.url, d, tmp) for d in ("pi-a", "pi-b")}
    try:
        assert prom.wait_for(
            lambda: prom.values("max by (device) (edgekit_device_up)", "device") == {"pi-a": 1.0, "pi-b": 1.0}, 90
        ), [p.read_text()[-2000:] for p in tmp.glob("*.log")]
        # Series exist from the birth on (at 0), so increase() sees the whole first batch.
        time.sleep(2)
        write_images(agents["pi-a"][1], N_A, seed=1, mislabel=False)
        write_images(agents["pi-b"][1], N_B, seed=2, mislabel=True)
        sim = publish_sim_windows(broker.url)
        requests = "sum by (device) (edgekit_inference_requests_total)"
        truth = {"pi-a": N_A, "pi-b": N_B, **{d: s["requests"] for d, s in sim.items()}}
        assert prom.wait_for(lambda: prom.values(requests, "device") == truth, 60), prom.values(requests, "device")
        sent: dict[str, dict] = {}
        for msg in drain(raw.messages, 1.0, limit=100_000):
            doc = json.loads(msg.payload)
            sent.setdefault(doc["device_id"], {})[(doc["epoch"], doc["seq"])] = doc
        yield {
            "prom": prom,
            "exporters": exporters,
            "agents": agents,
            "sent": sent,
            "sim": sim,
            "bundle": digits_bundle,
        }
    finally:
        for proc, _ in agents.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        prom.stop()
        raw.close()
        for e in exporters:
            e.stop()
        broker.stop()


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile on (upper bound, cumulative count), written out independently."""
    buckets = sorted(buckets)
    rank = q * buckets[-1][1]
    b = next(i for i, (_, c) in enumerate(buckets) if c >= rank)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    start, below = (0.0, 0.0) if b == 0 else buckets[b - 1]
    end, count = buckets[b]
    return start + (end - start) * (rank - below) / (count - below)


def test_promql_counts_accuracy_and_latency_quantiles_match_what_the_agents_served(fleet):
    prom, sent = fleet["prom"], fleet["sent"]
    agents_sent = {d: docs for d, docs in sent.items() if d.startswith("pi-")}
    assert set(agents_sent) == {"pi-a", "pi-b"}
    assert prom.values("sum by (model) (edgekit_inference_requests_total)", "model") == {
        "digits": N_A + N_B,
        "sim": sum(s["requests"] for s in fleet["sim"].values()),
    }
    assert prom.values("sum by (profile) (edgekit_inference_requests_total)", "profile") == {
        "raspberry-pi-4": N_A + N_B,
        "esp32-s3": sum(s["requests"] for s in fleet["sim"].values()),
    }
    manifest = json.loads((fleet["bundle"] / "manifest.json").read_text())
    assert prom.values("max by (model) (edgekit_model_reference_accuracy)", "model") == {
        "digits": pytest.approx(manifest["metrics"]["int8_accuracy"])
    }
    accuracy = prom.values(
        "sum by (device) (edgekit_inference_correct_total) / sum by (device) (edgekit_inference_labeled_total)",
        "device",
    )
    for dev, docs in agents_sent.items():
        correct = sum(d["accuracy"]["correct"] for d in docs.values())
        labeled = sum(d["accuracy"]["labeled"] for d in docs.values())
        assert labeled == {"pi-a": N_A, "pi-b": N_B}[dev]
        assert accuracy[dev] == pytest.approx(correct / labeled)
    assert accuracy["pi-a"] > 0.8 and accuracy["pi-b"] < 0.2  # the labels were right / every one wrong
    # Latency: the model-level histogram summed over both exporters, against the agents' own buckets.
    totals = [d["latency_ms"]["total"] for docs in agents_sent.values() for d in docs.values()]
    le = totals[0]["le"]
    expected = [(le[i] / 1000, sum(t["cum"][i] for t in totals)) for i in range(len(le)) if le[i] in COARSE_LE_MS]
    expected.append((math.inf, sum(t["count"] for t in totals)))
    assert expected[-1][1] == N_A + N_B
    sel = 'edgekit_model_inference_latency_seconds_bucket{model="digits", stage="total"}'
    for q in (0.5, 0.95, 0.99):
        got = prom.query(f"histogram_quantile({q}, sum by (le) ({sel}))")
        assert float(got[0]["value"][1]) == pytest.approx(histogram_quantile(q, expected), rel=1e-9), q
    got = prom.values('sum(edgekit_model_inference_latency_seconds_sum{model="digits", stage="total"})', "")
    assert got[""] == pytest.approx(sum(t["sum"] for t in totals) / 1000, rel=1e-9)


def test_every_dashboard_panel_query_returns_data(fleet):
    prom = fleet["prom"]
    dashboards = sorted((REPO / "dashboards").glob("*.json"))
    assert dashboards
    checked = 0
    for path in dashboards:
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                # Grafana's variables: every device/model, and a rate window that covers this short test.
                expr = re.sub(r"\$(device|model|profile)\b", ".*", target["expr"]).replace("$__rate_interval", "5m")
                assert "$" not in expr, (path.name, panel["title"], expr)
                result = prom.query(expr)
                values = [float(s["value"][1]) for s in result]
                assert values and any(not math.isnan(v) for v in values), (path.name, panel["title"], expr)
                checked += 1
    assert checked >= 11


def test_two_exporters_each_see_part_of_the_stream_and_sum_to_the_truth(fleet):
    prom, sim = fleet["prom"], fleet["sim"]
    per_exporter = prom.values('sum by (instance) (edgekit_telemetry_windows_total{model="sim"})', "instance")
    assert len(per_exporter) == 2 and all(v > 0 for v in per_exporter.values()), per_exporter
    assert sum(per_exporter.values()) == SIM * SIM_WINDOWS
    windows = prom.values('sum by (device) (edgekit_telemetry_windows_total{model="sim"})', "device")
    assert windows == {d: s["windows"] for d, s in sim.items()}
    # the windows of one device landed on both exporters, and were still counted exactly once
    split = prom.values('count by (device) (edgekit_telemetry_windows_total{model="sim"} > 0)', "device")
    assert any(v == 2 for v in split.values()), split
    assert prom.values("sum(edgekit_exporter_duplicates_total)", "") == {"": 0.0}
    # every exporter knows every device (status and meta are not shared)
    assert prom.values("count by (instance) (edgekit_device_up)", "instance") == dict.fromkeys(per_exporter, 2 + SIM)


def test_alerts_fire_end_to_end_from_real_agents(fleet):
    prom = fleet["prom"]

    def firing() -> set[tuple[str, str]]:
        return {
            (a["labels"]["alertname"], a["labels"].get("device") or a["labels"].get("model"))
            for a in prom.alerts()
            if a["state"] == "firing"
        }

    # pi-b's mislabelled images, and a budget nobody meets
    expected = {("EdgekitAccuracyBelowReference", "pi-b"), ("EdgekitLatencyP95AboveBudget", "digits")}
    assert prom.wait_for(lambda: expected <= firing(), 30), firing()
    assert ("EdgekitAccuracyBelowReference", "pi-a") not in firing()
    assert ("EdgekitDeviceOffline", "pi-a") not in firing()
    proc, _ = fleet["agents"]["pi-a"]
    os.killpg(proc.pid, signal.SIGKILL)  # the broker publishes its last will
    proc.wait(10)
    assert prom.wait_for(lambda: ("EdgekitDeviceOffline", "pi-a") in firing(), 30), firing()
    assert ("EdgekitDeviceOffline", "pi-b") not in firing()
