"""Pixel depth: a 16-bit grey image is scaled to 8 bits, not clipped to white (Pillow's convert("L") clips)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edgekit_agent.contract.errors import InputError
from edgekit_agent.contract.manifest import PreprocessSpec
from edgekit_agent.infer.preprocess import image_to_float, open_image

SPEC = PreprocessSpec(width=8, height=8, color_mode="L")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_a_16_bit_png_keeps_its_gradient() -> None:
    raw = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000  # 0 .. 63,000 of 65,535
    img = open_image(_png(Image.fromarray(raw)))
    assert img.mode.startswith("I;16")
    x = image_to_float(img, SPEC)[..., 0]
    assert x.max() == pytest.approx(round(63000 / 257) / 255, abs=1e-6)  # about 0.96, not 1.0
    assert np.all(np.diff(x.ravel()) >= 0) and len(np.unique(x)) > 50  # the gradient survives
    eight = image_to_float(Image.fromarray((raw / 257).round().astype(np.uint8), "L"), SPEC)[..., 0]
    assert np.abs(x - eight).max() <= 1 / 255 + 1e-6  # the same picture as its 8-bit version


def test_8_bit_values_in_a_32_bit_mode_are_not_darkened() -> None:
    raw = np.arange(64, dtype=np.int32).reshape(8, 8) * 4  # 0 .. 252
    x = image_to_float(Image.fromarray(raw, "I"), SPEC)[..., 0]
    assert x.max() == pytest.approx(252 / 255)


def test_float_pixels_are_refused_with_advice() -> None:
    with pytest.raises(InputError, match="8- or 16-bit PNG"):
        image_to_float(Image.fromarray(np.zeros((8, 8), np.float32), "F"), SPEC)
