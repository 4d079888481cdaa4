"""A synthetic keyword-spotting dataset, made here with Debian's ``espeak-ng`` (nothing is downloaded).

Each keyword is spoken by ``espeak-ng`` with a seeded choice of voice (``en``, ``en-us``, … with the ``+m1`` to
``+f4`` variants), speed (``-s``) and pitch (``-p``), resampled to 16 kHz by the device's own code, placed at a
random offset in a 1 s clip with quiet noise mixed in, and written as 16-bit mono PCM WAV files: ``OUT/yes/…wav``.
``_unknown_`` holds other words and ``_silence_`` noise alone (a keyword spotter must say "none of these"), and
``_background_noise_`` (not a class) long noise recordings the loader mixes into training copies. It is synthetic
speech: a model trained on it has heard one speech synthesiser, not people.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.pipeline.audio_data import BACKGROUND_NOISE
from edgekit_agent.contract.errors import DatasetError, InputError, ToolUnavailableError
from edgekit_agent.infer.audio import read_wav, resample

KEYWORDS = ("yes", "no", "up", "down", "left", "right")
UNKNOWN_WORDS = ("house", "bird", "seven", "happy", "tree", "wow", "cat", "dog", "bed", "zero", "marvin", "sheila")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp")
VARIANTS = ("m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4")
SPEEDS = (120, 200)  # words per minute (espeak-ng's default is 175)
PITCHES = (20, 80)  # 0..99 (default 50)
SAMPLE_RATE = 16000
CLIP_SECONDS = 1.0
NOISE_SECONDS = 5.0
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class KeywordSetSummary:
    """What :func:`write_keywords` wrote: ``clips`` WAV files over ``classes`` class folders, and
    ``noise_files`` recordings in ``_background_noise_``."""

    directory: Path
    classes: tuple[str, ...]
    clips: int
    noise_files: int
    sample_rate: int = SAMPLE_RATE


def espeak_ng() -> str:
    """The ``espeak-ng`` program, or :class:`ToolUnavailableError` saying how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ToolUnavailableError(
            "espeak-ng is not installed: the synthetic keyword set is spoken by it. Install it with "
            "`sudo apt install espeak-ng` (Debian/Ubuntu), or record your own clips into DIR/WORD/*.wav."
        )
    return exe


def speak(word: str, voice: str, speed: int, pitch: int, *, exe: str | None = None) -> np.ndarray:
    """``word`` spoken by espeak-ng, as float32 mono samples at 16 kHz with the leading and trailing silence cut."""
    cmd = [exe or espeak_ng(), "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch), word]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolUnavailableError(f"espeak-ng could not be run ({exc}); check `espeak-ng --version`.") from None
    try:
        sound = read_wav(proc.stdout, name=f"espeak-ng {voice} '{word}'")
    except InputError as exc:
        err = proc.stderr.decode("utf-8", "replace").strip()[:200]
        raise ToolUnavailableError(f"espeak-ng gave no sound for '{word}' ({err or exc}).") from None
    x = resample(sound.samples[:, 0], sound.rate, SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(x) > 0.02 * max(float(np.abs(x).max()), 1e-6))
    return x[loud[0] : loud[-1] + 1] if len(loud) else x


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f²) noise, or a mains-like hum, with unit peak."""
    if kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) / k for k, f in enumerate((50, 100, 150), 1))
        x = x + 0.1 * rng.standard_normal(n)
    else:
        spectrum = np.fft.rfft(rng.standard_normal(n))
        f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
        spectrum *= {"white": 1.0, "pink": f**-0.5, "brown": f**-1.0}[kind]
        x = np.fft.irfft(spectrum, n)
    return (x / np.abs(x).max()).astype(np.float32)


def _place(speech: np.ndarray, clip: int, rng: np.random.Generator) -> np.ndarray:
    """The speech at a random offset in a clip of ``clip`` samples (its centre when it is longer)."""
    if len(speech) >= clip:
        start = (len(speech) - clip) // 2
        return speech[start : start + clip].copy()
    out = np.zeros(clip, dtype=np.float32)
    at = int(rng.integers(0, clip - len(speech) + 1))
    out[at : at + len(speech)] = speech
    return out


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """16-bit mono PCM WAV."""
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def write_keywords(
    out_dir: str | Path,
    *,
    words: Sequence[str] = KEYWORDS,
    per_class: int = 60,
    unknown: bool = True,
    silence: bool = True,
    background: bool = True,
    seed: int = 0,
    on_progress: ProgressFn | None = None,
) -> KeywordSetSummary:
    """Write ``per_class`` clips of each of ``words`` (and of ``_unknown_`` words and ``_silence_``) to
    ``OUT/CLASS/NNNN.wav``, plus ``_background_noise_/*.wav`` with ``background``. The same ``seed`` writes the
    same files (given the same espeak-ng version). Raises :class:`ToolUnavailableError` without espeak-ng."""
    exe = espeak_ng()
    if per_class < 1 or not words:
        raise DatasetError(f"need at least one word and one clip per class, got {len(words)} words, {per_class}.")
    out = Path(out_dir)
    clip = int(SAMPLE_RATE * CLIP_SECONDS)
    rng = np.random.default_rng(seed)
    # Every clip's choices are drawn up front, so the files do not depend on the order the threads finish in.
    jobs: list[tuple[Path, str | None, str, int, int, int]] = []
    classes = [*words, *([UNKNOWN] if unknown else []), *([SILENCE] if silence else [])]
    for cls in classes:
        for i in range(per_class):
            word = None if cls == SILENCE else str(rng.choice(UNKNOWN_WORDS)) if cls == UNKNOWN else cls
            voice = f"{rng.choice(VOICES)}+{rng.choice(VARIANTS)}"
            speed, pitch = int(rng.integers(*SPEEDS)), int(rng.integers(*PITCHES))
            jobs.append(
                (out / cls / f"{cls.strip('_')}_{i:04d}.wav", word, voice, speed, pitch, int(rng.integers(2**31)))
            )
    try:
        for cls in classes:
            (out / cls).mkdir(parents=True, exist_ok=True)
        noise_files = 0
        if background:
            (out / BACKGROUND_NOISE).mkdir(exist_ok=True)
            for kind in ("white", "pink", "brown", "hum"):
                write_wav(
                    out / BACKGROUND_NOISE / f"{kind}.wav", 0.5 * _noise(kind, int(NOISE_SECONDS * SAMPLE_RATE), rng)
                )
                noise_files += 1

        def make(job: tuple[Path, str | None, str, int, int, int]) -> None:
            path, word, voice, speed, pitch, clip_seed = job
            r = np.random.default_rng(clip_seed)
            kind = str(r.choice(("white", "pink", "brown")))
            if word is None:  # silence: room noise at a random, low level
                x = _noise(kind, clip, r) * r.uniform(0.0, 0.05)
            else:
                speech = speak(word, voice, speed, pitch, exe=exe)
                speech = speech / max(float(np.abs(speech).max()), 1e-6) * r.uniform(0.3, 0.9)
                x = _place(speech, clip, r) + _noise(kind, clip, r) * r.uniform(0.0, 0.02)
            write_wav(path, x)

        done = 0
        with ThreadPoolExecutor(max_workers=2) as pool:  # espeak-ng runs as processes: two at a time
            for _ in pool.map(make, jobs):
                done += 1
                if on_progress is not None:
                    on_progress(done, len(jobs))
    except OSError as exc:
        raise DatasetError(
            f"cannot write the keyword dataset to {out}: {exc.strerror}; choose a writable directory."
        ) from None
    return KeywordSetSummary(directory=out, classes=tuple(classes), clips=len(jobs), noise_files=noise_files)
