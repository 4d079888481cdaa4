#!/usr/bin/env python3
"""Device-agent figures for issue 3 (items 1–5): bench agreement, cold start, RSS, LiteRT vs tflite-runtime.

    .venv/bin/python scripts/bench_agent.py [--rounds 5] [--threads 1] [--out out/bench-agent] [--json FILE]

Two bundles are built once (and reused from ``--out``): the digits CNN (tests/fixtures_models.py) and a
MobileNetV2 (alpha 0.35, 96×96×3, random weights — latency does not depend on training) through the host
library. Then, in fresh processes that import only ``edgekit_agent`` and the interpreter:

1. ``edgekit-agent bench --json`` against a bare ``interpreter.invoke()`` timing loop on the same model,
   same threads, same input, alternating round by round (separate processes) so both see the same machine
   load; medians of the per-round p50, the minimums, and their ratios (the goal: within 5 %). Then the
   same comparison inside one process (``run_benchmark`` vs a bare loop on a second interpreter), in
   short alternating blocks: the least noisy figure on a shared machine.
2. Cold start: bundle archive → verified, extracted bundle → interpreter → self-test → first inference,
   phase by phase inside the process (imports included), and the wall time of a whole
   ``edgekit-agent verify ARCHIVE`` process; RSS (current and peak) of the agent process with LiteRT.
3. ``edgekit-agent bench`` with LiteRT (XNNPACK and builtin kernels) against tflite-runtime 2.14 from
   ``.venv-legacy`` when it exists; medians and ratios.

The child modes (``_bare``, ``_pair``, ``_cold``) are internal; they import nothing heavy before their clock starts.
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()  # the cold-start child measures from here (before any import below)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAIN_PY = REPO / ".venv" / "bin" / "python"
LEGACY_PY = REPO / ".venv-legacy" / "bin" / "python"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# --- child modes (run in fresh processes) -------------------------------------------------------------------


def child_bare(bundle_dir: str, threads: int, seconds: float, warmup: int) -> dict:
    """A bare LiteRT timing loop: the code a user would write, no edgekit in the timed path."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(Path(bundle_dir) / "model.tflite"), num_threads=threads)
    interp.allocate_tensors()
    d = interp.get_input_details()[0]
    info = np.iinfo(d["dtype"])
    x = np.random.default_rng(0).integers(info.min, int(info.max) + 1, size=d["shape"], dtype=d["dtype"])
    interp.set_tensor(d["index"], x)
    for _ in range(warmup):
        interp.invoke()
    samples = []
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    while len(samples) < 10 or time.perf_counter_ns() < deadline:
        t0 = time.perf_counter_ns()
        interp.invoke()
        samples.append(time.perf_counter_ns() - t0)
    ms = sorted(s / 1e6 for s in samples)
    return {"p50_ms": statistics.median(ms), "mean_ms": statistics.fmean(ms), "min_ms": ms[0], "count": len(ms)}


def child_pair(bundle_dir: str, threads: int, seconds: float, blocks: int) -> dict:
    """In one process: the agent's run_benchmark and a bare loop on a second interpreter of the same model,
    alternating short blocks so that both sides see the same load; per-block p50s."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from edgekit_agent.bundle.load import load_bundle
    from edgekit_agent.infer.benchmark import random_input, run_benchmark

    bundle = load_bundle(bundle_dir)
    rt = bundle.open_runtime(num_threads=threads)
    interp = Interpreter(model_path=str(bundle.model_path), num_threads=threads)
    interp.allocate_tensors()
    x = random_input(rt)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    per_block = max(0.02, seconds / blocks)
    agent, bare = [], []
    for _ in range(blocks):
        agent.append(
            run_benchmark(
                rt, warmup_runs=2, num_runs=5, min_seconds=per_block, input=x, include_system=False
            ).steady.p50_ms
        )
        for _ in range(2):
            interp.invoke()
        samples = []
        deadline = time.perf_counter_ns() + int(per_block * 1e9)
        while len(samples) < 5 or time.perf_counter_ns() < deadline:
            t0 = time.perf_counter_ns()
            interp.invoke()
            samples.append(time.perf_counter_ns() - t0)
        bare.append(float(np.median(samples)) / 1e6)
    return {"agent_p50_ms": statistics.median(agent), "bare_p50_ms": statistics.median(bare), "blocks": blocks}


def child_cold(archive: str, workdir: str) -> dict:
    """Cold start of the agent, phase by phase, from process start (T_PROCESS) to the first inference."""
    marks: dict[str, float] = {}
    t = time.perf_counter()
    from edgekit_agent.bundle.load import load_bundle
    from edgekit_agent.bundle.selftest import load_golden, run_selftest
    from edgekit_agent.serve.sysinfo import peak_rss_mb, rss_mb

    marks["import_agent"] = time.perf_counter() - t
    t = time.perf_counter()
    bundle = load_bundle(archive, workdir=Path(workdir))
    marks["verify_and_extract"] = time.perf_counter() - t
    t = time.perf_counter()
    rt = bundle.open_runtime()
    marks["open_interpreter"] = time.perf_counter() - t
    t = time.perf_counter()
    result = run_selftest(bundle, rt)
    marks["selftest"] = time.perf_counter() - t
    inputs = load_golden(bundle).inputs
    t = time.perf_counter()
    rt.invoke(inputs[:1])
    marks["next_inference"] = time.perf_counter() - t
    total = time.perf_counter() - T_PROCESS
    return {
        "phases_ms": {k: v * 1000 for k, v in marks.items()},
        "script_total_ms": total * 1000,
        "selftest_passed": result.passed,
        "rss_mb": rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
        "engine": rt.info.engine,
        "delegate": rt.info.delegate,
        "threads": rt.info.num_threads,
    }


# --- building the bundles (host side, TensorFlow) -----------------------------------------------------------


def build_bundles(out: Path) -> dict[str, Path]:
    """The digits and MobileNetV2 bundles, built once into ``out`` and reused."""
    sys.path.insert(0, str(REPO / "tests"))
    from fixtures_models import current_digits_bundle  # a bundle cached by an older fixture or pipeline is rebuilt

    found = {
        "digits": current_digits_bundle(out / "digits") or out / "digits" / "missing",
        "mobilenetv2": out / "mobilenetv2" / "mobilenetv2-0.35-96-raspberry-pi-4",
    }
    if all((p / "manifest.json").is_file() for p in found.values()):
        return found
    print("building bundles (TensorFlow: takes a minute the first time)…", file=sys.stderr)
    import numpy as np

    from edgekit.package.writer import write_bundle
    from edgekit.pipeline.zoo import build_model
    from edgekit.profiles import load_profile
    from edgekit_agent.contract.manifest import PreprocessSpec

    from fit_models import int8_tflite
    from fixtures_models import build_digits_bundle

    shutil.rmtree(out / "digits", ignore_errors=True)  # missing or stale: built afresh
    found["digits"] = build_digits_bundle(out / "digits")
    model = build_model("mobilenetv2", (96, 96, 3), 10, alpha=0.35, batch_size=1)
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 1, size=(32, 96, 96, 3)).astype("float32")
    info = write_bundle(
        out / "mobilenetv2",
        name="mobilenetv2-0.35-96",
        profile=load_profile("raspberry-pi-4"),
        tflite=int8_tflite(model, calib),
        preprocess=PreprocessSpec(width=96, height=96, color_mode="RGB", scale=1 / 127.5, mean=(1.0, 1.0, 1.0)),
        labels=[str(i) for i in range(10)],
        golden_x=calib[:8],
        golden_y=np.zeros(8, dtype=np.int64),
        outputs_are="probabilities",
    )
    found["mobilenetv2"] = info.directory
    return found


# --- measurements (parent) ----------------------------------------------------------------------------------


def run_json(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def agent_bench(python: Path, bundle: Path, threads: int, seconds: float, *extra: str) -> dict:
    cmd = [
        "bench",
        str(bundle),
        "--json",
        "--threads",
        str(threads),
        "--runs",
        "10",
        "--min-seconds",
        str(seconds),
        *extra,
    ]
    return run_json([str(python), "-m", "edgekit_agent.cli", *cmd])


def compare_bench_with_bare(bundle: Path, threads: int, seconds: float, rounds: int) -> dict:
    agent, bare = [], []
    for _ in range(rounds):  # alternate, so a busy minute on the shared machine hits both sides
        agent.append(agent_bench(MAIN_PY, bundle, threads, seconds)["steady"])
        bare.append(run_json([str(MAIN_PY), __file__, "_bare", str(bundle), str(threads), str(seconds), "5"]))
    a, b = statistics.median(r["p50_ms"] for r in agent), statistics.median(r["p50_ms"] for r in bare)
    amin, bmin = min(r["min_ms"] for r in agent), min(r["min_ms"] for r in bare)
    pair = run_json(
        [str(MAIN_PY), __file__, "_pair", str(bundle), str(threads), str(seconds * rounds), str(10 * rounds)]
    )
    return {
        "same_process_agent_p50_ms": pair["agent_p50_ms"],
        "same_process_bare_p50_ms": pair["bare_p50_ms"],
        "same_process_ratio": pair["agent_p50_ms"] / pair["bare_p50_ms"],
        "same_process_blocks": pair["blocks"],
        "agent_bench_p50_ms": a,
        "bare_loop_p50_ms": b,
        "ratio": a / b,
        "agent_min_ms": amin,
        "bare_min_ms": bmin,
        "ratio_min": amin / bmin,
        "rounds": rounds,
        "seconds_per_round": seconds,
        "threads": threads,
        "samples_per_round": statistics.median(r["count"] for r in agent),
    }


def cold_start(bundle: Path, rounds: int, work: Path) -> dict:
    archive = bundle.parent / f"{bundle.name}.tar.gz"
    inside, walls = [], []
    for i in range(rounds):
        inside.append(run_json([str(MAIN_PY), __file__, "_cold", str(archive), str(work / f"cold-{i}")]))
        t0 = time.perf_counter()
        subprocess.run(
            [str(MAIN_PY), "-m", "edgekit_agent.cli", "verify", str(archive)],
            capture_output=True,
            check=True,
            timeout=300,
        )
        walls.append((time.perf_counter() - t0) * 1000)
    phases = {k: statistics.median(r["phases_ms"][k] for r in inside) for k in inside[0]["phases_ms"]}
    return {
        "phases_ms": phases,
        "script_total_ms": statistics.median(r["script_total_ms"] for r in inside),
        "verify_process_wall_ms": statistics.median(walls),
        "rss_mb": statistics.median(r["rss_mb"] for r in inside),
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in inside),
        "engine": inside[0]["engine"],
        "delegate": inside[0]["delegate"],
        "threads": inside[0]["threads"],
    }


def runtimes(bundle: Path, threads: int, seconds: float, rounds: int) -> dict:
    rows: dict[str, list[float]] = {"litert+xnnpack": [], "litert builtin": []}
    if LEGACY_PY.exists():
        rows["tflite_runtime 2.14"] = []
    for _ in range(rounds):
        rows["litert+xnnpack"].append(agent_bench(MAIN_PY, bundle, threads, seconds)["steady"]["p50_ms"])
        rows["litert builtin"].append(
            agent_bench(MAIN_PY, bundle, threads, seconds, "--no-xnnpack")["steady"]["p50_ms"]
        )
        if LEGACY_PY.exists():
            rows["tflite_runtime 2.14"].append(agent_bench(LEGACY_PY, bundle, threads, seconds)["steady"]["p50_ms"])
    med = {k: statistics.median(v) for k, v in rows.items()}
    base = med["litert+xnnpack"]
    return {k: {"p50_ms": v, "vs_litert_xnnpack": v / base} for k, v in med.items()}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_bare":
        print(json.dumps(child_bare(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_pair":
        print(json.dumps(child_pair(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_cold":
        print(json.dumps(child_cold(sys.argv[2], sys.argv[3])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "out" / "bench-agent")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=0.5, help="timed seconds per round and side")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    import tempfile

    with contextlib.redirect_stdout(sys.stderr):  # the converter prints its SavedModel signatures on stdout
        bundles = build_bundles(args.out)
    figures: dict = {"machine": {}, "bench_vs_bare": {}, "cold_start": {}, "runtimes": {}}
    from edgekit_agent.serve.sysinfo import system_info

    figures["machine"] = system_info().to_dict()
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        for name, bundle in bundles.items():
            print(f"[{name}] bench vs bare loop…", file=sys.stderr)
            figures["bench_vs_bare"][name] = compare_bench_with_bare(bundle, args.threads, args.seconds, args.rounds)
            print(f"[{name}] cold start…", file=sys.stderr)
            figures["cold_start"][name] = cold_start(bundle, args.rounds, Path(tmp) / name)
            print(f"[{name}] runtimes…", file=sys.stderr)
            figures["runtimes"][name] = runtimes(bundle, args.threads, args.seconds, args.rounds)

    print(f"\nmedians of {args.rounds} alternating rounds, {args.threads} thread(s), {figures['machine']['hardware']}")
    print(
        "\n| model | `edgekit-agent bench` p50 | bare loop p50 | ratio | min: agent / bare | ratio "
        "| same process: agent / bare p50 | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in figures["bench_vs_bare"].items():
        print(
            f"| {name} | {r['agent_bench_p50_ms']:.4g} ms | {r['bare_loop_p50_ms']:.4g} ms | {r['ratio']:.3f} | "
            f"{r['agent_min_ms']:.4g} / {r['bare_min_ms']:.4g} ms | {r['ratio_min']:.3f} | "
            f"{r['same_process_agent_p50_ms']:.4g} / {r['same_process_bare_p50_ms']:.4g} ms | "
            f"{r['same_process_ratio']:.3f} |"
        )
    print(
        "\n| model | import | verify+extract | open interpreter | self-test | next inference | script total "
        "| `verify` process | RSS / peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, c in figures["cold_start"].items():
        ph = c["phases_ms"]
        print(
            f"| {name} | {ph['import_agent']:.0f} ms | {ph['verify_and_extract']:.1f} ms | "
            f"{ph['open_interpreter']:.1f} ms | "
            f"{ph['selftest']:.1f} ms | {ph['next_inference']:.2f} ms | {c['script_total_ms']:.0f} ms | "
            f"{c['verify_process_wall_ms']:.0f} ms | {c['rss_mb']:.0f} / {c['peak_rss_mb']:.0f} MiB |"
        )
    names = list(next(iter(figures["runtimes"].values())))
    print("\n| model | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for name, r in figures["runtimes"].items():
        print(
            f"| {name} | "
            + " | ".join(f"{r[k]['p50_ms']:.4g} ms ({r[k]['vs_litert_xnnpack']:.2f}×)" for k in names)
            + " |"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
