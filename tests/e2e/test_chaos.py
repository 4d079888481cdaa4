"""Crashes with real processes (issue 9): a real mosquitto, real ``edgekit-agent run`` processes killed with
SIGKILL, the same helpers as ``scripts/bench_chaos.py`` (scripts/chaos/_common.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "chaos"))

from _common import AgentProc, Broker, Consumer, Feeder, mosquitto_binary, wait_until  # noqa: E402


def _online_after(consumer: Consumer, device: str, since: float, timeout: float) -> float | None:
    """Seconds from ``since`` to the agent's next birth (its ``status`` online ts), or None."""
    ok = consumer.wait_for(device, lambda t: any(ts >= since for ts, _ in t.births), timeout)
    return min(ts for ts, _ in consumer.tally(device).births if ts >= since) - since if ok else None


def test_kill9_mid_stream_loses_and_duplicates_nothing(digits_bundle: Path, tmp_path: Path) -> None:
    broker = Broker(mosquitto_binary(), tmp_path / "broker").start()
    consumer = Consumer(broker.url)
    agent = AgentProc("crash-a", digits_bundle, broker.url, tmp_path, window_s=2)
    feeder = Feeder([agent.watch], rate_hz=20)
    try:
        assert consumer.subscribed.wait(10)
        since = time.time()
        agent.start()
        assert _online_after(consumer, agent.device_id, since, 90) is not None, agent.log.read_text()[-3000:]
        feeder.start()
        for pause in (1.3, 2.9, 1.7):  # mid-window, at different points of the 2 s window
            time.sleep(pause)
            agent.kill9()
            since = time.time()
            agent.start()
            assert _online_after(consumer, agent.device_id, since, 90) is not None, agent.log.read_text()[-3000:]
        time.sleep(2)
        feeder.stop()
        assert wait_until(lambda: agent.pending() == 0, 60), "the agent did not serve every image"
        assert agent.stop() == 0
        fed, moved = feeder.fed[agent.watch], agent.moved()
        consumer.wait_for(agent.device_id, lambda t: t.counted >= moved, 30)
        time.sleep(0.5)  # a late duplicate would still arrive
        t = consumer.tally(agent.device_id)
        # Fed: every image written into the watched folder; arrived: telemetry windows de-duplicated on
        # (epoch, seq), their requests summed.
        assert moved == fed, f"fed {fed} images, {moved} left the watched folder"
        assert t.counted == moved, f"{moved} images moved, {t.counted} counted in telemetry"
        assert t.duplicates == 0, f"{t.duplicates} telemetry windows arrived twice"
        assert t.gaps() == 0, f"seq gaps: {t.seqs}"
        assert len(t.seqs) == 1, "one outbox, one epoch across the restarts"
        recovered = [w for w in t.windows.values() if w.get("recovered")]
        assert recovered, "three kills mid-stream and no window was rebuilt from the journal"
        assert all(w["throughput_ips"] is None and w["counts"]["requests"] > 0 for w in recovered)
        assert all(w.get("recovered") is None for w in t.windows.values() if w not in recovered)
    finally:
        feeder.stop()
        agent.stop()
        consumer.close()
        broker.stop()


def test_reconnects_within_the_bound_after_a_broker_restart(digits_bundle: Path, tmp_path: Path) -> None:
    broker = Broker(mosquitto_binary(), tmp_path / "broker").start()
    consumer = Consumer(broker.url)
    agent = AgentProc("crash-b", digits_bundle, broker.url, tmp_path)
    try:
        assert consumer.subscribed.wait(10)
        since = time.time()
        agent.start()
        assert _online_after(consumer, agent.device_id, since, 90) is not None, agent.log.read_text()[-3000:]
        took = []
        for _ in range(2):
            broker.kill9()
            time.sleep(8)  # a backoff doubling from 1 s up to 30 s would next try 7 s after the return
            back = time.time()
            broker.start()
            took.append(_online_after(consumer, agent.device_id, back, 30))
        # The bound: reconnect_max_s (3 s, the longest jittered wait) plus 2 s for a loaded machine.
        assert all(t is not None and t < 5.0 for t in took), f"broker back, agent online after {took} s"
    finally:
        agent.stop()
        consumer.close()
        broker.stop()
