#!/usr/bin/env python3
"""Verified matches in both directions: the original as the query, and the copy as the query.

    python bench/upload_direction.py --dataset images      # a gather.py output folder
    python bench/upload_direction.py --dataset images --workdir /tmp/ud   # keep the stores

`search.py --evaluate` asks with each sampled original for its copies in a store of everything:
what a person cleaning a library asks. An upload checker asks the other way: a store of the
photos it knows (here the dataset's haystack/ folder, which holds the originals), and each copy
as the query. Verification is not symmetric (each side keeps its own keypoints: a stored record
72, a query 500), so the two directions can differ. Both stores are built with `index.py
--features` by this script; per edit kind: the share of copies found each way, and the other
images each way answers (in the upload direction, anything but the copy's original: mostly the
same photo twice in CALTECH-101, as in the README's "other matches"), and how many distinct
(original, other image) pairs they make: the figure to set beside --evaluate's other matches per
500 queries, once a person has looked at each (--others writes them out).
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import subprocess
import sys
import tempfile

from _setup import ROOT, index_completely


def search(arguments: list[str], what: str) -> str:
    """Run search.py with this Python; its stdout, or exit with its error."""
    result = subprocess.run([sys.executable, str(ROOT / "search.py"), *arguments],
                            capture_output=True, text=True)
    if result.returncode not in (0, 1):  # 1: a search that found nothing for some query
        sys.exit(f"upload_direction.py: {what} failed: {result.stderr.strip()}")
    return result.stdout


def index(folder: str, store: str) -> None:
    """Index every image of `folder`, or stop: recall measured on a store holding part of the
    haystack is that part's. A store kept in --workdir is brought up to date (nothing is hashed
    again but what changed or failed before)."""
    index_completely([str(ROOT / "index.py"), "-d", folder, "-s", store, "--features"],
                     "upload_direction.py")


def copies_as_queries(dataset: str, store: str, copies: list[dict[str, str]]
                      ) -> tuple[collections.Counter[str], int, dict[tuple[str, str], list[str]]]:
    """Per edit kind, the copies whose original the store of haystack/ answers; how many other
    images the answers hold in all; and each (original, other image) pair with the copies that
    answered it (one different photograph answers for several copies of one original)."""
    found: collections.Counter[str] = collections.Counter()
    others = 0
    pairs: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    query = "\n".join(os.path.join(dataset, row["file"]) for row in copies) + "\n"
    result = subprocess.run([sys.executable, str(ROOT / "search.py"), "-s", store, "--stdin"],
                            input=query, capture_output=True, text=True)
    if result.returncode not in (0, 1):
        sys.exit(f"upload_direction.py: searching with the copies failed: {result.stderr.strip()}")
    answers = {}
    for line in result.stdout.splitlines():
        answer = json.loads(line)
        answers[os.path.relpath(answer["query"], dataset)] = answer
    for row in copies:
        wanted = row["source"].removeprefix("haystack/")
        paths = {match["relpath"] for match in answers[row["file"]].get("matches", [])}
        found[edit_kind(row)] += wanted in paths
        others += len(paths - {wanted})
        for other in sorted(paths - {wanted}):
            pairs[(wanted, other)].append(row["file"])
    return found, others, pairs


def originals_as_queries(dataset: str, store: str) -> tuple[dict[str, float], int, int]:
    """What search.py --evaluate reports on a store of the whole dataset: recall per edit kind
    (what search answers), the other matches and the number of queries (the originals)."""
    report = json.loads(search(["-s", store, "--json", "--evaluate",
                                os.path.join(dataset, "manifest.csv")], "--evaluate"))
    both = next(column for column in report[0]["verified"]["columns"]
                if column["name"].startswith("both"))
    recall = {kind: value for kind, value in both["recall"].items() if kind != "all"}
    return recall, both["other_matches"], report[0]["queries"]


def edit_kind(row: dict[str, str]) -> str:
    return row["edit"].split()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a gather.py output folder")
    parser.add_argument("--workdir", help="where the two stores are kept (default: a temporary folder)")
    parser.add_argument("--others", metavar="FILE",
                        help="write each (original, other image) pair the uploads were answered"
                             " with, and the copies that asked, as tab-separated lines: for a"
                             " person to tell the same photo twice from different photographs")
    args = parser.parse_args()
    manifest = os.path.join(args.dataset, "manifest.csv")
    if not os.path.isfile(manifest):
        print(f"upload_direction.py: {manifest}: no such file (a gather.py output folder?)",
              file=sys.stderr)
        return 2
    with open(manifest, newline="", encoding="utf-8-sig") as stream:
        copies = [row for row in csv.DictReader(stream) if row["role"] == "copy"]
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or scratch
        os.makedirs(workdir, exist_ok=True)
        everything = os.path.join(workdir, "everything.shelve")
        originals = os.path.join(workdir, "haystack.shelve")
        index(args.dataset, everything)
        index(os.path.join(args.dataset, "haystack"), originals)
        recall, other_matches, queries = originals_as_queries(args.dataset, everything)
        found, others, pairs = copies_as_queries(args.dataset, originals, copies)
    total = collections.Counter(edit_kind(row) for row in copies)
    recall_all = sum(recall.get(kind, 0.0) * count for kind, count in total.items()) / len(copies)
    print(f"{args.dataset}: {len(copies)} copies, verified matches (default settings) both ways")
    print("| edit | original as the query (--evaluate) | copy as the query (an upload) |")
    print("|---|---:|---:|")
    for kind in sorted(total):
        print(f"| {kind} | {recall.get(kind, 0.0):.1%} | {found[kind] / total[kind]:.1%}"
              f" ({found[kind]}/{total[kind]}) |")
    print(f"| all | {recall_all:.1%} | {sum(found.values()) / len(copies):.1%} |")
    print(f"| other images answered, per 100 queries | {100 * other_matches / queries:.1f}"
          f" ({other_matches} for {queries} originals) | {100 * others / len(copies):.1f}"
          f" ({others} for {len(copies)} copies) |")
    originals_asked = len({row["source"] for row in copies})
    print(f"| (original, other image) pairs, per 500 originals | | {500 * len(pairs) / originals_asked:.1f}"
          f" ({len(pairs)} for {originals_asked} originals) |")
    if args.others:
        with open(args.others, "w", encoding="utf-8") as out:
            out.write("original\tother image\tcopies answered with it\n")
            for (original, other), asked in sorted(pairs.items()):
                out.write(f"{original}\t{other}\t{' '.join(asked)}\n")
        print(f"the pairs: {args.others}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
