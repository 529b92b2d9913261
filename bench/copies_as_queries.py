#!/usr/bin/env python3
"""Each copy as the query, its original stored: an upload checker's direction, hash against hash.

    python gather.py --source CALTECH --output images --seed 101 --samples 600 --copies 1 \\
        --edits resize,jpeg
    python bench/copies_as_queries.py images [more gather.py folders ...]

`search.py --evaluate` asks with the originals (bench/recipe_vs_exact.sh): a query's undecided
bits are then the original's. A service checking uploads asks with the copies, whose own
undecided bits are counted instead. For every copy of each folder's manifest, the distance to
its original as search.py reports it with the copy as the query (Hash.search_distance) for the
default recipe and v6, and the Hamming distance of plain ImageHash's dHash
(`imagehash.dhash(Image.open(p))`, what --exact stores). Printed per folder and in all: copies
within t bits for t = 0 to 16, and the thresholds where the default finds fewer than plain
ImageHash.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import imagehash
import numpy as np
from _setup import ROOT  # noqa: F401  (sets the path)
from PIL import Image

from neardup.core.hashing import Recipe, hash_file

THRESHOLDS = np.arange(17)
HASHES = ("default", "v6", "--exact (plain ImageHash)")


def pairs(folder: str) -> list[tuple[str, str]]:
    """(copy, original) paths of a gather.py folder's manifest."""
    with open(os.path.join(folder, "manifest.csv"), newline="", encoding="utf-8-sig") as stream:
        rows = list(csv.DictReader(stream))
    originals = {row["group"]: row["file"] for row in rows if row["role"] == "original"}
    return [(os.path.join(folder, row["file"]), os.path.join(folder, originals[row["group"]]))
            for row in rows if row["role"] == "copy"]


def distances(copy: str, original: str) -> tuple[int, int, int]:
    """The copy-as-query distance under the default recipe, v6 and plain ImageHash."""
    found = []
    for recipe in (Recipe(), Recipe(preprocess_version=6)):
        found.append(hash_file(copy, recipe).search_distance(hash_file(original, recipe)))
    with Image.open(copy) as first, Image.open(original) as second:
        found.append(imagehash.dhash(first) - imagehash.dhash(second))
    return found[0], found[1], found[2]


def within(values: list[int]) -> np.ndarray:
    """How many of `values` are within each threshold."""
    array = np.array(values)
    return np.array([(array <= t).sum() for t in THRESHOLDS])


def report(name: str, counts: dict[str, np.ndarray], total: int) -> None:
    print(f"{name}: {total} copies as queries, copies within t bits of their original")
    print("| hash | " + " | ".join(str(t) for t in THRESHOLDS[:9]) + " | ... 16 |")
    print("|---|" + "---:|" * 10)
    for label in HASHES:
        cells = " | ".join(str(int(c)) for c in counts[label][:9])
        print(f"| {label} | {cells} | {int(counts[label][-1])} |")
    behind = [int(t) for t in THRESHOLDS
              if counts["default"][t] < counts["--exact (plain ImageHash)"][t]]
    print("  default behind plain ImageHash at: " + (", ".join(map(str, behind)) or "none"))
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="gather.py output folders")
    args = parser.parse_args()
    missing = [f for f in args.folders if not os.path.isfile(os.path.join(f, "manifest.csv"))]
    if missing:
        print(f"copies_as_queries.py: {missing[0]}: no manifest.csv (run gather.py first)",
              file=sys.stderr)
        return 2
    totals = {label: np.zeros(len(THRESHOLDS), dtype=int) for label in HASHES}
    count = 0
    for folder in args.folders:
        found: dict[str, list[int]] = {label: [] for label in HASHES}
        for copy, original in pairs(folder):
            for label, distance in zip(HASHES, distances(copy, original), strict=True):
                found[label].append(distance)
        counts = {label: within(values) for label, values in found.items()}
        report(folder, counts, len(found["default"]))
        for label in HASHES:
            totals[label] += counts[label]
        count += len(found["default"])
    if len(args.folders) > 1:
        report("all folders", totals, count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
