"""Synthetic motion recordings: seeded accelerometer + gyroscope gestures written as CSV, nothing downloaded.

Four classes a wrist-worn IMU tells apart: ``idle`` (resting hand: gravity, tremor, sensor noise), ``wave``
(side to side, the wrist rolling with it), ``circle`` (the hand drawing circles) and ``punch`` (sharp thrusts
forward and back). Each recording varies what people vary: speed, amplitude, how the sensor sits on the hand
(a random rotation of both sensors, so gravity lands on other axes), sensor noise and gyro bias, and the time
stamps jitter around the nominal rate as a real logger's do. Columns: ``time`` (s), ``ax, ay, az`` (m/s²,
gravity included), ``gx, gy, gz`` (deg/s). The data is synthetic: it shows the pipeline works end to end, not
what accuracy real recordings reach.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit_agent.contract.errors import DatasetError

GESTURES = ("circle", "idle", "punch", "wave")
CHANNELS = ("ax", "ay", "az", "gx", "gy", "gz")
G = 9.81


@dataclass(frozen=True, slots=True)
class MotionSummary:
    """What :func:`write_gestures` wrote."""

    directory: Path
    classes: tuple[str, ...]
    recordings: int
    rate: float
    seconds: tuple[float, float]


def _rotation(rng: np.random.Generator, tilt: float) -> np.ndarray:
    """A random turn of up to ``tilt`` radians about each axis: how the band sits on the wrist (a band keeps the
    sensor roughly aligned with the forearm, so the turn is tens of degrees, not any orientation)."""
    yaw, ax, ay = rng.uniform(-tilt, tilt), rng.uniform(-tilt, tilt), rng.uniform(-tilt, tilt)
    cz, sz, cx, sx, cy, sy = np.cos(yaw), np.sin(yaw), np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ rx @ ry


def _idle(t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    f = rng.uniform(6.0, 10.0)  # physiological tremor
    acc = np.stack([rng.uniform(0.02, 0.08) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for _ in range(3)], 1)
    drift = np.cumsum(rng.normal(0, 0.02, (len(t), 3)), axis=0)  # the resting hand shifts a little
    gyro = np.stack([rng.uniform(0.5, 2.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for _ in range(3)], 1)
    return acc + 0.05 * drift, gyro


def _wave(t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    f, amp = rng.uniform(1.2, 2.2), rng.uniform(0.05, 0.12)  # Hz, metres of hand travel
    w, ph = 2 * np.pi * f, rng.uniform(0, 2 * np.pi)
    acc = np.zeros((len(t), 3))
    acc[:, 0] = -amp * w**2 * np.sin(w * t + ph)
    acc[:, 2] = 0.3 * amp * w**2 * np.sin(2 * (w * t + ph))  # the arc lifts the hand at both ends
    gyro = np.zeros((len(t), 3))
    gyro[:, 1] = rng.uniform(60, 150) * np.cos(w * t + ph)  # the wrist rolls with each swing
    return acc, gyro


def _circle(t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    f, r = rng.uniform(0.6, 1.3), rng.uniform(0.1, 0.25)
    w, ph, sense = 2 * np.pi * f, rng.uniform(0, 2 * np.pi), rng.choice([-1.0, 1.0])
    acc = np.zeros((len(t), 3))
    acc[:, 0] = -r * w**2 * np.cos(w * t + ph)
    acc[:, 1] = -sense * r * w**2 * np.sin(w * t + ph)
    gyro = np.zeros((len(t), 3))
    gyro[:, 2] = sense * np.degrees(w) * rng.uniform(0.3, 0.6)  # the hand turns as it goes round
    gyro[:, 0] = rng.uniform(10, 30) * np.sin(w * t + ph)
    return acc, gyro


def _punch(t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    period, peak = rng.uniform(0.7, 1.3), rng.uniform(15.0, 30.0)
    width = rng.uniform(0.04, 0.07)  # seconds: a punch accelerates and stops within a tenth of a second
    acc, gyro = np.zeros((len(t), 3)), np.zeros((len(t), 3))
    centres = np.arange(rng.uniform(0, period), t[-1] + period, period)
    for c in centres + rng.normal(0, 0.05, len(centres)):  # nobody punches like a metronome
        u = (t - c) / width
        pulse = -u * np.exp(-0.5 * u**2) * 1.65  # the derivative of a Gaussian: thrust, then the stop
        acc[:, 1] += peak * pulse
        gyro[:, 0] += rng.uniform(20, 60) * np.exp(-0.5 * ((t - c) / (2 * width)) ** 2)
    return acc, gyro


_MOTIONS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "circle": _circle,
    "idle": _idle,
    "punch": _punch,
    "wave": _wave,
}


def gesture_recording(gesture: str, seconds: float, rate: float, rng: np.random.Generator) -> np.ndarray:
    """One recording (rows, 7): time then the six channels, jittered time stamps, sensor frame."""
    n = int(seconds * rate)
    jitter = rng.uniform(0.0, 0.2) / rate
    t = np.arange(n) / rate + rng.normal(0.0, jitter, n).clip(-0.4 / rate, 0.4 / rate)  # still increasing
    acc, gyro = _MOTIONS[gesture](t - t[0], rng)
    rot = _rotation(rng, tilt=0.3).T  # world → sensor frame
    acc = (acc + np.array([0.0, 0.0, G])) @ rot.T
    gyro = gyro @ rot.T
    acc += rng.normal(0, rng.uniform(0.03, 0.15), acc.shape) + rng.normal(0, 0.1, 3)  # noise, offset
    gyro += rng.normal(0, rng.uniform(0.2, 1.0), gyro.shape) + rng.normal(0, 1.0, 3)  # noise, bias
    start = rng.uniform(0, 100)
    return np.column_stack([t + start, acc, gyro])


def write_gestures(
    out_dir: str | Path,
    *,
    recordings: int = 20,
    seconds: tuple[float, float] = (6.0, 10.0),
    rate: float = 50.0,
    seed: int = 0,
    gestures: tuple[str, ...] = GESTURES,
) -> MotionSummary:
    """Write ``recordings`` CSV files per gesture as ``OUT/GESTURE/GESTURE_NNN.csv``, each between ``seconds``
    long at about ``rate`` Hz; the same seed writes the same files."""
    out = Path(out_dir)
    unknown = [g for g in gestures if g not in _MOTIONS]
    if unknown:
        raise DatasetError(f"unknown gesture(s) {', '.join(unknown)}; choose from {', '.join(GESTURES)}.")
    rng = np.random.default_rng(seed)
    header = "time," + ",".join(CHANNELS)
    try:
        for gesture in gestures:
            (out / gesture).mkdir(parents=True, exist_ok=True)
            for i in range(recordings):
                rows = gesture_recording(gesture, rng.uniform(*seconds), rate, rng)
                np.savetxt(
                    out / gesture / f"{gesture}_{i:03d}.csv",
                    rows,
                    fmt=["%.4f"] + ["%.4f"] * len(CHANNELS),
                    delimiter=",",
                    header=header,
                    comments="",
                )
    except OSError as exc:
        raise DatasetError(
            f"cannot write the gestures dataset to {out}: {exc.strerror}; choose a writable directory."
        ) from None
    return MotionSummary(
        directory=out, classes=tuple(gestures), recordings=recordings * len(gestures), rate=rate, seconds=seconds
    )
