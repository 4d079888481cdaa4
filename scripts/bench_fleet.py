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

Usage: .venv/bin/python scripts/bench_fleet.py [--messages 20000] [--devices 1000] [--repeat 3]
       [--scrape-devices 1000,10000] [--per-device counters] [--scrape-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import replace

from edgekit_agent.contract.topics import TELEMETRY, Schema, topic
from edgekit_agent.serve.telemetry import LATENCY_BUCKETS_MS

LE = list(LATENCY_BUCKETS_MS)  # the agent's fleet-wide grid


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def telemetry(device: str, epoch: str, seq: int, rng) -> bytes:
    import numpy as np

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
            time.sleep(0.005)
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


# ----------------------------------------------------------------------------------------------- parent
def publish_all(url: str, devices: int, n: int) -> float:
    import numpy as np
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

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

    def get(gzip: bool) -> tuple[float, int]:
        req = urllib.request.Request(exp.url, headers={"Accept-Encoding": "gzip"} if gzip else {})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as r:
            n = len(r.read())
        return time.perf_counter() - t0, n

    changed, same = [], []
    seen_by_prometheus = None
    try:
        for seq in range(1, repeat + 2):
            feed(seq)
            t, gz_bytes = get(gzip=True)
            if seq > 1:  # the first scrape also builds the label cache: a one-off
                changed.append(t)
            same.append(get(gzip=True)[0])
        plain_bytes = get(gzip=False)[1]
        seen_by_prometheus = prometheus_scrapes(exp, feed, repeat + 2)
    finally:
        exp.stop()
    return {
        "devices": devices,
        "changed_s": statistics.median(changed),
        "changed_runs": changed,
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
    ap.add_argument("--scrape-devices", default="1000,10000", help="fleet sizes for the /metrics timing")
    ap.add_argument("--per-device", default="counters", choices=("off", "counters", "histograms"))
    ap.add_argument("--scrape-only", action="store_true", help="only the /metrics timing")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--broker", help=argparse.SUPPRESS)
    ap.add_argument("--client-id", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.broker, a.messages, a.client_id)
        return

    from edgekit.fleet.dev_broker import start_dev_broker

    results: dict[str, list[dict]] = {"watch": [], "exporter": []}
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
            for role in results:
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
    print(f"  ratio exporter/watch throughput: {med['exporter']['rate'] / med['watch']['rate']:.2f}")


if __name__ == "__main__":
    main()
