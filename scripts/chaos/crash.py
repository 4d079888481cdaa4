"""Crash scenarios (issue 9, items 1, 5 and 7): a broker killed and restarted, an agent killed mid-stream, and
how fast agents are back when their broker returns. Each runs a private mosquitto and real agent processes
on the digits demo bundle, fed labelled images into their watched folders.

Run through ``scripts/bench_chaos.py``; each scenario returns the driver's result dict.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import AgentProc, Broker, ChaosEnv, Consumer, Feeder, Tally, digits_bundle, wait_until  # noqa: E402

RATE_HZ = 20.0


def _births_after(t: Tally, since: float) -> list[float]:
    return [ts for ts, _ in t.births if ts >= since]


def _wait_birth(consumer: Consumer, device: str, since: float, timeout: float = 60.0) -> float | None:
    """Seconds from ``since`` (Unix time) to the agent's next ``status`` online (its own clock: same machine)."""
    if not consumer.wait_for(device, lambda t: bool(_births_after(t, since)), timeout):
        return None
    return min(_births_after(consumer.tally(device), since)) - since


def _finish(agent: AgentProc, feeder: Feeder, consumer: Consumer) -> Tally:
    """Stop feeding, let the agent serve what is left, stop it (its last window), wait for the windows."""
    feeder.stop()
    wait_until(lambda: agent.pending() == 0, 60)
    agent.stop()
    moved = agent.moved()
    consumer.wait_for(agent.device_id, lambda t: t.counted >= moved, 30)
    time.sleep(0.5)  # a late duplicate would still be counted
    return consumer.tally(agent.device_id)


def _result(fault: str, agent: AgentProc, feeder: Feeder, t: Tally, recover: list[float], **extra: Any) -> dict:
    fed, moved = feeder.fed[agent.watch], agent.moved()
    ok = t.counted == moved == fed and not t.duplicates and not t.gaps()
    outcome = (
        f"{'no loss' if ok else 'LOSS OR DOUBLE COUNT'}: {t.counted} of {moved} moved images counted "
        f"({fed} fed), {t.duplicates} duplicates, {t.gaps()} seq gaps, {t.recovered} recovered windows"
    )
    return {
        "fault": fault,
        "fed": fed,
        "counted": t.counted,
        "duplicates": t.duplicates,
        "dropped_reported": t.dropped_reported,
        "recover_s": round(statistics.median(recover), 2) if recover else None,
        "outcome": outcome,
        "moved": moved,
        "seq_gaps": t.gaps(),
        "recovered_windows": t.recovered,
        "recover_s_all": [round(r, 2) for r in recover],
        **extra,
    }


def _setup(env: ChaosEnv, *, persistence: bool = False) -> tuple[Broker, Consumer, AgentProc]:
    bundle = digits_bundle(env.repo / "out" / "chaos")
    broker = Broker(env.mosquitto, env.workdir / "broker", persistence=persistence).start()
    consumer = Consumer(broker.url)
    if not consumer.subscribed.wait(10):
        raise RuntimeError(f"the consumer could not subscribe on {broker.url}")
    agent = AgentProc("dev-a", bundle, broker.url, env.workdir, window_s=2)
    since = time.time()
    agent.start()
    if _wait_birth(consumer, agent.device_id, since, 90) is None:
        raise RuntimeError(f"the agent did not come online; see {agent.log}")
    return broker, consumer, agent


def broker_restart(env: ChaosEnv, *, persistence: bool) -> dict:
    broker, consumer, agent = _setup(env, persistence=persistence)
    feeder = Feeder([agent.watch], RATE_HZ).start()
    recover: list[float] = []
    late = 0  # restarts after which the consumer subscribed after the agent was back
    try:
        for _ in range(1 if env.quick else 3):
            time.sleep(3)
            broker.kill9()
            time.sleep(5 if env.quick else 10)
            back = time.time()
            broker.start()
            took = _wait_birth(consumer, agent.device_id, back)
            if took is not None:
                recover.append(took)
                wait_until(lambda b=back: any(t >= b for t in consumer.subscribed_at), 10)
                late += min((t for t in consumer.subscribed_at if t >= back), default=1e18) > back + took
        time.sleep(3)
        t = _finish(agent, feeder, consumer)
    finally:
        feeder.stop()
        agent.stop()
        consumer.close()
        broker.stop()
    kind = "with" if persistence else "without"
    return _result(
        f"broker kill -9, down 5-10 s, restarted ({kind} persistence)",
        agent,
        feeder,
        t,
        recover,
        consumer_subscribed_after_agent=late,
    )


def agent_kill(env: ChaosEnv) -> dict:
    broker, consumer, agent = _setup(env)
    feeder = Feeder([agent.watch], RATE_HZ).start()
    recover: list[float] = []
    kills = 3 if env.quick else 10
    rng = random.Random(9)
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(1.0, 4.0))  # anywhere in a 2 s window, mid-stream
            agent.kill9()
            killed = time.time()
            agent.start()
            took = _wait_birth(consumer, agent.device_id, killed, 90)
            if took is not None:
                recover.append(took)
        time.sleep(3)
        t = _finish(agent, feeder, consumer)
    finally:
        feeder.stop()
        agent.stop()
        consumer.close()
        broker.stop()
    return _result(
        f"agent kill -9 mid-stream, {kills} times, restarted at once", agent, feeder, t, recover, kills=kills
    )


def reconnect(env: ChaosEnv) -> dict:
    """Broker down long enough for a doubling backoff to grow (10 s), then back: time to the agent's birth."""
    broker, consumer, agent = _setup(env)
    recover: list[float] = []
    try:
        for _ in range(3 if env.quick else 6):
            broker.kill9()
            time.sleep(10)
            back = time.time()
            broker.start()
            took = _wait_birth(consumer, agent.device_id, back)
            if took is not None:
                recover.append(took)
            time.sleep(1)
        agent.stop()
        t = consumer.tally(agent.device_id)
    finally:
        agent.stop()
        consumer.close()
        broker.stop()
    worst = max(recover) if recover else None
    return {
        "fault": "broker kill -9, down 10 s, restarted on the same port (idle agent)",
        "fed": 0,
        "counted": t.counted,
        "duplicates": t.duplicates,
        "dropped_reported": t.dropped_reported,
        "recover_s": round(statistics.median(recover), 2) if recover else None,
        "outcome": f"back after {', '.join(f'{r:.2f}' for r in recover)} s (worst {worst:.2f} s)"
        if worst is not None
        else "NEVER BACK",
        "recover_s_all": [round(r, 2) for r in recover],
    }


SCENARIOS: dict[str, Callable[[ChaosEnv], dict]] = {
    "broker-restart": lambda env: broker_restart(env, persistence=False),
    "broker-restart-persistent": lambda env: broker_restart(env, persistence=True),
    "agent-kill9": agent_kill,
    "reconnect": reconnect,
}
