"""Audio datasets: a folder with one subfolder of ``.wav`` clips per class, turned into log-mel features by the
device's own code (:mod:`edgekit_agent.infer.audio`), so the features trained on are the ones a device computes.

A clip at another rate, in stereo, shorter or longer than the spec's clip is converted (:func:`fit_clip`) and
named in one line (a summary line when many files share the change); an unreadable file is skipped and named.
An optional ``_background_noise_`` subfolder (the Speech Commands convention; not a class) holds noise
recordings of any length: each clip gets copies with a slice of that noise mixed in at :data:`NOISE_SNRS_DB`.
The copies are marked ``augmented`` and share the clip's group, so they only ever train: the held-out parts
measure the recordings as they are.

Features are computed with mean 0 and std 1; :func:`normalise` then takes the mean and std of the training
split's features and records them in the :class:`AudioSpec` (one scalar each, as the device applies them).
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit_agent.contract.errors import DatasetError, InputError
from edgekit_agent.contract.manifest import AudioSpec
from edgekit_agent.infer.audio import AUDIO_SUFFIXES, fit_clip, log_mel, read_wav, resample

if TYPE_CHECKING:  # edgekit.pipeline.data imports this module to load .wav folders
    from edgekit.pipeline.data import Dataset, Splits

BACKGROUND_NOISE = "_background_noise_"
NOISE_SNRS_DB = (12.0, 6.0)  # signal-to-noise ratios of the noisy training copies, one copy each
_PER_FILE_LINES = 3  # more files than this with the same change get one summary line


@dataclass(frozen=True, slots=True)
class AudioFolder:
    """What :func:`load_audio_folder` read, the fields of a :class:`~edgekit.pipeline.data.Dataset` (which
    ``load_dataset`` makes of it): features ``x`` (N, frames, n_mels, 1), class indices ``y``, each sample's
    clip ``raw`` (N, clip_samples), its ``groups`` entry (a clip and its noisy copies share one) and whether
    it is a noisy copy (``augmented``); ``skipped`` (file, reason) pairs, ``notes`` the conversions."""

    x: np.ndarray
    y: np.ndarray
    labels: tuple[str, ...]
    spec: AudioSpec
    files: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    raw: np.ndarray
    groups: np.ndarray
    augmented: np.ndarray
    notes: tuple[str, ...]


def _wavs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != BACKGROUND_NOISE),
        key=lambda p: p.name,
    )


def is_audio_folder(root: Path) -> bool:
    """True when ``root``'s class subfolders hold ``.wav`` files (and so no images are looked for)."""
    try:
        return any(_wavs(d) for d in _class_dirs(root))
    except OSError:
        return False


def _noise_sources(root: Path, spec: AudioSpec, skipped: list[tuple[str, str]]) -> list[np.ndarray]:
    """The ``_background_noise_`` recordings as mono waveforms at the spec's rate, whole (not cut to a clip)."""
    folder = root / BACKGROUND_NOISE
    sources = []
    for f in _wavs(folder) if folder.is_dir() else []:
        try:
            sound = read_wav(f)
        except InputError as exc:
            skipped.append((str(f), str(exc)))
            continue
        x = sound.samples.mean(axis=1, dtype=np.float32)
        if sound.rate != spec.sample_rate:
            x = resample(x, sound.rate, spec.sample_rate)
        if len(x) < spec.clip_samples:  # a short recording is repeated up to one clip
            x = np.resize(x, spec.clip_samples)
        if float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) > 1e-6:
            sources.append(x)
    return sources


def mix_noise(clip: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``clip`` plus a random slice of ``noise`` scaled to ``snr_db`` below the clip's power, clipped to [-1, 1].
    A silent clip (the ``_silence_`` class) gets the noise at a quiet fixed level instead."""
    start = int(rng.integers(0, len(noise) - len(clip) + 1))
    piece = noise[start : start + len(clip)].astype(np.float64)
    signal_rms = float(np.sqrt(np.mean(clip.astype(np.float64) ** 2)))
    noise_rms = float(np.sqrt(np.mean(piece**2))) or 1.0
    target = signal_rms / 10 ** (snr_db / 20) if signal_rms > 1e-4 else 0.01
    return np.clip(clip + piece * (target / noise_rms), -1.0, 1.0).astype(np.float32)


def conversion_notes(changes: list[tuple[str, str]]) -> tuple[str, ...]:
    """One line per converted file (``file: change``), or per kind of change when more than a few files share
    it: ``412 files: resampled from 44100 Hz to 16000 Hz (first: a.wav, b.wav)``."""
    by_kind: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for file, change in changes:
        by_kind[re.sub(r"^[0-9.]+ s ", "", change)].append((file, change))
    lines = []
    for kind, items in by_kind.items():
        if len(items) <= _PER_FILE_LINES:
            lines += [f"{file}: {change}" for file, change in items]
        else:
            lines.append(f"{len(items)} files: {kind} (first: {items[0][0]}, {items[1][0]})")
    return tuple(lines)


def load_audio_folder(
    path: str | Path,
    spec: AudioSpec | None = None,
    *,
    strict: bool = False,
    noise: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> AudioFolder:
    """Load ``path/CLASS/*.wav`` (class = subfolder name, sorted) as log-mel features (:class:`AudioFolder`).

    ``spec=None`` uses the default :class:`AudioSpec` (16 kHz, 1 s) with mean 0 and std 1: call
    :func:`normalise` on the split. A given spec (a bundle's) is used as it is, normalisation included.
    ``noise`` adds the ``_background_noise_`` copies (see the module). ``raw`` holds each sample's clip (after
    :func:`fit_clip`, noise included), ``notes`` what was converted, ``skipped`` the unreadable files.
    """
    root = Path(path)
    spec = spec or AudioSpec()
    dirs = _class_dirs(root)
    if len(dirs) < 2:
        raise DatasetError(
            f"{root}: an audio dataset needs at least two class subfolders of .wav files (found {len(dirs)}); "
            "put each class's clips in its own subfolder."
        )
    per_class = [(d.name, _wavs(d)) for d in dirs]
    empty = [name for name, files in per_class if not files]
    if empty:
        raise DatasetError(
            f"{root}: class folder(s) {', '.join(empty)} contain no .wav files; add clips or remove them."
        )
    skipped: list[tuple[str, str]] = []
    sources = _noise_sources(root, spec, skipped) if noise else []
    clips: list[np.ndarray] = []
    ys: list[int] = []
    kept: list[str] = []
    groups: list[int] = []
    augmented: list[bool] = []
    changes: list[tuple[str, str]] = []
    total = sum(len(files) for _, files in per_class)
    done = 0
    for label, (_name, files) in enumerate(per_class):
        for f in files:
            done += 1
            try:
                clip = fit_clip(read_wav(f), spec)
            except InputError as exc:
                if strict:
                    raise DatasetError(
                        f"{exc} (strict mode: fix or remove the file, or load without --strict)."
                    ) from None
                skipped.append((str(f), str(exc)))
                continue
            changes += [(str(f), c) for c in clip.changes]
            group = len(kept)
            copies = [clip.samples]
            if sources:
                rng = np.random.default_rng(zlib.crc32(str(f.relative_to(root)).encode("utf-8")))
                for snr in NOISE_SNRS_DB:
                    copies.append(mix_noise(clip.samples, sources[int(rng.integers(len(sources)))], snr, rng))
            for i, samples in enumerate(copies):
                clips.append(samples)
                ys.append(label)
                kept.append(str(f))
                groups.append(group)
                augmented.append(i > 0)
            if on_progress is not None:
                on_progress(done, total)
    counts = np.bincount(np.asarray(ys, dtype=np.int64), minlength=len(per_class))
    unusable = [name for (name, _), n in zip(per_class, counts) if n == 0]
    if unusable:
        raise DatasetError(f"{root}: no readable .wav file left in class folder(s) {', '.join(unusable)}.")
    raw = np.stack(clips)
    return AudioFolder(
        x=np.stack([log_mel(c, spec) for c in raw]),
        y=np.asarray(ys, dtype=np.int64),
        labels=tuple(name for name, _ in per_class),
        spec=spec,
        files=tuple(kept),
        skipped=tuple(skipped),
        raw=raw,
        groups=np.asarray(groups, dtype=np.int64),
        augmented=np.asarray(augmented, dtype=bool),
        notes=conversion_notes(changes),
    )


def normalise(splits: Splits) -> Splits:
    """Normalise every part with the mean and std of the training split's features and record them in the
    spec; the arithmetic is :func:`log_mel`'s, so a device computing features with the new spec gets the same
    floats. Splits whose spec already carries a normalisation (a bundle's) are returned as they are."""
    spec = splits.spec
    if not isinstance(spec, AudioSpec) or (spec.mean, spec.std) != (0.0, 1.0):
        return splits
    x = splits.train.x.astype(np.float64)
    # float32 values, so the manifest's JSON numbers give the device exactly the float32 the host used
    mean, std = float(np.float32(x.mean())), float(np.float32(x.std() or 1.0))
    spec = replace(spec, mean=mean, std=std)

    def apply(ds: Dataset) -> Dataset:
        x = ((ds.x - np.float32(mean)) / np.float32(std)).astype(np.float32)
        return replace(ds, x=x, spec=spec)

    return replace(splits, train=apply(splits.train), val=apply(splits.val), test=apply(splits.test))
