#!/usr/bin/env python3
"""What index.py --rebuild's last step costs: copying the rebuilt store into the store in use.

    python bench/rebuild_copy.py [--sizes 100000,1000000] [--work DIR]

At each size a store of that many images is written through the store's own write path
(Store.apply, 10,000 images a transaction, random 64-bit hashes, one file per hash, paths like
`cat0123/image_0000123.jpg`), and a second one beside it as the store in use. Rows:
  --rebuild copy    copy_store_into: SQLite's backup into the store in use, one commit, and the
                    checkpoint that moves it from the -wal into the file (what --rebuild adds to
                    indexing)
  plain file copy   shutil.copyfile of the same file: the baseline, what a `cp` or a `mv` across
                    file systems costs (a `mv` on one file system costs nothing, and is not safe
                    while the store is open: docs/service.md)
and their ratio. The hashing itself, the bulk of a rebuild, is index.py's usual speed (README).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
from _setup import ROOT  # noqa: F401  (sets the path)

from neardup.core.hashing import Recipe  # noqa: E402
from neardup.core.store import IndexedFile, Store, copy_store_into  # noqa: E402

BATCH = 10_000


def make_store(path: str, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, size=count, dtype=np.int64)
    with Store.open_for_writing(path, Recipe(), "/bench", {}) as store:
        for start in range(0, count, BATCH):
            store.apply([IndexedFile(f"cat{number % 1000:04d}/image_{number:07d}.jpg", 40_000,
                                     1_700_000_000_000_000_000 + number,
                                     format(int(hashes[number]), "016x"), number + 1, 0)
                         for number in range(start, min(start + BATCH, count))], [])
        store.checkpoint()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--work", default=None, help="folder for the stores (default: a temporary one)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    print("| images | store file MB | --rebuild copy s | plain file copy s | ratio |")
    print("|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        for count in sizes:
            rebuilt, in_use = os.path.join(work, "rebuilt.shelve"), os.path.join(work, "db.shelve")
            make_store(rebuilt, count, seed=1)
            make_store(in_use, count, seed=2)
            started = time.perf_counter()
            copy_store_into(rebuilt, in_use)
            copied = time.perf_counter() - started
            with Store.open_for_reading(in_use, quick_check=False) as store:
                assert store.image_count() == count
            started = time.perf_counter()
            shutil.copyfile(rebuilt, os.path.join(work, "copy.shelve"))
            plain = time.perf_counter() - started
            megabytes = os.path.getsize(rebuilt) / 1e6
            print(f"| {count:,} | {megabytes:,.0f} | {copied:.2f} | {plain:.2f} |"
                  f" {copied / plain:.1f} |", flush=True)
            for name in os.listdir(work):
                full = os.path.join(work, name)
                shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
