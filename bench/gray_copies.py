"""A gray picture against a colour one: what verification measures for gray copies, and for
different photographs of one thing where one counts as gray (docs/features.md, Verification:
a stricter edge test for such pairs, tried and left).

Copies: --photos CALTECH-101 photos in colour, drawn with --seed, each made gray (as gather.py's
gray edit does) and then re-saved, cropped, resized, rotated, blurred, noised, brightened,
contrasted or saved at JPEG quality 30; verify() compares each copy as the query against the
photo as stored, and the photo as the query against the copy as stored. Neighbours: each photo
of --categories against its --span neighbours on either side (catalogue motorbikes shot the same
way); the pairs that verify where one is gray and the other strongly coloured are listed.

    python bench/gray_copies.py [--photos 150] [--seed 39] [--categories Motorbikes,yin_yang]
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from collections import defaultdict
from pathlib import Path

import _setup
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

# A picture strongly coloured: a cell of its 8 x 8 opponent-colour grid this far from gray.
STRONG_COLOUR = 12


def edits(gray: Image.Image, rng: np.random.Generator) -> dict[str, tuple[Image.Image, int]]:
    """The gray picture's copies: name -> (picture, JPEG quality)."""
    width, height = gray.size
    noisy = np.asarray(gray, np.float32) + rng.normal(0, 12, (height, width))
    return {
        "gray": (gray, 90),
        "gray+jpeg30": (gray, 30),
        "gray+crop": (gray.crop((width * 8 // 100, height * 8 // 100, width * 92 // 100,
                                 height * 92 // 100)), 90),
        "gray+resize": (gray.resize((width * 7 // 10, height * 7 // 10), Image.LANCZOS), 90),
        "gray+rotate": (gray.rotate(5, resample=Image.BICUBIC, fillcolor=255), 90),
        "gray+blur": (gray.filter(ImageFilter.GaussianBlur(1.5)), 90),
        "gray+noise": (Image.fromarray(noisy.clip(0, 255).astype(np.uint8)), 90),
        "gray+bright": (ImageEnhance.Brightness(gray).enhance(1.3), 90),
        "gray+contrast": (ImageEnhance.Contrast(gray).enhance(1.3), 90),
    }


def jpeg(picture: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=quality)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=_setup.DEFAULT_DATASET)
    parser.add_argument("--photos", type=int, default=150)
    parser.add_argument("--seed", type=int, default=39)
    parser.add_argument("--categories", default="Motorbikes,yin_yang")
    parser.add_argument("--span", type=int, default=3)
    args = parser.parse_args()
    if not _setup.require_dataset(args.dataset, "gray_copies.py"):
        return 2
    from neardup.features.extract import (
        STORED_KEYPOINTS,
        FeatureSet,
        chroma_grid,
        extract,
        query_features,
        read_frame,
    )
    from neardup.features.verify import GRAY_LIMIT, verify

    def features(name: str, data: bytes) -> tuple[FeatureSet, FeatureSet, int]:
        """The picture as a query (its first look), as stored, and its strongest colour."""
        frame = read_frame(name, data=data)
        colour = int(np.abs(chroma_grid(frame[..., :3])).max()) if frame.ndim == 3 else 0
        stored = FeatureSet.from_bytes(extract(frame, STORED_KEYPOINTS).to_bytes())
        return query_features(frame)[0], stored, colour

    root = Path(args.dataset)
    files = sorted(root.rglob("*.jpg"))
    random.Random(args.seed).shuffle(files)
    rng = np.random.default_rng(args.seed)
    details: dict[str, list[float]] = defaultdict(list)
    refused: dict[str, int] = defaultdict(int)
    photos = 0
    for path in files:
        if photos == args.photos:
            break
        original = path.read_bytes()
        as_query, as_stored, colour = features(str(path), original)
        if colour < STRONG_COLOUR:
            continue  # a gray copy of a gray photo is no question of colour
        photos += 1
        gray = Image.open(path).convert("L")
        for kind, (picture, quality) in edits(gray, rng).items():
            copy_query, copy_stored, _ = features(kind, jpeg(picture, quality))
            for direction, verdict in (("copy as the query", verify(copy_query, as_stored)),
                                       ("photo as the query", verify(as_query, copy_stored))):
                key = f"{kind}, {direction}"
                if verdict.verified:
                    details[key].append(verdict.detail_correlation or 0.0)
                else:
                    refused[key] += 1
    print(f"{photos} colour photos (--seed {args.seed}), gray copies: edges' correlation of the"
          " verified ones")
    print(f"{'copy':<40} {'verified':>8} {'refused':>7} {'lowest':>7} {'2nd pct':>7}")
    for key in sorted(set(details) | set(refused)):
        values = sorted(details[key]) or [float("nan")]
        print(f"{key:<40} {len(details[key]):>8} {refused[key]:>7} {values[0]:>7.3f}"
              f" {values[len(values) // 50]:>7.3f}")

    print(f"\nneighbours (--span {args.span}) that verify, one gray (a cell <= {GRAY_LIMIT}) and"
          f" one strongly coloured (>= {STRONG_COLOUR}):")
    for category in args.categories.split(","):
        names = sorted((root / category).glob("*.jpg"))
        looks = [features(str(name), name.read_bytes()) for name in names]
        for i, (query, _, colour) in enumerate(looks):
            for j in range(max(0, i - args.span), min(len(looks), i + args.span + 1)):
                other = looks[j]
                if i == j or not (min(colour, other[2]) <= GRAY_LIMIT
                                  and max(colour, other[2]) >= STRONG_COLOUR):
                    continue
                verdict = verify(query, other[1])
                if verdict.verified:
                    print(f"  {category}/{names[i].name} ~ {names[j].name}:"
                          f" edges {verdict.detail_correlation:.3f}, {verdict.inliers} inliers at"
                          f" {verdict.residual:.2f} pixel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
