"""Copies whose colours changed: how many does verification accept, in both directions?

Each of --photos CALTECH-101 photos (image_0004 of the first categories, BACKGROUND_Google left
out) gets one copy per colour edit below, pixel for pixel; verify() then compares the copy as
the query against the original as stored, and the original as the query against the copy as
stored (a photo library holds both). The last edits are controls: the same picture tinted in two
other colours, which verification should refuse. With --baseline, another checkout runs the same
photos in the same run, side by side.

    python bench/colour_edits.py [--photos 45] [--baseline CHECKOUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import _setup
import numpy as np
from PIL import Image, ImageOps

SEPIA_MATRIX = np.array([[.393, .769, .189], [.349, .686, .168], [.272, .534, .131]], np.float32)


def gains(picture: Image.Image, red: float, blue: float) -> Image.Image:
    pixels = np.asarray(picture).astype(np.float32)
    pixels[..., 0] *= red
    pixels[..., 2] *= blue
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def tinted(picture: Image.Image, dark: tuple[int, int, int],
           light: tuple[int, int, int]) -> Image.Image:
    return ImageOps.colorize(ImageOps.grayscale(picture), dark, light)


def vintage(picture: Image.Image) -> Image.Image:
    pixels = np.asarray(picture).astype(np.float32)
    gray = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    mixed = 0.5 * pixels + 0.5 * gray[..., None]
    mixed[..., 0] *= 1.1
    mixed[..., 2] *= 0.85
    return Image.fromarray((20 + 0.9 * mixed).clip(0, 255).astype(np.uint8))


# name -> (the copy, or None: the original itself; the stored picture's edit, None likewise)
EDITS = {
    "warmer (red x 1.08, blue x 0.9)": (lambda p: gains(p, 1.08, 0.9), None),
    "cooler (red x 0.9, blue x 1.1)": (lambda p: gains(p, 0.9, 1.1), None),
    "warm filter (red x 1.15, blue x 0.8)": (lambda p: gains(p, 1.15, 0.8), None),
    "sepia (colorize)": (lambda p: tinted(p, (40, 26, 13), (255, 240, 192)), None),
    "sepia fading to white": (lambda p: tinted(p, (46, 26, 5), (255, 244, 224)), None),
    "sepia matrix, clipped": (lambda p: Image.fromarray(
        (np.asarray(p).astype(np.float32) @ SEPIA_MATRIX.T).clip(0, 255).astype(np.uint8)), None),
    "vintage (half gray, warm, lifted blacks)": (vintage, None),
    "control: tinted red against tinted blue": (
        lambda p: tinted(p, (0, 0, 0), (255, 60, 60)),
        lambda p: tinted(p, (0, 0, 0), (60, 60, 255))),
}


def measure(dataset: str, photos: int) -> dict[str, list[int]]:
    checkout = os.environ.get("NEARDUP_BENCH_CHECKOUT")
    if checkout:  # --baseline's run: that checkout's neardup, imported first
        sys.path.insert(0, os.path.abspath(checkout))
    from neardup.features.extract import STORED_KEYPOINTS, FeatureSet, extract, query_features
    from neardup.features.verify import verify

    def stored(picture: Image.Image) -> object:
        return FeatureSet.from_bytes(extract(np.asarray(picture), STORED_KEYPOINTS).to_bytes())

    def query(picture: Image.Image) -> object:
        return query_features(np.asarray(picture))[0]

    categories = [name for name in sorted(os.listdir(dataset))
                  if name != "BACKGROUND_Google"][:photos]
    counts = {name: [0, 0] for name in EDITS}
    for category in categories:
        with Image.open(os.path.join(dataset, category, "image_0004.jpg")) as photo:
            original = photo.convert("RGB")
        for name, (copy_edit, original_edit) in EDITS.items():
            copy = copy_edit(original)
            base = original_edit(original) if original_edit else original
            counts[name][0] += verify(query(copy), stored(base)).verified
            counts[name][1] += verify(query(base), stored(copy)).verified
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=45)
    parser.add_argument("--dataset", default=_setup.DEFAULT_DATASET)
    parser.add_argument("--baseline", help="another checkout, run on the same photos")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not _setup.require_dataset(args.dataset, "colour_edits.py"):
        return 2
    ours = measure(args.dataset, args.photos)
    if args.json:
        print(json.dumps(ours))
        return 0
    columns = [("this checkout", ours)]
    if args.baseline:
        run = subprocess.run(
            [sys.executable, __file__, "--photos", str(args.photos), "--dataset", args.dataset,
             "--json"], capture_output=True, text=True, check=True,
            env=dict(os.environ, NEARDUP_BENCH_CHECKOUT=args.baseline))
        columns.append(("baseline", json.loads(run.stdout)))
    photos = min(args.photos, len(os.listdir(args.dataset)) - 1)
    print(f"{photos} CALTECH-101 photos, verified: copy as query / original as query")
    print("| edit | " + " | ".join(title for title, _ in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name in EDITS:
        cells = " | ".join(f"{counts[name][0]} / {counts[name][1]}" for _, counts in columns)
        print(f"| {name} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
