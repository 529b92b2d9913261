"""Small deterministic test images, made on the fly so no binary files live in the repository."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def textured(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """An RGB picture with structure at several scales, distinct for each seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    base = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 12, size=(height, width, 3))
    pixels = np.clip(np.asarray(base, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def save(image: Image.Image, path: str, **options: object) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    image.save(path, **options)
    return path


def make_tree(root: str, count: int, *, folders: int = 2, start_seed: int = 0) -> list[str]:
    """count distinct JPEGs spread over a few subfolders; returns their paths relative to root."""
    relpaths = []
    for number in range(count):
        relpath = f"cat{number % folders}/image_{number:04d}.jpg"
        save(textured(start_seed + number), os.path.join(root, relpath), quality=92)
        relpaths.append(relpath)
    return relpaths
