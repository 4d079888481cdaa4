"""Sensor datasets: one subfolder of CSV recordings per class, cut into labelled windows.

Every step a device repeats uses the device's own code (:mod:`edgekit_agent.infer.sensors`): reading the CSV,
resampling on its time column, cutting windows and normalising them, so the workstation measures accuracy on
exactly the tensors a device computes from the same rows.

The rate is the median of the recordings' own rates (each file's median time step), rounded to three
significant digits, unless one is given; recordings at other rates, or with jittered time stamps, are
resampled to it. Windows are ``window`` seconds long every ``stride`` seconds (default 2 s every 1 s). The
windows of one recording form one group (:attr:`Dataset.groups`), so a split never puts a recording on both
sides. Per-channel mean and std are fitted on the training split only (:func:`normalise_on_train`).

:func:`read_sensor_folder` returns plain arrays; :func:`edgekit.pipeline.data.load_sensor_folder` makes them a
``Dataset`` (this module does not import ``data``, which dispatches to it: no import cycle).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit_agent.contract.errors import DatasetError, InputError, UsageError
from edgekit_agent.contract.manifest import SensorSpec
from edgekit_agent.infer.sensors import SENSOR_SUFFIXES, Recording, normalise, on_rate, read_csv, windows

if TYPE_CHECKING:
    from edgekit.pipeline.data import Dataset, Splits

DEFAULT_WINDOW_S = 2.0
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class SensorWindows:
    """What :func:`read_sensor_folder` read: the fields of a ``Dataset``; ``skipped`` as (file, reason) pairs."""

    x: np.ndarray
    y: np.ndarray
    labels: tuple[str, ...]
    spec: SensorSpec
    files: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    raw: np.ndarray
    groups: np.ndarray


def is_sensor_folder(root: str | Path) -> bool:
    """True when the class subfolders of ``root`` hold CSV recordings (what :func:`load_dataset` dispatches on)."""
    root = Path(root)
    if not root.is_dir():
        return False
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith("."):
            if next((p for p in d.rglob("*") if p.suffix.lower() in SENSOR_SUFFIXES and p.is_file()), None):
                return True
    return False


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; give a folder with one subfolder of CSV recordings per class.")
    dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if len(dirs) < 2:
        raise DatasetError(
            f"{root}: a dataset needs at least two class subfolders (found {len(dirs)}); put each class's "
            "recordings in its own subfolder."
        )
    return dirs


def _csv_files(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in SENSOR_SUFFIXES)


def file_rate(rec: Recording) -> float | None:
    """Rows per second of a recording from its median time step; None without a usable time column."""
    if rec.time is None or len(rec.time) < 2:
        return None
    step = float(np.median(np.diff(rec.time)))
    return 1.0 / step if step > 0 else None


def _three_digits(x: float) -> float:
    return float(f"{x:.3g}")


@dataclass(frozen=True, slots=True)
class Windowing:
    """How a sensor folder is cut when no bundle's spec says it: ``window`` and ``stride`` in seconds (stride
    None: half the window), ``rate`` in Hz (None: the recordings' median rate)."""

    window: float = DEFAULT_WINDOW_S
    stride: float | None = None
    rate: float | None = None

    def __post_init__(self) -> None:
        stride = self.window / 2 if self.stride is None else self.stride
        if not (self.window > 0 and stride > 0):
            raise UsageError(f"the window ({self.window:g} s) and stride ({stride:g} s) must be positive durations.")
        if self.rate is not None and self.rate <= 0:
            raise UsageError(f"the sample rate must be positive, got {self.rate:g} Hz.")
        object.__setattr__(self, "stride", stride)


def read_sensor_folder(
    path: str | Path,
    spec: SensorSpec | None = None,
    *,
    windowing: Windowing | None = None,
    strict: bool = False,
    on_progress: ProgressFn | None = None,
) -> SensorWindows:
    """Load ``path/CLASS/*.csv`` into windows labelled by folder.

    With ``spec`` (a bundle's) its channels, rate, window and normalisation are used as they are; otherwise
    the first readable file names the channels, ``windowing`` (default: 2 s every 1 s at the recordings' median
    rate) sets the rest, and the spec's mean/std are 0/1 until :func:`normalise_on_train`. ``x`` is the
    normalised windows, ``raw`` the windows before normalisation and ``groups`` the recording each window came
    from. A file that cannot be read, whose columns differ from the
    first file's, whose time column does not increase or that is shorter than one window is left out and listed
    in ``skipped`` (a :class:`DatasetError` with ``strict``).
    """
    root = Path(path)
    if spec is not None and windowing is not None:
        raise UsageError("the window, stride and rate come from the bundle's spec; do not give them too.")
    per_class = [(d.name, _csv_files(d)) for d in _class_folders(root)]
    empty = [name for name, files in per_class if not files]
    if empty:
        raise DatasetError(
            f"{root}: class folder(s) {', '.join(empty)} contain no CSV recordings; "
            "add recordings or remove the folder."
        )
    skipped: list[tuple[str, str]] = []

    def skip(f: Path, reason: str) -> None:
        reason = reason if str(f) in reason else f"{f}: {reason}"
        if strict:
            raise DatasetError(f"{reason} (strict mode: fix or remove the file, or load without --strict to skip it).")
        skipped.append((str(f), reason))

    total = sum(len(files) for _, files in per_class)
    channels = spec.channels if spec is not None else None
    recs: list[tuple[int, Path, Recording]] = []
    for label, (_name, files) in enumerate(per_class):
        for f in files:
            try:
                rec = read_csv(f, spec.channels if spec is not None else None)
            except InputError as exc:
                skip(f, str(exc))
            else:
                if channels is None:
                    channels = rec.channels
                if rec.channels != channels:
                    skip(
                        f,
                        f"{f}: columns {', '.join(rec.channels)} differ from the first file's ({', '.join(channels)})",
                    )
                else:
                    recs.append((label, f, rec))
            if on_progress is not None:
                on_progress(len(recs) + len(skipped), total)
    if not recs:
        raise DatasetError(f"{root}: no readable CSV recording; the first file's problem: {skipped[0][1]}.")
    if spec is None:
        spec = _spec_for(root, recs, channels or (), windowing or Windowing())
    xs: list[np.ndarray] = []
    ys: list[int] = []
    groups: list[int] = []
    files: list[str] = []
    for group, (label, f, rec) in enumerate(recs):
        try:
            values = on_rate(rec, spec, str(f))
        except InputError as exc:
            skip(f, str(exc))
            continue
        cut = windows(values, spec)
        if len(cut) == 0:
            skip(
                f,
                f"{f}: too short, {len(values)} rows at {spec.sample_rate:g} Hz; a window needs {spec.window} "
                f"({spec.window / spec.sample_rate:g} s)",
            )
            continue
        xs.append(cut)
        ys += [label] * len(cut)
        groups += [group] * len(cut)
        files += [str(f)] * len(cut)
    counts = np.bincount(np.asarray(ys, dtype=np.int64), minlength=len(per_class))
    unusable = [name for (name, _), n in zip(per_class, counts) if n == 0]
    if unusable:
        raise DatasetError(
            f"{root}: no usable recording left in class folder(s) {', '.join(unusable)} (see the skipped files); "
            "fix the recordings or record longer ones."
        )
    raw = np.concatenate(xs)
    return SensorWindows(
        x=normalise(raw, spec),
        y=np.asarray(ys, dtype=np.int64),
        labels=tuple(name for name, _ in per_class),
        spec=spec,
        files=tuple(files),
        skipped=tuple(skipped),
        raw=raw,
        groups=np.asarray(groups, dtype=np.int64),
    )


def _spec_for(
    root: Path,
    recs: list[tuple[int, Path, Recording]],
    channels: tuple[str, ...],
    windowing: Windowing,
) -> SensorSpec:
    window, stride, rate = windowing.window, float(windowing.stride or 0), windowing.rate
    if rate is None:
        rates = [r for r in (file_rate(rec) for _, _, rec in recs) if r is not None]
        if not rates:
            raise UsageError(
                f"{root}: the recordings have no time column (time, t, timestamp or time_s), so their rate is "
                "unknown; give it (e.g. --rate 50)."
            )
        rate = _three_digits(float(np.median(rates)))
    rows = int(round(window * rate))
    if rows < 2:
        raise UsageError(f"a window of {window:g} s at {rate:g} Hz is {rows} row(s); give a longer window.")
    return SensorSpec(channels=channels, window=rows, stride=max(1, int(round(stride * rate))), sample_rate=rate)


def normalise_on_train(splits: Splits) -> Splits:
    """Sensor splits normalised with the per-channel mean and std of the training windows (recorded in the spec
    every part then carries); any other splits unchanged. A channel that never varies keeps std 1."""
    spec = splits.train.spec
    if not isinstance(spec, SensorSpec) or splits.train.raw is None:
        return splits
    raw = splits.train.raw.astype(np.float64)
    mean = raw.mean(axis=(0, 1))
    std = raw.std(axis=(0, 1))
    std[std < 1e-6] = 1.0
    fitted = replace(spec, mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))

    def part(ds: Dataset) -> Dataset:
        assert ds.raw is not None, "every part of a sensor split carries its raw windows"
        return replace(ds, spec=fitted, x=normalise(ds.raw, fitted))

    return replace(splits, train=part(splits.train), val=part(splits.val), test=part(splits.test))
