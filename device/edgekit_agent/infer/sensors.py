"""Sensor recording → input tensor, exactly as the manifest's :class:`SensorSpec` says (numpy and the standard
library only), shared by the workstation's training windows and the device's serving.

A recording is a CSV file with a header row: an optional time column (``time``, ``t``, ``timestamp`` or
``time_s``, in seconds) and one column per channel, matched by name. :func:`read_csv` reads it;
:func:`on_rate` resamples it to the spec's rate on its time column; :func:`windows` cuts it for training and
:func:`central_window` picks the window a device serves.
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit_agent.contract.errors import InputError
from edgekit_agent.contract.manifest import SensorSpec, TensorSpec
from edgekit_agent.infer.preprocess import quantize

SENSOR_SUFFIXES = (".csv",)
TIME_COLUMNS = ("time", "t", "timestamp", "time_s")


@dataclass(frozen=True, slots=True)
class Recording:
    """The columns of one CSV file: ``values`` (rows, channels) float32 in ``channels`` order and the time column
    in seconds (None when the file has none: rows are taken as evenly spaced at the spec's rate)."""

    values: np.ndarray
    channels: tuple[str, ...]
    time: np.ndarray | None = None


def read_csv(source: str | Path | bytes, channels: tuple[str, ...] | None = None, name: str | None = None) -> Recording:
    """Read a recording; with ``channels``, exactly those columns in that order. Raises :class:`InputError`
    naming the file, and the line for a value that is not a number."""
    label = name or ("<bytes>" if isinstance(source, (bytes, bytearray)) else str(source))
    try:
        data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
        text = data.decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{label}: no such CSV file.") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot read it ({exc.strerror}).") from None
    except UnicodeDecodeError:
        raise InputError(f"{label}: not a text CSV file (not UTF-8); export it as CSV.") from None
    rows = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(rows, [])]
    if not header or not any(header):
        raise InputError(f"{label}: the CSV file is empty; it needs a header row naming its columns.")
    if all(_is_number(h) for h in header):
        raise InputError(
            f"{label}: the first line holds numbers, not column names; add a header row naming the columns "
            "(e.g. time,ax,ay,az)."
        )
    lower = [h.lower() for h in header]
    time_at = next((lower.index(t) for t in TIME_COLUMNS if t in lower), None)
    names = tuple(h for i, h in enumerate(header) if i != time_at)
    if channels is None:
        channels = names
    missing = [c for c in channels if c not in header]
    if missing:
        raise InputError(
            f"{label}: no column named {', '.join(repr(m) for m in missing)} (the file has {', '.join(header)}); "
            "the model reads these channels by name."
        )
    cols = [header.index(c) for c in channels]
    want = cols + ([time_at] if time_at is not None else [])
    a = _fast_rows(text, want)
    if a is None:  # something numpy's parser refuses: the csv module finds the line (or reads quoted cells)
        values: list[list[float]] = []
        for line, row in enumerate(rows, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            try:
                values.append([float(row[i]) for i in want])
            except (ValueError, IndexError):
                raise InputError(
                    f"{label}, line {line}: expected a number in each of {', '.join(header[i] for i in want)}; "
                    "fix or remove the line."
                ) from None
        a = np.asarray(values, dtype=np.float64).reshape(-1, len(want))
    if not len(a):
        raise InputError(f"{label}: the CSV file has a header but no rows.")
    if not np.isfinite(a).all():
        raise InputError(f"{label}: the recording holds values that are not finite numbers (inf or NaN).")
    n = len(cols)
    return Recording(a[:, :n].astype(np.float32), tuple(channels), a[:, n] if time_at is not None else None)


def _fast_rows(text: str, want: list[int]) -> np.ndarray | None:
    """The ``want`` columns of every row after the header, parsed by numpy in C (six times faster than the csv
    module on a 400-row recording); None when numpy refuses the text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file body: numpy warns, the caller reports it
            return np.loadtxt(
                io.StringIO(text), delimiter=",", skiprows=1, usecols=want, dtype=np.float64, ndmin=2, comments=None
            )
    except (ValueError, IndexError):
        return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def on_rate(rec: Recording, spec: SensorSpec, label: str = "<recording>") -> np.ndarray:
    """The recording's values at ``spec.sample_rate`` (rows, channels): linear interpolation on the time column
    when there is one; otherwise the rows as they are."""
    if rec.time is None or len(rec.time) < 2:
        return rec.values
    t = rec.time - rec.time[0]
    if np.any(np.diff(t) <= 0):
        raise InputError(f"{label}: the time column must increase from row to row; sort the rows by time.")
    grid = np.arange(0.0, t[-1] + 0.5 / spec.sample_rate, 1.0 / spec.sample_rate)
    return np.stack([np.interp(grid, t, rec.values[:, c]) for c in range(rec.values.shape[1])], axis=1).astype(
        np.float32
    )


def windows(values: np.ndarray, spec: SensorSpec) -> np.ndarray:
    """Training windows (n, window, channels): every ``stride`` rows; none when the recording is shorter than
    one window."""
    if len(values) < spec.window:
        return np.empty((0, spec.window, values.shape[1]), dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(values, spec.window, axis=0)[:: spec.stride]
    return np.ascontiguousarray(view.transpose(0, 2, 1), dtype=np.float32)


def central_window(values: np.ndarray, spec: SensorSpec, label: str = "<recording>") -> np.ndarray:
    """The window a device serves from one file: the central ``window`` rows."""
    if len(values) < spec.window:
        secs = spec.window / spec.sample_rate
        raise InputError(
            f"{label}: {len(values)} rows at {spec.sample_rate:g} Hz, the model needs a window of {spec.window} "
            f"({secs:g} s); record longer."
        )
    start = (len(values) - spec.window) // 2
    return values[start : start + spec.window]


def normalise(window: np.ndarray, spec: SensorSpec) -> np.ndarray:
    return ((window - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)).astype(np.float32)


class SensorPreprocessor:
    """CSV recordings (paths or bytes) or raw rows → ready input tensors with a batch axis of 1."""

    suffixes = SENSOR_SUFFIXES

    def __init__(self, spec: SensorSpec, tensor: TensorSpec) -> None:
        self.spec = spec
        self.tensor = tensor
        if tuple(tensor.shape) != (1, *spec.shape):
            raise InputError(
                f"sensor windows are {(1, *spec.shape)} but the model's input '{tensor.name}' is "
                f"{tuple(tensor.shape)}; the manifest's preprocess spec does not match the model."
            )

    def floats(self, source: str | Path | bytes) -> np.ndarray:
        label = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
        rec = read_csv(source, self.spec.channels, label)
        return normalise(central_window(on_rate(rec, self.spec, label), self.spec, label), self.spec)

    def from_raw(self, samples: object) -> np.ndarray:
        """Rows (rows, channels) of raw values at the spec's rate, channels in the manifest's order."""
        try:
            a = np.asarray(samples)
        except (ValueError, TypeError):
            raise InputError("the samples must be a list of rows of numbers (rows × channels).") from None
        if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number):  # np.float32("1.5") would pass a string
            raise InputError("the samples must be a list of rows of numbers (rows × channels).")
        if a.ndim != 2 or a.shape[1] != len(self.spec.channels):
            raise InputError(
                f"the samples must be rows of {len(self.spec.channels)} values ({', '.join(self.spec.channels)}), "
                f"got shape {a.shape}."
            )
        if not (np.abs(a) <= np.finfo(np.float32).max).all():
            raise InputError("the samples hold values that are not finite numbers (or beyond float32's range).")
        a = a.astype(np.float32)
        return normalise(central_window(a, self.spec, "samples"), self.spec)

    def from_array(self, x: np.ndarray) -> np.ndarray:
        """A normalised window (window, channels) → quantised input with batch axis."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape != self.spec.shape:
            raise InputError(f"a window of shape {x.shape} given, the model wants {self.spec.shape}.")
        return quantize(x, self.tensor)[None, ...]

    def __call__(self, source: str | Path | bytes) -> np.ndarray:
        return quantize(self.floats(source), self.tensor)[None, ...]
