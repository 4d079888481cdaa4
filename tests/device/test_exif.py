"""EXIF orientation is applied once, in the device package, for the workstation and the device alike: a JPEG
whose pixels are stored sideways with an Orientation tag (as phones write them) becomes the same tensor as the
upright photo, in the host's dataset loading and in the device's preprocessor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit_agent.contract.manifest import PreprocessSpec, TensorSpec
from edgekit_agent.infer.images import ORIENTATION, upright
from edgekit_agent.infer.preprocess import Preprocessor, open_image

# Orientation value → how a camera stores an upright scene (the inverse of what the viewer must do).
STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _scene() -> Image.Image:
    """32x16 upright scene with no symmetry: a white block top-left, a grey block bottom-right."""
    a = np.zeros((16, 32), np.uint8)
    a[:8, :8] = 255
    a[12:, 24:] = 128
    return Image.fromarray(a, "L")


def _write(path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    stored = _scene().transpose(STORED[orientation]) if orientation in STORED else _scene()
    stored.save(path, exif=exif, quality=95)
    return path


@pytest.mark.parametrize("orientation", [1, *STORED])
def test_a_rotated_jpeg_is_seen_upright(tmp_path: Path, orientation: int) -> None:
    path = _write(tmp_path / f"o{orientation}.jpg", orientation)
    raw = Image.open(path)
    assert raw.getexif()[ORIENTATION] == orientation
    img = open_image(path)
    assert img.size == (32, 16)
    want = np.asarray(_scene(), dtype=np.int16)
    assert np.abs(np.asarray(img, dtype=np.int16) - want).max() <= 12  # JPEG rounding only, not a turned image


def test_host_loading_and_device_preprocessing_agree_on_a_rotated_photo(tmp_path: Path) -> None:
    from edgekit.pipeline.data import load_image_folder

    for name, orientation in (("up", 1), ("sideways", 6)):
        (tmp_path / name).mkdir()
        _write(tmp_path / name / "photo.jpg", orientation)
    spec = PreprocessSpec(width=32, height=16, color_mode="L")
    ds = load_image_folder(tmp_path, spec)
    pre = Preprocessor(spec, TensorSpec("in", (1, 16, 32, 1), "float32", 0.0, 0))
    for i, f in enumerate(ds.files):
        assert np.array_equal(ds.x[i], pre(f)[0])  # one function, the same tensor on both sides
    # and the sideways photo is the upright one, not its rotation (which would not even be 32 wide)
    assert np.abs(ds.x[0] - ds.x[1]).max() <= 12 / 255


def test_an_image_without_exif_is_returned_as_is() -> None:
    img = _scene()
    assert upright(img) is img
