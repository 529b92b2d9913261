"""Local features: what they cost (indexing speed, store size, search time and memory as the store
grows), each against the hash-only path in the same run.

    python bench/features.py --dataset images            # a gather.py output folder
    python bench/features.py --dataset images --sizes 10000,100000,1000000

1. Indexing, one worker (`index.py -j 1`) on the same --files files with a warm page cache:
   hash only against hash + features; images/s per core and the ratio. Bytes per image in the
   store, with and without features.
2. Verified search against stores of growing size. Each store is the dataset indexed with
   --features plus synthetic images up to the size, under new paths and random hashes, made one
   of two ways (--synthetic):
   - mixed (default): each synthetic image's descriptors are drawn at random from all the real
     stored descriptors (of many different images), each with 10 of its 128 bits flipped; its
     positions, thumbnail (shifted) and colours are a real image's. Realistic descriptor
     statistics, and no synthetic image is a near-copy of a real one: a library of distinct photos.
   - clones: each synthetic image is one real stored image's record with 10 bits of each descriptor
     flipped and its thumbnail shifted: every real image gets size / dataset near-identical
     feature sets that verification refuses, the hardest case for the candidate search.
   Queries are --queries copies from the manifest (all kinds in turn); per query: the whole
   search (both looks' features, candidates, verification), after the store is loaded. Also the
   share of queries whose original was still found, and the feature index's memory.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import _setup  # noqa: F401  (puts the project on the import path)
import numpy as np

from neardup.core.hashing import Hash
from neardup.core.store import IndexedFile, Store
from neardup.features.extract import FeatureSet

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
    parser.add_argument("--search-baseline", help="a checkout whose verified search is timed on"
                        " the same stores and queries, one after the other (e.g. the commit"
                        " before a change)")
    parser.add_argument("--synthetic", choices=("mixed", "clones"), default="mixed",
                        help="how the images beyond the dataset are made (see above)")
    parser.add_argument("--store", help="the dataset already indexed with --features (else indexed"
                        " here)")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    indexing(Path(args.dataset), work, args.files, args.baseline)
    searching(Path(args.dataset), work, [int(size) for size in args.sizes.split(",")],
              args.queries, args.store, args.synthetic, args.search_baseline)
    return 0


def indexing(dataset: Path, work: Path, count: int, baseline: str | None) -> None:
    sample = work / "sample"
    files = sorted(path for path in (dataset / "haystack").rglob("*.jpg"))[:count]
    for number, path in enumerate(files):
        target = sample / f"{number // 500:03d}" / path.name.replace("image", f"i{number}")
        target.parent.mkdir(parents=True, exist_ok=True)
        # A copy, not a hard link: anything else linking the same photos (gather.py) changes their
        # ctime, and index.py then skips them as "changed while being indexed", which is cheap.
        shutil.copyfile(path, target)
        target.read_bytes()  # warm the page cache for every row alike
    runs = [("hash only (index.py -j 1)", INDEX, []),
            ("hash + features (index.py -j 1 --features)", INDEX, ["--features"])]
    if baseline:
        runs.insert(0, ("hash only, baseline checkout", str(Path(baseline) / "index.py"), []))
    rows = []
    for label, script, extra in runs + runs[:1]:  # the first again: how much the machine drifted
        store = work / f"speed-{len(rows)}.shelve"
        started = time.perf_counter()
        _setup.index_completely([script, "-d", str(sample), "-s", str(store), "-q", "-j", "1",
                                 *extra], "features.py",
                                env=dict(os.environ, PYTHONPATH=str(Path(script).parent)))
        seconds = time.perf_counter() - started
        with Store.open_for_reading(str(store)) as done:
            if done.image_count() != len(files):  # a skipped file would make the rate look better
                raise SystemExit(f"{store}: {done.image_count()} of {len(files)} images indexed")
        rows.append((label, len(files) / seconds, os.path.getsize(store) / len(files)))
    base = rows[0][1]
    print(f"\n{len(files)} CALTECH-101 photos from {dataset}, one worker, in one run")
    print("| | images/s per core | vs hash only | store bytes per image |")
    print("|---|---:|---:|---:|")
    for label, rate, size in rows:
        print(f"| {label} | {rate:,.0f} | {rate / base:.2f}x | {size:,.0f} |")


def searching(dataset: Path, work: Path, sizes: list[int], query_count: int,
              prebuilt: str | None, synthetic: str, baseline: str | None) -> None:
    base = Path(prebuilt) if prebuilt else work / "base.shelve"
    if not prebuilt:
        # Every photo, or the run stops: the originals a part of them cannot find are not misses.
        _setup.index_completely([INDEX, "-d", str(dataset), "-s", str(base), "-q", "--features"],
                                "features.py")
    queries = pick_queries(dataset, query_count)
    queries_file = work / "queries.json"
    queries_file.write_text(json.dumps(queries))
    print(f"\nVerified search, {len(queries)} copies as queries (every edit kind), one thread;"
          f" stores = the dataset + {synthetic} synthetic images; per query after decoding it: its"
          " features and its mirror's, candidates, verification; load average"
          f" {os.getloadavg()[0]:.1f} at the start")
    print("| images | checkout | p50 ms | p95 ms | mean ms | vs baseline (p50) | originals found |"
          " index build s | index MiB | bytes per image |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    checkouts = [("this", str(_setup.ROOT))] + ([("baseline", baseline)] if baseline else [])
    for size in sizes:
        store_path = work / f"store-{size}.shelve"
        shutil.copyfile(base, store_path)
        grow(store_path, size, synthetic)
        medians: dict[str, float] = {}
        for label, checkout in checkouts:  # the same store, the same queries, one after the other
            answer = subprocess.run(
                [PYTHON, str(Path(__file__).parent / "_time_search.py"), checkout,
                 str(store_path), str(dataset), str(queries_file)],
                check=True, capture_output=True, text=True).stdout
            result = json.loads(answer.strip().splitlines()[-1])
            times = sorted(result["times"])
            medians[label] = statistics.median(times)
            ratio = medians["this"] / medians[label] if label != "this" else None
            index_bytes = feature_index_bytes(store_path)
            print(f"| {result['images']:,} | {label} | {medians[label]:.1f} |"
                  f" {times[int(len(times) * 0.95) - 1]:.1f} | {statistics.fmean(times):.1f} |"
                  f" {'' if ratio is None else f'{1 / ratio:.2f}x slower'} |"
                  f" {result['found']}/{len(times)} | {result['build']:.1f} |"
                  f" {index_bytes / 2**20:,.0f} | {index_bytes / result['images']:,.0f} |",
                  flush=True)


def feature_index_bytes(store_path: Path) -> int:
    cache = Path(str(store_path) + ".cache")
    return sum(path.stat().st_size for path in cache.glob("feature-*.npy"))


def pick_queries(dataset: Path, count: int) -> list[tuple[str, str]]:
    with open(dataset / "manifest.csv", newline="", encoding="utf-8-sig") as stream:
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


def grow(store_path: Path, size: int, synthetic: str = "mixed", numbered_from: int = 0) -> None:
    """Add synthetic images until the store holds `size` (see the module's docstring), named
    from `numbered_from` on (a second growth must not rewrite the first one's)."""
    rng = np.random.default_rng(size)
    with Store.open_for_reading(str(store_path)) as store:
        recipe, root = store.recipe, store.dataset_root
        real = [FeatureSet.from_bytes(data) for _id, _path, data in store.feature_rows()]
        have = store.image_count()
    if have >= size:
        return
    pool = np.concatenate([features.descriptors for features in real])
    with Store.open_for_writing(str(store_path), recipe, root, {}) as store:
        batch: list[IndexedFile] = []
        for number in range(size - have):
            source = real[number % len(real)]
            if synthetic == "mixed":
                chosen = pool[rng.integers(0, len(pool), len(source.descriptors))]
            else:
                chosen = source.descriptors
            bits = np.unpackbits(chosen, axis=1)
            # 10 distinct bits of each descriptor: the 10 smallest of one random number per bit.
            flipped = np.argpartition(rng.random(bits.shape), 10, axis=1)[:, :10]
            np.put_along_axis(bits, flipped, 1 - np.take_along_axis(bits, flipped, axis=1),
                              axis=1)
            made = replace(source, descriptors=np.packbits(bits, axis=1),
                           thumbnail=np.roll(source.thumbnail, 1 + number % 7, axis=1))
            value = Hash(int(rng.integers(0, 2**63)) * 2 + 1, 64).hex()
            name = numbered_from + number
            batch.append(IndexedFile(f"synthetic/{name // 1000:04d}/{name:07d}.jpg", 1, 1,
                                     value, features=made.to_bytes()))
            if len(batch) == 5000:
                store.apply(batch, [])
                batch = []
        store.apply(batch, [])
    with Store.open_for_reading(str(store_path)) as store:
        # Every synthetic image must be in the feature index, or the timing is of a smaller one.
        if store.feature_count() != size:
            raise SystemExit(f"{store_path}: {store.feature_count():,} images with features,"
                             f" expected {size:,}")


if __name__ == "__main__":
    sys.exit(main())
