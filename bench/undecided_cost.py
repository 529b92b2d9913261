#!/usr/bin/env python3
"""What a query's undecided bits cost search: the same queries with and without them, one run.

    python bench/undecided_cost.py [--counts 1000000 10000000] [--queries 300] [--dataset DIR]

A query's dHash bits whose cells are within hashing.UNDECIDED_BAND of a bit's edge count as
agreeing with any stored hash; the exact bucket and the multi-index look up each setting of them
(up to 2**4), the scan masks them. The queries are the hashes of CALTECH-101 photos as search.py
makes them (each with its own undecided bits, 0 to 4); the stored set is CALTECH-101's dHashes
with 0-6 random bits flipped, tiled to each size, with every query's photo and a copy 0 to 4 bits
away planted in it. Rows, per query on one core, through HashIndex.within (what search.py calls):
the queries as made, and the same values without undecided bits; every answer is checked against
a numpy scan first.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter

import numpy as np
from _setup import DEFAULT_DATASET, require_dataset  # noqa: F401  (sets the path)
from search_speed import caltech_hashes, exact_flips, random_flips

from neardup.core.discovery import FoundFile, walk_images
from neardup.core.hashing import Hash, Recipe, hash_file
from neardup.core.multiindex import MultiIndex
from neardup.core.search import HashIndex

RADII = (0, 4, 8)


def per_query_ms(index: HashIndex, queries: list[Hash], radius: int) -> float:
    started = time.perf_counter()
    for query in queries:
        index.within(query, radius)
    return (time.perf_counter() - started) * 1000 / len(queries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not require_dataset(args.dataset, "undecided_cost.py"):
        return 2
    photos = sorted(entry.path for entry in walk_images(args.dataset)
                    if isinstance(entry, FoundFile))
    chosen = random.Random(args.seed).sample(photos, min(args.queries, len(photos)))
    made = [hash_file(path, Recipe()) for path in chosen]
    bare = [Hash(query.value, query.bits) for query in made]
    spread = Counter(query.undecided.bit_count() for query in made)
    print(f"{len(made)} CALTECH-101 photos as queries; undecided bits per query: "
          + ", ".join(f"{bits}: {spread[bits]}" for bits in sorted(spread)))
    caltech = caltech_hashes(args.dataset)
    print("| hashes | radius | with undecided bits ms | without ms | ratio | found with | found"
          " without |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for count in args.counts:
        rng = np.random.default_rng(count)
        values = np.array([query.value for query in made], dtype=np.uint64)
        planted = values ^ np.concatenate([exact_flips(rng, len(values) // 5 + 1, d)
                                           for d in range(5)])[: len(values)]
        stored = np.unique(np.concatenate([np.resize(caltech, count) ^ random_flips(rng, count, 6),
                                           values, planted]))
        index = HashIndex(stored.reshape(-1, 1), 64, MultiIndex(stored))
        for radius in RADII:
            found = {"with": 0, "without": 0}
            for query, plain in zip(made, bare, strict=True):  # exactness first
                for name, asked in (("with", query), ("without", plain)):
                    hits, distances = index.scan(asked, radius)
                    expected = sorted((index.hex_at(int(hit), 16), int(distance))
                                      for hit, distance in zip(hits, distances, strict=True))
                    answer = index.within(asked, radius)
                    if sorted(answer) != expected:
                        raise SystemExit(f"search differs from the scan at r={radius}")
                    found[name] += len(answer)
            with_ms = per_query_ms(index, made, radius)
            without_ms = per_query_ms(index, bare, radius)
            print(f"| {count:,} | {radius} | {with_ms:.3f} | {without_ms:.3f} |"
                  f" {with_ms / without_ms:.2f}x | {found['with'] / len(made):.2f} |"
                  f" {found['without'] / len(made):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
