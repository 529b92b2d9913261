"""What tells a verified copy from a different photograph of the same thing shot the same way?

The quantities below, measured on every candidate that verification accepts today, printed as
distributions per edit kind (copies) and listed one by one for the other matches (which a person
then labels: the same photo, or a different one). docs/features.md ("Copies or different
photographs") has the figures.

    python bench/precision.py --store db.shelve --manifest images/manifest.csv [--limit 100]
    python bench/precision.py --neighbours Motorbikes,Faces_easy --span 6     # CALTECH-101 pairs

--neighbours: each image of those CALTECH-101 categories against its --span neighbours on either
side (different photographs taken the same way: catalogue motorbikes, frames of one sitting);
the pairs with at least 10 inliers are measured.

Quantities (the stored record against the query, as verify() aligns them):
- residual: median distance of the RANSAC inliers from the transform, pixels (verify.py).
- inlier_bits: median Hamming distance (of 128 bits) of the inliers' descriptors.
- rerendered_bits: the query warped onto the stored frame by the transform (so that both are
  sampled on one pixel grid), ORB run on it again; median Hamming distance of each stored
  keypoint's descriptor to the re-rendered keypoint within 1 pixel of it.
- redetected: share of the stored keypoints inside the covered part for which the re-rendered
  query has a keypoint at the same position (within 0.1 pixel).
- scaled_residual: the inliers' distances from the transform, each divided by the scale of the
  query keypoint's pyramid level (1.2 ** octave: ORB finds keypoints to a whole pixel of their
  level), median. Resampling moves a keypoint by up to half a pixel of its level.
- detail28, detail56 (with --files): correlation of the gradients of the aligned pictures on
  28 x 28 (what the store keeps) and 56 x 56 thumbnails made from the stored image's file: what
  a record four times finer would give.
- frame_detail (with --files): the same on the whole analysis frames (the stored image's file
  read again: possible where the files remain, not in a store of fingerprints alone), the query
  aligned once more by OpenCV's ECC (the better of both alignments kept), and blur matched: the
  query or the stored picture blurred by whichever of 0.5 to 2.7 pixels agrees best.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import _setup  # noqa: F401  (puts the project on the import path)
import numpy as np

from neardup.cli.common import positive_int

QUANTITIES = ("residual", "scaled_residual", "inlier_bits", "rerendered_bits", "redetected",
              "detail28", "detail56", "frame_detail")
# Blurs tried on either picture by frame_detail (Gaussian sigma, pixels; 0: as it is).
BLURS = (0.0, 0.5, 0.8, 1.1, 1.5, 2.0, 2.7)


def measure(query, stored, stored_gray=None, octaves=None) -> dict[str, float] | None:
    """The quantities for one query look (with its frame) against one stored feature set;
    `octaves`: the pyramid level of each of the look's keypoints (see keypoint_octaves)."""
    import cv2

    from neardup.features import verify as verification

    source, target, bits = verification.matches(query, stored)
    if len(source) < verification.MIN_INLIERS:
        return None
    levels = None
    if octaves is not None:  # which query keypoint each match came from, by its position
        where = {point: number for number, point in enumerate(map(tuple, query.points.tolist()))}
        levels = np.array([octaves[where[point]] for point in map(tuple, source.tolist())])
    transform, mask = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=verification.REPROJECTION_PIXELS)
    if transform is None:
        return None
    kept = mask.ravel().astype(bool)
    moved = source[kept] @ transform[:, :2].T + transform[:, 2]
    distances = np.hypot(*(moved - target[kept]).T)
    out = {"inliers": float(kept.sum()), "residual": float(np.median(distances)),
           "inlier_bits": float(np.median(bits[kept]))}
    if levels is not None:
        out["scaled_residual"] = float(np.median(distances / 1.2 ** levels[kept]))
    out.update(_rerendered(query.gray, stored, transform))
    if stored_gray is not None:
        for side in (28, 56):
            out[f"detail{side}"] = _detail(query.gray, stored_gray, transform, side)
        out["frame_detail"] = _frame_detail(query.gray, stored_gray, transform)
    return out


def keypoint_octaves(frame: np.ndarray) -> list[np.ndarray]:
    """The pyramid level of each keypoint of each look query_features makes of `frame`: the
    same detection again (its keypoints and their order are deterministic)."""
    from neardup.features.extract import QUERY_KEYPOINTS, _choose, _describe, _split

    _, gray = _split(frame)
    found, _ = _describe(gray, _choose(gray, QUERY_KEYPOINTS, ranked=True))
    octaves = np.array([point.octave for point in found])
    return [octaves, octaves]  # the mirror look keeps each keypoint's level (_mirrored_keypoints)


def _frame_detail(gray: np.ndarray, stored_gray: np.ndarray, transform: np.ndarray) -> float:
    import cv2

    from neardup.features.verify import _correlation

    height, width = stored_gray.shape
    theirs = stored_gray.astype(np.float32)
    warped = cv2.warpAffine(gray.astype(np.float32), transform, (width, height),
                            flags=cv2.INTER_LINEAR)
    cover = cv2.warpAffine(np.ones_like(gray), transform, (width, height),
                           flags=cv2.INTER_NEAREST)
    inside = cv2.erode(cover, np.ones((7, 7), np.uint8)) > 0
    candidates = [warped]
    refined = np.eye(2, 3, dtype=np.float32)
    try:
        _, refined = cv2.findTransformECC(theirs, warped, refined, cv2.MOTION_AFFINE,
                                          (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30,
                                           1e-4), inside.astype(np.uint8), 3)
        candidates.append(cv2.warpAffine(warped, refined, (width, height),
                                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    except cv2.error:
        pass  # not converged: the first alignment stands

    def blurred(picture: np.ndarray, sigma: float) -> np.ndarray:
        return cv2.GaussianBlur(picture, (0, 0), sigma) if sigma else picture

    def edges(picture: np.ndarray) -> np.ndarray:
        return np.concatenate([cv2.Sobel(picture, cv2.CV_32F, 1, 0)[inside],
                               cv2.Sobel(picture, cv2.CV_32F, 0, 1)[inside]])

    # Either picture blurred in turn, the other as it is (each side's own edges found once).
    theirs_blurred = [edges(blurred(theirs, sigma)) for sigma in BLURS]
    theirs_edges = theirs_blurred[BLURS.index(0.0)]
    best = 0.0
    for ours in candidates:
        ours_edges = edges(ours)
        for sigma, theirs_at in zip(BLURS, theirs_blurred, strict=True):
            best = max(best, _correlation(edges(blurred(ours, sigma)), theirs_edges),
                       _correlation(ours_edges, theirs_at))
    return best


_detector = None


def _rerendered(gray: np.ndarray, stored, transform: np.ndarray) -> dict[str, float]:
    import cv2

    from neardup.features.extract import DESCRIPTOR_BYTES, DETECTED_KEYPOINTS, _orb

    global _detector
    if _detector is None:
        _detector = _orb(DETECTED_KEYPOINTS)
    size = (stored.width, stored.height)
    warped = cv2.warpAffine(gray, transform, size, flags=cv2.INTER_LINEAR)
    cover = cv2.warpAffine(np.full(gray.shape, 255, np.uint8), transform, size,
                           flags=cv2.INTER_NEAREST)
    cover = cv2.erode(cover, np.ones((17, 17), np.uint8)) > 0  # ORB's border and patch
    keypoints, descriptors = _detector.detectAndCompute(warped, None)
    x = np.clip(stored.points[:, 0].astype(int), 0, size[0] - 1)
    y = np.clip(stored.points[:, 1].astype(int), 0, size[1] - 1)
    inside = cover[y, x]
    if descriptors is None or inside.sum() < 5:
        return {}
    points = np.array([point.pt for point in keypoints], np.float32)
    apart = np.hypot(*(stored.points[inside][:, None, :] - points[None, :, :]).transpose(2, 0, 1))
    nearest = apart.argmin(axis=1)
    distance = apart[np.arange(len(nearest)), nearest]
    differing = np.unpackbits(np.bitwise_xor(
        stored.descriptors[inside], descriptors[nearest][:, :DESCRIPTOR_BYTES]), axis=1).sum(axis=1)
    near = distance <= 1.0
    out = {"redetected": float((distance <= 0.1).mean())}
    if near.sum() >= 3:
        out["rerendered_bits"] = float(np.median(differing[near]))
    return out


def _detail(gray: np.ndarray, stored_gray: np.ndarray, transform: np.ndarray, side: int) -> float:
    """verify()'s gradient correlation, on side x side thumbnails."""
    import cv2

    from neardup.features.verify import WARP_SAMPLES, _agreement

    grid = side * WARP_SAMPLES
    height, width = stored_gray.shape
    onto = np.array([[grid / width, 0, 0], [0, grid / height, 0]]) @ np.vstack(
        [transform, [0, 0, 1]])
    warped = cv2.warpAffine(gray, onto, (grid, grid), flags=cv2.INTER_LINEAR)
    coverage = cv2.warpAffine(np.full(gray.shape, 255, np.uint8), onto, (grid, grid),
                              flags=cv2.INTER_NEAREST)
    small = (side, side)
    ours = cv2.resize(warped, small, interpolation=cv2.INTER_AREA).astype(np.float32)
    covered = cv2.resize(coverage, small, interpolation=cv2.INTER_AREA) >= 250
    theirs = cv2.resize(stored_gray, small, interpolation=cv2.INTER_AREA).astype(np.float32)
    return _agreement(ours, theirs, covered)[1]


def best_of_looks(looks, stored, stored_gray=None, octaves=None) -> dict[str, float] | None:
    """The look (the query or its mirror image) with most inliers."""
    best = None
    for number, look in enumerate(looks):
        found = measure(look, stored, stored_gray, None if octaves is None else octaves[number])
        if found is not None and (best is None or found["inliers"] > best["inliers"]):
            best = found
    return best


def _gray(frame: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame


def from_store(store_path: str, manifest: str, limit: int | None,
               files: bool) -> list[tuple[str, str, str, dict[str, float]]]:
    """(label, query, match, quantities) for every verified match of every original."""
    from neardup.core.hashing import hash_file
    from neardup.core.search import HashIndex
    from neardup.core.store import Store
    from neardup.features.extract import FeatureSet, query_features, read_frame
    from neardup.features.search import VerifiedSearch

    folder = os.path.dirname(os.path.abspath(manifest))
    rows = list(csv.DictReader(open(manifest, newline="", encoding="utf-8-sig")))
    results = []
    with Store.open_for_reading(store_path) as store:
        root = store.dataset_root

        def relative(file: str) -> str:
            return os.path.relpath(os.path.join(folder, file), root).replace(os.sep, "/")

        originals = {row["group"]: relative(row["file"]) for row in rows if row["role"] == "original"}
        kinds = {relative(row["file"]): (row["group"], row["edit"].split()[0])
                 for row in rows if row["role"] == "copy"}
        search = VerifiedSearch(store, HashIndex.from_store(store))
        for number, (group, original) in enumerate(sorted(originals.items())):
            if limit is not None and number >= limit:
                break
            path = os.path.join(root, original)
            frame = read_frame(path)
            looks = query_features(frame)
            octaves = keypoint_octaves(frame)
            for match in search.search([hash_file(path, store.recipe)], frame, 4):
                if match.path == original:
                    continue
                record = store.features_of_path(match.path)
                if record is None:
                    continue
                copy_of, kind = kinds.get(match.path, (None, "other"))
                label = kind if copy_of == group else "other"
                stored_gray = _gray(read_frame(os.path.join(root, match.path))) if files else None
                found = best_of_looks(looks, FeatureSet.from_bytes(record[1]), stored_gray,
                                      octaves)
                if found is not None:
                    results.append((label, original, match.path, found))
    return results


def neighbours(dataset: str, categories: list[str], span: int,
               files: bool) -> list[tuple[str, str, str, dict[str, float]]]:
    """Each image against its neighbours: (verified or refused, a, b, quantities)."""
    from neardup.features.extract import STORED_KEYPOINTS, FeatureSet, extract, query_features, read_frame
    from neardup.features.search import _best_verdict
    from neardup.features.verify import descriptor_index

    results = []
    for category in categories:
        names = sorted(os.listdir(os.path.join(dataset, category)))
        frames = [read_frame(os.path.join(dataset, category, name)) for name in names]
        looks = [query_features(frame) for frame in frames]
        octaves = [keypoint_octaves(frame) for frame in frames]
        stored = [FeatureSet.from_bytes(extract(frame, STORED_KEYPOINTS).to_bytes())
                  for frame in frames]
        for first in range(len(names)):
            for second in range(max(0, first - span), min(len(names), first + span + 1)):
                if first == second:
                    continue
                verdict, _ = _best_verdict([(look, descriptor_index(look)) for look in looks[first]],
                                           stored[second])
                if verdict.inliers < 10:
                    continue
                found = best_of_looks(looks[first], stored[second],
                                      _gray(frames[second]) if files else None, octaves[first])
                if found is not None:
                    label = "neighbour, verified" if verdict.verified else "neighbour, refused"
                    results.append((label, f"{category}/{names[first]}",
                                    f"{category}/{names[second]}", found))
    return results


def report(results: list[tuple[str, str, str, dict[str, float]]]) -> None:
    labels = sorted({label for label, *_ in results})
    for quantity in QUANTITIES:
        values = {label: np.array([found[quantity] for name, _, _, found in results
                                   if name == label and quantity in found]) for label in labels}
        if not any(len(array) for array in values.values()):
            continue
        print(f"\n{quantity}: n, min, 1st, 5th percentile, median, 95th, 99th percentile, max")
        for label, array in values.items():
            if len(array):
                figures = [array.min(), *np.quantile(array, [0.01, 0.05, 0.5, 0.95, 0.99]),
                           array.max()]
                print(f"  {label:22s} {len(array):5d}  " + "  ".join(f"{v:7.3f}" for v in figures))
    others = [(query, match, found) for label, query, match, found in results
              if label in ("other", "neighbour, verified")]
    if others:
        print("\nother matches (and verified neighbours), one by one:")
        for query, match, found in others:
            print(f"  {query}  {match}  " + "  ".join(
                f"{quantity} {found[quantity]:.3f}" for quantity in QUANTITIES if quantity in found))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", action="append", default=[],
                        help="a store indexed with --features (repeat for several)")
    parser.add_argument("--manifest", action="append", default=[],
                        help="one per --store, in the same order")
    parser.add_argument("--limit", type=positive_int, help="only the first N originals of each"
                        " store")
    parser.add_argument("--neighbours", help="CALTECH-101 categories, comma-separated")
    parser.add_argument("--span", type=positive_int, default=6,
                        help="with --neighbours: how many images on either side (default 6)")
    parser.add_argument("--dataset", default=_setup.DEFAULT_DATASET,
                        help="with --neighbours: CALTECH-101's 101_ObjectCategories folder"
                        " (default: $NEARDUP_CALTECH101, else ../shared/caltech101/...)")
    parser.add_argument("--files", action="store_true",
                        help="also read the stored images' files (detail28, detail56,"
                        " frame_detail)")
    parser.add_argument("--jsonl", help="also write every measured pair to this file, one JSON"
                        " object per line (source: the store or the neighbours it came from;"
                        " label, query, match and the quantities)")
    args = parser.parse_args()
    if len(args.store) != len(args.manifest) or not (args.store or args.neighbours):
        parser.error("give --store and --manifest pairs, or --neighbours")
    results = []
    sources = []  # where each result came from: its store, or the neighbours of the data set
    for store, manifest in zip(args.store, args.manifest, strict=True):
        measured = from_store(store, manifest, args.limit, args.files)
        results += measured
        sources += [store] * len(measured)
    if args.neighbours:
        if not _setup.require_dataset(args.dataset, "precision.py"):
            return 2
        measured = neighbours(args.dataset, args.neighbours.split(","), args.span, args.files)
        results += measured
        sources += [f"neighbours of {args.dataset}"] * len(measured)
    if args.jsonl:  # before the report, which may go to a pipe closed early
        with open(args.jsonl, "w", encoding="utf-8") as out:
            for (label, query, match, found), source in zip(results, sources, strict=True):
                out.write(json.dumps({"source": source, "label": label, "query": query,
                                      "match": match, **found}) + "\n")
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
