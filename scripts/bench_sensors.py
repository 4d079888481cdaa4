#!/usr/bin/env python3
"""Motion and sensors: the device's windowing cost, and a gesture model's accuracy and fit per MCU profile.

1. Device code (``edgekit_agent.infer.sensors``) on the synthetic gestures (``edgekit datasets gestures``):
   - training: resample + cut + normalise a recording, per window;
   - serving: one CSV file → quantised input (``SensorPreprocessor``: parse, resample, central window,
     normalise, quantise) against a bare numpy loop doing the same with ``np.loadtxt`` (no checks, no
     resampling: the file is already at the rate), interleaved, medians of ``--repeats`` passes.
2. ``edgekit build`` of the gestures for the MCU profiles: float and int8 held-out accuracy, the exact TFLite
   Micro arena (and with the profile's margin) and flash per profile.

    .venv/bin/python scripts/bench_sensors.py [--recordings 20] [--repeats 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PROFILES = ("arduino-nano-33-ble-sense", "esp32-s3", "rp2040")


def _bare(path: Path, spec, tensor) -> np.ndarray:  # noqa: ANN001 - the baseline: numpy only, no checks
    a = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32)[:, 1:]
    start = (len(a) - spec.window) // 2
    x = (a[start : start + spec.window] - np.float32(spec.mean)) / np.float32(spec.std)
    q = np.round(x / tensor.scale) + tensor.zero_point
    return np.clip(q, -128, 127).astype(np.int8)[None]


def device_timings(root: Path, bundle_dir: Path, repeats: int) -> dict[str, float]:
    from edgekit_agent.bundle.load import load_bundle
    from edgekit_agent.infer.sensors import normalise, on_rate, read_csv, windows

    bundle = load_bundle(bundle_dir)
    spec, pre = bundle.manifest.preprocess, bundle.preprocessor()
    files = sorted(root.rglob("*.csv"))
    recs = [read_csv(f, spec.channels) for f in files]
    per_window, served, bare = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = sum(len(normalise(windows(on_rate(r, spec), spec), spec)) for r in recs)
        per_window.append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        for f in files:
            pre(f)
        served.append((time.perf_counter() - t0) / len(files))
        t0 = time.perf_counter()
        for f in files:
            _bare(f, spec, pre.tensor)
        bare.append((time.perf_counter() - t0) / len(files))
    return {
        "window_us": statistics.median(per_window) * 1e6,
        "file_us": statistics.median(served) * 1e6,
        "bare_numpy_file_us": statistics.median(bare) * 1e6,
        "file_vs_bare": statistics.median(served) / statistics.median(bare),
        "files": len(files),
        "windows_per_pass": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=20, help="recordings per gesture (default 20)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from edgekit.build import build
    from edgekit.pipeline.motion import write_gestures

    with tempfile.TemporaryDirectory(prefix="bench-sensors-") as tmp:
        root = write_gestures(Path(tmp) / "gestures", recordings=args.recordings).directory
        t0 = time.perf_counter()
        result = build(root, PROFILES, Path(tmp) / "out")
        seconds = time.perf_counter() - t0
        rows = []
        for p in result.profiles:
            fit = json.loads((p.directory / "manifest.json").read_text())["fit"]
            rows.append(
                {
                    "profile": p.profile,
                    "float_accuracy": p.float_accuracy,
                    "int8_accuracy": p.int8_accuracy,
                    "held_out_windows": p.samples,
                    "int8_bytes": p.int8_bytes,
                    "arena_bytes": fit["arena_bytes"],
                    "arena_with_margin": fit["arena_with_margin"],
                    "flash_bytes": fit["flash_bytes"],
                    "fits": p.fits,
                }
            )
        timings = device_timings(root, result.profiles[0].directory, args.repeats)
    report = {
        "load": os.getloadavg(),
        "build_seconds": round(seconds, 1),
        "arch": result.arch,
        "profiles": rows,
        "device": timings,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"load average {report['load'][0]:.1f}; build ({result.arch}, 3 profiles) {seconds:.1f} s")
    print(
        f"{'profile':<28}{'float':>8}{'int8':>8}{'windows':>9}{'int8 B':>9}{'arena B':>9}{'+margin':>9}{'flash B':>10}"
    )
    for r in rows:
        print(
            f"{r['profile']:<28}{100 * r['float_accuracy']:>7.2f}%{100 * r['int8_accuracy']:>7.2f}%"
            f"{r['held_out_windows']:>9}{r['int8_bytes']:>9}{r['arena_bytes']:>9}{r['arena_with_margin']:>9}"
            f"{r['flash_bytes']:>10}"
        )
    d = timings
    print(
        f"device code: {d['window_us']:.1f} us per training window (resample + cut + normalise); "
        f"{d['file_us']:.0f} us per served CSV file vs {d['bare_numpy_file_us']:.0f} us bare numpy "
        f"({d['file_vs_bare']:.2f}x), medians of {args.repeats} passes over {d['files']} files"
    )


if __name__ == "__main__":
    main()
