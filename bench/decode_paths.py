#!/usr/bin/env python3
"""What each JPEG decode scale costs in accuracy and in time, behind hashing.DECODE_MARGINS.

    python bench/decode_paths.py [--dataset DIR] [--samples 8] [--side 2900] [--large 4]

Accuracy: sampled CALTECH-101 photos are enlarged to a shorter side of --side pixels and saved as
JPEG (quality 90); each is decoded whole and at 1/2, 1/4 and 1/8 scale, and the dHash-64 grid of
each reduced decode (neardup.core.sampling.grid, as v4 and as v5 to v7, the default, which weigh
a partial last pixel by what it covers) is compared with the whole decode's: the mean and largest
difference in gray levels. Two references: the 8 x 8 block means
of the whole decode, in floating point and rounded to 8 bits (what a 1/8 decode would give if it
were the block mean of the whole decode).

Time: --large generated 12-megapixel JPEGs (bench/index_speed.py's) hashed by plain ImageHash
(`imagehash.dhash(Image.open(p))`, the reference loop's hash) and by hash_file() with the default
recipe forced to decode them at 1/8 and at 1/4; the best of three passes, per image.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable

import imagehash
import numpy as np
from _setup import DEFAULT_DATASET, require_dataset
from index_speed import make_large_photos
from PIL import Image
from straddle import resized_to_shorter, sample_photos

from neardup.core import hashing, sampling
from neardup.core.hashing import Recipe, hash_file

CELLS = (9, 8)  # dHash-64's grid


def decode(data: bytes, size: tuple[int, int], scale: int) -> np.ndarray:
    import simplejpeg

    width, height = size
    return simplejpeg.decode_jpeg(data, colorspace="GRAY", min_width=-(-width // scale),
                                  min_height=-(-height // scale))[:, :, 0]


def grid_errors(paths: list[str], side: int, folder: str) -> dict[str, np.ndarray]:
    errors: dict[str, list[np.ndarray]] = {}
    for number, source in enumerate(paths):
        with Image.open(source) as opened:
            photo = opened.convert("RGB")
        path = os.path.join(folder, f"{number}.jpg")
        resized_to_shorter(photo, side).save(path, quality=90)
        with open(path, "rb") as stream:
            data = stream.read()
        with Image.open(path) as opened:
            size = opened.size
        whole = decode(data, size, 1)
        reference = sampling.grid(whole, size, CELLS)
        for scale in (2, 4, 8):
            pixels = decode(data, size, scale)
            extent = (size[0] / scale, size[1] / scale)
            for name, cover in ((f"1/{scale} decode (v4)", False),
                                (f"1/{scale} decode, partial pixel weighed (v5 to v7)", True)):
                cells = sampling.grid(pixels, extent, CELLS, cover)
                errors.setdefault(name, []).append(np.abs(cells - reference).ravel())
        # Block means over whole blocks only, compared with the whole decode of the same region.
        rows, columns = (whole.shape[0] // 8) * 8, (whole.shape[1] // 8) * 8
        region = whole[:rows, :columns]
        means = region.reshape(rows // 8, 8, columns // 8, 8).mean(axis=(1, 3))
        target = sampling.grid(region, (columns, rows), CELLS)
        for name, blocks in (("8 x 8 block means, float", means),
                             ("8 x 8 block means, 8 bits", np.round(means).astype(np.uint8))):
            cells = sampling.grid(blocks, (columns / 8, rows / 8), CELLS)
            errors.setdefault(name, []).append(np.abs(cells - target).ravel())
    return {name: np.concatenate(parts) for name, parts in errors.items()}


def per_image_ms(paths: list[str], hasher: Callable[[str], object]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for path in paths:
            hasher(path)
        best = min(best, (time.perf_counter() - started) / len(paths))
    return best * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--side", type=int, default=2900, help="shorter side of the enlargements")
    parser.add_argument("--large", type=int, default=4, help="12-megapixel JPEGs to time")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    if args.large < 1 or args.samples < 1:
        parser.error("--large and --samples need at least 1")
    if not require_dataset(args.dataset, "decode_paths.py"):
        return 2
    sources = sample_photos(args.dataset, args.samples, random.Random(args.seed))
    with tempfile.TemporaryDirectory() as folder:
        errors = grid_errors(sources, args.side, folder)
        print(f"dHash-64 grid against the whole decode's, {len(sources)} CALTECH-101 photos"
              f" enlarged to {args.side} pixels (seed {args.seed}), gray levels:")
        print("| path | mean | largest |")
        print("|---|---:|---:|")
        for name, values in errors.items():
            print(f"| {name} | {values.mean():.4f} | {values.max():.3f} |")
        large = make_large_photos(os.path.join(folder, "large"), args.large)
        recipe = Recipe()
        reference = per_image_ms(large, lambda path: imagehash.dhash(Image.open(path)))
        saved = hashing.DECODE_MARGINS
        rows = []
        for scale, margins in ((8, saved), (4, {**saved, 8: 10**6})):
            hashing.DECODE_MARGINS = margins
            try:
                rows.append((scale, per_image_ms(large, lambda path: hash_file(path, recipe))))
            finally:
                hashing.DECODE_MARGINS = saved
    print(f"\n{len(large)} generated 12-megapixel JPEGs, per image (best of 3):")
    print(f"| hash | ms | reference / this |\n|---|---:|---:|\n| plain ImageHash | {reference:.1f} | 1.00x |")
    for scale, ms in rows:
        print(f"| default recipe, decoded at 1/{scale} | {ms:.1f} | {reference / ms:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
