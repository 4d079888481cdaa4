"""Image → input tensor, exactly as the manifest says. The workstation evaluates int8 accuracy with this
same code, so a preprocessing mismatch between host and device cannot exist.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgekit_agent.contract.errors import InputError
from edgekit_agent.contract.manifest import PreprocessSpec, TensorSpec
from edgekit_agent.infer.images import upright

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".pgm", ".ppm", ".tif", ".tiff")


def open_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Decode an image fully (so truncated files fail here, not later) and turn it upright as its EXIF
    Orientation says. Raises :class:`InputError`."""
    label = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        with fp:
            img = Image.open(fp)
            img.load()
            return upright(img)
    except FileNotFoundError:
        raise InputError(f"{label}: no such image file.") from None
    except UnidentifiedImageError:
        raise InputError(f"{label}: not an image Pillow can read (unknown format); use PNG or JPEG.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{label}: not a readable image ({exc}); re-export it as PNG or JPEG.") from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer grey images (16-bit PNG, TIFF, PGM) scaled to 8 bits: Pillow's ``convert("L")``
    would clip every value above 255 to white. Float images are refused: their range is anyone's guess."""
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img)
        if img.mode == "I" and a.size and int(a.max()) <= 255 and int(a.min()) >= 0:
            return Image.fromarray(a.astype(np.uint8), "L")  # 8-bit values stored in a 32-bit mode
        return Image.fromarray((np.clip(a, 0, 65535).astype(np.float64) / 257.0).round().astype(np.uint8), "L")
    if img.mode == "F":
        raise InputError("32-bit float pixels (mode F) have no fixed range; save the image as 8- or 16-bit PNG.")
    return img


def image_to_float(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """A decoded image → float32 array (H, W, C), normalised per the spec (no batch axis, not quantised)."""
    img = _to_8bit(img)
    if img.mode != spec.color_mode:
        img = img.convert(spec.color_mode)
    if img.size != (spec.width, spec.height):
        img = img.resize((spec.width, spec.height), _RESAMPLE[spec.resize])
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    scale, mean, std = _normalisation(spec)
    return (x * scale - mean) / std


@lru_cache(maxsize=16)
def _normalisation(spec: PreprocessSpec) -> tuple[np.float32, np.ndarray, np.ndarray]:
    """The spec's scale, mean and std as float32, built once per spec: on a small image, building the two arrays
    cost as much as the arithmetic itself."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    mean.flags.writeable = std.flags.writeable = False  # shared by every call
    return np.float32(spec.scale), mean, std


def quantize(x: np.ndarray, tensor: TensorSpec) -> np.ndarray:
    """Float array → the input tensor's dtype with its scale and zero point (rounded, clipped)."""
    if tensor.dtype == "float32" or not tensor.scale:
        return x.astype(np.float32)
    q = x / np.float32(tensor.scale)
    # In place, and minimum/maximum rather than np.clip (Python-level dispatch): the same values, fewer copies.
    np.round(q, out=q)
    q += tensor.zero_point
    if tensor.qmin is not None:
        np.maximum(q, tensor.qmin, out=q)
        np.minimum(q, tensor.qmax, out=q)
    return q.astype(tensor.dtype)


def float_mean(x: np.ndarray) -> float:
    """The mean of a float array (NaN when empty): ``ndarray.mean()`` without its Python-level wrapper, which
    costs more than the sum on a small image."""
    return float(np.add.reduce(x, axis=None)) / x.size if x.size else float("nan")


def dequantize(q: np.ndarray, tensor: TensorSpec) -> np.ndarray:
    """Raw tensor → real values; int64 before the zero point is subtracted, so int8 cannot overflow."""
    if tensor.dtype == "float32" or not tensor.scale:
        return q.astype(np.float32)
    return (q.astype(np.int64) - tensor.zero_point).astype(np.float32) * np.float32(tensor.scale)


class Preprocessor:
    """Turns images (paths, bytes or PIL images) into ready input tensors with a batch axis of 1."""

    suffixes = IMAGE_SUFFIXES

    def __init__(self, spec: PreprocessSpec, tensor: TensorSpec) -> None:
        self.spec = spec
        self.tensor = tensor
        expected = (1, spec.height, spec.width, spec.channels)
        if tuple(tensor.shape) != expected:
            raise InputError(
                f"preprocessing makes {expected} but the model's input '{tensor.name}' is {tuple(tensor.shape)}; "
                "the manifest's preprocess spec does not match the model."
            )

    def floats(self, source: str | Path | bytes | Image.Image) -> np.ndarray:
        img = source if isinstance(source, Image.Image) else open_image(source)
        try:
            return image_to_float(img, self.spec)
        except InputError as exc:
            if isinstance(source, (str, Path)):
                raise InputError(f"{source}: {exc}") from None
            raise

    def __call__(self, source: str | Path | bytes | Image.Image) -> np.ndarray:
        return quantize(self.floats(source), self.tensor)[None, ...]

    def from_raw(self, samples: object) -> np.ndarray:
        """Pixels (H, W) or (H, W, channels) of 0..255 values → normalised floats, as a decoded image would be."""
        try:
            a = np.asarray(samples)
            if a.ndim not in (2, 3) or a.size == 0 or a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number):
                raise ValueError(a.shape)
            img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        except (ValueError, TypeError):
            raise InputError("the samples must be rows of pixel values 0..255 (H×W or H×W×channels).") from None
        return image_to_float(img, self.spec)

    def from_array(self, x: np.ndarray) -> np.ndarray:
        """A float (H, W, C) array already normalised per the spec → quantised input with batch axis."""
        x = np.asarray(x, dtype=np.float32)
        want = (self.spec.height, self.spec.width, self.spec.channels)
        if x.shape != want:
            raise InputError(f"tensor of shape {x.shape} given, the model wants {want}.")
        return quantize(x, self.tensor)[None, ...]
