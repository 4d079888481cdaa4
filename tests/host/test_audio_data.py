"""Audio class folders: WAV files of every kind the test writes itself (8/16/24-bit PCM, float, stereo, 44.1 kHz,
short, long, broken, empty) load through the device's log-mel code, with each conversion named; noisy copies
stay with their clip on the training side; the normalisation recorded in the spec is the one applied."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.pipeline import audio_data
from edgekit.pipeline.data import load_dataset, split_dataset
from edgekit.pipeline.speech import write_wav
from edgekit_agent.contract.errors import DatasetError, ExitStatus
from edgekit_agent.contract.manifest import AudioSpec
from edgekit_agent.infer.audio import fit_clip, log_mel, read_wav

RATE = 16000


def tone(freq: float, seconds: float = 1.0, rate: int = RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def riff(fmt_tag: int, channels: int, rate: int, bits: int, data: bytes) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def pcm(x: np.ndarray, bits: int, channels: int = 1, rate: int = RATE) -> bytes:
    frames = np.repeat(x[:, None], channels, axis=1)
    if bits == 8:
        data = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
    elif bits == 24:
        v = np.round(frames * (2**23 - 1)).astype(np.int32).reshape(-1)
        data = b"".join(int(s & 0xFFFFFF).to_bytes(3, "little") for s in v)
    else:
        data = np.round(frames * (2 ** (bits - 1) - 1)).astype(f"<i{bits // 8}").tobytes()
    return riff(1, channels, rate, bits, data)


@pytest.mark.parametrize(
    ("make", "tol"),
    [
        (lambda x: pcm(x, 8), 1 / 64),
        (lambda x: pcm(x, 16), 1e-4),
        (lambda x: pcm(x, 24), 1e-6),
        (lambda x: pcm(x, 32), 1e-6),
        (lambda x: riff(3, 1, RATE, 32, x.astype("<f4").tobytes()), 0.0),
        (lambda x: riff(3, 1, RATE, 64, x.astype("<f8").tobytes()), 0.0),
        (lambda x: pcm(x, 16, channels=2), 1e-4),
    ],
    ids=["pcm8", "pcm16", "pcm24", "pcm32", "float32", "float64", "stereo16"],
)
def test_every_encoding_decodes_to_the_same_waveform(make, tol):
    x = tone(440.0)
    sound = read_wav(make(x), "t.wav")
    clip = fit_clip(sound, AudioSpec())
    assert np.max(np.abs(clip.samples - x)) <= tol + 1e-7
    assert clip.changes == (("2 channels mixed to mono",) if sound.samples.shape[1] == 2 else ())


def class_folder(root: Path) -> dict[str, Path]:
    """Two classes of tones, one of each awkward kind of file in class 'a'."""
    a, b = root / "a", root / "b"
    a.mkdir(parents=True)
    b.mkdir()
    files = {
        "pcm8": pcm(tone(300), 8),
        "pcm24": pcm(tone(300), 24),
        "float": riff(3, 1, RATE, 32, tone(300).astype("<f4").tobytes()),
        "stereo": pcm(tone(300), 16, channels=2),
        "rate44k": pcm(tone(300, rate=44100), 16, rate=44100),
        "short": pcm(tone(300, 0.3), 16),
        "long": pcm(tone(300, 2.5), 16),
        "broken": b"RIFF\x10\x00\x00\x00WAVEjunkjunk",
        "empty": b"",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = a / f"{name}.wav"
        paths[name].write_bytes(data)
    for i in range(4):
        write_wav(a / f"plain{i}.wav", tone(300 + 10 * i))
        write_wav(b / f"plain{i}.wav", tone(2000 + 10 * i))
    return paths


def test_edge_cases_are_converted_or_skipped_and_named(tmp_path):
    paths = class_folder(tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert ds.spec == AudioSpec()
    assert sorted(Path(s.file).name for s in ds.skipped) == ["broken.wav", "empty.wav"]
    assert all(s.file in s.reason for s in ds.skipped)  # the line names the file
    notes = "\n".join(ds.notes)
    for name, change in [
        ("stereo", "2 channels mixed to mono"),
        ("rate44k", "resampled from 44100 Hz to 16000 Hz"),
        ("short", "0.30 s padded with silence to 1.00 s"),
        ("long", "2.50 s cut to the central 1.00 s"),
    ]:
        assert f"{paths[name]}: {change}" in notes
    assert "pcm8" not in notes and "pcm24" not in notes and "float" not in notes  # nothing to convert
    assert ds.x.shape == (len(ds), *AudioSpec().shape) and np.isfinite(ds.x).all()
    assert ds.raw.shape == (len(ds), RATE) and ds.raw.dtype == np.float32
    assert len(ds) == 7 + 4 + 4 and ds.augmented is not None and not ds.augmented.any()  # no noise folder
    # The resampled 300 Hz tone has its energy in the same mel band as the native one.
    rows = {f"{Path(f).parent.name}/{Path(f).stem}": i for i, f in enumerate(ds.files)}
    peak = lambda i: int(ds.x[i, 10:-10, :, 0].mean(axis=0).argmax())  # noqa: E731
    assert peak(rows["a/rate44k"]) == peak(rows["a/plain0"]) != peak(rows["b/plain0"])
    with pytest.raises(DatasetError, match="broken.wav"):
        load_dataset(tmp_path / "ds", strict=True)


def test_many_files_with_one_change_get_one_line(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            (tmp_path / cls / f"{i}.wav").write_bytes(pcm(tone(200 + 300 * i, rate=8000), 16, rate=8000))
    ds = load_dataset(tmp_path)
    assert len(ds.notes) == 1
    assert ds.notes[0].startswith("10 files: resampled from 8000 Hz to 16000 Hz (first: ")


def test_noise_copies_train_only_and_stay_with_their_clip(tmp_path):
    root = tmp_path / "ds"
    for c, cls in enumerate(("a", "b", "c")):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            write_wav(root / cls / f"{i}.wav", tone(250 * (c + 1) + 7 * i))
    (root / audio_data.BACKGROUND_NOISE).mkdir()
    rng = np.random.default_rng(0)
    write_wav(root / audio_data.BACKGROUND_NOISE / "white.wav", 0.3 * rng.uniform(-1, 1, 3 * RATE))
    ds = load_dataset(root)
    copies = 1 + len(audio_data.NOISE_SNRS_DB)
    assert ds.labels == ("a", "b", "c")  # the noise folder is not a class
    assert len(ds) == 30 * copies and int(ds.augmented.sum()) == 30 * (copies - 1)
    # A noisy copy is its clip plus noise at the SNR: same group, different waveform, close features.
    first = np.flatnonzero(ds.groups == ds.groups[0])
    assert len(first) == copies and len({ds.files[i] for i in first}) == 1
    assert not np.array_equal(ds.raw[first[0]], ds.raw[first[1]])
    splits = split_dataset(ds, seed=3)
    seen = [set(p.files) for p in (splits.train, splits.val, splits.test)]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert not splits.val.augmented.any() and not splits.test.augmented.any()
    assert len(splits.val.y) > 0 and len(splits.test.y) > 0
    # The same folder loads to the same noise (seeded per file, whatever the load order).
    assert np.array_equal(load_dataset(root).raw, ds.raw)


def test_normalise_records_what_it_applied(tmp_path):
    class_folder(tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    splits = audio_data.normalise(split_dataset(ds, seed=0))
    spec = splits.spec
    assert isinstance(spec, AudioSpec) and spec.std > 0 and spec.mean != 0.0
    assert float(np.float32(spec.mean)) == spec.mean  # a float32, so JSON carries it exactly
    assert abs(float(splits.train.x.mean())) < 1e-3 and abs(float(splits.train.x.std()) - 1) < 1e-3
    # A device computing features with the recorded spec gets exactly the training floats.
    for part in (splits.train, splits.test):
        for i in range(len(part.y)):
            assert np.array_equal(log_mel(part.raw[i], spec), part.x[i])
    assert audio_data.normalise(splits) is splits  # already normalised: left as it is


def test_keywords_without_espeak_names_the_package(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no espeak-ng on this PATH
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit", "datasets", "keywords", str(tmp_path / "kw")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == ExitStatus.UNAVAILABLE, proc.stderr
    assert "apt install espeak-ng" in proc.stderr
    assert not (tmp_path / "kw").exists()
