#!/usr/bin/env python3
"""Indexing speed: the reference tutorial's loop against index.py, on the same files in one run.

    python bench/index_speed.py [--dataset DIR] [--limit N] [--rounds N]

Two sets of files: CALTECH-101 (small JPEGs) and a few generated 12-megapixel JPEGs. Rows, all
on the same files with the page cache warm, through one folder of hard links to them (symbolic
links where the file system refuses):
  read bytes              reading each file, the I/O floor
  decode floor            a 1/8-scale grayscale JPEG decode (Pillow draft mode), the floor for
                          any JPEG hasher
  reference loop          `db[h] = db.get(h, []) + [path]` with `imagehash.dhash(Image.open(path))`
                          into the default `shelve` (dbm.dumb on this Python), as the tutorial does
  index.py --exact -j 1   ours, bit for bit like ImageHash (full decode), one worker
  index.py -j 1           ours, default recipe (grayscale reduced-scale JPEG decode), one worker
  index.py -j 1, Pillow   the same with the fast decoder (simplejpeg) hidden: what it buys (the
                          hashes are the same)
  index.py -j N           the same, every core
  Dask, N local workers   the same through index.py --local-cluster N (cluster started first)
  czkawka, N cores        when the `czkawka` package (czkawka's Rust core through its Python
                          binding) is installed: `ImageSimilarity().find_similar()` over a folder
                          holding the same files (hard links, or copies where a file repeats:
                          czkawka skips symbolic links), in a child process whose cache folder
                          is empty, timed inside it; it uses every core
Ratios are against the reference loop and the decode floor measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shelve
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import imagehash  # noqa: E402
import numpy as np  # noqa: E402
from _setup import (  # noqa: E402, F401  (sets the path)
    DEFAULT_DATASET,
    ROOT,
    index_whole,
    require_dataset,
)
from PIL import Image  # noqa: E402

from neardup.core import jpeg  # noqa: E402
from neardup.core.discovery import FoundFile, walk_images  # noqa: E402
from neardup.core.hashing import Recipe  # noqa: E402
from neardup.errors import NeardupError  # noqa: E402
from neardup.scale.cluster import cluster_hasher, connect  # noqa: E402


@contextmanager
def without_fast_decoder() -> Iterator[None]:
    """Pillow decodes every JPEG, in this process (so for -j 1 rows only)."""
    saved, jpeg.simplejpeg = jpeg.simplejpeg, None
    try:
        yield
    finally:
        jpeg.simplejpeg = saved


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


CZKAWKA_RUN = """
import sys, time
from czkawka import ImageSimilarity
finder = ImageSimilarity()
finder.set_directories([sys.argv[1]])
started = time.perf_counter()
finder.find_similar()
print(time.perf_counter() - started)
"""


def czkawka_folder(files: list[tuple[str, str]], folder: str) -> None:
    """The files under their relative paths as real directory entries (czkawka skips links)."""
    seen: set[str] = set()
    for relpath, path in files:
        target = os.path.join(folder, relpath)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        real = os.path.realpath(path)
        if real in seen:  # one inode under many names could be hashed once: give it its own
            shutil.copyfile(real, target)
            continue
        seen.add(real)
        try:
            os.link(real, target)
        except OSError:  # another file system
            shutil.copyfile(real, target)


def czkawka_seconds(folder: str, workdir: str) -> float:
    home = os.path.join(workdir, "czkawka-home")
    os.makedirs(home, exist_ok=True)
    env = dict(os.environ, HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"),
               XDG_CONFIG_HOME=os.path.join(home, ".config"))
    done = subprocess.run([sys.executable, "-c", CZKAWKA_RUN, folder], env=env, check=True,
                          capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def make_large_photos(folder: str, count: int) -> list[str]:
    """count 12-megapixel JPEGs (4000 x 3000) with photo-like structure at several scales."""
    rng = np.random.default_rng(12)
    paths = []
    os.makedirs(folder, exist_ok=True)
    for number in range(count):
        coarse = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
        fine = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
        picture = Image.blend(
            Image.fromarray(coarse).resize((4000, 3000), Image.Resampling.BICUBIC),
            Image.fromarray(fine).resize((4000, 3000), Image.Resampling.BILINEAR), 0.25)
        path = os.path.join(folder, f"photo_{number:02d}.jpg")
        picture.save(path, quality=90)
        paths.append(path)
    return paths


def measure(label: str, files: list[tuple[str, str]], workdir: str,
            dask_cluster: object = None) -> list[tuple[str, float]]:
    """Time every row on the same files; files are (relative path, absolute path) pairs."""
    subset = os.path.join(workdir, label)
    paths = []
    for relpath, path in files:  # a folder holding exactly these files, linked
        target = os.path.join(subset, relpath)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            # Hard links where the file system allows: a symbolic link costs every open its
            # resolution (2 to 3 % of index.py -j 1 on CALTECH-101).
            os.link(os.path.realpath(path), target)
        except OSError:  # another file system
            os.symlink(os.path.abspath(path), target)
        paths.append(target)  # every row reads the same directory entries
    read_bytes(paths)  # warm the page cache so no row pays for the disk
    cores = os.cpu_count() or 1
    rows: list[tuple[str, float]] = []

    def timed(name: str, action) -> None:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        action()
        rows.append((name, len(paths) / (time.perf_counter() - started)))

    def ours(name: str, recipe: Recipe, jobs: int) -> None:
        store = os.path.join(workdir, f"{label}-{name.replace(' ', '')}.shelve")
        # Every file indexed, or the run stops: a failed file is a file not timed.
        timed(name, lambda: index_whole(subset, store, recipe, "index_speed.py", jobs=jobs))

    timed("read bytes", lambda: read_bytes(paths))
    timed("decode floor (1/8 JPEG)", lambda: decode_floor(paths))
    reference_dir = os.path.join(workdir, label + ".reference")
    os.makedirs(reference_dir)
    timed("reference loop", lambda: reference_loop(paths, reference_dir))
    ours("index.py --exact -j 1", Recipe(exact=True), 1)
    ours("index.py -j 1", Recipe(), 1)
    if jpeg.available():
        with without_fast_decoder():
            ours("index.py -j 1, Pillow", Recipe(), 1)
    ours(f"index.py -j {cores}", Recipe(), cores)
    if importlib.util.find_spec("czkawka") is not None:
        folder = os.path.join(workdir, label + ".czkawka")
        czkawka_folder(files, folder)
        read_bytes([os.path.join(folder, relpath) for relpath, _path in files])
        rows.append((f"czkawka, {cores} cores", len(paths) / czkawka_seconds(folder, workdir)))
        ours(f"index.py -j {cores} (again)", Recipe(), cores)  # the load may have moved
    if dask_cluster is not None:
        # The cluster is started before the clock (about a second here); the row is the work.
        store = os.path.join(workdir, f"{label}-dask.shelve")
        hasher = cluster_hasher(dask_cluster, partition_size=max(10, len(paths) // (cores * 8)))
        timed(f"Dask, {cores} local workers",
              lambda: index_whole(subset, store, Recipe(), "index_speed.py", hasher=hasher))
    return rows


def report(title: str, rows: list[tuple[str, float]]) -> None:
    rates = dict(rows)
    reference, floor = rates["reference loop"], rates["decode floor (1/8 JPEG)"]
    print(title)
    print(f"| {'':<26}| {'images/s':>9} | {'vs reference':>12} | {'vs decode floor':>15} |")
    print(f"|{'-' * 27}|{'-' * 10}:|{'-' * 13}:|{'-' * 16}:|")
    for name, rate in rows:
        print(f"| {name:<26}| {rate:>9,.0f} | {rate / reference:>11.2f}x | {rate / floor:>14.0%} |")
    print()


def report_medians(title: str, rounds: list[list[tuple[str, float]]]) -> None:
    """Each row's median rate and median ratio to the reference of its own round."""
    print(title)
    print(f"| {'':<26}| {'images/s':>9} | {'vs reference':>12} |")
    print(f"|{'-' * 27}|{'-' * 10}:|{'-' * 13}:|")
    for name, _rate in rounds[0]:
        rates = [dict(rows)[name] for rows in rounds]
        ratios = [dict(rows)[name] / dict(rows)["reference loop"] for rows in rounds]
        print(f"| {name:<26}| {float(np.median(rates)):>9,.0f} |"
              f" {float(np.median(ratios)):>11.2f}x |")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images")
    parser.add_argument("--large", type=int, default=8, help="12-megapixel JPEGs to generate")
    parser.add_argument("--repeat", type=int, default=20, help="names each large JPEG is linked as")
    parser.add_argument("--no-dask", action="store_true", help="leave the Dask row out")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every row this many times in turn; then a table of the"
                             " median ratios (a shared machine's load moves within a run)")
    args = parser.parse_args()
    if not require_dataset(args.dataset, "index_speed.py"):
        return 2

    found = [entry for entry in walk_images(args.dataset) if isinstance(entry, FoundFile)]
    if args.limit:
        found = found[: args.limit]
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as workdir, ExitStack() as stack:
        client = None
        try:
            if not args.no_dask:
                client = stack.enter_context(connect(None, cores))
        except NeardupError:
            print("(Dask is not installed: its row is left out)")
        if importlib.util.find_spec("czkawka") is None:
            print("(czkawka is not installed: its row is left out; pip install czkawka)")
        files = [(entry.relpath, entry.path) for entry in found]
        # Few distinct photos (they are slow to make), each linked under several names, so there
        # is enough work for the parallel rows to be measured rather than their start-up.
        large = make_large_photos(os.path.join(workdir, "generated"), args.large)
        large_files = [(f"copy{k}/{os.path.basename(p)}", p) for k in range(args.repeat)
                       for p in large]
        small_rounds, large_rounds = [], []
        for number in range(args.rounds):
            small_rounds.append(measure(f"caltech{number}", files, workdir, client))
            large_rounds.append(measure(f"large{number}", large_files, workdir, client))
    for title, rounds in (
            (f"{len(found)} images from {args.dataset} (about 300 x 200), {cores} cores",
             small_rounds),
            (f"{len(large_files)} 12-megapixel JPEGs (4000 x 3000; {len(large)} generated, each"
             f" linked {args.repeat} times), {cores} cores", large_rounds)):
        for number, rows in enumerate(rounds):
            report(title + (f", round {number + 1} of {len(rounds)}" if len(rounds) > 1 else ""),
                   rows)
        if len(rounds) > 1:
            report_medians(title + f", median of {len(rounds)} rounds", rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
