"""Sensor datasets without TensorFlow: CSV edge cases, windowing, the rate, the split by recording, the
normalisation fitted on the training split, and the synthetic gestures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.cli import main
from edgekit.pipeline.data import load_dataset, load_sensor_folder, split_dataset
from edgekit.pipeline.motion import CHANNELS, write_gestures
from edgekit.pipeline.sensor_data import Windowing, is_sensor_folder, normalise_on_train
from edgekit_agent.contract.errors import DatasetError, InputError, UsageError
from edgekit_agent.contract.manifest import SensorSpec
from edgekit_agent.infer.sensors import on_rate, read_csv, windows

SPEC = SensorSpec(channels=("ax", "ay"), window=10, stride=5, sample_rate=10.0)


def write_csv(path: Path, rows: np.ndarray, header: str = "time,ax,ay") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows)
    path.write_text((header + "\n" if header else "") + body + "\n")
    return path


def recording(seconds: float, rate: float = 10.0, level: float = 0.0, jitter: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate + rng.uniform(-jitter, jitter, n) / rate
    return np.column_stack([t, level + np.sin(t), level + np.cos(3 * t)])


# --- one CSV file (the device's reader) ---------------------------------------------------------------
def test_missing_column_names_it_and_the_columns_the_file_has(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "a.csv", recording(2)[:, :2], header="time,ax")
    with pytest.raises(InputError, match=r"a\.csv: no column named 'ay' \(the file has time, ax\)"):
        read_csv(f, ("ax", "ay"))


def test_non_numeric_line_names_the_file_and_the_line(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("time,ax,ay\n0,1,2\n0.1,1,oops\n")
    with pytest.raises(InputError, match=r"a\.csv, line 3: expected a number"):
        read_csv(f)


def test_a_file_without_header_is_refused_with_what_to_add(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "a.csv", recording(2), header="")
    with pytest.raises(InputError, match=r"a\.csv: the first line holds numbers.*add a header row"):
        read_csv(f)


def test_quoted_cells_blank_lines_and_extra_columns_read_as_plain_ones(tmp_path: Path) -> None:
    plain = read_csv(write_csv(tmp_path / "a.csv", recording(1)))
    rows = (tmp_path / "a.csv").read_text().splitlines()
    quoted = [rows[0] + ",note"] + [",".join(f'"{v}"' for v in r.split(",")) + ",x" for r in rows[1:]]
    quoted.insert(3, "")
    (tmp_path / "b.csv").write_text("\n".join(quoted) + "\n")
    other = read_csv(tmp_path / "b.csv", ("ax", "ay"))
    np.testing.assert_array_equal(other.values, plain.values)
    np.testing.assert_array_equal(other.time, plain.time)


def test_time_that_does_not_increase_is_refused(tmp_path: Path) -> None:
    rows = recording(2)
    rows[5, 0] = rows[3, 0]
    rec = read_csv(write_csv(tmp_path / "a.csv", rows))
    with pytest.raises(InputError, match="the time column must increase"):
        on_rate(rec, SPEC, "a.csv")


def test_jittered_time_stamps_are_resampled_onto_the_rate(tmp_path: Path) -> None:
    rows = recording(4, jitter=0.3)
    rec = read_csv(write_csv(tmp_path / "a.csv", rows))
    values = on_rate(rec, SPEC, "a.csv")
    # A grid every 0.1 s from the first time stamp to the last; the signal is smooth, so linear interpolation
    # of the jittered samples lands close to the true values on the grid.
    grid = np.arange(len(values)) / SPEC.sample_rate
    assert abs(len(values) - 40) <= 1
    np.testing.assert_allclose(values[:, 0], np.sin(grid + rows[0, 0]), atol=0.02)


def test_windows_every_stride_rows() -> None:
    values = np.arange(34 * 2, dtype=np.float32).reshape(34, 2)
    w = windows(values, SPEC)
    assert w.shape == (1 + (34 - 10) // 5, 10, 2)
    np.testing.assert_array_equal(w[2], values[10:20])
    assert windows(values[:9], SPEC).shape == (0, 10, 2)


# --- a folder of recordings -----------------------------------------------------------------------------
@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "motion"
    for i in range(4):
        write_csv(root / "still" / f"s{i}.csv", recording(3 + i, level=0.0, seed=i))
        write_csv(root / "shake" / f"k{i}.csv", recording(3 + i, level=5.0, jitter=0.2, seed=10 + i))
    return root


def test_a_folder_of_csv_is_cut_into_windows_labelled_by_folder(folder: Path) -> None:
    assert is_sensor_folder(folder)
    ds = load_dataset(folder)
    assert isinstance(ds.spec, SensorSpec) and ds.labels == ("shake", "still")
    assert ds.spec.sample_rate == 10.0 and ds.spec.window == 20 and ds.spec.stride == 10  # 2 s every 1 s
    assert ds.x.shape[1:] == (20, 2) and ds.raw is not None and ds.raw.shape == ds.x.shape
    # one group per recording; a 3 s recording (30 rows) gives 2 windows, a 6 s one 5
    assert len(np.unique(ds.groups)) == 8
    assert sorted(np.bincount(ds.groups)) == [2, 2, 3, 3, 4, 4, 5, 5]
    assert set(ds.files) == {str(p) for p in folder.rglob("*.csv")}


def test_the_rate_is_the_median_of_the_recordings_or_the_one_given(folder: Path) -> None:
    write_csv(folder / "still" / "fast.csv", recording(3, rate=40.0))
    assert load_sensor_folder(folder).spec.sample_rate == 10.0
    ds = load_sensor_folder(folder, windowing=Windowing(window=1.0, stride=0.25, rate=20.0))
    assert (ds.spec.sample_rate, ds.spec.window, ds.spec.stride) == (20.0, 20, 5)


def test_files_without_a_time_column_need_a_rate(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        write_csv(tmp_path / cls / "r.csv", recording(3)[:, 1:], header="ax,ay")
    with pytest.raises(UsageError, match="no time column.*--rate"):
        load_sensor_folder(tmp_path)
    assert load_sensor_folder(tmp_path, windowing=Windowing(rate=10.0)).x.shape == (4, 20, 2)


def test_bad_files_are_skipped_each_with_one_line_naming_it(folder: Path) -> None:
    (folder / "still" / "broken.csv").write_text("time,ax,ay\n0,1,2\n0.1,x,2\n")
    write_csv(folder / "still" / "other.csv", recording(3), header="time,ax,gz")
    write_csv(folder / "shake" / "short.csv", recording(1.5))
    rows = recording(3)
    rows[[4, 5]] = rows[[5, 4]]
    write_csv(folder / "shake" / "unsorted.csv", rows)
    ds = load_sensor_folder(folder)
    reasons = {Path(s.file).name: s.reason for s in ds.skipped}
    assert set(reasons) == {"broken.csv", "other.csv", "short.csv", "unsorted.csv"}
    assert all(s.file in s.reason and "\n" not in s.reason for s in ds.skipped)
    assert "line 3" in reasons["broken.csv"]
    assert "columns ax, gz differ from the first file's (ax, ay)" in reasons["other.csv"]
    assert "too short, 15 rows at 10 Hz; a window needs 20 (2 s)" in reasons["short.csv"]
    assert "must increase" in reasons["unsorted.csv"]
    assert len(np.unique(ds.groups)) == 8  # the good recordings are all there
    with pytest.raises(DatasetError, match="strict mode"):
        load_sensor_folder(folder, strict=True)


def test_the_split_keeps_each_recording_on_one_side_and_normalises_on_train_only(tmp_path: Path) -> None:
    root = tmp_path / "m"
    for i in range(10):
        write_csv(root / "still" / f"s{i}.csv", recording(4 + i % 3, level=0.0, seed=i))
        write_csv(root / "shake" / f"k{i}.csv", recording(4 + i % 3, level=5.0, seed=20 + i))
    splits = normalise_on_train(split_dataset(load_dataset(root), seed=3))
    parts = [set(splits.train.groups), set(splits.val.groups), set(splits.test.groups)]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    spec = splits.spec
    assert all(p.spec == spec for p in (splits.train, splits.val, splits.test))
    train_raw = splits.train.raw.astype(np.float64)
    np.testing.assert_allclose(spec.mean, train_raw.mean(axis=(0, 1)), rtol=1e-9)
    np.testing.assert_allclose(spec.std, train_raw.std(axis=(0, 1)), rtol=1e-9)
    np.testing.assert_allclose(splits.train.x.mean(axis=(0, 1)), 0.0, atol=1e-5)
    test = splits.test
    np.testing.assert_array_equal(test.x, ((test.raw - np.float32(spec.mean)) / np.float32(spec.std)))


def test_a_bundles_spec_is_used_as_it_is(folder: Path) -> None:
    spec = SensorSpec(channels=("ay", "ax"), window=15, stride=15, sample_rate=5.0, mean=(1.0, 2.0), std=(2.0, 4.0))
    ds = load_dataset(folder, spec)
    assert ds.spec == spec and ds.x.shape[1:] == (15, 2)
    np.testing.assert_array_equal(ds.x, (ds.raw - np.float32([1.0, 2.0])) / np.float32([2.0, 4.0]))
    with pytest.raises(UsageError, match="come from the bundle's spec"):
        load_sensor_folder(folder, spec, windowing=Windowing())


# --- synthetic gestures -----------------------------------------------------------------------------------
def test_gestures_are_seeded_csv_recordings_with_jittered_time(tmp_path: Path) -> None:
    a = write_gestures(tmp_path / "a", recordings=2, seconds=(3, 4), seed=5)
    write_gestures(tmp_path / "b", recordings=2, seconds=(3, 4), seed=5)
    files = sorted(p.relative_to(a.directory) for p in a.directory.rglob("*.csv"))
    assert len(files) == 8 and a.recordings == 8
    assert all((a.directory / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    rec = read_csv(a.directory / files[0])
    assert rec.channels == CHANNELS and rec.time is not None
    steps = np.diff(rec.time)
    assert (steps > 0).all() and steps.std() > 0 and abs(np.median(steps) - 0.02) < 0.002


def test_datasets_gestures_writes_a_set_that_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "gestures", str(tmp_path / "g")]) == 0
    assert "synthetic motion recordings" in capsys.readouterr().out
    assert main(["datasets", "show", str(tmp_path / "g"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["spec"]["kind"] == "sensor" and info["spec"]["window"] == 100 and info["spec"]["sample_rate"] == 50.0
    assert set(info["class_counts"]) == {"circle", "idle", "punch", "wave"} and info["skipped"] == []


def test_train_sends_sensor_folders_to_build(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dataset", str(folder), "--out", str(tmp_path / "m.keras")]) == 2
    assert "edgekit build --dataset" in capsys.readouterr().err
