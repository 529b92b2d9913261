#!/usr/bin/env python3
"""A lever on precision, measured and not built: each stored keypoint's descriptor computed again
on the query, at the very position, orientation and pyramid level the stored one was computed
at, once the query is aligned onto the stored frame.

    python bench/rerendered.py --dataset images [--limit N] [--jsonl rerendered.jsonl]

Verification matches descriptors of keypoints each picture detected on its own; a copy's
keypoint lands a fraction of a pixel away, at another orientation or on another pyramid level,
and flips as many bits as a second photograph from the same tripod does (bench/precision.py's
rerendered_bits detected them again and found no margin: docs/features.md). Here nothing is
detected again: the query is warped onto the stored frame by verification's transform and ORB
describes it at the stored keypoints themselves (OpenCV's keypoint: position, angle, octave),
so a copy reproduces the stored bits up to what its edit changed, and a different photograph up
to what differs in the scene. Measured over the RANSAC inliers: the median distance (of the 128
stored bits) of those within 20 bits.

Blur lowers that agreement as much as another photograph does, so the measure is read only when
both pictures are about as sharp: the ratio of fine to coarse detail (mean absolute Laplacian of
the frame against that of the frame blurred by 1.5 pixels), query (its own frame, not enlarged)
against stored, within `--alike` of each other in log terms.

Pairs: every copy of a gather.py dataset against its original, both ways (the copy as the query,
"up"; the original as the query, "down"), and the different photographs of bench/verdicts.py,
both ways. What the store would need to keep for it (each stored keypoint's angle and octave,
the frame's sharpness) is not in today's record; docs/features.md has the figures.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import sys
from multiprocessing import Pool
from typing import Any

import numpy as np
from _setup import DEFAULT_DATASET  # noqa: F401  (puts the project on the import path)
from verdicts import DIFFERENT_PHOTOGRAPHS

from neardup.cli.common import positive_int
from neardup.features import extract, verify
from neardup.features.extract import STORED_KEYPOINTS, FeatureSet

# A keypoint whose bits differ by more than this is not the same corner (a caption over it, a
# part that moved): left out, so that the median speaks of the corners both pictures share.
SHARED_BITS = 20
THRESHOLDS = (4, 5, 6, 7)  # refuse above this median, bits
ALIKE = (0.1, 0.15)  # |log| of the sharpness ratio within which the measure is read
# docs/features.md: one photograph, its engine retouched in one of the two (not counted).
ONE_PHOTO = {"Motorbikes/image_0428~Motorbikes/image_0429"}
_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1)


def sharpness(gray: np.ndarray) -> float:
    """Fine detail against coarse: 1 for a picture with no detail finer than 1.5 pixels."""
    import cv2

    pixels = gray.astype(np.float32)
    fine = np.abs(cv2.Laplacian(pixels, cv2.CV_32F)).mean()
    coarse = np.abs(cv2.Laplacian(cv2.GaussianBlur(pixels, (0, 0), 1.5), cv2.CV_32F)).mean()
    return float(fine / max(coarse, 1e-6))


def stored_side(path: str) -> tuple[FeatureSet, np.ndarray, list[Any], np.ndarray]:
    """What index.py stores for `path`, and the OpenCV keypoints (angle and octave included) and
    full descriptors behind it: the same detection stored_features() makes."""
    frame = extract.read_frame(path)
    colour, gray = extract._split(frame)
    found, descriptors = extract._describe(gray, extract._choose(gray, STORED_KEYPOINTS, False))
    record = extract._feature_set(gray, colour, found, descriptors, keep_frame=False)
    return record, gray, found, descriptors


def rerendered_bits(look: FeatureSet, record: FeatureSet, gray: np.ndarray,
                    keypoints: list[Any], descriptors: np.ndarray) -> float | None:
    """The median distance of the inliers' stored descriptors to the aligned query's, described at
    the stored keypoints; None when no transform or too few inliers remain."""
    import cv2

    query_points, stored_points, _ = verify.matches(look, record)
    if len(query_points) < verify.MIN_INLIERS:
        return None
    transform, mask = cv2.estimateAffinePartial2D(
        query_points, stored_points, method=cv2.RANSAC,
        ransacReprojThreshold=verify.REPROJECTION_PIXELS)
    if transform is None:
        return None
    height, width = gray.shape
    warped = cv2.warpAffine(look.gray, transform, (width, height), flags=cv2.INTER_LINEAR)
    # The record's points are the keypoints' own coordinates: found again by equality.
    inliers = {tuple(point) for point in stored_points[mask.ravel().astype(bool)]}
    # class_id carries each keypoint's row through compute(), which drops those near the border.
    chosen = [cv2.KeyPoint(point.pt[0], point.pt[1], point.size, point.angle, point.response,
                           point.octave, row)
              for row, point in enumerate(keypoints)
              if tuple(record.points[row]) in inliers]
    kept, again = extract._orb(extract.DETECTED_KEYPOINTS).compute(warped, chosen)
    if again is None or not kept:
        return None
    rows = [point.class_id for point in kept]
    bits = _BITS[np.bitwise_xor(descriptors[rows], again)[:, :extract.DESCRIPTOR_BYTES]].sum(1)
    shared = bits[bits <= SHARED_BITS]
    return float(np.median(shared)) if len(shared) else float(SHARED_BITS + 1)


def one_way(query: str, stored: str) -> dict[str, object]:
    """The best verdict over the query's looks (as search.py asks them) and, when verified, the
    measure and both sharpnesses."""
    frame = extract.read_frame(query)
    looks = extract.query_features(frame) + extract.enlarged_features(frame)
    record, gray, keypoints, descriptors = stored_side(stored)
    verdict, look = max(((verify.verify(look, record), look) for look in looks),
                        key=lambda pair: (pair[0].verified, pair[0].inliers))
    row: dict[str, object] = {"verified": verdict.verified, "inliers": verdict.inliers}
    if verdict.verified:
        row["sharpness_ratio"] = sharpness(extract._split(frame)[1]) / sharpness(gray)
        row["rerendered_bits"] = rerendered_bits(look, record, gray, keypoints, descriptors)
    return row


def both_ways(job: tuple[str, str, str, str]) -> list[dict[str, object]]:
    name, kind, copy, original = job
    return [dict(name=name, kind=kind, direction=direction, **one_way(query, stored))
            for direction, query, stored in (("up", copy, original), ("down", original, copy))]


def refused(row: dict, alike: float, threshold: float) -> bool:
    bits = row.get("rerendered_bits")
    return (row["verified"] and bits is not None
            and abs(np.log(row["sharpness_ratio"])) < alike and bits > threshold)


def report(rows: list[dict]) -> None:
    verified = [row for row in rows if row["verified"] and row.get("rerendered_bits") is not None]
    by_kind = collections.defaultdict(list)
    for row in verified:
        by_kind[row["kind"]].append(row)
    print(f"| kind | verified verdicts | as sharp (within {ALIKE[0]}) | their median bits:"
          " 99.5th percentile / largest |\n|---|---:|---:|---|")
    for kind, found in sorted(by_kind.items()):
        alike = [row["rerendered_bits"] for row in found
                 if abs(np.log(row["sharpness_ratio"])) < ALIKE[0]]
        tail = (f"{np.percentile(alike, 99.5):.1f} / {max(alike):.1f}" if alike else "-")
        print(f"| {kind} | {len(found)} | {len(alike)} | {tail} |")
    different = [row for row in verified if row["kind"] == "DIFFERENT"]
    pairs = {row["name"] for row in different}
    print(f"\nRefusing a verified match whose pictures are as sharp and whose median exceeds T bits"
          f" ({len(different)} verdicts of {len(pairs)} pairs of different photographs):")
    print("| alike | T | different photographs' verdicts refused | pairs refused either way |"
          " copy verdicts refused (kind direction) |\n|---:|---:|---:|---:|---|")
    for alike in ALIKE:
        for threshold in THRESHOLDS:
            refusals = [row for row in verified if refused(row, alike, threshold)]
            them = [row for row in refusals if row["kind"] == "DIFFERENT"]
            costs = collections.Counter((row["kind"], row["direction"]) for row in refusals
                                        if row["kind"] != "DIFFERENT")
            listed = ", ".join(f"{kind} {direction} {count}"
                               for (kind, direction), count in sorted(costs.items()))
            print(f"| {alike} | {threshold} | {len(them)} | {len({row['name'] for row in them})} |"
                  f" {listed or 'none'} (of {len(verified) - len(different)}) |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a gather.py dataset (its manifest.csv)")
    parser.add_argument("--caltech", default=DEFAULT_DATASET,
                        help="CALTECH-101's 101_ObjectCategories, for the different photographs")
    parser.add_argument("--limit", type=positive_int, help="only the first N copies")
    parser.add_argument("--jsonl", help="also write every verdict, one JSON line each")
    args = parser.parse_args()
    for folder, needs, hint in ((args.dataset, "manifest.csv", "run gather.py first"),
                                (args.caltech, "Motorbikes", "give --caltech")):
        if not os.path.exists(os.path.join(folder, needs)):
            print(f"rerendered.py: {folder}: no {needs} ({hint})", file=sys.stderr)
            return 2

    with open(os.path.join(args.dataset, "manifest.csv"), newline="", encoding="utf-8-sig") as stream:
        copies = [row for row in csv.DictReader(stream) if row["role"] == "copy"]
    jobs = [(row["file"], row["edit"].split()[0], os.path.join(args.dataset, row["file"]),
             os.path.join(args.dataset, row["source"])) for row in copies[:args.limit]]
    words = DIFFERENT_PHOTOGRAPHS.split()
    jobs += [(f"{a}~{b}", "DIFFERENT", os.path.join(args.caltech, a + ".jpg"),
              os.path.join(args.caltech, b + ".jpg"))
             for a, b in zip(words[::2], words[1::2], strict=True) if f"{a}~{b}" not in ONE_PHOTO]
    with Pool(os.cpu_count()) as pool:
        rows = [row for pair in pool.imap(both_ways, jobs, chunksize=8) for row in pair]
    if args.jsonl:
        with open(args.jsonl, "w") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
