#!/usr/bin/env python3
"""What the decode margin costs and why the grid is kept in floating point: recall of variants.

    python gather.py --source CALTECH --output images --seed 101 --samples 600 --copies 1 \\
        --edits resize,jpeg
    python bench/decode_margin.py images [--margins 1 2 4 8 16]

Each sampled original and its copies are hashed (dHash-64) by: plain ImageHash
(`imagehash.dhash(Image.open(p))`), the v2 recipe, the v3 recipe (one margin for every scale) with
DECODE_MARGIN set to each value (a smaller margin decodes more JPEGs at reduced scale: at 8,
photos of 300 x 200 are decoded at 1/2; at 1, nearly always at 1/8), v3 with its grid rounded to
whole gray levels (as an 8-bit resize would), v4 (DECODE_MARGINS), v5 (v4, a reduced decode's
partial last pixel weighed by what it covers), v6 (v5, cells within half a gray level of each
other read as ties) and the default (v7: v6 decoding at 1/2 from 8 pixels per cell, v4's 1/4 and
1/8). Printed: recall (copies within t bits of their original) per edit.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections.abc import Callable

import imagehash
import numpy as np
from _setup import ROOT  # noqa: F401  (sets the path)
from PIL import Image

import neardup.core.hashing as hashing
import neardup.core.sampling as sampling
from neardup.core.hashing import Hash, Recipe, hash_file

THRESHOLDS = range(7)


def variants(margins: list[int]) -> dict[str, Callable[[str], Hash]]:
    def v3_with(margin: int, step: float = sampling.STEP) -> Callable[[str], Hash]:
        def hasher(path: str) -> Hash:
            saved = hashing.DECODE_MARGIN, sampling.STEP
            hashing.DECODE_MARGIN, sampling.STEP = margin, step
            try:
                return hash_file(path, Recipe(preprocess_version=3))
            finally:
                hashing.DECODE_MARGIN, sampling.STEP = saved
        return hasher

    rows: dict[str, Callable[[str], Hash]] = {
        "--exact (plain ImageHash)": lambda p: Hash.from_imagehash(imagehash.dhash(Image.open(p))),
        "v2": lambda p: hash_file(p, Recipe(preprocess_version=2)),
    }
    for margin in margins:
        label = " (v3's)" if margin == hashing.DECODE_MARGIN else ""
        rows[f"v3, margin {margin}{label}"] = v3_with(margin)
    rows[f"v3, margin {hashing.DECODE_MARGIN}, grid rounded to gray levels"] = v3_with(
        hashing.DECODE_MARGIN, 1.0)
    rows["v4"] = lambda p: hash_file(p, Recipe(preprocess_version=4))
    rows["v5"] = lambda p: hash_file(p, Recipe(preprocess_version=5))
    rows["v6"] = lambda p: hash_file(p, Recipe(preprocess_version=6))
    rows["v7 (default)"] = lambda p: hash_file(p, Recipe())
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", help="a gather.py output folder (with manifest.csv)")
    parser.add_argument("--margins", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    args = parser.parse_args()
    manifest = os.path.join(args.images, "manifest.csv")
    if not os.path.isfile(manifest):
        print(f"decode_margin.py: {manifest}: no such file (run gather.py first)")
        return 2
    with open(manifest, newline="", encoding="utf-8-sig") as stream:
        rows = list(csv.DictReader(stream))
    originals = {row["group"]: row["file"] for row in rows if row["role"] == "original"}
    copies = [(row["file"], originals[row["group"]], row["edit"].split()[0])
              for row in rows if row["role"] == "copy"]
    kinds = sorted({kind for _copy, _original, kind in copies})
    header = " | ".join(str(t) for t in THRESHOLDS)
    results = {}
    for name, hasher in variants(args.margins).items():
        started = time.perf_counter()
        cache: dict[str, Hash] = {}

        def hashed(relpath: str, hasher=hasher, cache=cache) -> Hash:  # type: ignore[no-untyped-def]
            if relpath not in cache:
                cache[relpath] = hasher(os.path.join(args.images, relpath))
            return cache[relpath]

        distances = np.array([hashed(c).distance(hashed(o)) for c, o, _kind in copies])
        results[name] = (distances, time.perf_counter() - started)
    edit_of = np.array([kind for _copy, _original, kind in copies])
    for kind in kinds:
        print(f"{kind} copies ({int((edit_of == kind).sum())}), recall within t bits:")
        print(f"| variant | {header} | worst |")
        print("|---|" + "---:|" * len(THRESHOLDS) + "---:|")
        for name, (distances, _seconds) in results.items():
            chosen = distances[edit_of == kind]
            cells = " | ".join(f"{(chosen <= t).mean():.1%}" for t in THRESHOLDS)
            print(f"| {name} | {cells} | {chosen.max()} |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
