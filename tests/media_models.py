"""Tiny audio and sensor bundles for the agent's tests, made without the host's dataset loaders: synthetic sine
tones and synthetic motion, features computed with the device's own code (``edgekit_agent.infer.audio`` /
``sensors``), a small Keras model, the real TFLite converter (in this process, as ``fit_models`` does:
``edgekit.pipeline.convert`` still takes only (N, H, W, C) representative samples) and the real bundle writer.
Also writes the .wav and .csv files a watched folder serves."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from edgekit_agent.contract.manifest import AudioSpec, SensorSpec

#: 0.5 s at 8 kHz: 30 frames of 16 mel bands (a small model and a fast fixture; the layout of a real KWS spec).
AUDIO_SPEC = AudioSpec(
    sample_rate=8000, clip_samples=4000, frame_length=256, frame_step=128, fft_length=256, n_mels=16, fmax=4000.0
)
TONES = {"low": 300.0, "mid": 1000.0, "high": 2500.0}  # class → tone frequency (Hz)
SENSOR_SPEC = SensorSpec(channels=("ax", "ay", "az"), window=32, stride=16, sample_rate=50.0)
GESTURES = ("idle", "shake", "tilt")


def tone(label: str, rng: np.random.Generator, n: int | None = None, rate: int | None = None) -> np.ndarray:
    """A sine tone of the class's frequency, random amplitude and phase, with a little noise (float32)."""
    rate = rate or AUDIO_SPEC.sample_rate
    n = n or AUDIO_SPEC.clip_samples
    t = np.arange(n) / rate
    x = rng.uniform(0.2, 0.7) * np.sin(2 * np.pi * TONES[label] * t + rng.uniform(0, 2 * np.pi))
    return np.clip(x + rng.normal(0, 0.01, n), -1, 1).astype(np.float32)


def gesture(label: str, rng: np.random.Generator, rows: int | None = None) -> np.ndarray:
    """(rows, 3) accelerometer values in g at the spec's rate: idle (gravity on az), shake (4 Hz on ax), tilt
    (gravity moved onto ay), each with noise."""
    rows = rows or SENSOR_SPEC.window
    t = np.arange(rows) / SENSOR_SPEC.sample_rate
    x = np.zeros((rows, 3))
    x[:, 2] = 1.0
    if label == "shake":
        x[:, 0] = rng.uniform(1.0, 2.0) * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 2 * np.pi))
    elif label == "tilt":
        angle = rng.uniform(0.6, 1.2)
        x[:, 1], x[:, 2] = np.sin(angle), np.cos(angle)
    return (x + rng.normal(0, 0.05, x.shape)).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int | None = None) -> Path:
    """16-bit PCM mono WAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate or AUDIO_SPEC.sample_rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).round().astype("<i2").tobytes())
    return path


def write_csv(path: Path, rows: np.ndarray) -> Path:
    """A recording with a time column (seconds) and the spec's channels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(len(rows)) / SENSOR_SPEC.sample_rate
    lines = ["time," + ",".join(SENSOR_SPEC.channels)]
    lines += [f"{ti:.4f}," + ",".join(f"{v:.5f}" for v in row) for ti, row in zip(t, rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_files(kind: str, root: Path, per_class: int, seed: int) -> list[tuple[Path, str]]:
    """ROOT/LABEL/*.wav (or .csv) files of the bundle's classes, as a person would drop them in a watched folder:
    WAVs a little longer than the clip, CSV recordings longer than a window (the agent serves the centre)."""
    rng = np.random.default_rng(seed)
    out = []
    for label in TONES if kind == "audio" else GESTURES:
        for i in range(per_class):
            if kind == "audio":
                out.append((write_wav(root / label / f"{label}{i}.wav", tone(label, rng, n=4800)), label))
            else:
                out.append((write_csv(root / label / f"{label}{i}.csv", gesture(label, rng, rows=48)), label))
    return out


def _dataset(kind: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    rng = np.random.default_rng(seed)
    labels = tuple(TONES) if kind == "audio" else GESTURES
    make = tone if kind == "audio" else gesture
    raw = np.stack([make(label, rng) for label in labels for _ in range(per_class)])
    y = np.repeat(np.arange(len(labels)), per_class)
    order = rng.permutation(len(y))
    return raw[order], y[order], labels


def _spec_and_features(kind: str, raw: np.ndarray) -> tuple[AudioSpec | SensorSpec, np.ndarray]:
    """The spec with the training set's normalisation, and the features of ``raw`` computed with it."""
    from dataclasses import replace

    from edgekit_agent.infer.audio import log_mel
    from edgekit_agent.infer.sensors import normalise

    if kind == "audio":
        plain = np.stack([log_mel(r, AUDIO_SPEC) for r in raw])
        spec = replace(AUDIO_SPEC, mean=float(plain.mean()), std=float(plain.std()))
        return spec, np.stack([log_mel(r, spec) for r in raw])
    spec = replace(
        SENSOR_SPEC,
        mean=tuple(float(v) for v in raw.mean(axis=(0, 1))),
        std=tuple(float(v) for v in raw.std(axis=(0, 1))),
    )
    return spec, np.stack([normalise(r, spec) for r in raw])


def build_media_bundle(kind: str, out: Path, *, per_class: int = 40, seed: int = 0) -> Path:
    """Train, convert and write the ``tones`` (audio) or ``gestures`` (sensor) bundle; returns its directory (the
    archive is next to it)."""
    import keras

    from edgekit.package.writer import write_bundle
    from edgekit.pipeline.reference import compute_reference
    from edgekit.profiles import load_profile

    from fit_models import int8_tflite

    raw, y, labels = _dataset(kind, per_class, seed)
    spec, x = _spec_and_features(kind, raw)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=spec.shape),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(len(labels), activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    tflite = int8_tflite(model, x)
    n = 8
    info = write_bundle(
        out,
        name="tones" if kind == "audio" else "gestures",
        profile=load_profile("raspberry-pi-4"),
        tflite=tflite,
        preprocess=spec,
        labels=list(labels),
        golden_x=x[:n],
        golden_y=y[:n],
        golden_raw=raw[:n],
        outputs_are="probabilities",
        reference=compute_reference(tflite, x, x, len(labels), outputs_are="probabilities").to_dict(),
    )
    return info.directory
