#!/usr/bin/env python3
"""`search.py --groups` on large stores: seconds per run, this checkout against a baseline.

    python bench/groups_speed.py [--counts 100000 1000000] [--radii 0 4] [--baseline DIR]

Each store holds "realistic" 64-bit hashes: CALTECH-101's own dHashes tiled to the count with
0-6 random bits flipped (as bench/search_speed.py builds them), one path each, written with
sqlite3 as bench/search_speed.py does. Every run is `search.py --groups -m R --json` in a child
process, timed from the outside; with --baseline, the same command of another checkout (DIR)
runs on the same store in the same session, and the ratio is printed.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sqlite3
import subprocess
import sys
import tempfile
import time

import numpy as np
from _setup import DEFAULT_DATASET, ROOT, require_dataset  # noqa: F401  (sets the path)
from search_speed import caltech_hashes, random_flips

from neardup.core.hashing import Recipe
from neardup.core.store import Store


def make_store(path: str, values: np.ndarray) -> None:
    """A real store holding these hashes, written in bulk with sqlite3: one file each, and every
    twentieth hash a second file (an exact duplicate)."""
    Store.open_for_writing(path, Recipe(), "/bench", {}).close()
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA synchronous = OFF")
        rows = ((format(int(value), "016x").encode(),
                 pickle.dumps([f"{number}.jpg"] + ([f"{number}-copy.jpg"] if number % 20 == 0
                                                   else []), 2))
                for number, value in enumerate(values))
        connection.executemany("INSERT INTO Dict (key, value) VALUES (?, ?)", rows)
    connection.close()


def run_groups(checkout: str, store: str, radius: int) -> tuple[float, int]:
    """Seconds for one --groups run and how many groups it printed."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.join(checkout, "search.py"), "-s", store,
                           "--groups", "-m", str(radius), "--json"], capture_output=True,
                          text=True)
    if done.returncode not in (0, 1):  # 1: no group
        raise SystemExit(f"groups_speed.py: {checkout}: {done.stderr.strip()}")
    seconds = time.perf_counter() - started
    return seconds, done.stdout.count('"relpaths"')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--counts", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--radii", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--baseline", help="another checkout to time on the same stores")
    args = parser.parse_args()
    if not require_dataset(args.dataset, "groups_speed.py"):
        return 2
    caltech = caltech_hashes(args.dataset)
    rng = np.random.default_rng(7)
    print("| hashes | radius | this checkout s | groups | baseline s | groups | baseline / this |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for count in args.counts:
            values = np.unique(np.resize(caltech, count) ^ random_flips(rng, count, 6))
            store = os.path.join(folder, f"{count}.shelve")
            make_store(store, values)
            run_groups(ROOT, store, 0)  # builds the store's caches once, for every row
            for radius in args.radii:
                ours, ours_groups = run_groups(ROOT, store, radius)
                row = f"| {len(values):,} | {radius} | {ours:.1f} | {ours_groups:,} |"
                if args.baseline:
                    theirs, their_groups = run_groups(args.baseline, store, radius)
                    row += f" {theirs:.1f} | {their_groups:,} | {theirs / ours:.1f}x |"
                else:
                    row += " | | |"
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
