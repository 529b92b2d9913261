#!/usr/bin/env python3
"""Search speed: multi-index hashing against brute force, from 10^4 to 10^7 stored hashes.

    python bench/search_speed.py [--max-count 10000000] [--dataset DIR]

Two sets of 64-bit hashes at each size:
  random     uniformly random hashes (the easy case)
  realistic  CALTECH-101's own dHashes with 0-6 random bits flipped, tiled to the size (real
             hashes are correlated: smooth images crowd near all-zero bits)
Each set gets neighbours planted at distances 0, 4, 8 and 12 from every query, and every answer of
the multi-index is checked against brute force. Rows, per query after loading, one core:
  multi-index   neardup's default for large stores (exact)
  numpy scan    XOR + popcount over every hash (the reference answer)
  python loop   `ImageHash - ImageHash` over every stored hash, the naive baseline (small sizes)
Then the time to open a real store of 10^6 and 10^7 hashes (first open builds and caches the
arrays; later opens map them), and the index's memory per hash.

    python bench/search_speed.py --bits 256 [--max-count 10000000]

The same for 256-bit hashes (dHash-256) and the wide multi-index (16-bit substrings), at radii
0, 8, 16, 24 and 32; "realistic" tiles CALTECH-101's own dHash-256 values with 0-24 bits flipped.
Exactness is checked against the scan on 20 queries per row.
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import tempfile
import time
from functools import partial

import imagehash  # noqa: E402
import numpy as np  # noqa: E402
from _setup import (  # noqa: E402, F401  (sets the path)
    DEFAULT_DATASET,
    ROOT,
    index_whole,
    require_dataset,
)

from neardup.core.hashing import Hash, Recipe  # noqa: E402
from neardup.core.multiindex import MultiIndex, WideMultiIndex  # noqa: E402
from neardup.core.search import HashIndex  # noqa: E402
from neardup.core.store import Store  # noqa: E402

RADII = (0, 4, 8, 12)
QUERIES = 200


def random_flips(rng: np.random.Generator, count: int, max_bits: int) -> np.ndarray:
    """count uint64 masks, each with 0..max_bits random bits set."""
    masks = np.zeros(count, dtype=np.uint64)
    flips = rng.integers(0, max_bits + 1, size=count)
    for step in range(max_bits):
        bits = rng.integers(0, 64, size=count).astype(np.uint64)
        masks |= np.where(flips > step, np.uint64(1) << bits, np.uint64(0))
    return masks


def exact_flips(rng: np.random.Generator, count: int, distance: int) -> np.ndarray:
    """count uint64 masks with exactly `distance` bits set."""
    return np.array([sum(1 << int(b) for b in rng.choice(64, distance, replace=False))
                     for _ in range(count)], dtype=np.uint64)


def caltech_hashes(dataset: str, recipe: Recipe | None = None) -> np.ndarray:
    """CALTECH-101's hashes: (count,) for 64 bits, (count, words) for longer ones."""
    recipe = recipe or Recipe()
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, "caltech.shelve")
        index_whole(dataset, path, recipe, "search_speed.py")  # its hashes, every one
        with Store.open_for_reading(path) as store:
            matrix = np.array(store.hash_matrix())
    return matrix[:, 0] if recipe.bits == 64 else matrix


WIDE_BITS = 256
WIDE_RADII = (0, 8, 16, 24, 32)
WIDE_CHECKED = 20


def wide_flips(rng: np.random.Generator, count: int, counts: np.ndarray) -> np.ndarray:
    """(count, 4) uint64 masks, row i with counts[i] distinct random bits of 256 set."""
    masks = np.zeros((count, WIDE_BITS // 64), dtype=np.uint64)
    for step in range(int(counts.max(initial=0))):
        bits = rng.integers(0, WIDE_BITS, size=count)
        # a repeated bit would cancel; drawing without replacement row by row is too slow here,
        # so set rather than toggle: the row then has at most counts[i] bits
        chosen = np.where(counts > step)[0]
        words, shifts = bits[chosen] // 64, (bits[chosen] % 64).astype(np.uint64)
        masks[chosen, words] |= np.uint64(1) << shifts
    return masks


def measure_wide(counts: list[int], caltech: np.ndarray | None,
                 radii: tuple[int, ...] = WIDE_RADII, checked: int = WIDE_CHECKED) -> None:
    kinds = ["random"] + (["realistic"] if caltech is not None else [])
    print(f"{WIDE_BITS}-bit hashes (dHash-256), one core:")
    print("| hashes | set | radius | multi-index ms | numpy scan ms | scan / multi |"
          " found per query |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    words = WIDE_BITS // 64
    for count in counts:
        for kind in kinds:
            rng = np.random.default_rng(count + 256)
            if kind == "random":
                queries = rng.integers(0, 2**64, size=(QUERIES, words), dtype=np.uint64)
                values = rng.integers(0, 2**64, size=(count, words), dtype=np.uint64)
            else:
                assert caltech is not None
                picks = rng.integers(0, len(caltech), size=QUERIES)
                queries = caltech[picks] ^ wide_flips(rng, QUERIES, np.full(QUERIES, 4))
                tiled = caltech[np.arange(count) % len(caltech)]
                values = tiled ^ wide_flips(rng, count, rng.integers(0, 25, size=count))
            planted = [queries ^ wide_flips(rng, QUERIES, np.full(QUERIES, d)) for d in radii]
            values = np.concatenate([values] + planted)
            query_values = [int.from_bytes(row.astype(">u8").tobytes(), "big") for row in queries]
            started = time.perf_counter()
            multi = WideMultiIndex(values, WIDE_BITS)
            built = time.perf_counter() - started
            index = HashIndex(values, WIDE_BITS, multi)
            few = query_values[: max(3, min(QUERIES, 10**8 // count))]
            for radius in radii:
                found = 0
                for query in query_values[:checked]:  # exactness against the scan first
                    positions, distances = multi.within(query, radius)
                    hits, _ = index.scan(Hash(query, WIDE_BITS), radius)
                    if set(positions.tolist()) != set(hits.tolist()):
                        raise SystemExit(f"wide multi-index differs from brute force at r={radius}")
                    found += len(positions)
                multi_ms = per_query_ms(partial(multi.within, max_distance=radius), query_values)
                scan_ms = per_query_ms(
                    lambda query, r=radius, idx=index: idx.scan(Hash(query, WIDE_BITS), r), few)
                print(f"| {count:,} | {kind} | {radius} | {multi_ms:.3f} | {scan_ms:.2f} |"
                      f" {scan_ms / multi_ms:,.1f}x | {found / checked:.1f} |", flush=True)
            memory = (values.nbytes + multi.tables.nbytes) / len(values)
            print(f"| {count:,} | {kind} | build | {built:.2f} s | | | {memory:.0f} B/hash |",
                  flush=True)


def hash_set(kind: str, count: int, rng: np.random.Generator, caltech: np.ndarray | None,
             queries: np.ndarray) -> np.ndarray:
    if kind == "random":
        values = rng.integers(0, 2**64, size=count, dtype=np.uint64)
    else:
        assert caltech is not None
        values = np.resize(caltech, count) ^ random_flips(rng, count, 6)
    planted = np.concatenate([queries ^ exact_flips(rng, len(queries), d) for d in RADII])
    return np.unique(np.concatenate([values, planted]))


def per_query_ms(action, queries: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for query in queries:
        action(int(query))
    return (time.perf_counter() - started) * 1000 / len(queries)


def scan(index: HashIndex, query: int, radius: int) -> object:
    return index.scan(Hash(query, 64), radius)


def python_loop(stored: list[imagehash.ImageHash], query: int, radius: int) -> list[object]:
    """The naive baseline: one ImageHash subtraction per stored hash."""
    wanted = imagehash.hex_to_hash(format(query, "016x"))
    return [value for value in stored if value - wanted <= radius]


def measure_sizes(counts: list[int], caltech: np.ndarray | None) -> None:
    kinds = ["random"] + (["realistic"] if caltech is not None else [])
    print("| hashes | set | radius | multi-index ms | numpy scan ms | python loop ms |"
          " scan / multi | found per query |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for count in counts:
        for kind in kinds:
            rng = np.random.default_rng(count)
            if kind == "random":
                queries = rng.integers(0, 2**64, size=QUERIES, dtype=np.uint64)
            else:
                queries = np.resize(caltech, QUERIES) ^ random_flips(rng, QUERIES, 3)
            values = hash_set(kind, count, rng, caltech, queries)
            started = time.perf_counter()
            multi = MultiIndex(values)
            built = time.perf_counter() - started
            index = HashIndex(values.reshape(-1, 1), 64, multi)
            few = queries[: max(5, min(QUERIES, 2 * 10**8 // count // 10))]
            python_hashes = None
            if count <= 100_000:
                python_hashes = [imagehash.hex_to_hash(format(int(v), "016x")) for v in values]
            for radius in RADII:
                found = 0
                for query in queries:  # exactness first: the multi-index must equal the scan
                    positions, distances = multi.within(int(query), radius)
                    hits, _ = index.scan(Hash(int(query), 64), radius)
                    if set(positions.tolist()) != set(hits.tolist()):
                        raise SystemExit(f"multi-index differs from brute force at r={radius}")
                    found += len(positions)
                multi_ms = per_query_ms(partial(multi.within, max_distance=radius), queries)
                scan_ms = per_query_ms(partial(scan, index, radius=radius), few)
                loop = "-"
                if python_hashes is not None and radius == RADII[-1]:
                    loop_ms = per_query_ms(partial(python_loop, python_hashes, radius=radius),
                                           few[:3])
                    loop = f"{loop_ms:,.1f}"
                print(f"| {count:,} | {kind} | {radius} | {multi_ms:.3f} | {scan_ms:.2f} | {loop} |"
                      f" {scan_ms / multi_ms:,.0f}x | {found / len(queries):.1f} |", flush=True)
            memory = (values.nbytes + multi.tables.nbytes) / len(values)
            print(f"| {count:,} | {kind} | build | {built:.2f} s | | | | {memory:.0f} B/hash |",
                  flush=True)


def make_store(path: str, values: np.ndarray) -> None:
    """A real store holding these hashes (one path each), written in bulk."""
    Store.open_for_writing(path, Recipe(), "/bench", {}).close()
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA synchronous = OFF")
        rows = ((format(int(v), "016x").encode(),
                 b"\x80\x04]\x94\x8c\x05a.jpg\x94a.") for v in values)  # pickled ['a.jpg']
        # Written behind index.py's back, as any program may: the store's triggers log the keys.
        connection.executemany("INSERT INTO Dict (key, value) VALUES (?, ?)", rows)
    connection.close()


def measure_open(counts: list[int]) -> None:
    print()
    print("| hashes in the store | first open (build + cache) s | later open s | first query ms |")
    print("|---:|---:|---:|---:|")
    for count in counts:
        rng = np.random.default_rng(7)
        values = np.unique(rng.integers(0, 2**64, size=count, dtype=np.uint64))
        with tempfile.TemporaryDirectory() as workdir:
            path = os.path.join(workdir, "db.shelve")
            make_store(path, values)
            timings = []
            for _ in range(2):
                started = time.perf_counter()
                with Store.open_for_reading(path) as store, store.snapshot():
                    index = HashIndex.from_store(store)
                    opened = time.perf_counter() - started
                    started = time.perf_counter()
                    index.within(Hash(int(values[0]), 64), 8)
                    first_query = (time.perf_counter() - started) * 1000
                timings.append((opened, first_query))
            print(f"| {count:,} | {timings[0][0]:.2f} | {timings[1][0]:.3f} |"
                  f" {timings[1][1]:.2f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-count", type=int, default=10**7)
    parser.add_argument("--counts", type=int, nargs="*",
                        help="exact sizes to measure instead (e.g. 100000000), no store rows")
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--open-only", action="store_true",
                        help="only the table of opening a store (10^6 and 10^7 hashes)")
    parser.add_argument("--bits", type=int, choices=(64, WIDE_BITS), default=64)
    parser.add_argument("--radii", type=int, nargs="*", help=f"with --bits {WIDE_BITS}: radii"
                        f" to measure (default {' '.join(map(str, WIDE_RADII))})")
    parser.add_argument("--checked", type=int, default=WIDE_CHECKED,
                        help=f"with --bits {WIDE_BITS}: queries checked against the scan")
    args = parser.parse_args()
    if args.open_only:
        measure_open([n for n in (10**6, 10**7) if n <= args.max_count])
        return 0
    counts = args.counts or [n for n in (10**4, 10**5, 10**6, 10**7) if n <= args.max_count]
    if args.bits == WIDE_BITS:
        found = os.path.isdir(args.dataset)
        caltech = caltech_hashes(args.dataset, Recipe("dhash", 16)) if found else None
        measure_wide(counts, caltech, tuple(args.radii or WIDE_RADII), args.checked)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\npeak memory of the whole run: {peak:,.0f} MiB")
        return 0
    caltech = caltech_hashes(args.dataset) if os.path.isdir(args.dataset) else None
    if caltech is None:
        print(f"({args.dataset} not found: the realistic set is left out)")
    measure_sizes(counts, caltech)
    if not args.counts:
        measure_open([n for n in (10**6, 10**7) if n <= args.max_count])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak memory of the whole run: {peak:,.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
