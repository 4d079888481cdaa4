#!/usr/bin/env python3
"""Serving-loop overhead (issue 3 figures): the agent's serve path against a bare interpreter, side by side.

    .venv/bin/python scripts/bench_serving.py [--rounds 9] [--threads 1] [--out out/bench-serving] [--json FILE]

For each model, in one process, on one interpreter, alternating round by round (so both loops see the
same machine load and the same caches):

- **bare**: ``set_tensor(x); invoke(); get_tensor()`` on the LiteRT interpreter — the least any caller does;
- **serve**: ``Agent.serve_tensor(x)`` — interpreter lock, invoke, top-1 with confidence, input statistics
  for drift (every ``drift_every``-th tensor, the default 16), telemetry recording, a ``Prediction``.

Reported: the median over rounds of each round's median per-inference time, their ratio, the µs the
agent adds (median of the per-round differences), and the ratio of the process CPU seconds the two loops used
(the same number of calls each, all rounds; wall time moves with the other jobs on the machine, CPU time
less). Separately, the cost of ``WindowRecorder.record`` alone (µs per call, folds included), and of one
``snapshot_and_reset`` (once per window, off the hot path).

Models: the digits CNN of the tests (8×8×1, ~10 µs per inference: the overhead shows) and a MobileNetV2
(alpha 0.35, 96×96×3, random weights: latency does not depend on training) built with the host library
(``edgekit.pipeline.zoo.build_model`` + ``edgekit.pipeline.convert.convert_int8``). Bundles are built once
into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_bundles(out: Path) -> dict[str, Path]:
    """The digits and MobileNetV2 bundles (built with TensorFlow once, then reused from ``out``)."""
    sys.path.insert(0, str(REPO / "tests"))
    from fixtures_models import current_digits_bundle  # a bundle cached by an older fixture or pipeline is rebuilt

    mobilenet = sorted((out / "mobilenetv2").glob("**/mobilenetv2-0.35-96-raspberry-pi-4/manifest.json"))
    found = {"digits": current_digits_bundle(out / "digits"), "mobilenetv2": mobilenet[0].parent if mobilenet else None}
    if all(found.values()):
        return found  # type: ignore[return-value]
    print("building bundles with TensorFlow (once)…", file=sys.stderr, flush=True)
    import numpy as np

    from edgekit.package.writer import write_bundle
    from edgekit.pipeline.convert import convert_int8
    from edgekit.pipeline.zoo import build_model
    from edgekit.profiles import load_profile
    from edgekit_agent.contract.manifest import PreprocessSpec

    from fixtures_models import build_digits_bundle

    shutil.rmtree(out / "digits", ignore_errors=True)  # missing or stale: built afresh
    found["digits"] = build_digits_bundle(out / "digits")
    model = build_model("mobilenetv2", (96, 96, 3), 10, alpha=0.35, batch_size=1)
    # Random calibration data is fine here: only latency is measured, never accuracy.
    calib = np.random.default_rng(0).uniform(-1, 1, size=(32, 96, 96, 3)).astype("float32")
    conv = convert_int8(model, calib, num_samples=32, with_float=False, name="mobilenetv2-0.35-96")
    info = write_bundle(
        out / "mobilenetv2",
        name="mobilenetv2-0.35-96",
        profile=load_profile("raspberry-pi-4"),
        tflite=conv.tflite,
        preprocess=PreprocessSpec(width=96, height=96, color_mode="RGB", scale=1 / 127.5, mean=(1.0, 1.0, 1.0)),
        labels=[str(i) for i in range(10)],
        golden_x=calib[:4],
        golden_y=np.zeros(4, dtype=np.int64),
        outputs_are="probabilities",
    )
    found["mobilenetv2"] = info.directory
    return found


def per_call_ns(fn: Any, n: int) -> list[int]:
    clock = time.perf_counter_ns
    out = [0] * n
    for i in range(n):
        t0 = clock()
        fn()
        out[i] = clock() - t0
    return out


def compare(bundle_dir: Path, threads: int, rounds: int, per_round: int, data_dir: Path) -> dict[str, Any]:
    """Bare interpreter vs Agent.serve_tensor on the same interpreter, alternating rounds."""
    import numpy as np

    from edgekit_agent.bundle.load import load_bundle
    from edgekit_agent.serve.agent import Agent
    from edgekit_agent.serve.config import AgentSettings

    bundle = load_bundle(bundle_dir)
    agent = Agent(
        bundle, AgentSettings(device_id="bench", data_dir=data_dir), runtime=bundle.open_runtime(num_threads=threads)
    )
    rt = agent.runtime
    interp = rt.interpreter
    in_idx, out_idx = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    x = np.random.default_rng(0).integers(-128, 128, size=rt.input_shape, dtype=np.int8).astype(rt.input_dtype)
    set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor

    def bare() -> None:
        set_tensor(in_idx, x)
        invoke()
        get_tensor(out_idx)

    def serve() -> None:
        agent.serve_tensor(x)

    for _ in range(max(20, per_round // 10)):  # warm-up: XNNPACK packing, caches, branch predictors
        bare()
        serve()
    bare_med, serve_med, diffs = [], [], []
    cpu = {bare: 0.0, serve: 0.0}  # process CPU seconds spent in each loop, all rounds
    for r in range(rounds):
        order = (bare, serve) if r % 2 == 0 else (serve, bare)
        result = {}
        for fn in order:
            c0 = time.process_time()
            result[fn] = statistics.median(per_call_ns(fn, per_round))
            cpu[fn] += time.process_time() - c0
        bare_med.append(result[bare])
        serve_med.append(result[serve])
        diffs.append(result[serve] - result[bare])
    window = agent.recorder.snapshot_and_reset()
    b, s = statistics.median(bare_med), statistics.median(serve_med)
    return {
        "model": bundle.manifest.name,
        "runtime": rt.info.to_dict(),
        "rounds": rounds,
        "inferences_per_round": per_round,
        "bare_ms": b / 1e6,
        "serve_ms": s / 1e6,
        "ratio": s / b,
        "cpu_ratio": cpu[serve] / cpu[bare],  # the same number of calls each: CPU-seconds serve / bare
        "added_us": statistics.median(diffs) / 1e3,
        "added_us_per_round": [round(d / 1e3, 2) for d in diffs],
        "telemetry_requests_recorded": window["counts"]["ok"],
    }


def recording_cost(rounds: int, n: int) -> dict[str, Any]:
    """µs per WindowRecorder.record call (folds amortised in) and ms per snapshot_and_reset."""
    from edgekit_agent.serve.telemetry import WindowRecorder

    labels = [str(i) for i in range(10)]
    ref = {"input_mean": {"edges": [i / 10 for i in range(11)], "freq": [0.1] * 10}, "class_freq": [0.1] * 10}
    rec = WindowRecorder(labels, ref)
    per_call, snaps = [], []
    for _ in range(rounds):
        record = rec.record
        t0 = time.perf_counter_ns()
        for i in range(n):
            record(1_000_000 + i, 20_000, 900_000, i % 10, 0.9, i % 10, 0.4)
        per_call.append((time.perf_counter_ns() - t0) / n)
        t0 = time.perf_counter_ns()
        rec.snapshot_and_reset()
        snaps.append(time.perf_counter_ns() - t0)
    return {
        "record_us": statistics.median(per_call) / 1e3,
        "snapshot_ms": statistics.median(snaps) / 1e6,
        "records_per_round": n,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "out" / "bench-serving")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    bundles = build_bundles(args.out)
    results: dict[str, Any] = {
        "threads": args.threads,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "load1_before": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as tmp:
        results["digits"] = compare(bundles["digits"], args.threads, args.rounds, 3000, Path(tmp) / "d")
        results["mobilenetv2"] = compare(bundles["mobilenetv2"], args.threads, args.rounds, 200, Path(tmp) / "m")
    results["recording"] = recording_cost(args.rounds, 100_000)
    results["load1_after"] = os.getloadavg()[0]

    print(f"serving loop vs bare interpreter, {args.threads} thread(s), medians of {args.rounds} alternating rounds")
    print(f"{'model':<22}{'bare':>12}{'serve':>12}{'ratio':>8}{'added':>11}{'CPU ratio':>11}")
    for key in ("digits", "mobilenetv2"):
        r = results[key]
        print(
            f"{r['model']:<22}{r['bare_ms'] * 1e3:>9.1f} µs{r['serve_ms'] * 1e3:>9.1f} µs"
            f"{r['ratio']:>8.3f}{r['added_us']:>8.2f} µs{r['cpu_ratio']:>11.3f}"
        )
    rc = results["recording"]
    print(
        f"WindowRecorder.record: {rc['record_us']:.2f} µs per inference; "
        f"snapshot_and_reset: {rc['snapshot_ms']:.2f} ms per window"
    )
    print(
        f"load average {results['load1_before']:.2f} before, {results['load1_after']:.2f} after "
        f"({results['cpu_count']} CPUs)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
