#!/usr/bin/env python3
"""Watched-folder serving (issue 15): ``edgekit-agent run --watch`` against a bare loop, side by side.

    .venv/bin/python scripts/bench_watch.py [--rounds 5] [--threads 1 2] [--no-broker] [--json FILE] [--invoke]

Two long-running processes per model and thread count, both warmed up, fed the same folder in alternating
order round by round (so both see the same machine load), the median over rounds reported:

- **agent**: ``python -m edgekit_agent run BUNDLE --watch INBOX --num-threads N`` with every other setting at
  its default, connected to a mosquitto of its own (``--no-broker``: none); the round's clock starts before
  the folder is dropped into ``INBOX`` (one ``rename`` per label folder, as a user's ``mv`` would) and stops
  when its last file (the agent serves in name order) has left it;
- **bare**: ``scripts/bench_watch_bare.py``, which imports only numpy, Pillow, LiteRT and the few standard modules
  the loop needs (it checks that no ``edgekit`` module is loaded): for each file, Pillow decode, the manifest's
  preprocessing in numpy, quantise, ``set_tensor``/``invoke``/``get_tensor``, argmax, then ``os.rename`` into
  ``INBOX/.processed/`` (the file move counted on both sides). Its clock starts before the same drop and stops
  when it answers.

Printed: images/s of each (median of rounds), the ratio agent/bare (median of the per-round ratios), the
resident set size (VmRSS) of each process after the rounds, and the agent's latency for one image dropped into
an idle folder (median of ``--rounds`` drops; written with a fresh mtime, as ``cp`` would), and the CPU ratio:
bare CPU seconds / agent CPU seconds for the same folder (all threads, from ``/proc``; 10 ms ticks), which a
machine loaded by other work distorts far less than wall time.

``--invoke`` measures instead where the agent's invoke time goes: in one process, interleaved, set + invoke + get
in a tight loop, in a decode + preprocess loop, and in the running agent's watch thread (its telemetry).

Both sides run compiled bytecode: the agent's package is compiled first (``compileall``, as ``pip install``
does), as the baseline's libraries are.

Models: the digits bundle of the tests (its 1,797 8×8 PNGs, labelled folders) and a MobileNetV2 0.35/96 (300
96×96 RGB PNGs), both built by ``scripts/bench_serving.py``'s ``build_bundles`` into ``--out``.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# --- the driver ---------------------------------------------------------------------------------------------------
def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (a loaded machine stretches wall time, not this)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_images(bundle: Path, name: str, work: Path) -> Path:
    """A source folder LABEL/x.png for the model: the digits dataset, or 300 synthetic 96×96 RGB photos."""
    src = work / f"images-{name}"
    if src.is_dir():
        return src
    if name == "digits":
        shutil.copytree(bundle.parent.parent / "digits", src)  # the dataset next to the fixture's bundles/
        return src
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    for i in range(300):
        base = (np.sin(xx / (5 + i % 7)) + np.cos(yy / (3 + i % 5))) * 60 + 128
        rgb = np.stack([base, np.roll(base, i, axis=0), np.roll(base, i, axis=1)], axis=-1)
        rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
        (src / str(i % 10)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb, "RGB").save(src / str(i % 10) / f"img{i:04d}.png")
    return src


def stage(src: Path, stage_dir: Path) -> list[Path]:
    """A copy of ``src`` whose files are older than the agent's settle time (as a folder copied earlier)."""
    shutil.rmtree(stage_dir, ignore_errors=True)
    shutil.copytree(src, stage_dir)
    old = time.time() - 10
    for p in stage_dir.rglob("*.png"):
        os.utime(p, (old, old))
    return sorted(p for p in stage_dir.iterdir() if p.is_dir())


def drop(folders: list[Path], inbox: Path) -> None:
    for f in folders:
        target = inbox / f.name
        if target.is_dir():
            target.rmdir()  # empty after the previous round; rename() replaces only an empty directory anyway
        os.rename(f, target)


class Worker:
    def __init__(self, argv: list[str], cwd: Path, ready: str | None) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        if ready is not None:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if line.strip() != ready:
                raise RuntimeError(f"{argv[:4]} failed: {line}{self.proc.stderr.read()}")  # type: ignore[union-attr]

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.proc.stdout.readline().strip()  # type: ignore[union-attr]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_gone(path: Path, worker: Worker, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while os.path.exists(path):
        if worker.proc.poll() is not None:
            raise RuntimeError(f"the agent exited: {worker.proc.stderr.read()}")  # type: ignore[union-attr]
        if time.monotonic() > end:
            raise TimeoutError(f"{path} was not served within {timeout:.0f} s")
        time.sleep(0.001)


def compare(name: str, bundle: Path, threads: int, rounds: int, work: Path, broker: str | None) -> dict[str, Any]:
    src = make_images(bundle, name, work)
    n = sum(1 for _ in src.rglob("*.png"))
    run = work / f"{name}-{threads}"
    shutil.rmtree(run, ignore_errors=True)
    agent_inbox, bare_inbox = run / "agent-inbox", run / "bare-inbox"
    agent_inbox.mkdir(parents=True)
    bare_inbox.mkdir()
    argv = [sys.executable, "-m", "edgekit_agent", "run", str(bundle), "--watch", str(agent_inbox)]
    argv += [
        "--allow-unsigned",
        "--device-id",
        f"bench-{name}",
        "--data-dir",
        str(run / "data"),
        "--num-threads",
        str(threads),
    ]
    argv += ["--broker", broker] if broker else []
    agent = Worker(argv, REPO, None)
    bare = Worker(
        [sys.executable, str(REPO / "scripts" / "bench_watch_bare.py"), str(bundle), str(threads)], REPO, "ready"
    )
    try:
        # Warm-up (and: the agent is up once its first drop is served).
        folders = stage(src, run / "stage")
        last = agent_inbox / folders[-1].name / sorted(p.name for p in folders[-1].iterdir())[-1]
        drop(folders, agent_inbox)
        wait_gone(last, agent, timeout=120)
        folders = stage(src, run / "stage")
        drop(folders, bare_inbox)
        bare.ask(str(bare_inbox))
        agent_rate, bare_rate, ratios, cpu_ratios = [], [], [], []
        for r in range(rounds):
            rates, cpu = {}, {}
            for side in ("bare", "agent") if r % 2 == 0 else ("agent", "bare"):
                folders = stage(src, run / "stage")
                inbox = agent_inbox if side == "agent" else bare_inbox
                last = inbox / folders[-1].name / sorted(p.name for p in folders[-1].iterdir())[-1]
                pid = (agent if side == "agent" else bare).proc.pid
                c0 = cpu_s(pid)
                t0 = time.perf_counter()
                drop(folders, inbox)
                if side == "agent":
                    wait_gone(last, agent)
                else:
                    answer = bare.ask(str(inbox))
                    assert answer == f"done {n}", answer
                rates[side] = n / (time.perf_counter() - t0)
                cpu[side] = cpu_s(pid) - c0
            agent_rate.append(rates["agent"])
            bare_rate.append(rates["bare"])
            ratios.append(rates["agent"] / rates["bare"])
            cpu_ratios.append(cpu["bare"] / cpu["agent"])
        # Latency of one freshly written image into the idle agent (the poll and the settle time show here).
        one = next(src.rglob("*.png"))
        latencies = []
        for i in range(rounds):
            time.sleep(0.3)
            target = agent_inbox / one.parent.name / f"zz-single-{i}.png"
            t0 = time.perf_counter()
            shutil.copyfile(one, target)
            wait_gone(target, agent, timeout=30)
            latencies.append(time.perf_counter() - t0)
        agent_rss, bare_rss = rss_mb(agent.proc.pid), rss_mb(bare.proc.pid)
    finally:
        agent.stop()
        bare.stop()
    processed = sum(1 for _ in (agent_inbox / ".processed").rglob("*.png"))
    return {
        "model": name,
        "threads": threads,
        "images": n,
        "rounds": rounds,
        "agent_images_s": statistics.median(agent_rate),
        "bare_images_s": statistics.median(bare_rate),
        "ratio": statistics.median(ratios),
        "ratio_per_round": [round(x, 3) for x in ratios],
        "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_ratio_per_round": [round(x, 3) for x in cpu_ratios],
        "agent_images_s_per_round": [round(x) for x in agent_rate],
        "bare_images_s_per_round": [round(x) for x in bare_rate],
        "agent_rss_mb": agent_rss[0],
        "bare_rss_mb": bare_rss[0],
        "agent_peak_rss_mb": agent_rss[1],
        "bare_peak_rss_mb": bare_rss[1],
        "rss_ratio": agent_rss[0] / bare_rss[0],
        "single_image_latency_ms": statistics.median(latencies) * 1e3,
        "agent_files_processed": processed,
    }


def invoke_inside(
    name: str, bundle: Path, threads: int, rounds: int, work: Path, broker: str | None
) -> dict[str, float]:
    """``--invoke``: where the agent's invoke time goes. One process, interleaved rounds, each timed the same way
    (clock before ``set_tensor``, after ``get_tensor``; median per round): a tight loop on one input, the same
    inside a decode + preprocess loop, and the running agent's watch thread (its telemetry's ``invoke``)."""
    from edgekit_agent.bundle.load import load_bundle
    from edgekit_agent.mqtt.client import BrokerSettings
    from edgekit_agent.serve.agent import Agent
    from edgekit_agent.serve.config import AgentSettings

    b = load_bundle(bundle)
    src = make_images(bundle, name, work)
    files = sorted(str(p) for p in src.rglob("*.png"))[:600]
    inbox = work / f"invoke-{name}-{threads}"
    inbox.mkdir()
    extra = {"broker": BrokerSettings.from_url(broker)} if broker else {}
    data = work / f"inv-data-{name}-{threads}"
    agent = Agent(b, AgentSettings(device_id="inv", data_dir=data, watch_dir=inbox, num_threads=threads, **extra))
    agent.start()
    it = b.open_runtime(num_threads=threads).interpreter
    pre = b.preprocessor()
    ii, oi = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    clock = time.perf_counter_ns

    def timed(x: Any) -> int:
        t1 = clock()
        it.set_tensor(ii, x)
        it.invoke()
        it.get_tensor(oi)
        return clock() - t1

    def in_decode_loop() -> float:
        return statistics.median(timed(pre(f)) for f in files) / 1e3

    def tight() -> float:
        x = pre(files[0])
        return statistics.median(timed(x) for _ in files) / 1e3

    def in_agent() -> float:
        folder = work / "invoke-stage"
        folder.mkdir()
        old = time.time() - 10
        for f in files:
            shutil.copyfile(f, folder / os.path.basename(f))
            os.utime(folder / os.path.basename(f), (old, old))
        shutil.rmtree(inbox / "x", ignore_errors=True)
        agent.recorder.snapshot_and_reset()
        last = inbox / "x" / max(os.path.basename(f) for f in files)
        os.rename(folder, inbox / "x")
        while os.path.exists(last):
            time.sleep(0.01)
        time.sleep(0.05)  # the last record lands after the move
        return agent.recorder.snapshot_and_reset()["latency_ms"]["invoke"]["p50"] * 1e3

    runs: dict[str, list[float]] = {"tight": [], "decode loop": [], "agent": []}
    try:
        for r in range(rounds):
            order = [("tight", tight), ("decode loop", in_decode_loop), ("agent", in_agent)]
            for key, fn in order if r % 2 == 0 else order[::-1]:
                runs[key].append(fn())
    finally:
        agent.shutdown()
    return {key: statistics.median(v) for key, v in runs.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=["digits", "mobilenetv2"], choices=["digits", "mobilenetv2"])
    ap.add_argument("--no-broker", action="store_true", help="run the agent without MQTT")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "bench-serving")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--invoke", action="store_true", help="only: invoke time inside the agent vs bare loops")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_serving import build_bundles

    bundles = build_bundles(args.out)
    # The agent's modules as pip installs them, compiled: from source (PYTHONDONTWRITEBYTECODE, an editable
    # install) each start compiles ~40 modules, whose peak stays in the RSS (~1 MiB) while the baseline's
    # libraries come compiled.
    compileall.compile_dir(REPO / "device" / "edgekit_agent", quiet=1)
    if args.invoke:
        return main_invoke(args, bundles)
    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "load1_before": os.getloadavg()[0], "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        broker = None
        if not args.no_broker:
            sys.path.insert(0, str(REPO / "tests"))
            from brokers import Mosquitto

            broker = Mosquitto(Path(tmp) / "mosquitto").start()
        try:
            for name in args.models:
                for threads in args.threads:
                    r = compare(name, bundles[name], threads, args.rounds, Path(tmp), broker.url if broker else None)
                    results["runs"].append(r)
        finally:
            if broker is not None:
                broker.stop()
    results["load1_after"] = os.getloadavg()[0]
    results["broker"] = not args.no_broker

    print(
        f"watched folder, agent vs bare decode+preprocess+invoke+move loop, medians of {args.rounds} alternating "
        f"rounds ({'with' if results['broker'] else 'no'} broker)"
    )
    print(
        f"{'model':<13}{'thr':>4}{'files':>7}{'agent/s':>10}{'bare/s':>10}{'ratio':>8}{'RSS agent/bare':>20}"
        f"{'1 image':>10}{'CPU ratio':>11}"
    )
    for r in results["runs"]:
        print(
            f"{r['model']:<13}{r['threads']:>4}{r['images']:>7}{r['agent_images_s']:>10,.0f}{r['bare_images_s']:>10,.0f}"
            f"{r['ratio']:>8.3f}{r['agent_rss_mb']:>8.1f}/{r['bare_rss_mb']:.1f} MiB ({r['rss_ratio']:.2f})"
            f"{r['single_image_latency_ms']:>7.0f} ms{r['cpu_ratio']:>11.3f}"
        )
    print(
        f"load average {results['load1_before']:.2f} before, {results['load1_after']:.2f} after "
        f"({results['cpu_count']} CPUs)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def main_invoke(args: argparse.Namespace, bundles: dict[str, Path]) -> int:
    sys.path.insert(0, str(REPO / "tests"))
    from brokers import Mosquitto

    print(f"set+invoke+get, median µs, medians of {args.rounds} interleaved rounds, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        broker = None if args.no_broker else Mosquitto(Path(tmp) / "mosquitto").start()
        try:
            for name in args.models:
                for threads in args.threads:
                    r = invoke_inside(
                        name, bundles[name], threads, args.rounds, Path(tmp), broker.url if broker else None
                    )
                    print(f"{name:<13}{threads:>3} thread(s): " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()))
        finally:
            if broker is not None:
                broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
