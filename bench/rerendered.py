#!/usr/bin/env python3
"""Verification's fine-detail test (verify.py, MAX_RERENDERED_BITS) on every copy of a gather.py
dataset, both ways, against the different photographs that verify without it: what each
threshold refuses and costs.

    python bench/rerendered.py --dataset images [--limit N] [--jsonl rerendered.jsonl]

The test describes the query, aligned onto the stored frame, at the stored keypoints themselves
(position, orientation, pyramid level) and takes the median distance, of the 128 stored bits,
of the RANSAC inliers within 20 bits, read only where both pictures are about as sharp and the
query keeps its size on the stored frame (within 3 %); and the 40th percentile of the distances
at every stored keypoint the aligned query covers near the inliers, read where both are about as
sharp and of one size within 10 % (verify.MAX_COVERED_BITS). Each pair is asked as
search.py asks it: the query's looks (as it came, mirrored), then, while none has aligned, its
enlarged looks.

Pairs: every copy of a gather.py dataset against its original, both ways (the copy as the query,
"up"; the original as the query, "down"), and the different photographs of bench/verdicts.py,
both ways (Motorbikes/image_0428 ~ 0429 left out: one photo, retouched). docs/features.md has
the figures.
"""

from __future__ import annotations

import collections
import math
import os
import sys

import _setup  # noqa: F401  (puts the project on the import path)
from verdicts import arguments, measured, pairs

from neardup.features import extract
from neardup.features.extract import FeatureSet
from neardup.features.search import _best_verdict
from neardup.features.verify import (
    FINE_DETAIL,
    MAX_COVERED_BITS,
    MAX_RERENDERED_BITS,
    descriptor_index,
)

THRESHOLDS = (5.0, 6.0, 7.0, 8.0)  # refused above this median, bits
COVERED_THRESHOLDS = (9.0, 10.0, 11.0, 12.0)  # the same at every covered keypoint
ONE_PHOTO = {"Motorbikes/image_0428~Motorbikes/image_0429"}


def one_way(query: str, stored: str) -> dict[str, object]:
    """The verdict search.py reaches for `stored` as a candidate of `query` (no sharpened or
    softened looks: those are asked only of hash candidates nothing else aligned with, and their
    fine detail is not read), with the fine-detail measure when it was read."""
    frame = extract.read_frame(query)
    record = FeatureSet.from_bytes(extract.stored_features(stored))

    def indexed(looks: list[FeatureSet]) -> list[tuple[FeatureSet, object]]:
        return [(look, descriptor_index(look)) for look in looks]

    verdict, look = _best_verdict(indexed(extract.query_features(frame)), record,
                                  lambda: indexed(extract.enlarged_features(frame)))
    ratio = (None if look.sharpness is None or record.sharpness is None
             else look.sharpness / record.sharpness)
    return {"verified": verdict.verified, "reason": verdict.reason, "inliers": verdict.inliers,
            "residual": verdict.residual,
            "rerendered_bits": verdict.rerendered_bits, "covered_bits": verdict.covered_bits,
            "sharpness_ratio": ratio,
            "magnified": look.magnified * (verdict.scale or 1.0)}


def both_ways(job: tuple[str, str, str, str]) -> list[dict[str, object]]:
    name, kind, copy, original = job
    return [dict(name=name, kind=kind, direction=direction, **one_way(query, stored))
            for direction, query, stored in (("up", copy, original), ("down", original, copy))]


def report(rows: list[dict]) -> None:
    # Verdicts the test was read on: verified, or refused by it alone.
    read = [row for row in rows if row["rerendered_bits"] is not None
            and (row["verified"] or row["reason"] == FINE_DETAIL)]
    by_kind = collections.defaultdict(list)
    for row in rows:
        by_kind[row["kind"]].append(row)
    print(f"| kind | verdicts | verified (fine detail above {MAX_RERENDERED_BITS:g} bits refused) |"
          " fine detail read | its median bits: 99.5th percentile / largest |\n"
          "|---|---:|---:|---:|---|")
    for kind, found in sorted(by_kind.items()):
        bits = sorted(row["rerendered_bits"] for row in found if row in read)
        tail = (f"{bits[min(len(bits) - 1, math.ceil(0.995 * len(bits)) - 1)]:.1f} / {bits[-1]:.1f}"
                if bits else "-")
        print(f"| {kind} | {len(found)} | {sum(row['verified'] for row in found)} | {len(bits)} |"
              f" {tail} |")
    different = [row for row in rows if row["kind"] == "DIFFERENT"
                 and (row["verified"] or row["reason"] == FINE_DETAIL)]
    copies = [row for row in rows if row["kind"] != "DIFFERENT"
              and (row["verified"] or row["reason"] == FINE_DETAIL)]
    print(f"\nRefused above T bits ({len(different)} verdicts between different photographs that"
          f" verify without the test, of {len({row['name'] for row in different})} pairs;"
          f" {len(copies)} such copy verdicts):")
    print("| T | different photographs' verdicts refused | pairs refused either way |"
          " copy verdicts refused (kind direction) |\n|---:|---:|---:|---|")
    for threshold in THRESHOLDS:
        _refusals_row(threshold, [row for row in read if row["rerendered_bits"] > threshold])
    # Both tests together: the inliers' at its threshold, every covered keypoint's at T.
    print(f"\nWith the inliers' test at {MAX_RERENDERED_BITS:g} bits, refused above T bits at every"
          f" covered keypoint ({MAX_COVERED_BITS:g} in verify.py):")
    print("| T | different photographs' verdicts refused | pairs refused either way |"
          " copy verdicts refused (kind direction) |\n|---:|---:|---:|---|")
    judged = [row for row in rows if row["verified"] or row["reason"] == FINE_DETAIL]
    for threshold in COVERED_THRESHOLDS:
        _refusals_row(threshold, [
            row for row in judged
            if (row["rerendered_bits"] is not None and row["rerendered_bits"] > MAX_RERENDERED_BITS)
            or (row["covered_bits"] is not None and row["covered_bits"] > threshold)])


def _refusals_row(threshold: float, refusals: list[dict]) -> None:
    them = [row for row in refusals if row["kind"] == "DIFFERENT"]
    costs = collections.Counter((row["kind"], row["direction"]) for row in refusals
                                if row["kind"] != "DIFFERENT")
    listed = ", ".join(f"{kind} {direction} {count}"
                       for (kind, direction), count in sorted(costs.items()))
    print(f"| {threshold:g} | {len(them)} | {len({row['name'] for row in them})} |"
          f" {listed or 'none'} |")


def main() -> int:
    args = arguments(__doc__.splitlines()[0])
    for folder, needs, hint in ((args.dataset, "manifest.csv", "run gather.py first"),
                                (args.caltech, "Motorbikes", "give --caltech")):
        if not os.path.exists(os.path.join(folder, needs)):
            print(f"rerendered.py: {folder}: no {needs} ({hint})", file=sys.stderr)
            return 2
    report(measured(pairs(args.dataset, args.caltech, args.limit, frozenset(ONE_PHOTO)),
                    both_ways, args.jsonl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
