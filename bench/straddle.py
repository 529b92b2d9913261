#!/usr/bin/env python3
"""Copies that straddle each decode-scale boundary: the default recipe against plain ImageHash.

    python bench/straddle.py [--dataset DIR] [--samples 100] [--seed 14]

The default recipe (v7) decodes a JPEG at 1/2, 1/4 or 1/8 scale once its shorter side holds
enough decoded pixels per grid cell at that scale (hashing.DECODE_MARGINS): for dHash-64 (a 9 x 8
grid) the boundaries are at 144, 1,440 and 2,880 pixels (v4 to v6: 1/2 from 288). For each
boundary and each sampled CALTECH-101 photo, two pairs are made, one per direction: an original a
few pixels below the boundary (saved at JPEG quality 95) and its copy resized by 0.5-2 % to a few
pixels above it (quality 90), and the reverse. The two images of a pair take different decode
paths. Rows: recall (copies within t bits of their original) at every threshold for --exact
(plain ImageHash, `imagehash.dhash(Image.open(p))`), the v3 recipe (16 pixels per cell at every
scale: boundaries at 288, 576 and 1,152, where its pairs are built too, which are also v4 to v6's
1/2 boundary), v5, v6 and the default, all on the same files in one run: each the Hamming
distance of the two hashes, and for the default also as search.py counts it (the query's
undecided bits not counted, hashing.UNDECIDED_BAND; a pair within t only if each file as the
query finds the other).

Then, for the pairs across the largest boundary, both images of every pair decoded at one forced
scale (1/8, 1/4, 1/2, whole): what the 1/8 decode costs large photos and their copies, not only
pairs that straddle.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import tempfile
import time
from collections.abc import Iterator

import imagehash
import numpy as np
from _setup import (  # noqa: F401  (sets the path)
    DEFAULT_DATASET,
    ROOT,
    require_dataset,
    searched_both_ways,
)
from PIL import Image

from neardup.core import hashing
from neardup.core.discovery import FoundFile, walk_images
from neardup.core.hashing import Hash, Recipe, hash_file, scale_boundaries

THRESHOLDS = range(17)
SEARCHED = "v7 (default), as search.py counts"


def boundaries(recipe_version: int) -> list[int]:
    """Shorter-side lengths at which the recipe's dHash-64 JPEG decode changes scale."""
    return sorted(scale_boundaries(Recipe(preprocess_version=recipe_version)).values())


def sample_photos(dataset: str, count: int, rng: random.Random) -> list[str]:
    """`count` photos of the dataset, drawn by `rng` from its sorted list."""
    photos = sorted(entry.path for entry in walk_images(dataset) if isinstance(entry, FoundFile))
    return rng.sample(photos, min(count, len(photos)))


def resized_to_shorter(picture: Image.Image, shorter: int) -> Image.Image:
    factor = shorter / min(picture.size)
    size = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
    if min(size) != shorter:  # rounding of the longer side never moves the shorter; be sure
        size = (shorter, size[1]) if picture.width <= picture.height else (size[0], shorter)
    return picture.resize(size, Image.Resampling.LANCZOS)


def make_pairs(sources: list[str], edges: list[int], folder: str,
               rng: random.Random) -> list[tuple[str, str, int, str]]:
    """(original, copy, boundary, direction) JPEG pairs on both sides of each boundary."""
    pairs = []
    for number, source in enumerate(sources):
        with Image.open(source) as opened:
            photo = opened.convert("RGB")
        for edge in edges:
            below = edge - 1 - rng.randrange(4)
            above = max(edge, round(below * (1 + rng.uniform(0.005, 0.02))))
            for direction, (first, second) in (("up", (below, above)), ("down", (above, below))):
                original = os.path.join(folder, f"{number}-{edge}-{direction}-o.jpg")
                copy = os.path.join(folder, f"{number}-{edge}-{direction}-c.jpg")
                base = resized_to_shorter(photo, first)
                base.save(original, quality=95)
                resized_to_shorter(base, second).save(copy, quality=90)
                pairs.append((original, copy, edge, direction))
    return pairs


def exact_dhash(path: str) -> Hash:
    return Hash.from_imagehash(imagehash.dhash(Image.open(path)))


@contextlib.contextmanager
def forced_scale(scale: int) -> Iterator[None]:
    """The default recipe decoding every JPEG at 1/scale (1: whole), whatever its size."""
    saved = hashing.DECODE_MARGINS
    never = 10**9
    hashing.DECODE_MARGINS = {s: (0 if s == scale else never) for s in (2, 4, 8)}
    try:
        yield
    finally:
        hashing.DECODE_MARGINS = saved


def forced_rows(pairs: list[tuple[str, str, int, str]], edge: int) -> None:
    """Recall of the pairs across `edge` with both images decoded at each scale in turn."""
    chosen = [(original, copy) for original, copy, boundary, _ in pairs if boundary == edge]
    print(f"The {len(chosen)} pairs across {edge} pixels, both images decoded at one scale:")
    print(f"| decode | pairs | {' | '.join(str(t) for t in THRESHOLDS)} | worst |")
    print("|---|---:|" + "---:|" * len(THRESHOLDS) + "---:|")
    exact = np.array([exact_dhash(o).distance(exact_dhash(c)) for o, c in chosen])
    print(recall_row("--exact (plain ImageHash)", exact))
    for scale in (8, 4, 2, 1):
        with forced_scale(scale):
            distances = np.array([hash_file(o, Recipe()).distance(hash_file(c, Recipe()))
                                  for o, c in chosen])
        print(recall_row("whole" if scale == 1 else f"1/{scale}", distances))
    print()


def recall_row(name: str, distances: np.ndarray) -> str:
    cells = " | ".join(f"{(distances <= t).mean():.1%}" for t in THRESHOLDS)
    return f"| {name} | {len(distances)} | {cells} | {distances.max()} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--samples", type=int, default=100, help="photos sampled per boundary")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    if not require_dataset(args.dataset, "straddle.py"):
        return 2
    rng = random.Random(args.seed)
    sources = sample_photos(args.dataset, args.samples, rng)
    recipes = {
        "--exact (plain ImageHash)": exact_dhash,
        "v3": lambda path: hash_file(path, Recipe(preprocess_version=3)),
        "v4": lambda path: hash_file(path, Recipe(preprocess_version=4)),
        "v5": lambda path: hash_file(path, Recipe(preprocess_version=5)),
        "v6 (previous default)": lambda path: hash_file(path, Recipe(preprocess_version=6)),
        "v7 (default)": lambda path: hash_file(path, Recipe()),
    }
    started = time.perf_counter()
    header = " | ".join(str(t) for t in THRESHOLDS)
    with tempfile.TemporaryDirectory() as folder:
        for version in (7, 3):
            edges = boundaries(version)
            pairs = make_pairs(sources, edges, folder, rng)
            print(f"Pairs straddling the v{version} boundaries {edges} (shorter side, pixels),"
                  f" {len(sources)} CALTECH-101 photos (seed {args.seed}), both directions:")
            print(f"| recipe | pairs | {header} | worst |")
            print("|---|---:|" + "---:|" * len(THRESHOLDS) + "---:|")
            distances = {}  # per recipe, each pair's, in the order of `pairs`
            for name, hasher in recipes.items():
                distances[name] = np.array([hasher(o).distance(hasher(c))
                                            for o, c, _, _ in pairs])
                print(recall_row(name, distances[name]))
            # What search.py answers: the query's undecided bits are not counted. A pair counts
            # within t only if each file, as the query, finds the other within t.
            hashed = {path: hash_file(path, Recipe()) for o, c, _, _ in pairs for path in (o, c)}
            distances[SEARCHED] = np.array([searched_both_ways(hashed[o], hashed[c])
                                            for o, c, _, _ in pairs])
            print(recall_row(SEARCHED, distances[SEARCHED]))
            print()
            for name in ("--exact (plain ImageHash)", "v6 (previous default)", "v7 (default)",
                         SEARCHED):
                worst: dict[str, int] = {}
                near: dict[int, list[int]] = {}  # per boundary: pairs at 0 and within 1 bit
                for (_, _, edge, direction), distance in zip(pairs, distances[name], strict=True):
                    key = f"{edge} {direction}"
                    worst[key] = max(worst.get(key, 0), int(distance))
                    counts = near.setdefault(edge, [0, 0])
                    counts[0] += distance == 0
                    counts[1] += distance <= 1
                print(f"  worst distance per boundary, {name}: "
                      + ", ".join(f"{key}: {value}" for key, value in worst.items()))
                print(f"  pairs at 0 / within 1 bit per boundary, {name}: "
                      + ", ".join(f"{edge}: {at} / {within}"
                                  for edge, (at, within) in near.items()))
            print()
            if version == 7:
                forced_rows(pairs, max(edges))
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
