"""Colour images of drawn shapes, made on the spot (nothing downloaded): a pretraining task and a small target
task with different classes, for the transfer-learning tests and scripts/bench_transfer.py.

Each image is one shape in a random colour, size, position and rotation on a noisy background of another
colour; the class is the shape. The pretraining shapes and the target shapes do not overlap, so a backbone
pretrained on one set has to transfer edges, corners and curves to the other.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PRETRAIN_SHAPES = ("circle", "square", "triangle", "cross", "bar", "pentagon")
TARGET_SHAPES = ("ring", "diamond", "star", "arrow")


def _polygon(cx: float, cy: float, r: float, points: int, turn: float, inner: float | None = None) -> list[tuple]:
    step = math.pi / points if inner else 2 * math.pi / points
    out = []
    for i in range(points * (2 if inner else 1)):
        rr = (inner if inner and i % 2 else 1.0) * r
        out.append((cx + rr * math.cos(turn + i * step), cy + rr * math.sin(turn + i * step)))
    return out


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``size``×``size`` RGB image of ``shape``."""
    bg = rng.integers(0, 256, 3)
    fg = (bg + rng.integers(80, 176, 3)) % 256  # far enough from the background in every channel
    noise = rng.normal(0, 12, (size, size, 3))
    img = Image.fromarray(np.clip(bg + noise, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    r = size * rng.uniform(0.18, 0.32)
    cx, cy = (size / 2 + rng.uniform(-0.15, 0.15) * size for _ in range(2))
    turn = rng.uniform(0, 2 * math.pi)
    colour = tuple(int(v) for v in fg)
    w = max(2, int(r / 3))
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=w)
    elif shape == "square":
        d.polygon(_polygon(cx, cy, r, 4, turn), fill=colour)
    elif shape == "diamond":
        d.polygon(_polygon(cx, cy, r, 4, turn, inner=0.45), fill=colour)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy, r, 3, turn), fill=colour)
    elif shape == "pentagon":
        d.polygon(_polygon(cx, cy, r, 5, turn), fill=colour)
    elif shape == "star":
        d.polygon(_polygon(cx, cy, r, 5, turn, inner=0.4), fill=colour)
    elif shape in ("cross", "bar", "arrow"):
        dx, dy = r * math.cos(turn), r * math.sin(turn)
        d.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour, width=w)
        if shape == "cross":
            d.line((cx + dy, cy - dx, cx - dy, cy + dx), fill=colour, width=w)
        if shape == "arrow":  # a head at one end
            for sign in (1, -1):
                a = turn + math.pi + sign * 0.6
                d.line(
                    (cx + dx, cy + dy, cx + dx + 0.6 * r * math.cos(a), cy + dy + 0.6 * r * math.sin(a)),
                    fill=colour,
                    width=w,
                )
    else:
        raise ValueError(f"unknown shape {shape}")
    return img


def write_shapes(out: Path, shapes: tuple[str, ...], per_class: int, size: int, seed: int) -> Path:
    """``OUT/SHAPE/NNNN.png``, ``per_class`` images of each shape; the same seed writes the same images."""
    rng = np.random.default_rng(seed)
    for shape in shapes:
        (out / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(shape, size, rng).save(out / shape / f"{i:04d}.png")
    return out
