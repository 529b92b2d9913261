#!/usr/bin/env python3
"""JPEG photos against lossless copies of themselves (PNG): the decode path as the only change.

    python bench/lossless_copies.py [--dataset DIR] [--limit N] [--seed 1]

A PNG holding exactly the pixels Pillow decodes from a JPEG is the same picture, and plain
ImageHash (`imagehash.dhash(Image.open(p))`) hashes both alike. The default recipe decodes the
JPEG in grayscale at a reduced scale when it is large enough (hashing.DECODE_MARGINS) and the PNG
whole: its grid then differs by what the reduced decode loses (a 2 x 2 block mean at 1/2 scale),
a few hundredths of a gray level on average and up to a level or two at sharp edges, which flips
the bits whose two cells sit near the half-level edge. For every CALTECH-101 JPEG whose shorter
side reaches the recipe's first reduced scale (or --limit of them, drawn by --seed), the share
of (photo, PNG copy) pairs within t bits: --exact, v6, and the default, as hash distances and as
search.py counts them (the query's undecided bits; a pair within t only if each file, as the
query, finds the other).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

import imagehash
import numpy as np
from _setup import (  # noqa: F401  (sets the path)
    DEFAULT_DATASET,
    require_dataset,
    searched_both_ways,
)
from PIL import Image

from neardup.core.discovery import FoundFile, walk_images
from neardup.core.hashing import Recipe, hash_file, scale_boundaries

THRESHOLDS = range(5)


def eligible(dataset: str, shorter: int) -> list[str]:
    """The dataset's JPEGs whose shorter side is at least `shorter` pixels, sorted."""
    found = []
    for entry in walk_images(dataset):
        if not isinstance(entry, FoundFile):
            continue
        with Image.open(entry.path) as image:
            if image.format == "JPEG" and min(image.size) >= shorter:
                found.append(entry.path)
    return sorted(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--limit", type=int, default=0, help="use N photos (default: all)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not require_dataset(args.dataset, "lossless_copies.py"):
        return 2
    started = time.perf_counter()
    photos = eligible(args.dataset, scale_boundaries(Recipe())[2])
    if args.limit:
        photos = sorted(random.Random(args.seed).sample(photos, min(args.limit, len(photos))))
    rows: dict[str, list[int]] = {"--exact (plain ImageHash)": [], "v6": [],
                                  "v6, as search.py counts": [], "default": [],
                                  "default, as search.py counts": []}
    skipped = 0
    with tempfile.TemporaryDirectory() as folder:
        copy = os.path.join(folder, "copy.png")
        for photo in photos:
            with Image.open(photo) as image:
                if image.mode not in ("L", "RGB"):  # a PNG holds no CMYK: not the same pixels
                    skipped += 1
                    continue
                image.save(copy)  # the decoded pixels, losslessly
            with Image.open(photo) as first, Image.open(copy) as second:
                rows["--exact (plain ImageHash)"].append(
                    imagehash.dhash(first) - imagehash.dhash(second))
            for name, recipe in (("v6", Recipe(preprocess_version=6)), ("default", Recipe())):
                original, png = hash_file(photo, recipe), hash_file(copy, recipe)
                rows[name].append(original.distance(png))
                rows[f"{name}, as search.py counts"].append(searched_both_ways(original, png))
    print(f"{len(photos) - skipped} JPEGs of {scale_boundaries(Recipe())[2]} pixels or more on their"
          f" shorter side from {args.dataset} ({skipped} CMYK left out), each against a PNG of its"
          f" own pixels; pairs within t bits:")
    print("| hash | " + " | ".join(str(t) for t in THRESHOLDS) + " | worst |")
    print("|---|" + "---:|" * (len(THRESHOLDS) + 1))
    for name, distances in rows.items():
        values = np.array(distances)
        cells = " | ".join(f"{(values <= t).mean():.1%} ({(values <= t).sum()})"
                           for t in THRESHOLDS)
        print(f"| {name} | {cells} | {values.max()} |")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
