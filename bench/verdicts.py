#!/usr/bin/env python3
"""Verification's verdict on every copy of a gather.py dataset, both ways, against the different
photographs that verify: what a stricter appearance rule would cost and buy.

    python bench/verdicts.py --dataset images [--limit N] [--jsonl verdicts.jsonl]

Each copy is verified against its original as a query (the copy asked, its original stored: an
upload checker's direction, "up") and the other way ("down": --evaluate's direction), with the
looks search.py asks first (the query, its mirror image, and enlarged when small; the best verdict
kept). The same for DIFFERENT_PHOTOGRAPHS, pairs of CALTECH-101 photographs that verification
accepted as other matches on seven samples (docs/features.md: catalogue motorbikes shot the same
way, frames of one portrait sitting), read from --caltech. Printed: each kind's share verified and
the low tail of its inliers and gradient correlation; then, for a rule refusing a match that is
not pixel-exact (median residual of at least R pixels), has fewer than N inliers and a gradient
correlation below T, how many verdicts of different photographs it refuses and what copies it
costs, per kind and direction.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
from collections.abc import Callable
from multiprocessing import Pool

from _setup import DEFAULT_DATASET  # noqa: F401  (puts the project on the import path)

from neardup.cli.common import positive_int
from neardup.features import extract
from neardup.features.extract import FeatureSet
from neardup.features.verify import Verdict, verify

DIFFERENT_PHOTOGRAPHS = """
Motorbikes/image_0074 Motorbikes/image_0073  Motorbikes/image_0074 Motorbikes/image_0117
Motorbikes/image_0719 Motorbikes/image_0720  Motorbikes/image_0419 Motorbikes/image_0418
Motorbikes/image_0467 Motorbikes/image_0470  Motorbikes/image_0475 Motorbikes/image_0474
Motorbikes/image_0064 Motorbikes/image_0057  Motorbikes/image_0064 Motorbikes/image_0063
Motorbikes/image_0467 Motorbikes/image_0465  Faces_easy/image_0126 Faces/image_0118
Faces_easy/image_0126 Faces/image_0124  Motorbikes/image_0051 Motorbikes/image_0049
Motorbikes/image_0548 Motorbikes/image_0547  Motorbikes/image_0548 Motorbikes/image_0549
Faces/image_0159 Faces/image_0160  Faces/image_0159 Faces/image_0161
Faces/image_0159 Faces_easy/image_0160  Faces_easy/image_0011 Faces/image_0017
yin_yang/image_0012 yin_yang/image_0010  Motorbikes/image_0729 Motorbikes/image_0728
Motorbikes/image_0729 Motorbikes/image_0730  Motorbikes/image_0729 Motorbikes/image_0724
watch/image_0013 watch/image_0047  Motorbikes/image_0428 Motorbikes/image_0429
Motorbikes/image_0544 Motorbikes/image_0543  Motorbikes/image_0714 Motorbikes/image_0725
Motorbikes/image_0738 Motorbikes/image_0714  Motorbikes/image_0795 Motorbikes/image_0793
Motorbikes/image_0730 Motorbikes/image_0728  Faces_easy/image_0132 Faces/image_0119
Faces/image_0126 Faces/image_0124  Faces_easy/image_0127 Faces/image_0114
Faces_easy/image_0127 Faces_easy/image_0114  Motorbikes/image_0115 Motorbikes/image_0117
Motorbikes/image_0420 Motorbikes/image_0416  Motorbikes/image_0420 Motorbikes/image_0418
Motorbikes/image_0750 Motorbikes/image_0751  Motorbikes/image_0731 Motorbikes/image_0734
Motorbikes/image_0609 Motorbikes/image_0432  Motorbikes/image_0793 Motorbikes/image_0792
Motorbikes/image_0793 Motorbikes/image_0795  Motorbikes/image_0739 Motorbikes/image_0738
Motorbikes/image_0398 Motorbikes/image_0397
"""
# The rules printed: (T, N, R) as in the docstring.
RULES = [(detail, inliers, residual) for detail in (0.95, 0.96, 0.965, 0.97)
         for inliers in (20, 25, 30) for residual in (0.2, 0.4)]


def _looks(path: str) -> list[FeatureSet]:
    frame = extract.read_frame(path)
    return extract.query_features(frame) + extract.enlarged_features(frame)


def _best(query: str, stored: str) -> Verdict:
    record = FeatureSet.from_bytes(extract.stored_features(stored))
    verdicts = [verify(look, record) for look in _looks(query)]
    return max(verdicts, key=lambda verdict: (verdict.verified, verdict.inliers))


def _both_ways(job: tuple[str, str, str, str]) -> list[dict[str, object]]:
    name, kind, copy, original = job
    return [dict(name=name, kind=kind, direction=direction, **_best(query, stored).as_dict())
            for direction, query, stored in (("up", copy, original), ("down", original, copy))]


def arguments(description: str) -> argparse.Namespace:
    """The command line this script and bench/rerendered.py share."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", required=True, help="a gather.py dataset (its manifest.csv)")
    parser.add_argument("--caltech", default=DEFAULT_DATASET,
                        help="CALTECH-101's 101_ObjectCategories, for the different photographs")
    parser.add_argument("--limit", type=positive_int, help="only the first N copies")
    parser.add_argument("--jsonl", help="also write every verdict, one JSON line each")
    return parser.parse_args()


def pairs(dataset: str, caltech: str, limit: int | None, leave_out: frozenset[str] = frozenset()
          ) -> list[tuple[str, str, str, str]]:
    """(name, kind, copy, original) for each copy of the dataset (its first `limit`), then
    (name, "DIFFERENT", photo, photo) for DIFFERENT_PHOTOGRAPHS but those named in `leave_out`."""
    with open(os.path.join(dataset, "manifest.csv"), newline="", encoding="utf-8-sig") as stream:
        copies = [row for row in csv.DictReader(stream) if row["role"] == "copy"]
    jobs = [(row["file"], row["edit"].split()[0], os.path.join(dataset, row["file"]),
             os.path.join(dataset, row["source"])) for row in copies[:limit]]
    words = DIFFERENT_PHOTOGRAPHS.split()
    return jobs + [(f"{a}~{b}", "DIFFERENT", os.path.join(caltech, a + ".jpg"),
                    os.path.join(caltech, b + ".jpg"))
                   for a, b in zip(words[::2], words[1::2], strict=True)
                   if f"{a}~{b}" not in leave_out]


def measured(jobs: list[tuple[str, str, str, str]],
             both_ways: Callable[[tuple[str, str, str, str]], list[dict[str, object]]],
             jsonl: str | None) -> list[dict[str, object]]:
    """Every job's rows, measured on every core; also written to `jsonl`, one JSON line each."""
    with Pool(os.cpu_count()) as pool:
        rows = [row for pair in pool.imap(both_ways, jobs, chunksize=8) for row in pair]
    if jsonl:
        with open(jsonl, "w") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    report(measured(pairs(args.dataset, args.caltech, args.limit), _both_ways, args.jsonl))


def report(rows: list[dict]) -> None:
    by_kind = collections.defaultdict(list)
    for row in rows:
        by_kind[row["kind"]].append(row)
    print("| kind | verdicts | verified | inliers, 1st / 5th percentile | gradient correlation,"
          " 1st / 5th percentile |\n|---|---:|---:|---|---|")
    for kind, found in sorted(by_kind.items()):
        verified = [row for row in found if row["verified"]]
        inliers = sorted(row["inliers"] for row in verified)
        detail = sorted(row["detail_correlation"] for row in verified)

        def tail(values: list, share: float) -> object:
            return values[int(share * (len(values) - 1))] if values else "-"
        print(f"| {kind} | {len(found)} | {100 * len(verified) / len(found):.1f} % |"
              f" {tail(inliers, 0.01)} / {tail(inliers, 0.05)} |"
              f" {tail(detail, 0.01)} / {tail(detail, 0.05)} |")
    verified = [row for row in rows if row["verified"]]
    different = sum(row["kind"] == "DIFFERENT" for row in verified)
    print(f"\nA stricter rule (not pixel-exact: residual >= R; inliers < N; gradient correlation"
          f" < T), of {different} verified verdicts between different photographs:")
    print("| T | N | R | different photographs refused | copies refused (kind direction) |"
          "\n|---:|---:|---:|---:|---|")
    for detail, inliers, residual in RULES:
        refused = collections.Counter(
            (row["kind"], row["direction"]) for row in verified
            if row["residual"] >= residual and row["inliers"] < inliers
            and row["detail_correlation"] < detail)
        them = sum(count for (kind, _), count in refused.items() if kind == "DIFFERENT")
        costs = ", ".join(f"{kind} {direction} {count}" for (kind, direction), count
                          in sorted(refused.items()) if kind != "DIFFERENT")
        print(f"| {detail} | {inliers} | {residual} | {them} | {costs or 'none'} |")


if __name__ == "__main__":
    main()
