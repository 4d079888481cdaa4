#!/usr/bin/env python3
"""Keyword spotting: feature extraction time per clip, float vs int8 accuracy, arena and flash per MCU profile.

1. Features: the agent's ``AudioPreprocessor.floats`` (read the WAV, fit the clip, log-mel: the code the
   workstation's loader runs too) on 1 s clips stored at 16 kHz mono and at 44.1 kHz stereo (mixed down and
   resampled first), and ``log_mel`` alone on a clip in memory. The three are timed in turn within each
   round, ``--repeats`` rounds; the figure is the median per clip.
2. Build: ``edgekit datasets keywords`` (espeak-ng, ``--clips`` per class) then ``edgekit build`` for every MCU
   profile (``--keep-going``): float and int8 held-out accuracy, the exact TFLite Micro arena and the flash
   each profile's check reports.

    .venv/bin/python scripts/bench_audio.py [--clips 60] [--epochs N] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MCU_PROFILES = ("arduino-nano-33-ble-sense", "esp32-s3", "stm32h743", "rp2040")


def _wav(path: Path, x: np.ndarray, rate: int) -> None:
    import wave

    pcm = np.round(np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1] if x.ndim == 2 else 1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def bench_features(work: Path, clips: list[Path], repeats: int) -> dict[str, float]:
    """Median milliseconds per clip of each way in, the ways timed in turn within each round."""
    from edgekit_agent.contract.manifest import AudioSpec, TensorSpec
    from edgekit_agent.infer.audio import AudioPreprocessor, fit_clip, log_mel, read_wav

    spec = AudioSpec()
    pre = AudioPreprocessor(spec, TensorSpec("in", (1, *spec.shape), "int8", 0.05, 0))
    at16 = clips[:50]
    at44 = []
    for i, f in enumerate(at16):  # the same speech at 44.1 kHz stereo
        x = fit_clip(read_wav(f), spec).samples
        t44 = np.interp(np.arange(44100) * (16000 / 44100), np.arange(16000), x)
        at44.append(work / f"stereo44k_{i}.wav")
        _wav(at44[-1], np.stack([t44, t44], axis=1), 44100)
    in_memory = [fit_clip(read_wav(f), spec).samples for f in at16]
    ways = {
        "log_mel on a clip in memory": lambda: [log_mel(x, spec) for x in in_memory],
        "WAV file, 16 kHz mono": lambda: [pre.floats(f) for f in at16],
        "WAV file, 44.1 kHz stereo (mix + resample)": lambda: [pre.floats(f) for f in at44],
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(repeats):
        for name, run in ways.items():
            t0 = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t0) * 1000 / len(at16))
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=60, help="synthetic clips per class (default 60)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the DS-CNN's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from edgekit.build import build
    from edgekit.pipeline.speech import write_keywords

    with tempfile.TemporaryDirectory(prefix="bench-audio-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        summary = write_keywords(work / "keywords", per_class=args.clips)
        synth_s = time.perf_counter() - t0
        clips = sorted((work / "keywords" / "yes").glob("*.wav")) + sorted((work / "keywords" / "no").glob("*.wav"))
        features = bench_features(work, clips, args.repeats)
        result = build(work / "keywords", list(MCU_PROFILES), work / "out", epochs=args.epochs, keep_going=True)
        profiles = []
        for p in result.profiles:
            fit = json.loads(p.manifest.to_bytes())["fit"] if p.manifest is not None else {}
            profiles.append(
                {
                    "profile": p.profile,
                    "fits": p.fits,
                    "float_accuracy": round(p.float_accuracy, 4),
                    "int8_accuracy": round(p.int8_accuracy, 4),
                    "held_out": p.samples,
                    "int8_bytes": p.int8_bytes,
                    "arena_bytes": fit.get("arena_bytes"),
                    "arena_with_margin": fit.get("arena_with_margin"),
                    "flash_bytes": fit.get("flash_bytes"),
                    "summary": p.fit_summary,
                }
            )
    report = {
        "load": os.getloadavg(),
        "synthetic_set": {"clips": summary.clips, "classes": list(summary.classes), "seconds": round(synth_s, 1)},
        "feature_ms_per_clip": features,
        "arch": result.arch,
        "build_seconds": round(result.seconds, 1),
        "profiles": profiles,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"load average {report['load'][0]:.1f}; {summary.clips} clips spoken in {synth_s:.1f} s")
    for k, v in features.items():
        print(f"  features, {k}: {v:.3f} ms per clip (median of {args.repeats})")
    print(f"build ({result.arch}) in {result.seconds:.0f} s")
    for p in profiles:
        print(
            f"  {p['profile']}: float {p['float_accuracy']:.2%}, int8 {p['int8_accuracy']:.2%} on {p['held_out']}; "
            f"int8 {p['int8_bytes']:,} B, arena {p['arena_bytes']} B ({p['arena_with_margin']} with margin), "
            f"flash {p['flash_bytes']} B; {'fits' if p['fits'] else 'does not fit'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
