#!/usr/bin/env python3
"""Store size: bytes per image in neardup's store and in the tutorial's default shelve.

    python bench/store_size.py [--count 1000000]

Both hold the same synthetic images: CALTECH-101-like paths (`category/image_0001.jpg`) with
random 64-bit hashes. neardup's store is written through `Store.apply` in batches, exactly as
index.py writes it; the default `shelve` (dbm.dumb on this Python) as the tutorial does.
"""

from __future__ import annotations

import argparse
import os
import random
import shelve
import tempfile
import time

from _setup import DEFAULT_DATASET, ROOT, require_dataset  # noqa: E402, F401  (sets the path)

from neardup.core.hashing import Hash, Recipe  # noqa: E402
from neardup.core.store import IndexedFile, Store  # noqa: E402

BATCH = 10_000


def folder_size(folder: str, prefix: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)
               if name.startswith(prefix) and not name.endswith(".lock"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--reference-count", type=int, default=100_000,
                        help="images in the dbm.dumb shelve (it is slow to fill)")
    args = parser.parse_args()
    rng = random.Random(1)
    # inode and ctime as a real file has them (about 3 and 8 bytes in SQLite's records).
    records = [IndexedFile(f"category_{n % 101:03d}/image_{n // 101:05d}.jpg", 40_000 + n,
                           1_700_000_000_000_000_000 + n, Hash(rng.getrandbits(64), 64).hex(),
                           3_000_000 + n, 1_700_000_000_000_000_000 + n)
               for n in range(args.count)]
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, "neardup.shelve")
        started = time.perf_counter()
        with Store.open_for_writing(path, Recipe(), "/photos", {}) as store:
            for start in range(0, len(records), BATCH):
                store.apply(records[start:start + BATCH], [])
            seconds = time.perf_counter() - started
            store.prune_changes(store.generation())  # as index.py does once it has cached
            before = folder_size(workdir, "neardup.shelve") / args.count
            store.compact()  # as index.py does after a run that at least doubles the store
        ours = folder_size(workdir, "neardup.shelve") / args.count

        reference_path = os.path.join(workdir, "reference")
        with shelve.open(reference_path) as db:
            for record in records[: args.reference_count]:
                db[record.hash_hex] = db.get(record.hash_hex, []) + [record.relpath]
        reference = folder_size(workdir, "reference") / args.reference_count

    print(f"neardup store, {args.count:,} images: {ours:,.0f} bytes per image compacted,"
          f" {before:,.0f} before (written in {seconds:.0f} s, {args.count / seconds:,.0f}"
          " images/s)")
    print(f"default shelve (dbm.dumb), {args.reference_count:,} images:"
          f" {reference:,.0f} bytes per image")
    print(f"ratio: {ours / reference:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
