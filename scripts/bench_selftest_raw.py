#!/usr/bin/env python3
"""What the self-test from raw input costs an audio bundle: the features of 16 golden clips computed on the
device (``edgekit_agent.bundle.selftest.inputs_from_raw``), in the full environment (numpy 2) and in
``.venv-legacy`` (numpy 1.26), alternating run by run so both see the same machine load.

    .venv/bin/python scripts/bench_selftest_raw.py [--runs 5] [--reps 15]

The spec is the default ``AudioSpec`` (1 s at 16 kHz, 49 frames × 40 mel bands, as a keyword-spotting
bundle); the clips are noise (the features' cost does not depend on the sound). Reported: per environment,
the median over runs of each run's median time for the 16 clips, in ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import statistics, sys, time
import numpy as np
from edgekit_agent.bundle.selftest import inputs_from_raw
from edgekit_agent.contract.manifest import AudioSpec, TensorSpec
from edgekit_agent.infer.audio import AudioPreprocessor

spec = AudioSpec()
pre = AudioPreprocessor(spec, TensorSpec("in", (1, *spec.shape), "int8", 0.05, 0))
raw = np.random.default_rng(0).uniform(-0.5, 0.5, (16, spec.clip_samples)).astype(np.float32)
inputs_from_raw(pre, raw)
times = []
for _ in range(int(sys.argv[1])):
    t = time.perf_counter()
    inputs_from_raw(pre, raw)
    times.append(time.perf_counter() - t)
print(np.__version__, statistics.median(times) * 1000)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per environment, alternating")
    ap.add_argument("--reps", type=int, default=15, help="timed repetitions per run")
    args = ap.parse_args()
    envs = {name: ROOT / name / "bin" / "python" for name in (".venv", ".venv-legacy")}
    envs = {k: v for k, v in envs.items() if v.exists()}
    found: dict[str, list[float]] = {k: [] for k in envs}
    versions: dict[str, str] = {}
    for _ in range(args.runs):
        for name, python in envs.items():
            out = subprocess.run([str(python), "-c", CHILD, str(args.reps)], capture_output=True, text=True, check=True)
            version, ms = out.stdout.split()
            versions[name] = version
            found[name].append(float(ms))
    for name, times in found.items():
        print(f"{name} (numpy {versions[name]}): 16 golden clips' features in {statistics.median(times):.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
