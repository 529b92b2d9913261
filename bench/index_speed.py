#!/usr/bin/env python3
"""Indexing speed: the reference tutorial's loop against index.py, on the same files in one run.

    python bench/index_speed.py [--dataset DIR] [--limit N]

Rows, all on the same files with the page cache warm:
  read bytes      reading each file, the I/O floor
  decode floor    a 1/8-scale grayscale JPEG decode (Pillow draft mode), the floor for any hasher
  reference       `db[h] = db.get(h, []) + [path]` with `imagehash.dhash(Image.open(path))`,
                  into the default `shelve` (dbm.dumb on this Python), as the tutorial does
  index.py -j 1   ours, one worker process
  index.py -j N   ours, every core
Ratios are against the reference row.
"""

from __future__ import annotations

import argparse
import os
import shelve
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import imagehash  # noqa: E402
from PIL import Image  # noqa: E402

from neardup.discovery import FoundFile, walk_images  # noqa: E402
from neardup.hashing import Recipe  # noqa: E402
from neardup.indexing import index_folder  # noqa: E402

DEFAULT_DATASET = os.environ.get(
    "NEARDUP_CALTECH101", str(ROOT.parent / "shared" / "caltech101" / "101_ObjectCategories")
)


def read_bytes(paths: list[str]) -> None:
    for path in paths:
        with open(path, "rb") as stream:
            stream.read()


def decode_floor(paths: list[str]) -> None:
    for path in paths:
        with Image.open(path) as image:
            image.draft("L", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()


def reference_loop(paths: list[str], workdir: str) -> None:
    with shelve.open(os.path.join(workdir, "reference")) as db:
        for path in paths:
            key = str(imagehash.dhash(Image.open(path)))
            db[key] = db.get(key, []) + [path]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images")
    args = parser.parse_args()
    if not os.path.isdir(args.dataset):
        print(f"index_speed.py: {args.dataset}: no such folder (set NEARDUP_CALTECH101)",
              file=sys.stderr)
        return 2

    files = [entry for entry in walk_images(args.dataset) if isinstance(entry, FoundFile)]
    if args.limit:
        files = files[: args.limit]
    paths = [entry.path for entry in files]
    with tempfile.TemporaryDirectory() as workdir:
        # Index a folder holding exactly these files, linked, so every row sees the same bytes.
        subset = os.path.join(workdir, "images")
        for entry in files:
            target = os.path.join(subset, entry.relpath)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.path.abspath(entry.path), target)
        read_bytes(paths)  # warm the page cache so no row pays for the disk

        cores = os.cpu_count() or 1
        rows: list[tuple[str, float]] = []

        def timed(name: str, action) -> None:  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            action()
            rows.append((name, len(paths) / (time.perf_counter() - started)))

        timed("read bytes", lambda: read_bytes(paths))
        timed("decode floor (1/8 JPEG)", lambda: decode_floor(paths))
        timed("reference loop", lambda: reference_loop(paths, workdir))
        timed("index.py -j 1", lambda: index_folder(
            subset, os.path.join(workdir, "one.shelve"), Recipe(), jobs=1))
        timed(f"index.py -j {cores}", lambda: index_folder(
            subset, os.path.join(workdir, "all.shelve"), Recipe(), jobs=cores))
        store_bytes = sum(os.path.getsize(os.path.join(workdir, name))
                          for name in os.listdir(workdir) if name.startswith("one.shelve"))

    reference = dict(rows)["reference loop"]
    print(f"{len(paths)} images from {args.dataset}, {cores} cores")
    print(f"{'':<26}{'images/s':>10}{'vs reference':>14}")
    for name, rate in rows:
        print(f"{name:<26}{rate:>10,.0f}{rate / reference:>13.2f}x")
    print(f"store: {store_bytes / len(paths):,.0f} bytes per image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
