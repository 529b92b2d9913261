#!/usr/bin/env python3
"""index.py at several commits on the same files, run in turn round after round: before and after.

    python bench/index_commits.py BASE [OTHER ...] [--dataset DIR] [--rounds N] [--jobs N]

Each commit is checked out into a temporary git worktree; every round indexes the dataset into a
new store once with each commit's index.py (same Python, same options), in turn so that a change
in the machine's load falls on all of them. Printed: each commit's median whole-process seconds
and images/s, and its ratio to BASE (the first). A change meant to cost nothing shows ratios
within the spread between rounds, also printed.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from _setup import DEFAULT_DATASET, ROOT, index_completely, require_dataset

SCRIPT = "index_commits.py"


def worktree(commit: str, folder: str) -> str:
    """The commit checked out at folder (detached), or the benchmark stops saying why."""
    done = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", folder,
                           commit], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{SCRIPT}: {commit}: cannot check it out: {done.stderr.strip()}")
    return folder


def label(commit: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", commit],
                          capture_output=True, text=True, check=True)
    return f"{commit} ({done.stdout.strip()})" if done.stdout.strip() != commit else commit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commits", nargs="+", help="the first is the base the others are held to")
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-j", "--jobs", type=int, default=0, help="index.py -j (0: every core)")
    args = parser.parse_args()
    if not require_dataset(args.dataset, SCRIPT):
        return 2
    dataset = os.path.abspath(args.dataset)  # index.py runs in each worktree
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    commits = args.commits  # the same commit may be given twice: each is a column of its own
    with tempfile.TemporaryDirectory(prefix="index-commits-") as work:
        trees: list[str] = []
        try:
            for number, commit in enumerate(commits):
                trees.append(worktree(commit, os.path.join(work, f"tree{number}")))
            seconds: list[list[float]] = [[] for _ in commits]
            images = 0
            for round_number in range(args.rounds):
                for number, tree in enumerate(trees):
                    store = os.path.join(work, f"store-{round_number}-{number}.shelve")
                    started = time.perf_counter()
                    summary = index_completely(
                        [os.path.join(tree, "index.py"), "-d", dataset, "-s", store, "-q",
                         "-j", str(args.jobs)], SCRIPT, cwd=tree)
                    seconds[number].append(time.perf_counter() - started)
                    indexed = re.search(r"\bindexed (\d+)", summary)
                    assert indexed is not None  # index_completely returned the summary line
                    images = int(indexed.group(1))
        finally:
            for tree in trees:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tree],
                               capture_output=True)
    base = statistics.median(seconds[0])
    print(f"index.py -j {args.jobs or os.cpu_count()} on {images} images, {args.rounds} rounds,"
          f" whole process, medians (Python {sys.version.split()[0]})")
    for commit, times in zip(commits, seconds, strict=True):
        middle = statistics.median(times)
        print(f"  {label(commit):<28} {middle:7.2f} s  {images / middle:7.0f} images/s"
              f"  x{base / middle:5.3f} speed  (rounds {min(times):.2f}-{max(times):.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
