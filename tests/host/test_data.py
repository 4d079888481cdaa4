"""edgekit.pipeline.data: image folders, .npz, the digits demo and the seeded stratified split (no TensorFlow)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.pipeline.data import (
    folder_spec,
    load_dataset,
    load_image_folder,
    load_npz,
    split_dataset,
    write_digits,
)
from edgekit_agent.contract.errors import DatasetError, UsageError
from edgekit_agent.contract.manifest import PreprocessSpec
from edgekit_agent.infer.preprocess import image_to_float, open_image


def _folder(root: Path, classes: dict[str, int], size=(10, 6), mode="L") -> Path:
    rng = np.random.default_rng(1)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(root / name / f"{i}.png")
    return root


def test_write_digits_writes_real_digits_scaled_to_255(tmp_path):
    from sklearn.datasets import load_digits

    summary = write_digits(tmp_path / "d")
    files = sorted((tmp_path / "d").rglob("*.png"))
    assert summary.samples == len(files) == 1797 and summary.classes == 10
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [str(i) for i in range(10)]
    img = np.asarray(Image.open(tmp_path / "d" / "0" / "digit_0000.png"))
    expected = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)
    assert img.dtype == np.uint8 and img.shape == (8, 8) and np.array_equal(img, expected)


def test_image_folder_uses_the_device_preprocessing(digits_dataset):
    ds = load_image_folder(digits_dataset)
    assert ds.x.shape == (1797, 8, 8, 1) and ds.x.dtype == np.float32
    assert ds.labels == tuple(str(i) for i in range(10)) and ds.y.dtype == np.int64
    assert ds.spec == PreprocessSpec(width=8, height=8, color_mode="L")
    # The very function a device runs gives the very same tensor.
    i = 123
    assert np.array_equal(ds.x[i], image_to_float(open_image(ds.files[i]), ds.spec))
    assert ds.class_counts()["0"] == int(np.sum(ds.y == 0)) > 100


def test_spec_inference_size_and_colour(tmp_path):
    grey = _folder(tmp_path / "g", {"a": 3, "b": 3}, size=(10, 6))
    assert folder_spec(grey) == PreprocessSpec(width=10, height=6, color_mode="L")
    colour = _folder(tmp_path / "c", {"a": 2, "b": 2}, size=(12, 12), mode="RGB")
    ds = load_image_folder(colour)
    assert ds.spec.color_mode == "RGB" and ds.x.shape == (4, 12, 12, 3)
    # An explicit spec resizes.
    ds = load_image_folder(colour, PreprocessSpec(width=5, height=4, color_mode="L"))
    assert ds.x.shape == (4, 4, 5, 1)


def test_rgb_files_with_grey_content_are_grey(tmp_path):
    root = tmp_path / "d"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        Image.fromarray(np.full((4, 4), 99, np.uint8)).convert("RGB").save(root / name / "x.jpg")
    assert load_image_folder(root).spec.color_mode == "L"


def test_corrupt_image_is_skipped_with_a_reason_naming_it(tmp_path):
    root = _folder(tmp_path / "d", {"a": 3, "b": 3})
    bad = root / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Python warning (file and line of edgekit's source) would fail here
        ds = load_image_folder(root)
    assert len(ds) == 6 and [s.file for s in ds.skipped] == [str(bad)]
    assert ds.skipped[0].reason.startswith(f"{bad}: ") and "\n" not in ds.skipped[0].reason
    assert str(bad) not in ds.files


def test_corrupt_image_is_an_error_when_strict(tmp_path):
    root = _folder(tmp_path / "d", {"a": 3, "b": 3})
    (root / "b" / "truncated.png").write_bytes((root / "b" / "0.png").read_bytes()[:40])
    with pytest.raises(DatasetError, match="truncated.png"):
        load_image_folder(root, strict=True)


def test_empty_class_and_single_class_are_errors(tmp_path):
    root = _folder(tmp_path / "d", {"cat": 3, "dog": 3})
    (root / "bird").mkdir()
    with pytest.raises(DatasetError, match="bird"):
        load_dataset(root)
    one = _folder(tmp_path / "one", {"only": 4})
    with pytest.raises(DatasetError, match="at least two class"):
        load_dataset(one)
    with pytest.raises(DatasetError, match="no such dataset"):
        load_dataset(tmp_path / "missing")


def test_class_with_only_corrupt_images_is_an_error(tmp_path):
    root = _folder(tmp_path / "d", {"a": 3})
    (root / "b").mkdir()
    (root / "b" / "x.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="no readable image left in class folder"):
        load_image_folder(root)


def test_npz_uint8_and_float(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 6, 6), dtype=np.uint8)
    y = np.arange(20) % 2
    np.savez(tmp_path / "u.npz", x=x, y=y, labels=np.array(["no", "yes"]))
    ds = load_dataset(tmp_path / "u.npz")
    assert ds.x.shape == (20, 6, 6, 1) and ds.labels == ("no", "yes")
    assert np.allclose(ds.x[..., 0], x / 255.0)
    np.savez(tmp_path / "f.npz", x=rng.random((20, 6, 6, 3), dtype=np.float32), y=y)
    ds = load_npz(tmp_path / "f.npz")
    assert ds.spec.color_mode == "RGB" and ds.spec.scale == 1.0 and ds.labels == ("0", "1")
    np.savez(tmp_path / "bad.npz", x=x, y=y[:5])
    with pytest.raises(DatasetError, match="same N"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "gap.npz", x=x, y=y * 2, labels=np.array(["a", "b", "c"]))
    with pytest.raises(DatasetError, match="b"):
        load_npz(tmp_path / "gap.npz")


def test_split_is_deterministic_stratified_and_disjoint(digits_dataset):
    ds = load_dataset(digits_dataset)
    a, b = split_dataset(ds, seed=0), split_dataset(ds, seed=0)
    assert a.test.files == b.test.files and a.train.files == b.train.files
    c = split_dataset(ds, seed=1)
    assert a.test.files != c.test.files
    parts = [set(a.train.files), set(a.val.files), set(a.test.files)]
    assert sum(map(len, parts)) == len(ds) == len(set().union(*parts))
    for cls in range(10):
        n = int(np.sum(ds.y == cls))
        assert abs(int(np.sum(a.test.y == cls)) - round(0.15 * n)) <= 1
        assert abs(int(np.sum(a.val.y == cls)) - round(0.15 * n)) <= 1


def test_small_classes_still_get_a_test_sample(tmp_path):
    ds = load_image_folder(_folder(tmp_path / "d", {"a": 3, "b": 40}))
    s = split_dataset(ds, seed=3)
    assert int(np.sum(s.test.y == 0)) == 1 and int(np.sum(s.val.y == 0)) == 1 and int(np.sum(s.train.y == 0)) == 1
    with pytest.raises(DatasetError):
        split_dataset(ds, val=0.6, test=0.5)


def test_a_class_is_split_the_same_way_whatever_other_classes_the_dataset_holds(tmp_path):
    """`edgekit evaluate BUNDLE --dataset SUBSET` re-creates the build's test split class by class: a class's
    shuffle depends on its own files and the seed only, not on the classes sorted before it."""
    full = _folder(tmp_path / "full", {"10": 20, "2": 21, "9": 19})
    sub = tmp_path / "sub"
    for name in ("2", "9"):
        (sub / name).mkdir(parents=True)
        for f in (full / name).iterdir():
            (sub / name / f.name).write_bytes(f.read_bytes())

    def by_class(ds_root: Path, seed: int) -> dict[str, dict[str, set[str]]]:
        ds = load_image_folder(ds_root)
        s = split_dataset(ds, seed=seed)
        return {
            label: {
                part: {Path(f).name for f, y in zip(getattr(s, part).files, getattr(s, part).y) if y == cls}
                for part in ("train", "val", "test")
            }
            for cls, label in enumerate(ds.labels)
        }

    for seed in (0, 1, 7):
        a, b = by_class(full, seed), by_class(sub, seed)
        assert a["2"] == b["2"] and a["9"] == b["9"], seed
    assert by_class(full, 0)["2"]["test"] != by_class(full, 1)["2"]["test"]  # the seed still matters
    with pytest.raises(UsageError, match="non-negative"):
        split_dataset(load_image_folder(sub), seed=-1)


def test_npz_refuses_non_finite_x_other_integer_dtypes_and_duplicate_labels(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(12) % 3
    x = rng.random((12, 4, 4), dtype=np.float32)
    x[5, 1, 2] = np.nan
    x[7, 0, 0] = np.inf
    np.savez(tmp_path / "nan.npz", x=x, y=y)
    with pytest.raises(
        DatasetError, match=r"nan\.npz: x holds NaN or infinite values in 2 sample\(s\) \(first: index 5\)"
    ):
        load_npz(tmp_path / "nan.npz")
    # float64 beyond float32's range would become inf on the way in.
    np.savez(tmp_path / "big.npz", x=np.full((12, 4, 4), 1e300), y=y)
    with pytest.raises(DatasetError, match=r"big\.npz: x holds NaN or infinite"):
        load_npz(tmp_path / "big.npz")
    for dtype in (np.uint16, np.int64, np.bool_):
        np.savez(tmp_path / "px.npz", x=np.ones((12, 4, 4), dtype=dtype), y=y)
        with pytest.raises(DatasetError, match=rf"px\.npz: x is {np.dtype(dtype).name}; edgekit takes uint8 pixels"):
            load_npz(tmp_path / "px.npz")
    np.savez(tmp_path / "lab.npz", x=np.zeros((12, 4, 4), np.uint8), y=y, labels=np.array(["cat", "dog", "cat"]))
    with pytest.raises(DatasetError, match=r"lab\.npz: 'labels' names 'cat' more than once"):
        load_npz(tmp_path / "lab.npz")
    # Finite floats and uint8 still load.
    x[5, 1, 2] = x[7, 0, 0] = 0.5
    np.savez(tmp_path / "ok.npz", x=x.astype(np.float64), y=y)
    assert load_npz(tmp_path / "ok.npz").x.dtype == np.float32


def test_a_16_bit_image_is_used_and_a_float_image_is_skipped_by_name(tmp_path: Path) -> None:
    root = tmp_path / "depth"
    for c in ("dark", "bright"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            level = 1000 if c == "dark" else 60000
            Image.fromarray(np.full((8, 8), level + i, np.uint16)).save(root / c / f"{i}.png")  # 16-bit grey
    Image.fromarray(np.zeros((8, 8), np.float32), "F").save(root / "dark" / "float.tiff")
    ds = load_dataset(root)
    assert "float.tiff: 32-bit float pixels" in ds.skipped[0].reason
    assert len(ds.y) == 6
    means = {ds.labels[int(y)]: float(x.mean()) for x, y in zip(ds.x, ds.y)}
    assert means["dark"] < 0.05 and 0.85 < means["bright"] < 0.95  # scaled from 16 bits, not clipped to 1.0
