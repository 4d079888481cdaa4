"""watch and the exporter against a real mosquitto, fed by real MQTT publishers that follow edge/v1.

The publishers here stand in for devices at the protocol level only (real paho clients, real broker):
they let the tests send exactly known counts, histograms, duplicates and gaps and check that what
watch and /metrics show equals what was sent. Tests with real agents are in test_fleet_agents.py.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from edgekit.cli import main as edgekit_main
from edgekit.fleet.exporter import Exporter
from edgekit.fleet.watch import FleetWatcher

LE = [0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0]
MODEL = (("model", "digits"), ("profile", "raspberry-pi-4"))  # what Device.window reports


def dev(device_id: str, *more: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """The sorted labels of a per-device series of a Device: device, model, profile (+ more)."""
    return tuple(sorted((("device", device_id), *MODEL, *more)))


def wait_until(pred, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


class Device:
    """A protocol-level device: publishes status, meta and telemetry windows per the edge/v1 contract."""

    def __init__(self, url: str, device_id: str, protocol: int = mqtt.MQTTv5, seed: int = 0) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.device_id, self.epoch, self.boot_id, self.seq = device_id, uuid.uuid4().hex, uuid.uuid4().hex, 0
        self.rng = np.random.default_rng(seed)
        self.sent = {
            "requests": 0,
            "errors": 0,
            "labeled": 0,
            "correct": 0,
            "count": 0,
            "sum": 0.0,
            "cum": np.zeros(len(LE) + 1, int),
        }
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=protocol)
        self.client.will_set(
            self.topic("status"), json.dumps(self.envelope(state="offline", reason="lwt")), qos=1, retain=True
        )
        self.client.connect(host, int(port))
        self.client.loop_start()

    def topic(self, kind: str) -> str:
        return f"edge/v1/{self.device_id}/{kind}"

    def envelope(self, **body) -> dict:
        self.seq += 1
        return {
            "device_id": self.device_id,
            "boot_id": self.boot_id,
            "epoch": self.epoch,
            "seq": self.seq,
            "ts": int(time.time() * 1000),
            "agent_version": "test",
            **body,
        }

    def publish(self, kind: str, doc: dict, retain: bool = False) -> dict:
        self.client.publish(self.topic(kind), json.dumps(doc), qos=1, retain=retain).wait_for_publish(5)
        return doc

    def online(self) -> None:
        self.publish("status", self.envelope(schema="edge.status/1", state="online"), retain=True)
        self.publish("meta", self.envelope(schema="edge.meta/1", config={"window_s": 10}), retain=True)

    def window(
        self, requests: int = 50, labeled: int = 40, correct: int = 36, errors: int = 2, dropped: int = 0
    ) -> dict:
        lat = self.rng.gamma(2.0, 1.5, size=requests)
        cum = [int((lat <= le).sum()) for le in LE] + [requests]
        s = self.sent
        s["requests"] += requests
        s["errors"] += errors
        s["labeled"] += labeled
        s["correct"] += correct
        s["count"] += requests
        s["sum"] += float(lat.sum())
        s["cum"] += np.array(cum)
        series = {
            "count": requests,
            "sum": float(lat.sum()),
            "min": float(lat.min()),
            "max": float(lat.max()),
            "p50": float(np.percentile(lat, 50)),
            "p90": float(np.percentile(lat, 90)),
            "p99": float(np.percentile(lat, 99)),
            "le": LE + ["+Inf"],
            "cum": cum,
        }
        now = int(time.time() * 1000)
        return self.envelope(
            schema="edge.telemetry.inference/1",
            window={"start": now - 10_000, "end": now},
            bundle={"name": "digits", "version": "1", "sha256": "0" * 64, "profile": "raspberry-pi-4"},
            runtime={"engine": "litert", "version": "2.3", "delegate": "xnnpack", "num_threads": 2},
            counts={"requests": requests, "ok": requests - errors, "errors": {"INTERNAL": errors}, "dropped": 0},
            throughput_ips=requests / 10,
            latency_ms={"total": series, "invoke": series, "preprocess": series},
            accuracy={"labeled": labeled, "correct": correct, "per_class": {}},
            outbox={"depth": 0, "dropped": dropped},
        )

    def close(self, clean: bool = True) -> None:
        if clean:
            self.publish("status", self.envelope(state="offline", reason="shutdown"), retain=True)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def devices(mosquitto):
    made = []

    def make(device_id: str, **kw) -> Device:
        d = Device(mosquitto.url, device_id, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.client.loop_stop()


def scrape(url: str) -> dict:
    """/metrics as {(sample name, sorted labels): value}."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_watch_once_json_shows_retained_status_and_meta(mosquitto, devices, capsys):
    a, b = devices("pi-a"), devices("pi-b", seed=1)
    a.online()
    b.online()
    b.close(clean=True)
    assert edgekit_main(["watch", "--broker", mosquitto.url, "--once", "--json"]) == 0
    rows = {r["device_id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["pi-a"]["status"] == "online"
    assert rows["pi-b"]["status"] == "offline" and rows["pi-b"]["status_reason"] == "shutdown"


def test_watch_state_equals_what_devices_sent_dedup_and_gaps(mosquitto, devices):
    a, b = devices("pi-a"), devices("pi-b", seed=1)
    with FleetWatcher(mosquitto.url) as w:
        assert w.sync()
        a.online()
        b.online()
        docs = [a.publish("telemetry/inference", a.window()) for _ in range(3)]
        a.publish("telemetry/inference", docs[1])  # a redelivery: same (device, epoch, seq)
        b.publish("telemetry/inference", b.window(requests=20, labeled=10, correct=10, errors=0))
        b.seq += 2  # two records lost on the way
        b.publish("telemetry/inference", b.window(requests=30, labeled=30, correct=15, errors=1))
        assert wait_until(
            lambda: (
                (w.poll(0.1) or True) and {r.device_id: r.requests for r in w.snapshot()} == {"pi-a": 150, "pi-b": 50}
            )
        )
        rows = {r.device_id: r for r in w.snapshot()}
    ra, rb = rows["pi-a"], rows["pi-b"]
    assert ra.status == rb.status == "online"
    assert (ra.requests, ra.labeled, ra.correct, ra.errors) == (
        a.sent["requests"],
        a.sent["labeled"],
        a.sent["correct"],
        a.sent["errors"],
    )
    assert ra.accuracy == pytest.approx(108 / 120)
    assert rb.accuracy == pytest.approx(25 / 40) and rb.lost_messages == 2 and ra.lost_messages == 0
    assert w.state.dedup.duplicates == 1
    assert ra.bundle == "digits 1" and ra.profile == "raspberry-pi-4" and ra.runtime == "litert 2.3 xnnpack x2"
    assert ra.p99_ms == pytest.approx(docs[-1]["latency_ms"]["total"]["p99"])


def test_watch_json_lines_follow_live_updates(mosquitto, devices, tmp_path):
    import subprocess
    import sys

    a = devices("pi-a")
    a.online()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "watch", "--broker", mosquitto.url, "--json", "--timeout", "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(proc.stdout.readline())  # the retained snapshot comes first
        assert first["device_id"] == "pi-a" and first["status"] == "online" and first["requests"] == 0
        a.publish("telemetry/inference", a.window(requests=7, labeled=7, correct=7, errors=0))
        update = json.loads(proc.stdout.readline())
        assert update["device_id"] == "pi-a" and update["requests"] == 7 and update["accuracy"] == 1.0
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("buckets", ["full", "coarse"])
def test_exporter_metrics_equal_what_was_sent(mosquitto, devices, buckets):
    from edgekit.fleet.exporter import COARSE_LE_MS

    a, b = devices("pi-a"), devices("pi-b", seed=3)
    a.online()
    b.online()
    with Exporter(mosquitto.url, port=0, buckets=buckets, stages=("total", "invoke"), per_device="histograms") as exp:
        assert wait_until(lambda: exp.processed() >= 4)  # the retained status + meta of both
        for _ in range(3):
            a.publish("telemetry/inference", a.window())
        b.publish("telemetry/inference", b.window(requests=11, labeled=5, correct=4, errors=1, dropped=3))
        assert wait_until(lambda: exp.processed() >= 8)
        m = scrape(exp.url)
    for d in (a, b):
        assert m[("edgekit_device_up", (("device", d.device_id),))] == 1.0
        for name in ("requests", "errors", "labeled", "correct"):
            assert m[(f"edgekit_inference_{name}_total", dev(d.device_id))] == d.sent[name]
        total = dev(d.device_id, ("stage", "total"))
        assert m[("edgekit_inference_latency_seconds_count", total)] == d.sent["count"]
        assert m[("edgekit_inference_latency_seconds_sum", total)] == pytest.approx(d.sent["sum"] / 1000)
        for le, c in zip(LE + [float("inf")], d.sent["cum"]):
            key = (
                "edgekit_inference_latency_seconds_bucket",
                dev(d.device_id, ("stage", "total"), ("le", _go(le / 1000))),
            )
            if buckets == "full" or le in COARSE_LE_MS or le == float("inf"):
                assert m[key] == c, (d.device_id, le)
            else:
                assert key not in m  # 0.05 ms is not a 1-2-5 bound
        assert m[("edgekit_inference_latency_seconds_count", dev(d.device_id, ("stage", "invoke")))] == d.sent["count"]
        assert ("edgekit_inference_latency_seconds_count", dev(d.device_id, ("stage", "preprocess"))) not in m
    # the model-level histogram (always exported) is the two devices' sum
    for le, ca, cb in zip(LE + [float("inf")], a.sent["cum"], b.sent["cum"]):
        key = (
            "edgekit_model_inference_latency_seconds_bucket",
            tuple(sorted((*MODEL, ("stage", "total"), ("le", _go(le / 1000))))),
        )
        if buckets == "full" or le in COARSE_LE_MS or le == float("inf"):
            assert m[key] == ca + cb, le
    model_total = tuple(sorted((*MODEL, ("stage", "total"))))
    assert m[("edgekit_model_inference_latency_seconds_count", model_total)] == a.sent["count"] + b.sent["count"]
    assert m[("edgekit_outbox_dropped_total", dev("pi-b"))] == 3


def _go(v: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(v)


def test_duplicate_is_counted_once_and_device_goes_down(mosquitto, devices):
    a = devices("pi-a")
    a.online()
    with Exporter(mosquitto.url, port=0) as exp:
        doc = a.window(requests=10)
        a.publish("telemetry/inference", doc)
        a.publish("telemetry/inference", doc)
        a.close(clean=True)
        assert wait_until(lambda: scrape(exp.url).get(("edgekit_device_up", (("device", "pi-a"),))) == 0.0)
        m = scrape(exp.url)
    assert m[("edgekit_inference_requests_total", dev("pi-a"))] == 10
    assert m[("edgekit_exporter_duplicates_total", ())] == 1


def test_two_exporters_on_one_shared_subscription_split_without_double_counting(mosquitto, devices):
    a, b = devices("pi-a"), devices("pi-b", seed=2)
    a.online()
    b.online()
    with Exporter(mosquitto.url, port=0, group="g1") as e1, Exporter(mosquitto.url, port=0, group="g1") as e2:
        assert wait_until(lambda: e1.processed() >= 4 and e2.processed() >= 4)
        for i in range(20):
            (a if i % 2 else b).publish("telemetry/inference", (a if i % 2 else b).window(requests=5 + i))
        windows = lambda: [
            sum(v for (n, _), v in scrape(e.url).items() if n == "edgekit_telemetry_windows_total") for e in (e1, e2)
        ]  # noqa: E731
        assert wait_until(lambda: sum(windows()) == 20)
        time.sleep(0.3)  # nothing more may arrive: a double delivery would push the sum past 20
        w1, w2 = windows()
        m1, m2 = scrape(e1.url), scrape(e2.url)
    assert w1 + w2 == 20 and w1 > 0 and w2 > 0, (w1, w2)
    for d in (a, b):
        key = ("edgekit_inference_requests_total", dev(d.device_id))
        assert m1.get(key, 0) + m2.get(key, 0) == d.sent["requests"]
        # both exporters know both devices are up (status is not shared)
        assert (
            m1[("edgekit_device_up", (("device", d.device_id),))]
            == m2[("edgekit_device_up", (("device", d.device_id),))]
            == 1.0
        )


def test_exporter_cli_serves_metrics_and_stops_cleanly_on_sigterm(mosquitto, devices):
    import signal
    import subprocess
    import sys

    from brokers import free_port

    a = devices("pi-a")
    a.online()
    a.publish("telemetry/inference", a.window(requests=9))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgekit",
            "exporter",
            "--broker",
            mosquitto.url,
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def up() -> bool:
            try:
                return scrape(url).get(("edgekit_device_up", (("device", "pi-a"),))) == 1.0
            except OSError:
                return False

        assert wait_until(up, 20)
        a.publish("telemetry/inference", a.window(requests=4))
        assert wait_until(lambda: scrape(url).get(("edgekit_inference_requests_total", dev("pi-a"))) == 4, 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
