#!/usr/bin/env python3
"""What MQTT 3.1.1 on the embedded broker costs the agent, side by side with MQTT 5 on mosquitto.

For each setting (mosquitto + agent auto = MQTT 5; mosquitto + agent pinned 3.1.1; amqtt + agent auto =
fall-back to 3.1.1) a fresh broker and a real ``edgekit-agent run`` process are started and we measure:
- start -> online: from spawning the agent until its retained meta names the negotiated MQTT version
  (includes Python start-up, bundle verification and the self-test, and for amqtt the CONNACK timeout);
- ping round trip: a fleet client (MQTT 3.1.1, payload response_topic/correlation_data: the same path on
  every broker) sends ``ping`` and waits for the ``succeeded`` answer, --pings times, one at a time.
Medians over --repeat agent starts and over all pings; ratios against the first setting.

Usage:
    .venv/bin/python scripts/bench_mqtt311.py --bundle demo-out/bundles/digits-raspberry-pi-4 [--repeat 3] [--pings 50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from edgekit.fleet.command_client import CommandClient
from edgekit.fleet.connection import FleetLink
from edgekit.fleet.dev_broker import start_dev_broker
from edgekit.fleet.state import load_json
from edgekit_agent.contract.topics import META, topic

DEVICE = "bench-311"


class Fleet:
    """A fleet client pinned to MQTT 3.1.1: commands carry response_topic/correlation_data in the payload, the
    same path on every broker."""

    def __init__(self, url: str) -> None:
        self.cond = threading.Condition()
        self.docs: list[tuple[str, dict]] = []
        subs = [(topic(DEVICE, META), 1), (topic(DEVICE, "res", "bench"), 1)]
        self.link = FleetLink(url, client_id=f"b-{uuid.uuid4().hex[:6]}", subscriptions=subs, protocol="3.1.1")
        self.link.start()
        self.client = CommandClient(self.link, "bench", on_message=self._on).start()

    def _on(self, m) -> None:
        doc = load_json(m.payload)
        if isinstance(doc, dict):
            with self.cond:
                self.docs.append((m.topic, doc))
                self.cond.notify_all()

    def wait(self, pred, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, d in self.docs:
                    if pred(t, d):
                        return d
                if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("no matching message")

    def close(self) -> None:
        self.client.close()
        self.link.close()


def one_run(engine: str, version: str, bundle: Path, pings: int) -> tuple[float, list[float], str]:
    with start_dev_broker(port=0, engine=engine) as broker, tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(broker.url)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgekit_agent.cli",
                "run",
                str(bundle),
                "--allow-unsigned",
                "--broker",
                broker.url,
                "--device-id",
                DEVICE,
                "--data-dir",
                tmp,
                "--mqtt-version",
                version,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            meta = fleet.wait(lambda t, d: t == topic(DEVICE, META) and d.get("mqtt_version"))
            online = time.perf_counter() - t0
            rtts = []
            for _ in range(pings):
                t1 = time.perf_counter()
                fleet.client.call(DEVICE, "ping", {}, timeout_s=30)
                rtts.append((time.perf_counter() - t1) * 1000)
        finally:
            proc.terminate()
            proc.wait(30)
            fleet.close()
    return online, rtts, str(meta["mqtt_version"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--bundle", type=Path, required=True, help="a bundle directory (e.g. from edgekit build or the demo)"
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pings", type=int, default=50)
    args = ap.parse_args()
    settings = [("mosquitto", "auto"), ("mosquitto", "3.1.1"), ("amqtt", "auto")]
    rows = []
    for engine, version in settings:
        onlines, rtts, negotiated = [], [], ""
        for _ in range(args.repeat):
            online, r, negotiated = one_run(engine, version, args.bundle, args.pings)
            onlines.append(online)
            rtts += r
        rows.append(
            (f"{engine} / --mqtt-version {version}", negotiated, statistics.median(onlines), statistics.median(rtts))
        )
    base_online, base_rtt = rows[0][2], rows[0][3]
    print(f"{'setting':34} {'MQTT':6} {'start->online s':>16} {'ratio':>6} {'ping p50 ms':>12} {'ratio':>6}")
    for name, negotiated, online, rtt in rows:
        print(f"{name:34} {negotiated:6} {online:16.2f} {online / base_online:6.2f} {rtt:12.2f} {rtt / base_rtt:6.2f}")
    print(f"(medians: {args.repeat} agent starts per setting, {args.repeat * args.pings} pings per setting)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
