"""Local features: what they cost (indexing speed, store size, search time and memory as the store
grows), each against the hash-only path in the same run.

    python bench/features.py --dataset images            # a gather.py output folder
    python bench/features.py --dataset images --sizes 10000,100000,1000000

1. Indexing, one worker (`index.py -j 1`) on the same --files files with a warm page cache:
   hash only against hash + features; images/s per core and the ratio. Bytes per image in the
   store, with and without features.
2. Verified search against stores of growing size. Each store is the dataset indexed with
   --features plus synthetic images up to the size: each synthetic image is a real stored image's
   record with 10 of the 256 bits of each descriptor flipped at random and its thumbnail shifted
   (so every one is distinct, with realistic descriptor statistics), under a new path and a random
   hash. Queries are --queries copies from the manifest (all kinds in turn); per query: the whole
   search (both looks' features, candidates, verification), after the store is loaded. Also the
   share of queries whose original was still found, and the feature index's memory.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _setup  # noqa: F401  (puts the project on the import path)
import numpy as np

from neardup.core.hashing import Hash, hash_file
from neardup.core.search import HashIndex
from neardup.core.store import IndexedFile, Store
from neardup.features.extract import FeatureSet, read_frame
from neardup.features.search import VerifiedSearch

PYTHON = sys.executable
INDEX = str(_setup.ROOT / "index.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a gather.py output folder")
    parser.add_argument("--work", default="bench-features", help="scratch folder (deleted first)")
    parser.add_argument("--files", type=int, default=2000, help="files timed in part 1")
    parser.add_argument("--sizes", default="10000,100000", help="store sizes for part 2")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--baseline", help="a checkout without features (e.g. `git worktree add"
                        " ../base main`): its index.py is timed on the same files, hash only")
    parser.add_argument("--store", help="the dataset already indexed with --features (else indexed"
                        " here)")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    indexing(Path(args.dataset), work, args.files, args.baseline)
    searching(Path(args.dataset), work, [int(size) for size in args.sizes.split(",")],
              args.queries, args.store)
    return 0


def indexing(dataset: Path, work: Path, count: int, baseline: str | None) -> None:
    sample = work / "sample"
    files = sorted(path for path in (dataset / "haystack").rglob("*.jpg"))[:count]
    for number, path in enumerate(files):
        target = sample / f"{number // 500:03d}" / path.name.replace("image", f"i{number}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
        target.read_bytes()  # warm the page cache for every row alike
    runs = [("hash only (index.py -j 1)", INDEX, []),
            ("hash + features (index.py -j 1 --features)", INDEX, ["--features"])]
    if baseline:
        runs.insert(0, ("hash only, baseline checkout", str(Path(baseline) / "index.py"), []))
    rows = []
    for label, script, extra in runs + runs[:1]:  # the first again: how much the machine drifted
        store = work / f"speed-{len(rows)}.shelve"
        started = time.perf_counter()
        subprocess.run([PYTHON, script, "-d", str(sample), "-s", str(store), "-q", "-j", "1",
                        *extra], check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, PYTHONPATH=str(Path(script).parent)))
        seconds = time.perf_counter() - started
        rows.append((label, len(files) / seconds, os.path.getsize(store) / len(files)))
    base = rows[0][1]
    print(f"\n{len(files)} CALTECH-101 photos from {dataset}, one worker, in one run")
    print("| | images/s per core | vs hash only | store bytes per image |")
    print("|---|---:|---:|---:|")
    for label, rate, size in rows:
        print(f"| {label} | {rate:,.0f} | {rate / base:.2f}x | {size:,.0f} |")


def searching(dataset: Path, work: Path, sizes: list[int], query_count: int,
              prebuilt: str | None) -> None:
    base = Path(prebuilt) if prebuilt else work / "base.shelve"
    if not prebuilt:
        subprocess.run([PYTHON, INDEX, "-d", str(dataset), "-s", str(base), "-q", "--features"],
                       check=True, stdout=subprocess.DEVNULL)
    queries = pick_queries(dataset, query_count)
    print(f"\nVerified search, {len(queries)} copies as queries (every edit kind), one thread;"
          " stores = the dataset + synthetic images; per query after decoding it: its features"
          " and its mirror's, candidates, verification")
    print("| images | p50 ms | p95 ms | mean ms | originals found | index build s |"
          " index MiB | bytes per image |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        store_path = work / f"store-{size}.shelve"
        shutil.copyfile(base, store_path)
        grow(store_path, size)
        with Store.open_for_reading(str(store_path)) as store, store.snapshot():
            images = store.image_count()
            started = time.perf_counter()
            search = VerifiedSearch.for_store(store, HashIndex.from_store(store))
            assert search is not None
            build = time.perf_counter() - started
            index_bytes = feature_index_bytes(store_path)
            times, found = [], 0
            for query, original in queries:
                query_hash = hash_file(str(dataset / query), store.recipe)
                frame = read_frame(str(dataset / query))
                started = time.perf_counter()
                matches = search.search([query_hash], frame, 4)
                times.append((time.perf_counter() - started) * 1000)
                found += any(match.path == original for match in matches)
        times.sort()
        print(f"| {images:,} | {statistics.median(times):.1f} |"
              f" {times[int(len(times) * 0.95) - 1]:.1f} | {statistics.fmean(times):.1f} |"
              f" {found}/{len(queries)} | {build:.1f} | {index_bytes / 2**20:,.0f} |"
              f" {index_bytes / images:,.0f} |")


def feature_index_bytes(store_path: Path) -> int:
    cache = Path(str(store_path) + ".cache")
    return sum(path.stat().st_size for path in cache.glob("feature-*.npy"))


def pick_queries(dataset: Path, count: int) -> list[tuple[str, str]]:
    with open(dataset / "manifest.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        if row["role"] == "copy":
            by_kind.setdefault(row["edit"].split()[0], []).append((row["file"], row["source"]))
    picked: list[tuple[str, str]] = []
    while len(picked) < count and any(by_kind.values()):
        for items in by_kind.values():
            if items and len(picked) < count:
                picked.append(items.pop(0))
    return picked


def grow(store_path: Path, size: int) -> None:
    """Add synthetic images until the store holds `size` (see the module's docstring)."""
    rng = np.random.default_rng(size)
    with Store.open_for_reading(str(store_path)) as store:
        recipe, root = store.recipe, store.dataset_root
        real = [FeatureSet.from_bytes(data) for _id, _path, data in store.feature_rows()]
        have = store.image_count()
    if have >= size:
        return
    with Store.open_for_writing(str(store_path), recipe, root, {}) as store:
        batch: list[IndexedFile] = []
        for number in range(size - have):
            source = real[number % len(real)]
            bits = np.unpackbits(source.descriptors, axis=1)
            # 10 distinct bits of each descriptor: the 10 smallest of 256 random numbers per row.
            flipped = np.argpartition(rng.random(bits.shape), 10, axis=1)[:, :10]
            np.put_along_axis(bits, flipped, 1 - np.take_along_axis(bits, flipped, axis=1),
                              axis=1)
            synthetic = FeatureSet(source.width, source.height, source.points,
                                   np.packbits(bits, axis=1),
                                   np.roll(source.thumbnail, 1 + number % 7, axis=1),
                                   source.chroma)
            value = Hash(int(rng.integers(0, 2**63)) * 2 + 1, 64).hex()
            batch.append(IndexedFile(f"synthetic/{number // 1000:04d}/{number:07d}.jpg", 1, 1,
                                     value, synthetic.to_bytes()))
            if len(batch) == 5000:
                store.apply(batch, [])
                batch = []
        store.apply(batch, [])


if __name__ == "__main__":
    sys.exit(main())
