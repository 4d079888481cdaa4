"""Sound clip → input tensor, exactly as the manifest's :class:`AudioSpec` says, with numpy alone (no TensorFlow,
no audio library): the workstation computes its training and evaluation features with this same code, so the
features a device computes from a WAV file are the ones the model was trained on.

A WAV file is read by :func:`read_wav` (PCM 8/16/24/32-bit, 32/64-bit float, mono or more channels), made mono,
resampled and cut or padded to the clip length by :func:`fit_clip`, which says in one line what it changed;
:func:`log_mel` makes the features.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgekit_agent.contract.errors import InputError
from edgekit_agent.contract.manifest import AudioSpec, TensorSpec
from edgekit_agent.infer.preprocess import quantize

AUDIO_SUFFIXES = (".wav",)
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


@dataclass(frozen=True, slots=True)
class Sound:
    """Decoded samples, float32 in [-1, 1], shape (frames, channels), at ``rate`` Hz."""

    samples: np.ndarray
    rate: int


@dataclass(frozen=True, slots=True)
class Clip:
    """A mono clip ready for :func:`log_mel` (float32, ``spec.clip_samples`` long at ``spec.sample_rate``) and
    what was changed to make it (empty when the file was already mono, at the rate and of the length)."""

    samples: np.ndarray
    changes: tuple[str, ...] = ()


def read_wav(source: str | Path | bytes, name: str | None = None) -> Sound:
    """Decode a RIFF/WAVE file. Raises :class:`InputError` naming the file for anything else."""
    label = name or ("<bytes>" if isinstance(source, (bytes, bytearray)) else str(source))
    try:
        data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{label}: no such sound file.") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot read it ({exc.strerror}).") from None
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InputError(f"{label}: not a WAV file (no RIFF/WAVE header); export it as 16-bit PCM WAV.")
    fmt: tuple[int, int, int, int] | None = None
    chunks = io.BytesIO(data[12:])
    while True:
        head = chunks.read(8)
        if len(head) < 8:
            raise InputError(f"{label}: the WAV file has no audio data ('data' chunk); the file is truncated.")
        cid, size = head[:4], struct.unpack("<I", head[4:])[0]
        body = chunks.read(size)
        if size % 2:
            chunks.read(1)  # chunks are word-aligned
        if cid == b"fmt ":
            if len(body) < 16:
                raise InputError(f"{label}: the WAV format chunk is truncated; re-export the file.")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the format tag
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            if fmt is None:
                raise InputError(f"{label}: audio data comes before the WAV format chunk; re-export the file.")
            return Sound(_samples(body, *fmt, label=label), fmt[2])


def _samples(body: bytes, tag: int, channels: int, rate: int, bits: int, *, label: str) -> np.ndarray:
    if channels < 1 or rate < 1:
        raise InputError(f"{label}: the WAV header says {channels} channels at {rate} Hz; the file is corrupt.")
    width = bits // 8
    if tag == _PCM and bits in (8, 16, 24, 32):
        usable = len(body) - len(body) % (width * channels)
        raw = np.frombuffer(body[:usable], dtype=np.uint8)
        if bits == 8:
            x = (raw.astype(np.float32) - 128.0) / 128.0
        elif bits == 24:
            b = raw.reshape(-1, 3).astype(np.int32)
            v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            x = (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
        else:
            x = np.frombuffer(raw.tobytes(), dtype=f"<i{width}").astype(np.float32) / float(1 << (bits - 1))
    elif tag == _FLOAT and bits in (32, 64):
        usable = len(body) - len(body) % (width * channels)
        x = np.frombuffer(body[:usable], dtype=f"<f{width}").astype(np.float32)
        if not np.isfinite(x).all():
            raise InputError(f"{label}: the float WAV holds values that are not finite numbers; re-export it.")
        x = np.clip(x, -1.0, 1.0)
    else:
        raise InputError(
            f"{label}: WAV encoding {tag} with {bits}-bit samples is not supported; export it as 16-bit PCM WAV."
        )
    if x.size == 0:
        raise InputError(f"{label}: the WAV file holds no samples.")
    return x.reshape(-1, channels)


def fit_clip(sound: Sound, spec: AudioSpec) -> Clip:
    """Mono, ``spec.sample_rate`` and ``spec.clip_samples`` long: channels averaged, resampled (low-pass filter
    first when the rate goes down), then the central ``clip_samples`` kept or zeros added on both sides."""
    x = sound.samples
    changes = []
    if x.shape[1] != 1:
        changes.append(f"{x.shape[1]} channels mixed to mono")
    x = x.mean(axis=1, dtype=np.float32) if x.shape[1] != 1 else x[:, 0]
    if sound.rate != spec.sample_rate:
        changes.append(f"resampled from {sound.rate} Hz to {spec.sample_rate} Hz")
        x = resample(x, sound.rate, spec.sample_rate)
    n, want = len(x), spec.clip_samples
    if n != want:
        secs = f"{n / spec.sample_rate:.2f} s"
        if n > want:
            start = (n - want) // 2
            x = x[start : start + want]
            changes.append(f"{secs} cut to the central {want / spec.sample_rate:.2f} s")
        else:
            left = (want - n) // 2
            x = np.pad(x, (left, want - n - left))
            changes.append(f"{secs} padded with silence to {want / spec.sample_rate:.2f} s")
    return Clip(np.ascontiguousarray(x, dtype=np.float32), tuple(changes))


def resample(x: np.ndarray, rate: int, to: int) -> np.ndarray:
    """Linear interpolation onto the new rate's sample times, after a windowed-sinc low-pass at the new Nyquist
    frequency when going down (without it, 44.1 kHz speech folds its upper band into 0-8 kHz)."""
    if to < rate:
        x = np.convolve(x, _lowpass(to / rate), mode="same").astype(np.float32)
    n_out = max(1, int(round(len(x) * to / rate)))
    t = np.arange(n_out, dtype=np.float64) * (rate / to)
    return np.interp(t, np.arange(len(x), dtype=np.float64), x).astype(np.float32)


@lru_cache(maxsize=8)
def _lowpass(cutoff: float, taps: int = 63) -> np.ndarray:
    n = np.arange(taps) - (taps - 1) / 2
    h = cutoff * np.sinc(cutoff * n) * np.hamming(taps)
    return (h / h.sum()).astype(np.float32)


@lru_cache(maxsize=8)
def _window(length: int) -> np.ndarray:
    w = np.hanning(length + 1)[:-1].astype(np.float32)  # periodic Hann, as spectrogram code uses
    w.flags.writeable = False
    return w


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


@lru_cache(maxsize=8)
def mel_filterbank(spec: AudioSpec) -> np.ndarray:
    """(fft_length // 2 + 1, n_mels) triangular filters, evenly spaced on the mel scale from fmin to fmax."""
    bins = np.fft.rfftfreq(spec.fft_length, d=1.0 / spec.sample_rate)
    edges = _hz_to_mel(np.array([spec.fmin, spec.fmax]))
    centres = np.linspace(edges[0], edges[1], spec.n_mels + 2)
    mel = _hz_to_mel(bins)[:, None]
    lower, centre, upper = centres[:-2], centres[1:-1], centres[2:]
    fb = np.maximum(0.0, np.minimum((mel - lower) / (centre - lower), (upper - mel) / (upper - centre)))
    fb = fb.astype(np.float32)
    fb.flags.writeable = False
    return fb


def log_mel(samples: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """A clip (``clip_samples`` float32) → normalised log-mel features (frames, n_mels, 1), float32."""
    x = np.asarray(samples, dtype=np.float32)
    if x.shape != (spec.clip_samples,):
        raise InputError(f"a clip of {spec.clip_samples} samples is needed, got shape {x.shape}.")
    frames = np.lib.stride_tricks.sliding_window_view(x, spec.frame_length)[:: spec.frame_step][: spec.frames]
    power = np.abs(np.fft.rfft(frames * _window(spec.frame_length), n=spec.fft_length)) ** 2
    feats = np.log(power.astype(np.float32) @ mel_filterbank(spec) + np.float32(spec.log_offset))
    feats = (feats - np.float32(spec.mean)) / np.float32(spec.std)
    return feats.astype(np.float32)[:, :, None]


class AudioPreprocessor:
    """WAV files (paths or bytes) or raw waveforms → ready input tensors with a batch axis of 1."""

    suffixes = AUDIO_SUFFIXES

    def __init__(self, spec: AudioSpec, tensor: TensorSpec) -> None:
        self.spec = spec
        self.tensor = tensor
        if tuple(tensor.shape) != (1, *spec.shape):
            raise InputError(
                f"the audio features are {(1, *spec.shape)} but the model's input '{tensor.name}' is "
                f"{tuple(tensor.shape)}; the manifest's preprocess spec does not match the model."
            )

    def floats(self, source: str | Path | bytes) -> np.ndarray:
        """Features (frames, n_mels, 1) of a WAV file, converted to the spec's rate and length as needed."""
        label = None if isinstance(source, (bytes, bytearray)) else str(source)
        return log_mel(fit_clip(read_wav(source, label), self.spec).samples, self.spec)

    def from_raw(self, samples: object) -> np.ndarray:
        """Features of a mono waveform already at the spec's rate: floats in [-1, 1], or whole numbers taken as
        16-bit PCM values (-32768..32767). Cut or padded to the clip length around its centre, as a file is."""
        try:
            a = np.asarray(samples)
        except (ValueError, TypeError):
            raise InputError("the samples must be a flat list of numbers (a mono waveform).") from None
        if a.ndim != 1 or a.size == 0 or a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number):
            raise InputError(f"the samples must be a flat, non-empty list of numbers, got shape {a.shape}.")
        if np.issubdtype(a.dtype, np.integer):
            if a.min() < -32768 or a.max() > 32767:
                raise InputError("whole-number samples are 16-bit PCM values and must lie in -32768..32767.")
            x = a.astype(np.float32) / 32768.0
        else:
            if not np.isfinite(a).all():
                raise InputError("the samples hold values that are not finite numbers.")
            if np.abs(a).max() > 1.0:
                raise InputError("samples given as decimals must lie in [-1, 1] (or send 16-bit whole numbers).")
            x = a.astype(np.float32)
        return log_mel(fit_clip(Sound(x[:, None], self.spec.sample_rate), self.spec).samples, self.spec)

    def from_array(self, x: np.ndarray) -> np.ndarray:
        """Features already computed (frames, n_mels, 1) → quantised input with batch axis."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape != self.spec.shape:
            raise InputError(f"features of shape {x.shape} given, the model wants {self.spec.shape}.")
        return quantize(x, self.tensor)[None, ...]

    def __call__(self, source: str | Path | bytes) -> np.ndarray:
        return quantize(self.floats(source), self.tensor)[None, ...]
