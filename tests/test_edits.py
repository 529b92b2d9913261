"""Each edit really does what its manifest description says."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from neardup.cli import gather as gather_cli
from neardup.sources.dataset import read_manifest
from neardup.sources.edits import KINDS, apply_edit, parse_kinds

from .imagegen import make_tree, textured

PICTURE = textured(3, (200, 150))


def edited(kind: str, seed: int = 1) -> tuple[Image.Image, str, int]:
    return apply_edit(kind, PICTURE, random.Random(seed))


def number(description: str, key: str) -> float:
    match = re.search(rf"{key}=(-?[\d.]+)", description)
    assert match, (key, description)
    return float(match.group(1))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64)


@pytest.mark.parametrize("seed", range(5))
class TestEachEdit:
    def test_resize(self, seed: int) -> None:
        image, description, quality = edited("resize", seed)
        width, height = (int(v) for v in re.search(r"to=(\d+)x(\d+)", description).groups())
        assert image.size == (width, height) != PICTURE.size and quality == 90
        assert 0.95 <= number(description, "factor") <= 1.05

    def test_jpeg(self, seed: int) -> None:
        image, description, quality = edited("jpeg", seed)
        assert description == "jpeg" and 30 <= quality <= 95
        assert np.array_equal(np.asarray(image), np.asarray(PICTURE))  # only the saving changes

    def test_crop(self, seed: int) -> None:
        image, description, _ = edited("crop", seed)
        cuts = {key: int(number(description, key)) for key in ("left", "top", "right", "bottom")}
        assert all(1 <= cut <= 10 for cut in cuts.values())
        assert image.width == 200 - 200 * cuts["left"] // 100 - 200 * cuts["right"] // 100
        assert image.height == 150 - 150 * cuts["top"] // 100 - 150 * cuts["bottom"] // 100

    def test_pad(self, seed: int) -> None:
        image, description, _ = edited("pad", seed)
        colour = 0 if "black" in description else 255
        assert image.height > PICTURE.height
        assert (pixels(image)[0] == colour).all()  # the top row is bar or border
        if "border" in description:
            assert image.width > PICTURE.width and (pixels(image)[:, 0] == colour).all()

    def test_rotate(self, seed: int) -> None:
        image, description, _ = edited("rotate", seed)
        assert 1 <= abs(number(description, "degrees")) <= 5
        assert image.size == PICTURE.size and pixels(image)[0, 0] == 0  # a corner swung in: black

    def test_flip(self, seed: int) -> None:
        image, _, _ = edited("flip", seed)
        assert np.array_equal(np.asarray(image), np.asarray(ImageOps.mirror(PICTURE)))

    def test_brightness(self, seed: int) -> None:
        image, description, _ = edited("brightness", seed)
        factor = number(description, "factor")
        change = pixels(image).mean() - pixels(PICTURE).mean()
        assert (change > 0) == (factor > 1) and abs(factor - 1) >= 0.1

    def test_contrast(self, seed: int) -> None:
        image, description, _ = edited("contrast", seed)
        factor = number(description, "factor")
        assert (pixels(image).std() > pixels(PICTURE).std()) == (factor > 1)

    def test_gray(self, seed: int) -> None:
        image, description, _ = edited("gray", seed)
        assert description == "gray" and image.mode == "L"

    def test_blur(self, seed: int) -> None:
        image, description, _ = edited("blur", seed)
        assert 0.5 <= number(description, "radius") <= 2

        def roughness(values: np.ndarray) -> float:
            return float(np.abs(np.diff(values, axis=1)).mean())

        assert roughness(pixels(image)) < roughness(pixels(PICTURE)) * 0.9

    def test_noise(self, seed: int) -> None:
        image, description, _ = edited("noise", seed)
        sigma = number(description, "sigma")
        difference = np.asarray(image, dtype=np.float64) - np.asarray(PICTURE, dtype=np.float64)
        assert 0.7 * sigma < difference.std() < 1.1 * sigma  # clipping at 0/255 trims a little

    def test_text(self, seed: int) -> None:
        image, description, _ = edited("text", seed)
        changed = np.abs(pixels(image) - pixels(PICTURE)) > 0
        height, width = changed.shape
        if "corner" in description:
            assert changed[height // 2:, width // 2:].any() and not changed[: height // 3].any()
        else:
            assert changed[height // 3: 2 * height // 3].any()

    def test_combo(self, seed: int) -> None:
        _, description, _ = edited("combo", seed)
        parts = description.removeprefix("combo ").split(" + ")
        kinds = {part.split()[0] for part in parts}
        assert description.startswith("combo ")
        assert 2 <= len(parts) <= 3 and len(kinds) == len(parts)  # different edits each time
        assert not kinds & {"flip", "gray"}


def test_parse_kinds() -> None:
    assert parse_kinds("resize, crop") == ["resize", "crop"]
    assert parse_kinds("all") == list(KINDS)
    with pytest.raises(ValueError, match="unknown edit smudge"):
        parse_kinds("resize,smudge")


def test_gather_makes_every_kind_and_records_it(in_tmp: Path) -> None:
    make_tree("source", 12)
    args = ["--source", "source", "-q", "--samples", "2", "--copies", "1", "--edits", "all",
            "--seed", "4", "--cache-dir", "cache"]
    assert gather_cli.main([*args, "-o", "one"]) == 0
    assert gather_cli.main([*args, "-o", "two"]) == 0
    rows = [row for row in read_manifest("one/manifest.csv") if row.role == "copy"]
    assert len(rows) == 2 * len(KINDS)
    assert sorted({row.edit.split()[0] for row in rows}) == sorted(KINDS)
    assert all(re.search(r"jpeg_quality=\d+$", row.edit) for row in rows)
    assert Path("one/manifest.csv").read_bytes() == Path("two/manifest.csv").read_bytes()
    for row in rows:
        assert Path("one", row.file).read_bytes() == Path("two", row.file).read_bytes()
