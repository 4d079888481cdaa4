#!/usr/bin/env python3
"""How many telemetry messages per second do ``edgekit watch``'s state and the exporter process, how
much memory do they hold for a fleet of 1,000 devices, and how long does Prometheus wait for ``/metrics``
of 1,000 and of 10,000 devices?

Method (loopback mosquitto, started here): a consumer process connects with a persistent MQTT 5
session, subscribes and disconnects; this script then publishes N telemetry records (QoS 1, realistic
payloads: three 30-bucket latency histograms, counts, accuracy) from DEVICES simulated devices, which
mosquitto queues for the absent consumer. The consumer reconnects and we time from reconnect until it
has applied all N records (so the figure is the consumer's speed, not the publisher's). Each run is a
fresh process; the median of --repeat runs is reported, with RSS before and after.

Scrape (``--scrape-devices 1000,10000``): an exporter (default settings unless ``--per-device``) whose state
is fed directly with realistic windows (how they arrive does not change what a scrape costs), then timed HTTP
GETs of /metrics as Prometheus makes them (``Accept-Encoding: gzip``, whole body read): one right after every
device sent a new window (the worst case: every device's model-level deltas are added), one with nothing new.
Medians of --repeat rounds; sizes plain and gzipped.

Bare baselines (issue 15), run side by side and interleaved with the edgekit paths, in processes that import
neither edgekit nor edgekit_agent: ``paho``, a paho MQTT 5 consumer with the same persistent session that only
json-decodes each message, drained the same way as watch and the exporter (its ratio is what the figures quote);
``prom``, prometheus_client serving the same metric families from the same windows (a custom collector over the
decoded values, the model-level histogram on the coarse grid), fetched the same way as the exporter.

Usage: .venv/bin/python scripts/bench_fleet.py [--messages 20000] [--devices 1000] [--repeat 3]
       [--scrape-devices 1000,5000] [--per-device counters] [--scrape-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace

TELEMETRY_FILTER = "edge/v1/+/telemetry/#"  # what the bare consumer subscribes to (checked against the contract)
COARSE_LE_MS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def telemetry(device: str, epoch: str, seq: int, rng) -> bytes:
    import numpy as np

    from edgekit_agent.contract.topics import Schema
    from edgekit_agent.serve.telemetry import LATENCY_BUCKETS_MS

    LE = list(LATENCY_BUCKETS_MS)  # the agent's fleet-wide grid
    n = 100
    lat = rng.gamma(2.0, 1.2, size=n)
    cum = [int(c) for c in np.searchsorted(np.sort(lat), LE, side="right")] + [n]
    series = {
        "count": n,
        "sum": float(lat.sum()),
        "min": float(lat.min()),
        "max": float(lat.max()),
        "p50": float(np.median(lat)),
        "p90": float(np.percentile(lat, 90)),
        "p99": float(np.percentile(lat, 99)),
        "percentiles": "exact",
        "le": LE + ["+Inf"],
        "cum": cum,
    }
    now = int(time.time() * 1000)
    doc = {
        "schema": Schema.TELEMETRY,
        "device_id": device,
        "boot_id": epoch,
        "epoch": epoch,
        "seq": seq,
        "ts": now,
        "agent_version": "bench",
        "window": {"start": now - 10_000, "end": now, "duration_s": 10.0},
        "bundle": {"name": "digits", "version": "1", "sha256": "0" * 64, "profile": "raspberry-pi-4"},
        "runtime": {"engine": "litert", "version": "2.3", "delegate": "xnnpack", "num_threads": 2},
        "counts": {"requests": n, "ok": n, "errors": {}, "dropped": 0},
        "throughput_ips": 10.0,
        "latency_ms": {"total": series, "preprocess": series, "invoke": series},
        "accuracy": {"labeled": n, "correct": n - 3, "per_class": {}},
        "predictions": {
            "class_counts": {str(i): 10 for i in range(10)},
            "confidence_hist": {"edges": [i / 10 for i in range(11)], "counts": [0] * 9 + [n]},
        },
        "drift": {"input_mean": {"psi": 0.021}, "predicted_class": {"psi": 0.013}, "confidence": {"psi": 0.034}},
        "system": {"cpu_temp_c": 50.0, "rss_mb": 60.0, "load1": 0.5},
        "outbox": {"depth": 0, "dropped": 0},
    }
    return json.dumps(doc).encode()


# ------------------------------------------------------------------------------------------------ child
def child(role: str, broker: str, n: int, client_id: str) -> None:
    """Run in a fresh process: park a persistent session, then on 'go' drain it and report."""
    from edgekit.fleet.exporter import Exporter
    from edgekit.fleet.watch import FleetWatcher

    if role == "watch":
        watcher = FleetWatcher(broker, client_id=client_id)
        link, state = watcher.link, watcher.state
    else:
        # A group of its own: an earlier run's parked session in the same group would take its share.
        exp = Exporter(broker, port=0, client_id=client_id, group=client_id)
        link, state = exp.link, exp.state
    link.settings = replace(link.settings, session_expiry_s=600)  # a persistent session, parked below
    link.start()
    link.close()
    print("parked", flush=True)
    sys.stdin.readline()
    base_rss = rss_mb()
    cpu0 = time.process_time()  # all threads of this process: paho's network thread included
    t0 = time.perf_counter()
    if role == "watch":
        watcher.start()
        applied = 0
        while applied < n and time.perf_counter() - t0 < 300:
            watcher.poll(1.0)  # exactly what `edgekit watch` does between screen refreshes
            applied = state.messages
    else:
        exp.start()
        while exp.processed() < n and time.perf_counter() - t0 < 300:
            time.sleep(0.05)  # a poll, not the lock every few ms: that would slow the consumer it measures
        applied = exp.processed()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    result = {
        "role": role,
        "applied": applied,
        "seconds": elapsed,
        "rate": applied / elapsed,
        "cpu_rate": applied / cpu,
        "devices": len(state.devices),
        "rss_before_mb": base_rss,
        "rss_after_mb": rss_mb(),
    }
    if role == "exporter":
        times = []
        for _ in range(5):
            s = time.perf_counter()
            body = exp.collector.render().encode()
            times.append(time.perf_counter() - s)
        result["scrape_ms"] = 1000 * statistics.median(times)
        result["scrape_bytes"] = len(body)
        exp.stop()
    else:
        link.close()
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------ bare baselines (no edgekit import)
def _paho_session(broker: str, client_id: str, on_message) -> object:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    host, port = broker.removeprefix("mqtt://").split(":")
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    c.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(TELEMETRY_FILTER, qos=1)
    c.on_subscribe = lambda *_: subscribed.set()
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    c.connect(host, int(port), clean_start=False, properties=props)
    c.loop_start()
    subscribed.wait(10)
    return c


def bare_child(broker: str, n: int, client_id: str) -> None:
    """The paho baseline: park a persistent session, then on 'go' drain it, json-decoding every message."""
    got = [0]
    done = threading.Event()

    def on_message(_c, _u, msg) -> None:
        json.loads(msg.payload)
        got[0] += 1
        if got[0] >= n:
            done.set()

    c = _paho_session(broker, client_id, lambda *_: None)
    c.disconnect()
    c.loop_stop()
    print("parked", flush=True)
    sys.stdin.readline()
    base_rss = rss_mb()
    cpu0, t0 = time.process_time(), time.perf_counter()
    c = _paho_session(broker, client_id, on_message)
    done.wait(300)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    c.disconnect()
    c.loop_stop()
    result = {"role": "paho", "applied": got[0], "seconds": elapsed, "rate": got[0] / elapsed}
    result.update(cpu_rate=got[0] / cpu, devices=0, rss_before_mb=base_rss, rss_after_mb=rss_mb())
    print(json.dumps(result), flush=True)


def prom_child(templates: str) -> None:
    """The prometheus_client baseline: the same families from the same windows; 'feed SEQ' on stdin applies
    every device's window with that seq (decoded, as the exporter's ingest does), then answers 'ok'."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    docs = [json.loads(line) for line in open(templates)]
    devices: dict[str, dict] = {}
    models: dict[tuple[str, str], list] = {}  # -> [bucket counts at COARSE_LE_MS + Inf, sum_s]
    counters = ("requests", "errors", "labeled", "correct", "outbox_dropped", "windows", "rollbacks")

    def apply(doc: dict) -> None:
        dev = devices.setdefault(doc["device_id"], dict.fromkeys(counters, 0))
        c, acc, b = doc["counts"], doc["accuracy"], doc["bundle"]
        dev["requests"] += c["requests"]
        dev["errors"] += sum(c["errors"].values())
        dev["labeled"] += acc["labeled"]
        dev["correct"] += acc["correct"]
        dev["outbox_dropped"] = doc["outbox"]["dropped"]
        dev["windows"] += 1
        dev["last_window"] = time.time()
        dev["drift"] = {k: v["psi"] for k, v in doc["drift"].items()}
        dev["model"], dev["profile"], dev["version"] = b["name"], b["profile"], b["version"]
        dev["engine"], dev["delegate"] = doc["runtime"]["engine"], doc["runtime"]["delegate"]
        total = doc["latency_ms"]["total"]
        cum = dict(zip(total["le"], total["cum"]))
        slot = models.setdefault((b["name"], b["profile"]), [[0] * (len(COARSE_LE_MS) + 1), 0.0])
        slot[0] = [a + cum[le] for a, le in zip(slot[0], [*COARSE_LE_MS, "+Inf"])]
        slot[1] += total["sum"] / 1000.0

    class Fleet:
        def collect(self):
            dl, dml = ["device"], ["device", "model", "profile"]
            up = GaugeMetricFamily("edgekit_device_up", "1 while the device is online", labels=dl)
            info = GaugeMetricFamily(
                "edgekit_device_info", "bundle and runtime", labels=[*dml, "version", "engine", "delegate"]
            )
            fams = {k: CounterMetricFamily(f"edgekit_{k}", k, labels=dml) for k in counters}
            seen = GaugeMetricFamily("edgekit_telemetry_last_window_timestamp_seconds", "last window", labels=dl)
            psi = GaugeMetricFamily("edgekit_drift_psi", "drift", labels=[*dml, "signal"])
            for d, v in devices.items():
                ids = [d, v["model"], v["profile"]]
                up.add_metric([d], 1)
                info.add_metric([*ids, v["version"], v["engine"], v["delegate"]], 1)
                for k in counters:
                    fams[k].add_metric(ids, v[k])
                seen.add_metric([d], v["last_window"])
                for signal, value in v["drift"].items():
                    psi.add_metric([*ids, signal], value)
            hist = HistogramMetricFamily(
                "edgekit_model_inference_latency_seconds", "latency", labels=["model", "profile", "stage"]
            )
            for (m, p), (buckets, total) in models.items():
                edges = [str(le / 1000.0) for le in COARSE_LE_MS] + ["+Inf"]
                hist.add_metric([m, p, "total"], list(zip(edges, buckets)), total)
            n = GaugeMetricFamily("edgekit_exporter_devices", "devices", value=len(devices))
            dup = CounterMetricFamily("edgekit_exporter_duplicates", "duplicates", value=0)
            yield from (up, info, *fams.values(), seen, psi, hist, n, dup)

    registry = CollectorRegistry()
    registry.register(Fleet())
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    print(server.server_port, flush=True)
    for line in sys.stdin:
        seq = int(line.split()[1])
        for doc in docs:
            doc["seq"] = seq
            apply(json.loads(json.dumps(doc)))  # decoded from bytes, as the exporter's ingest does
        print("ok", flush=True)
    server.shutdown()


# ----------------------------------------------------------------------------------------------- parent
def publish_all(url: str, devices: int, n: int) -> float:
    import numpy as np
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edgekit_agent.contract.topics import TELEMETRY, topic

    assert topic("dev-0", TELEMETRY).startswith(TELEMETRY_FILTER.removesuffix("#").replace("+", "dev-0"))

    rng = np.random.default_rng(0)
    epochs = [uuid.uuid4().hex for _ in range(devices)]
    payloads = [
        (
            topic(f"dev-{i % devices:04d}", TELEMETRY),
            telemetry(f"dev-{i % devices:04d}", epochs[i % devices], i // devices + 1, rng),
        )
        for i in range(n)
    ]
    host, port = url.removeprefix("mqtt://").split(":")
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(host, int(port))
    c.loop_start()
    t0 = time.perf_counter()
    infos = [c.publish(t, p, qos=1) for t, p in payloads]
    for info in infos[-50:]:
        info.wait_for_publish(120)
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return sum(len(p) for _, p in payloads) / n, n / dt


def scrape_bench(broker: str, devices: int, repeat: int, per_device: str) -> dict:
    """Median seconds of a Prometheus-style GET of /metrics for ``devices`` devices (see the module docstring)."""
    import urllib.request

    import numpy as np

    from edgekit.fleet.exporter import Exporter
    from edgekit_agent.mqtt.client import Message

    rng = np.random.default_rng(0)
    ids = [f"dev-{i:05d}" for i in range(devices)]
    epochs = {d: uuid.uuid4().hex for d in ids}
    cid = f"bench-scrape-{devices}-{uuid.uuid4().hex[:6]}"
    exp = Exporter(broker, port=0, client_id=cid, group=cid, per_device=per_device).start()

    # One realistic window per device, made once: only its seq changes from round to round.
    templates = {d: telemetry(d, epochs[d], 0, rng) for d in ids}
    assert all(t.count(b'"seq": 0,') == 1 for t in templates.values())

    def feed(seq: int) -> None:
        now = time.time()
        stamp = b'"seq": %d,' % seq
        msgs = [
            Message(f"edge/v1/{d}/telemetry/inference", templates[d].replace(b'"seq": 0,', stamp), False, now)
            for d in ids
        ]
        if seq == 1:
            born = json.dumps({"state": "online", "boot_id": "b", "ts": int(now * 1000)}).encode()
            msgs = [Message(f"edge/v1/{d}/status", born, True, now) for d in ids] + msgs
        for i in range(0, len(msgs), 1000):  # in batches, as the consumer applies what it drained
            with exp.state.lock:
                exp.state.apply_many(msgs[i : i + 1000])

    def get(gzip: bool, url: str = exp.url) -> tuple[float, int]:
        req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip else {})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as r:
            n = len(r.read())
        return time.perf_counter() - t0, n

    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.writelines(t.decode() + "\n" for t in templates.values())
    prom = subprocess.Popen(
        [sys.executable, __file__, "--child", "prom", "--templates", f.name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    prom_url = f"http://127.0.0.1:{int(prom.stdout.readline())}/metrics"

    def baseline(seq: int) -> float:
        prom.stdin.write(f"feed {seq}\n")
        prom.stdin.flush()
        assert prom.stdout.readline().strip() == "ok"
        return get(gzip=True, url=prom_url)[0]

    changed, same, bare = [], [], []
    seen_by_prometheus = None
    try:
        for seq in range(1, repeat + 2):
            if seq % 2 == 0:  # interleaved: the baseline first on even rounds
                bare.append(baseline(seq))
            feed(seq)
            t, gz_bytes = get(gzip=True)
            if seq % 2 == 1:
                bare.append(baseline(seq))
            if seq > 1:  # the first scrape also builds the label cache: a one-off
                changed.append(t)
            same.append(get(gzip=True)[0])
        plain_bytes = get(gzip=False)[1]
        bare_plain = get(gzip=False, url=prom_url)[1]
        seen_by_prometheus = prometheus_scrapes(exp, feed, repeat + 2)
    finally:
        exp.stop()
        prom.stdin.close()
        prom.wait(30)
        os.unlink(f.name)
    return {
        "devices": devices,
        "changed_s": statistics.median(changed),
        "changed_runs": changed,
        "prom_client_s": statistics.median(bare[1:]),
        "prom_client_runs": bare[1:],
        "prom_client_plain_bytes": bare_plain,
        "same_s": statistics.median(same),
        "plain_bytes": plain_bytes,
        "gzip_bytes": gz_bytes,
        "prometheus": seen_by_prometheus,
    }


def prometheus_scrapes(exp, feed, first_seq: int, interval_s: int = 5, rounds: int = 7) -> dict | None:
    """A real Prometheus (tests/prometheus_server.py, if installed) scrapes the exporter every ``interval_s``
    while every device sends a window per interval (twice the rate of 10 s windows at a 5 s interval); its own
    ``scrape_duration_seconds`` (fetch, decompress, parse, store) of those scrapes: median and max. None without
    prometheus."""
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from prometheus_server import Prometheus, binary

    if binary("prometheus") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        prom = Prometheus(Path(tmp), [f"127.0.0.1:{exp.port}"], interval=f"{interval_s}s").start()
        try:
            for seq in range(first_seq, first_seq + rounds):
                feed(seq)
                time.sleep(interval_s)
            window = f"[{(rounds - 1) * interval_s}s]"  # not the first scrape: it also creates every series
            q = {
                "median_s": f"quantile_over_time(0.5, scrape_duration_seconds{window})",
                "max_s": f"max_over_time(scrape_duration_seconds{window})",
                "scrapes": f"count_over_time(scrape_duration_seconds{window})",
                "samples": "scrape_samples_scraped",
            }
            return {k: float(prom.query(v)[0]["value"][1]) for k, v in q.items()}
        finally:
            prom.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scrape-devices", default="1000,5000", help="fleet sizes for the /metrics timing")
    ap.add_argument("--per-device", default="counters", choices=("off", "counters", "histograms"))
    ap.add_argument("--scrape-only", action="store_true", help="only the /metrics timing")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--broker", help=argparse.SUPPRESS)
    ap.add_argument("--client-id", help=argparse.SUPPRESS)
    ap.add_argument("--templates", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "paho":
        bare_child(a.broker, a.messages, a.client_id)
        return
    if a.child == "prom":
        prom_child(a.templates)
        return
    if a.child:
        child(a.child, a.broker, a.messages, a.client_id)
        return

    from edgekit.fleet.dev_broker import start_dev_broker

    results: dict[str, list[dict]] = {"watch": [], "exporter": [], "paho": []}
    with start_dev_broker(port=0, engine="mosquitto") as broker:
        scrapes = [
            scrape_bench(broker.url, int(n), max(a.repeat, 5), a.per_device) for n in a.scrape_devices.split(",")
        ]
        print(
            f"\n/metrics as Prometheus fetches it (gzip), --per-device {a.per_device}, medians, "
            f"load {os.getloadavg()[0]:.1f}:"
        )
        for r in scrapes:
            print(
                f"  {r['devices']:>6,} devices: {r['changed_s']:.3f} s after every device sent a window "
                f"(runs {', '.join(f'{x:.3f}' for x in r['changed_runs'])}), {r['same_s']:.3f} s with nothing new; "
                f"{r['plain_bytes'] / 1e6:.1f} MB plain, {r['gzip_bytes'] / 1e6:.2f} MB gzipped",
                flush=True,
            )
            print(
                f"          prometheus_client, same families: {r['prom_client_s']:.3f} s "
                f"(runs {', '.join(f'{x:.3f}' for x in r['prom_client_runs'])}), "
                f"{r['prom_client_plain_bytes'] / 1e6:.1f} MB plain; "
                f"ratio edgekit / prometheus_client {r['changed_s'] / r['prom_client_s']:.2f}",
                flush=True,
            )
            if r["prometheus"]:
                p = r["prometheus"]
                print(
                    f"          Prometheus' scrape_duration_seconds over {p['scrapes']:.0f} scrapes "
                    f"(every device sent a window between two): median {p['median_s']:.3f} s, max {p['max_s']:.3f} s; "
                    f"{p['samples']:,.0f} samples a scrape",
                    flush=True,
                )
        if a.scrape_only:
            return
        for rep in range(a.repeat):
            roles = list(results)
            for role in roles[rep % len(roles) :] + roles[: rep % len(roles)]:  # interleaved, rotating the order
                cid = f"bench-{role}-{rep}"
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        role,
                        "--broker",
                        broker.url,
                        "--messages",
                        str(a.messages),
                        "--client-id",
                        cid,
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                try:
                    assert proc.stdout.readline().strip() == "parked"
                    size, pub_rate = publish_all(broker.url, a.devices, a.messages)
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                    res = json.loads(proc.stdout.readline())
                finally:
                    proc.wait(60)
                res.update(payload_bytes=size, publish_rate=pub_rate)
                results[role].append(res)
                print(
                    f"{role:8s} run {rep + 1}: {res['applied']}/{a.messages} msgs in {res['seconds']:.2f} s "
                    f"= {res['rate']:,.0f} msg/s "
                    f"({res['cpu_rate']:,.0f} per CPU-second); "
                    f"{res['devices']} devices; RSS {res['rss_before_mb']:.0f} -> {res['rss_after_mb']:.0f} MB"
                    + (
                        f"; /metrics {res['scrape_ms']:.0f} ms, {res['scrape_bytes'] / 1e6:.1f} MB"
                        if "scrape_ms" in res
                        else ""
                    ),
                    flush=True,
                )
    print(
        f"\n{a.messages} telemetry records (~{results['watch'][0]['payload_bytes'] / 1024:.1f} KiB each) "
        f"from {a.devices} devices, "
        f"mosquitto on loopback, {os.cpu_count()} CPUs; medians of {a.repeat} runs:"
    )
    med = {
        r: {k: statistics.median(x[k] for x in v) for k in ("rate", "cpu_rate", "rss_before_mb", "rss_after_mb")}
        for r, v in results.items()
    }
    print(
        f"  load average during the runs: {os.getloadavg()[0]:.1f} "
        "(other work on the machine slows wall-clock rates; CPU-second rates less so)"
    )
    for role, m in med.items():
        extra = (
            f", /metrics render {statistics.median(x['scrape_ms'] for x in results[role]):.0f} ms"
            if role == "exporter"
            else ""
        )
        print(
            f"  {role:8s} {m['rate']:>8,.0f} msg/s ({m['cpu_rate']:,.0f} per CPU-second)   "
            f"RSS {m['rss_before_mb']:.0f} MB idle -> {m['rss_after_mb']:.0f} MB with {a.devices} devices"
            f" (+{m['rss_after_mb'] - m['rss_before_mb']:.0f} MB){extra}"
        )
    bare = med["paho"]["rate"]
    print(
        f"  ratio to the bare paho consumer: watch {med['watch']['rate'] / bare:.2f}, "
        f"exporter {med['exporter']['rate'] / bare:.2f} (per CPU-second: "
        f"{med['watch']['cpu_rate'] / med['paho']['cpu_rate']:.2f}, "
        f"{med['exporter']['cpu_rate'] / med['paho']['cpu_rate']:.2f})"
    )


if __name__ == "__main__":
    main()
