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


def low_contrast(seed: int, size: tuple[int, int] = (400, 300)) -> Image.Image:
    """A gray picture within a few levels of 128 (a wall, a sky, paper), with a little grain:
    its hash's neighbouring cells are often a fraction of a level from the edge of a bit."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = Image.fromarray(rng.uniform(-3, 3, (4, 6)).astype(np.float32), mode="F")
    shading = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC))
    pixels = 128 + shading + rng.normal(0, 2, (height, width))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def faint_jpeg(path: str, seed: int = 0) -> str:
    """A low-contrast 1601 x 1203 JPEG with a little noise: large enough for reduced decodes, and
    flat enough that each preprocessing version may hash it differently."""
    y, x = np.mgrid[0:1203, 0:1601]
    faint = 120 + 1.2 * np.sin(x / 150.0) * np.cos(y / 110.0) + x / 1600.0
    faint += np.random.default_rng(seed).normal(0, 2, faint.shape)
    return save(Image.fromarray(np.clip(faint, 0, 255).astype(np.uint8)), path, quality=95)


def hashed_apart(path: str, older: object) -> str:
    """A faint JPEG that the recipe `older` and the default recipe hash differently."""
    import pytest

    from neardup.core.hashing import Recipe, hash_file

    assert isinstance(older, Recipe)
    for seed in range(10):
        made = faint_jpeg(path, seed)
        if hash_file(made, older) != hash_file(made, Recipe()):
            return made
    pytest.fail(f"no faint JPEG hashed apart by {older.describe()} and the default")


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
