#!/usr/bin/env python3
"""Keyword spotting: feature extraction time per clip, float vs int8 accuracy, arena and flash per MCU profile.

1. Features: the agent's ``AudioPreprocessor.floats`` (read the WAV, fit the clip, log-mel: the code the
   workstation's loader runs too) on 1 s clips stored at 16 kHz mono and at 44.1 kHz stereo (mixed down and
   resampled first), and ``log_mel`` alone on a clip in memory, on the workstation (.venv, numpy 2) and in the
   agent's tflite-runtime environment (.venv-legacy, numpy 1.26) when it exists. Each round times the three
   in turn here, then in a .venv-legacy process; ``--repeats`` rounds, the figure is the median per clip.
2. Build: ``edgekit datasets keywords`` (espeak-ng, ``--clips`` per class) then ``edgekit build`` for every MCU
   profile (``--keep-going``): float and int8 held-out accuracy, the exact TFLite Micro arena and the flash
   each profile's check reports.

    .venv/bin/python scripts/bench_audio.py [--clips 60] [--epochs N] [--repeats 5] [--json]
    (.venv-legacy/bin/python scripts/bench_audio.py --features-only DIR: one round on DIR's clips, as JSON)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MCU_PROFILES = ("arduino-nano-33-ble-sense", "esp32-s3", "stm32h743", "rp2040")
LEGACY = Path(__file__).resolve().parents[1] / ".venv-legacy" / "bin" / "python"


def _wav(path: Path, x: np.ndarray, rate: int) -> None:
    import wave

    pcm = np.round(np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1] if x.ndim == 2 else 1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def write_stereo_copies(work: Path, clips: list[Path]) -> None:
    """``work/16k/*.wav`` (the clips) and ``work/44k/*.wav`` (the same speech at 44.1 kHz stereo)."""
    from edgekit_agent.contract.manifest import AudioSpec
    from edgekit_agent.infer.audio import fit_clip, read_wav

    (work / "16k").mkdir()
    (work / "44k").mkdir()
    for i, f in enumerate(clips):
        x = fit_clip(read_wav(f), AudioSpec()).samples
        _wav(work / "16k" / f"{i:03d}.wav", x, 16000)
        t44 = np.interp(np.arange(44100) * (16000 / 44100), np.arange(16000), x)
        _wav(work / "44k" / f"{i:03d}.wav", np.stack([t44, t44], axis=1), 44100)


def feature_round(work: Path) -> dict[str, float]:
    """Milliseconds per clip of each way in, timed in turn (one round)."""
    from edgekit_agent.contract.manifest import AudioSpec, TensorSpec
    from edgekit_agent.infer.audio import AudioPreprocessor, fit_clip, log_mel, read_wav

    spec = AudioSpec()
    pre = AudioPreprocessor(spec, TensorSpec("in", (1, *spec.shape), "int8", 0.05, 0))
    at16, at44 = sorted((work / "16k").glob("*.wav")), sorted((work / "44k").glob("*.wav"))
    in_memory = [fit_clip(read_wav(f), spec).samples for f in at16]
    ways = {
        "log_mel on a clip in memory": lambda: [log_mel(x, spec) for x in in_memory],
        "WAV file, 16 kHz mono": lambda: [pre.floats(f) for f in at16],
        "WAV file, 44.1 kHz stereo (mix + resample)": lambda: [pre.floats(f) for f in at44],
    }
    out = {}
    for name, run in ways.items():
        t0 = time.perf_counter()
        run()
        out[name] = (time.perf_counter() - t0) * 1000 / len(at16)
    return out


def bench_features(work: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Median milliseconds per clip, here and (when it exists) in .venv-legacy, rounds interleaved."""
    sides = {"workstation (numpy 2)": lambda: feature_round(work)}
    if LEGACY.exists():
        cmd = [str(LEGACY), __file__, "--features-only", str(work)]
        sides["agent, .venv-legacy (numpy 1.26)"] = lambda: json.loads(subprocess.check_output(cmd, text=True))
    times: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    for _ in range(repeats):
        for side, run in sides.items():
            times[side].append(run())
    return {
        side: {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]}
        for side, rounds in times.items()
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=60, help="synthetic clips per class (default 60)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the DS-CNN's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--features-only", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.features_only:  # one round in this interpreter (the .venv-legacy side of bench_features)
        print(json.dumps(feature_round(args.features_only)))
        return 0

    from edgekit.build import build
    from edgekit.pipeline.speech import write_keywords

    with tempfile.TemporaryDirectory(prefix="bench-audio-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        summary = write_keywords(work / "keywords", per_class=args.clips)
        synth_s = time.perf_counter() - t0
        clips = sorted((work / "keywords" / "yes").glob("*.wav")) + sorted((work / "keywords" / "no").glob("*.wav"))
        write_stereo_copies(work, clips[:50])
        features = bench_features(work, args.repeats)
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
    for side, ways in features.items():
        for k, v in ways.items():
            print(f"  features, {side}, {k}: {v:.3f} ms per clip (median of {args.repeats})")
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
