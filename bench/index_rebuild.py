"""The feature index after a change: what it costs to build it again once images were added to a
large store, against a checkout of the version before (--baseline), in the same run.

    python bench/index_rebuild.py --store db.shelve --sizes 100000 --added 500 --baseline BASE

--store is a store indexed with --features (a gather.py dataset: see bench/features.py). Each
size: the store is grown to it with synthetic images (bench/features.py's "mixed": descriptors
drawn from the real ones, 10 bits flipped) and its feature index built once (with this
checkout), as index.py leaves it. Then, for each checkout in turn, on its own copy of that store
and its cache: --added more synthetic images stored (the same ones for both), and the index
built again, in a process of its own (what index.py does at the end of its run, and a checker's
thread after a commit). Printed: the seconds and peak memory of each build, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import _setup  # noqa: F401  (puts the project on the import path)
from features import grow

PYTHON = sys.executable
# Run in a process of its own, with the checkout given first on the import path.
_BUILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from neardup.core.store import Store
from neardup.features.index import FeatureIndex
with Store.open_for_reading(sys.argv[2]) as store, store.snapshot():
    started = time.perf_counter()
    index = FeatureIndex.from_store(store)
    seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "descriptors": len(index),
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a store indexed with --features")
    parser.add_argument("--sizes", default="100000", help="store sizes, comma-separated")
    parser.add_argument("--added", type=int, default=500, help="images added before the rebuild")
    parser.add_argument("--baseline", help="a checkout of the version before (git worktree add)")
    parser.add_argument("--work", default="bench-rebuild", help="scratch folder (deleted first)")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    checkouts = [("this", str(_setup.ROOT))] + ([("baseline", args.baseline)]
                                                if args.baseline else [])
    print(f"Feature index built again after {args.added} images were added; load average"
          f" {os.getloadavg()[0]:.1f} at the start")
    print("| images | checkout | first build s | build after the change s | peak MiB |"
          " vs baseline |")
    print("|---:|---|---:|---:|---:|---:|")
    for size in (int(text) for text in args.sizes.split(",")):
        grown = work / f"store-{size}.shelve"
        shutil.copyfile(args.store, grown)
        grow(grown, size)
        first = build(str(_setup.ROOT), grown)
        seconds: dict[str, float] = {}
        for label, checkout in checkouts:
            copy = work / f"{label}-{size}.shelve"
            shutil.copyfile(grown, copy)
            shutil.copytree(f"{grown}.cache", f"{copy}.cache")
            grow(copy, size + args.added, numbered_from=size)  # the same ones for every checkout
            again = build(checkout, copy)
            seconds[label] = again["seconds"]
            ratio = (f"{seconds['baseline'] / seconds['this']:.1f}x faster"
                     if label == "baseline" else "")
            print(f"| {size + args.added:,} | {label} | {first['seconds']:.1f} |"
                  f" {again['seconds']:.1f} | {again['peak_mib']:,.0f} | {ratio} |", flush=True)
            shutil.rmtree(f"{copy}.cache")
            os.remove(copy)
    return 0


def build(checkout: str, store: Path) -> dict[str, float]:
    answer = subprocess.run([PYTHON, "-c", _BUILD, checkout, str(store)], check=True,
                            capture_output=True, text=True).stdout
    return json.loads(answer.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
