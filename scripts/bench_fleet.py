#!/usr/bin/env python3
"""How many telemetry messages per second do ``edgekit watch``'s state and the exporter process, and how
much memory do they hold for a fleet of 1,000 devices?

Method (loopback mosquitto, started here): a consumer process connects with a persistent MQTT 5
session, subscribes and disconnects; this script then publishes N telemetry records (QoS 1, realistic
payloads: three 30-bucket latency histograms, counts, accuracy) from DEVICES simulated devices, which
mosquitto queues for the absent consumer. The consumer reconnects and we time from reconnect until it
has applied all N records (so the figure is the consumer's speed, not the publisher's). Each run is a
fresh process; the median of --repeat runs is reported, with RSS before and after.

Usage: .venv/bin/python scripts/bench_fleet.py [--messages 20000] [--devices 1000] [--repeat 3]
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

LE = [
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    50.0,
    75.0,
    100.0,
    150.0,
    200.0,
    300.0,
    500.0,
    750.0,
    1000.0,
    2000.0,
    5000.0,
]  # the agent's fleet-wide grid


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
        "drift": {},
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
        from prometheus_client import generate_latest

        times = []
        for _ in range(5):
            s = time.perf_counter()
            body = generate_latest(exp.registry)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--broker", help=argparse.SUPPRESS)
    ap.add_argument("--client-id", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.broker, a.messages, a.client_id)
        return

    from edgekit.fleet.broker import start_dev_broker

    results: dict[str, list[dict]] = {"watch": [], "exporter": []}
    with start_dev_broker(port=0, engine="mosquitto") as broker:
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
                    f"{role:8s} run {rep + 1}: {res['applied']}/{a.messages} msgs in {res['seconds']:.2f} s = {res['rate']:,.0f} msg/s "
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
        f"\n{a.messages} telemetry records (~{results['watch'][0]['payload_bytes'] / 1024:.1f} KiB each) from {a.devices} devices, "
        f"mosquitto on loopback, {os.cpu_count()} CPUs; medians of {a.repeat} runs:"
    )
    med = {
        r: {k: statistics.median(x[k] for x in v) for k in ("rate", "cpu_rate", "rss_before_mb", "rss_after_mb")}
        for r, v in results.items()
    }
    print(
        f"  load average during the runs: {os.getloadavg()[0]:.1f} (other work on the machine slows wall-clock rates; CPU-second rates less so)"
    )
    for role, m in med.items():
        extra = (
            f", /metrics render {statistics.median(x['scrape_ms'] for x in results[role]):.0f} ms"
            if role == "exporter"
            else ""
        )
        print(
            f"  {role:8s} {m['rate']:>8,.0f} msg/s ({m['cpu_rate']:,.0f} per CPU-second)   RSS {m['rss_before_mb']:.0f} MB idle -> {m['rss_after_mb']:.0f} MB with {a.devices} devices"
            f" (+{m['rss_after_mb'] - m['rss_before_mb']:.0f} MB){extra}"
        )
    print(f"  ratio exporter/watch throughput: {med['exporter']['rate'] / med['watch']['rate']:.2f}")


if __name__ == "__main__":
    main()
