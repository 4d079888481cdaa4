"""EXIF orientation: a photo is seen as a person sees it, on the workstation and on the device alike.

Phone cameras store pixels as the sensor read them and say in the EXIF ``Orientation`` tag (0x0112) how to
turn them upright. :func:`upright` applies that tag; :func:`edgekit_agent.infer.preprocess.open_image` calls it
for every image it decodes, so training, evaluation and serving all see the same upright pixels.
"""

from __future__ import annotations

from PIL import Image

ORIENTATION = 0x0112
# EXIF orientation value → the transpose that makes the stored pixels upright (1: already upright).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF Orientation tag says (the same image when it has none or says 1)."""
    if "exif" not in img.info and img.format != "TIFF":  # TIFF keeps the tag among its own tags
        return img  # no EXIF block: skips parsing one for every PNG and BMP
    method = _UPRIGHT.get(img.getexif().get(ORIENTATION, 1))
    return img if method is None else img.transpose(method)
