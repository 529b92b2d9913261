from __future__ import annotations

import io
import os
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw

from neardup.core.hashing import (
    ALGORITHMS,
    DRAFT_SIDE,
    MAX_UNDECIDED,
    UNDECIDED_BAND,
    GridDecoder,
    Hash,
    Recipe,
    decode_scale,
    grid_hash,
    grid_size,
    hash_file,
    hash_file_and_mirror,
    hash_source,
    open_image,
    scale_boundaries,
    upright_grid,
)
from neardup.errors import ImageError

from .imagegen import save, textured


def hashing_scale(size: tuple[int, int], recipe: Recipe) -> int:
    return decode_scale(size, grid_size(recipe, size), recipe)

# Golden hashes on real CALTECH-101 photos, pinned so that a Pillow or ImageHash upgrade that
# shifts hashes (and so invalidates every stored index) is caught. (dHash-64, pHash-64) each.
GOLDEN_EXACT = {  # plain ImageHash: imagehash.dhash(Image.open(path))
    "Faces/image_0001.jpg": ("b2b3a56d71d90928", "daac3991979292f8"),
    "Leopards/image_0001.jpg": ("9898f0b2a8ca84b4", "90b972633c4ec766"),
    "airplanes/image_0001.jpg": ("09692539691b4915", "fad4a12b9a70b48e"),
    "BACKGROUND_Google/tmp": ("5574144435476627", "ffd22ea19205d32c"),
    "pagoda/image_0010.jpg": ("34e2c30c9b9c38d1", "918e1f947a7e5078"),
}
GOLDEN_V2 = {  # the v2 recipe: grayscale JPEG decoding at reduced scale (DRAFT_SIDE)
    **GOLDEN_EXACT,
    "Faces/image_0001.jpg": ("b2b3a56d71d90928", "daac3999979292d8"),  # 510x337, decoded at 1/2
}
GOLDEN_DEFAULT = {  # v7: the grid resampled in floating point (neardup.core.sampling), near ties
    # read as ties, JPEGs decoded at 1/2 from 144 pixels on the shorter side
    "Faces/image_0001.jpg": ("b2b3a56d71d90928", "daac3991979292f8"),
    "Leopards/image_0001.jpg": ("9898f0b2a8ca84b4", "90b972633c4ec766"),
    "airplanes/image_0001.jpg": ("01692539691b4915", "fa94a12bda70b48e"),
    "BACKGROUND_Google/tmp": ("5574144435476627", "ffd22ea19005d33c"),
    "pagoda/image_0010.jpg": ("34e2c30c9b9c38d3", "918e1f947a7e5078"),
}
# v6 decoded the same JPEGs whole below 288 pixels: 203 x 300 pagoda one bit apart from v7's.
GOLDEN_V6_DHASH = {relpath: dhash for relpath, (dhash, _) in GOLDEN_DEFAULT.items()} | {
    "pagoda/image_0010.jpg": "74e2c30c9b9c38d3"}
# v3 to v5 read every difference of two cells as a bit: stores of theirs are still hashed so.
GOLDEN_V5_DHASH = {
    "Faces/image_0001.jpg": "b2b3a56d71d90928",
    "Leopards/image_0001.jpg": "98d8f0b2a8ca84b4",
    "airplanes/image_0001.jpg": "09692539691b4915",
    "BACKGROUND_Google/tmp": "7574144435476627",
    "pagoda/image_0010.jpg": "74e3c30c9b9c38d3",
}
GOLDEN_DHASH16_FACE = (
    "d6c8d68cd60ed606d6733663b663b623b613b653b343b35190e280c38ec21ee2"
)
V2 = 2  # Recipe(preprocess_version=V2): stores made before v3 are still hashed their own way


def arithmetic_pattern() -> Image.Image:
    """A grayscale pattern defined by a formula alone, so its hash does not depend on any RNG."""
    y, x = np.mgrid[0:120, 0:160]
    pixels = ((np.sin(x / 9.0) * np.cos(y / 13.0) + 1) * 120 + x * 0.3).astype(np.uint8)
    return Image.fromarray(pixels)


class TestHashValue:
    def test_hex_is_fixed_width_lowercase(self) -> None:
        assert Hash(0xAB, 64).hex() == "00000000000000ab"
        assert Hash(0b101, 36).hex() == "000000005"

    def test_round_trips_through_hex(self) -> None:
        value = Hash(0xDEADBEEF12345678, 64)
        assert Hash.from_hex(value.hex(), 64) == value

    def test_distance_counts_differing_bits(self) -> None:
        assert Hash(0b1011, 64).distance(Hash(0b0001, 64)) == 2
        assert Hash(0, 64).distance(Hash((1 << 64) - 1, 64)) == 64

    def test_equality_and_hash_use_every_bit(self) -> None:
        # ImageHash's own __hash__ keeps only 8 bits; ours must tell these two apart in a set.
        low, high = Hash(1, 64), Hash(1 | (1 << 63), 64)
        assert low != high
        assert len({low, high}) == 2

    def test_refuses_values_that_do_not_fit(self) -> None:
        with pytest.raises(ValueError):
            Hash(1 << 64, 64)
        with pytest.raises(ValueError):
            Hash.from_hex("abc", 64)
        with pytest.raises(ValueError):
            Hash(1, 64).distance(Hash(1, 256))


class TestUndecidedBits:
    """A dHash bit whose cells differ by within UNDECIDED_BAND of its edge is marked undecided."""

    @staticmethod
    def grid(differences: dict[tuple[int, int], float]) -> np.ndarray:
        cells = np.zeros((8, 9))
        steps = np.full((8, 8), 10.0)  # far from any edge: 10 levels brighter each cell
        for (row, column), difference in differences.items():
            steps[row, column] = difference
        cells[:, 1:] = np.cumsum(steps, axis=1)
        return cells

    @staticmethod
    def positions(value: int) -> set[int]:
        return {63 - bit for bit in range(64) if value >> bit & 1}  # as the grid reads, row by row

    def test_near_the_edge_of_v6_and_of_v5(self) -> None:
        band = UNDECIDED_BAND
        edge6 = self.grid({(0, 1): 0.5 + band * 0.9, (2, 3): 0.5 - band / 2,
                           (4, 4): 0.5 + band * 1.5, (5, 5): 0.0})
        value = grid_hash(edge6, Recipe())
        assert self.positions(value.undecided) == {1, 2 * 8 + 3}
        edge5 = self.grid({(0, 1): band / 2, (2, 3): 0.5, (7, 7): -band * 0.8})
        value = grid_hash(edge5, Recipe(preprocess_version=5))
        assert self.positions(value.undecided) == {1, 7 * 8 + 7}
        assert grid_hash(self.grid({}), Recipe()).undecided == 0

    def test_at_most_the_nearest_few(self) -> None:
        shares = [0.95, 0.05, 0.75, 0.15, 0.35, 0.6, 0.25]  # of the band from the edge, row 0
        cells = self.grid({(0, column): 0.5 + share * UNDECIDED_BAND
                           for column, share in enumerate(shares)})
        value = grid_hash(cells, Recipe())
        assert MAX_UNDECIDED == 4
        assert self.positions(value.undecided) == {1, 3, 4, 6}

    def test_short_hashes_get_fewer(self) -> None:
        cells = np.zeros((4, 5))
        cells[:, 1:] = np.cumsum(np.full((4, 4), 0.5 + UNDECIDED_BAND / 2), axis=1)  # all near
        marked = grid_hash(cells, Recipe(hash_size=4))
        assert marked.bits == 16 and marked.undecided.bit_count() == 1

    def test_only_dhash_and_not_the_stored_value(self) -> None:
        cells = self.grid({(0, 0): 0.45})
        assert grid_hash(cells, Recipe(algorithm="ahash")).undecided == 0
        marked = grid_hash(cells, Recipe())
        assert marked.undecided and marked.hex() == Hash(marked.value, 64).hex()


class TestRecipe:
    def test_bits_and_round_trip(self) -> None:
        recipe = Recipe("phash", 16, exact=True)
        assert recipe.bits == 256
        assert Recipe.from_dict(recipe.to_dict()) == recipe

    @pytest.mark.parametrize(
        "arguments", [("nohash", 8), ("dhash", 1), ("whash", 6)], ids=["unknown", "tiny", "whash6"]
    )
    def test_refuses_impossible_recipes(self, arguments: tuple[str, int]) -> None:
        with pytest.raises(ValueError):
            Recipe(*arguments)

    def test_default_is_v7_and_a_future_version_is_refused_by_name(self) -> None:
        assert Recipe().preprocess_version == 7
        with pytest.raises(ValueError, match="v8 is not known"):
            Recipe(preprocess_version=8)


IMAGEHASH = {"dhash": imagehash.dhash, "phash": imagehash.phash,
             "ahash": imagehash.average_hash, "whash": imagehash.whash}


class TestAgreesWithImageHash:
    @pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
    @pytest.mark.parametrize("size", [8, 16])
    @pytest.mark.parametrize("exact", [True, False])
    def test_bit_for_bit_on_plain_images(
        self, tmp_path: Path, algorithm: str, size: int, exact: bool
    ) -> None:
        # --exact on any file; the v2 recipe on files it has no reason to change (an upright,
        # opaque, 8-bit PNG: only JPEGs are decoded differently). The default (v4) reads the
        # same grid in floating point instead of 8 bits: a few bits may differ, where
        # neighbouring cells were within a rounding step.
        suffix = ".jpg" if exact else ".png"
        for seed in range(3):
            path = save(textured(seed, (120, 90)), str(tmp_path / f"{seed}{suffix}"))
            plain = Hash.from_imagehash(IMAGEHASH[algorithm](Image.open(path), size))
            recipe = Recipe(algorithm, size, exact=exact, preprocess_version=V2)
            assert hash_file(path, recipe) == plain
            assert hash_file(path, Recipe(algorithm, size)).distance(plain) <= plain.bits // 16

    @pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
    def test_v2_decodes_jpegs_in_gray_at_reduced_scale(
        self, tmp_path: Path, algorithm: str
    ) -> None:
        path = save(textured(8, (1200, 900)), str(tmp_path / "big.jpg"), quality=90)
        with Image.open(path) as image:
            image.draft("L", (DRAFT_SIDE, DRAFT_SIDE))
            assert image.size == (300, 225)  # libjpeg scaled it by 1/4 while decoding
            expected = str(IMAGEHASH[algorithm](image, 8))
        assert hash_file(path, Recipe(algorithm, preprocess_version=V2)).hex() == expected

    @pytest.mark.parametrize("algorithm", ["dhash", "phash", "ahash"])
    def test_default_recipe_decodes_large_jpegs_at_reduced_scale_without_moving_bits(
        self, tmp_path: Path, algorithm: str
    ) -> None:
        path = save(textured(8, (2400, 1800)), str(tmp_path / "big.jpg"), quality=90)
        recipe = Recipe(algorithm)
        decoder = GridDecoder(recipe)
        with open_image(path, before_load=decoder) as image:
            scale = 2400 / image.width
        edges = scale_boundaries(recipe)
        assert scale == max(s for s in (1, 2, 4, 8) if s == 1 or 1800 >= edges[s])
        assert scale > 1 or algorithm == "phash"
        assert decoder.extent == (2400 / scale, 1800 / scale)
        plain = hash_file(path, Recipe(algorithm, exact=True))
        assert hash_file(path, recipe).distance(plain) <= 2


class TestStraddle:
    """Sizes on both sides of a decode-scale boundary must hash alike (issue 14)."""

    def test_each_version_keeps_its_own_boundaries(self) -> None:
        # dHash-64 (a 9 x 8 grid): v4 keeps 40 decoded pixels per cell at 1/4 and 1/8, so a
        # 4000 x 3000 photo still decodes at 1/8; v3 stores are still hashed with 16 everywhere.
        # v7 decodes at 1/2 from 8 pixels per cell: a 300 x 200 photo at 1/2, not whole as
        # under v6 (its stores are still hashed so).
        assert scale_boundaries(Recipe()) == {2: 144, 4: 1440, 8: 2880}
        assert scale_boundaries(Recipe(preprocess_version=6)) == {2: 288, 4: 1440, 8: 2880}
        assert scale_boundaries(Recipe(preprocess_version=3)) == {2: 288, 4: 576, 8: 1152}
        assert hashing_scale((300, 200), Recipe()) == 2
        assert hashing_scale((300, 200), Recipe(preprocess_version=6)) == 1
        assert hashing_scale((4000, 3000), Recipe()) == 8
        assert hashing_scale((2000, 1500), Recipe()) == 4
        assert hashing_scale((2000, 1500), Recipe(preprocess_version=3)) == 8

    @pytest.mark.parametrize("scale", [2, 4, 8])
    def test_jpegs_just_below_and_above_each_boundary_hash_alike(
        self, tmp_path: Path, scale: int
    ) -> None:
        recipe = Recipe()
        edge = scale_boundaries(recipe)[scale]  # shorter side
        # Three seeds at 1/8 (pictures of 11 megapixels, 2 to 3 s each), five at the others.
        for seed in range(3 if scale == 8 else 5):
            picture = textured(seed, (edge * 4 // 3 + 60, edge + 60))
            below = save(picture.resize((edge * 4 // 3 - 3, edge - 2), Image.Resampling.LANCZOS),
                         str(tmp_path / f"{seed}-below.jpg"), quality=92)
            above = save(picture.resize((edge * 4 // 3 + 3, edge + 2), Image.Resampling.LANCZOS),
                         str(tmp_path / f"{seed}-above.jpg"), quality=92)
            # The two sides take different paths: below at half the scale of above.
            decoders = GridDecoder(recipe), GridDecoder(recipe)
            with open_image(below, before_load=decoders[0]) as image:
                assert image.height == -(-(edge - 2) // (scale // 2))
            with open_image(above, before_load=decoders[1]) as image:
                assert image.height == -(-(edge + 2) // scale)
                reduced = upright_grid(image, recipe, decoders[1])
            # The path itself moves no cell by half a gray level (less than 8-bit rounding does)...
            with open_image(above, before_load=lambda image: image.draft("L", image.size)) as image:
                assert image.height == edge + 2
                whole = upright_grid(image, recipe)
            assert np.abs(reduced - whole).max() < 0.5, seed
            # ...so the pair is as near as any two sizes of one picture: at most a bit apart.
            assert hash_file(below, recipe).distance(hash_file(above, recipe)) <= 1, seed

    @pytest.mark.parametrize("size", [(3004, 2882), (3003, 2883), (579, 289)],
                             ids=["1/8, half a block", "1/8, 3 of 8", "1/2, half a pixel"])
    def test_a_partial_last_block_weighs_what_it_covers(self, tmp_path: Path,
                                                        size: tuple[int, int]) -> None:
        # A picture whose last rows and columns hold sharp detail (here a white edge), of a size
        # that leaves the reduced decode's last pixel standing for part of a block. v4 weighed
        # that pixel as a whole one, and the grid's edge cells leant on the picture's last
        # pixels as the whole decode does not (up to 4 gray levels: a copy a few pixels larger
        # hashes differently); v5 weighs it by the part of the picture it covers.
        pixels = np.asarray(textured(3, size).convert("L")).copy()
        pixels[:, -3:] = 255
        pixels[-3:, :] = 255
        path = save(Image.fromarray(pixels), str(tmp_path / "edge.jpg"), quality=95)
        errors = {}
        for version in (4, 5):
            recipe = Recipe(preprocess_version=version)
            decoder = GridDecoder(recipe)
            with open_image(path, before_load=decoder) as image:
                assert image.height < size[1]  # a reduced decode
                reduced = upright_grid(image, recipe, decoder)
            with open_image(path, before_load=lambda image: image.draft("L", image.size)) as image:
                whole = upright_grid(image, recipe)
            errors[version] = np.abs(reduced - whole).max()
        assert errors[5] < 0.5 < 1.0 < errors[4], errors

    def test_a_nearly_flat_photo_recompressed_hard_keeps_its_ties(self, tmp_path: Path) -> None:
        # White paper (254, grain of 3 levels, clipped at 255) with a few brown shapes low down,
        # saved at quality 95 just under the 1/2 boundary, and its copy resized by 3-5 % across it
        # and saved at quality 60: most neighbouring cells of the paper differ by compression
        # noise, a fraction of a gray level. v5 read each such difference as a bit and put the
        # pairs 8 to 20 bits apart, where plain ImageHash's 8-bit grid ties them (0 to 2 bits);
        # v6 reads differences under half a level (TIE_BAND) as ties.
        totals = {"default": 0, "exact": 0}
        for seed in range(6):
            rng = np.random.default_rng(seed)
            picture = Image.new("RGB", (285, 285), (254, 254, 254))
            draw = ImageDraw.Draw(picture)
            for _ in range(3):
                x, y, size = rng.integers(10, 220), rng.integers(150, 230), rng.integers(30, 60)
                draw.ellipse((x, y, x + size, y + size // 2),
                             fill=(int(rng.integers(120, 200)), 110, 60))
            paper = np.asarray(picture) + rng.normal(0, 3, (285, 285, 1))
            original = save(Image.fromarray(np.clip(np.rint(paper), 0, 255).astype(np.uint8)),
                            str(tmp_path / f"{seed}-o.jpg"), quality=95)
            side = round(285 * rng.uniform(1.03, 1.05))
            with Image.open(original) as opened:
                copy = save(opened.convert("RGB").resize((side, side), Image.Resampling.LANCZOS),
                            str(tmp_path / f"{seed}-c.jpg"), quality=60)
            for name, recipe in (("default", Recipe()), ("exact", Recipe(exact=True))):
                distance = hash_file(original, recipe).distance(hash_file(copy, recipe))
                assert name == "exact" or distance <= 2, (seed, distance)
                totals[name] += distance
        assert totals["default"] <= totals["exact"], totals

    def test_the_emu_of_issue_14(self, caltech_root: Path, tmp_path: Path) -> None:
        # 300 x 253 and its copy resized by 1.5% (305 x 257): v2 decoded them on different
        # paths and put them 5 bits apart, missed at the default distance 4. Plain ImageHash: 1.
        original = str(caltech_root / "emu/image_0009.jpg")
        with Image.open(original) as opened:
            copy = opened.convert("RGB").resize((305, 257), Image.Resampling.LANCZOS)
        copied = save(copy, str(tmp_path / "copy.jpg"), quality=90)
        assert hash_file(original, Recipe(preprocess_version=V2)).distance(
            hash_file(copied, Recipe(preprocess_version=V2))) == 5
        assert hash_file(original, Recipe()).distance(hash_file(copied, Recipe())) <= 1

    def test_odd_bit_lengths_match_imagehash_hex(self, tmp_path: Path) -> None:
        path = save(textured(5), str(tmp_path / "a.png"))
        expected = str(imagehash.dhash(Image.open(path), 6))  # 36 bits: 9 hex digits
        assert hash_file(path, Recipe("dhash", 6)).hex() == expected


class TestGolden:
    def test_arithmetic_pattern(self, tmp_path: Path) -> None:
        path = save(arithmetic_pattern(), str(tmp_path / "pattern.png"))
        assert hash_file(path, Recipe()).hex() == "36dbd9d9363636d9"
        assert hash_file(path, Recipe("phash", 8)).hex() == "9543fcfc835451ac"
        assert hash_file(path, Recipe("phash", 8, preprocess_version=V2)).hex() == "9543fcfc835455a4"

    @pytest.mark.parametrize("relpath", sorted(GOLDEN_EXACT))
    def test_caltech_photos(self, caltech_root: Path, relpath: str) -> None:
        path = str(caltech_root / relpath)
        dhash, phash = GOLDEN_EXACT[relpath]
        assert hash_file(path, Recipe(exact=True)).hex() == dhash
        assert hash_file(path, Recipe("phash", 8, exact=True)).hex() == phash
        dhash, phash = GOLDEN_DEFAULT[relpath]
        assert hash_file(path, Recipe()).hex() == dhash
        assert hash_file(path, Recipe("phash", 8)).hex() == phash
        assert hash_file(path, Recipe(preprocess_version=6)).hex() == GOLDEN_V6_DHASH[relpath]
        assert hash_file(path, Recipe(preprocess_version=5)).hex() == GOLDEN_V5_DHASH[relpath]
        dhash, phash = GOLDEN_V2[relpath]
        assert hash_file(path, Recipe(preprocess_version=V2)).hex() == dhash
        assert hash_file(path, Recipe("phash", 8, preprocess_version=V2)).hex() == phash

    def test_caltech_dhash_256(self, caltech_root: Path) -> None:
        path = str(caltech_root / "Faces/image_0001.jpg")
        assert hash_file(path, Recipe("dhash", 16)).hex() == GOLDEN_DHASH16_FACE


class TestWhatAPersonSees:
    @pytest.mark.parametrize("version", [V2, 3])
    def test_mirror_hash_is_the_hash_of_the_mirrored_file(self, tmp_path: Path, version: int) -> None:
        picture = textured(6, (160, 120))
        path = save(picture, str(tmp_path / "a.png"))
        flipped = save(picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT), str(tmp_path / "b.png"))
        recipe = Recipe(preprocess_version=version)
        plain, mirrored = hash_file_and_mirror(path, recipe)
        assert plain == hash_file(path, recipe)
        assert mirrored.distance(hash_file(flipped, recipe)) <= 1

    @pytest.mark.parametrize("orientation", range(2, 9))
    def test_every_exif_orientation_gives_the_upright_hash(
        self, tmp_path: Path, orientation: int
    ) -> None:
        upright = textured(12, (150, 100))
        undo = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_270}[orientation]
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = save(upright.transpose(undo), str(tmp_path / "stored.png"), exif=exif)
        plain = save(upright, str(tmp_path / "upright.png"))
        assert hash_file(stored, Recipe()).distance(hash_file(plain, Recipe())) <= 1

    def test_exif_orientation_is_applied(self, tmp_path: Path) -> None:
        upright = textured(11, (120, 80))
        sideways = upright.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: display after rotating 90 degrees clockwise
        plain = save(upright, str(tmp_path / "upright.png"))
        stored = save(sideways, str(tmp_path / "sideways.png"), exif=exif)

        assert hash_file(stored, Recipe()) == hash_file(plain, Recipe())
        # Plain ImageHash sees the stored pixels and loses the match.
        assert hash_file(stored, Recipe(exact=True)).distance(hash_file(plain, Recipe())) > 16

    def test_hidden_colour_under_transparency_does_not_count(self, tmp_path: Path) -> None:
        picture = np.asarray(textured(3, (100, 100)).convert("RGBA")).copy()
        picture[:, 50:, 3] = 0  # right half fully transparent
        other = picture.copy()
        other[:, 50:, :3] = 255 - other[:, 50:, :3]  # different colour nobody can see
        first = save(Image.fromarray(picture), str(tmp_path / "a.png"))
        second = save(Image.fromarray(other), str(tmp_path / "b.png"))
        assert hash_file(first, Recipe()) == hash_file(second, Recipe())

    def test_sixteen_bit_grayscale_is_not_flattened_to_white(self, tmp_path: Path) -> None:
        eight = np.asarray(arithmetic_pattern(), dtype=np.uint16)
        sixteen = Image.fromarray((eight * 257).astype("<u2"))
        assert sixteen.mode == "I;16"
        path = save(sixteen, str(tmp_path / "deep.png"))
        reference = save(arithmetic_pattern(), str(tmp_path / "flat.png"))
        assert hash_file(path, Recipe()) == hash_file(reference, Recipe())
        assert hash_file(path, Recipe()).value != 0


class TestRefusals:
    def test_reasons_name_the_problem(self, tmp_path: Path) -> None:
        empty = tmp_path / "empty.jpg"
        empty.write_bytes(b"")
        text = tmp_path / "text.jpg"
        text.write_text("not an image\n")
        truncated = tmp_path / "truncated.jpg"
        whole = save(textured(1, (200, 150)), str(tmp_path / "whole.jpg"), quality=90)
        truncated.write_bytes(Path(whole).read_bytes()[:1500])
        folder = tmp_path / "folder.jpg"
        folder.mkdir()

        expectations = {
            empty: "empty file",
            text: "not an image",
            truncated: "truncated",
            folder: "is a directory",
            tmp_path / "missing.jpg": "file not found",
        }
        for path, reason in expectations.items():
            with pytest.raises(ImageError) as caught:
                hash_file(str(path), Recipe())
            assert reason in caught.value.reason, (path, caught.value.reason)
            assert str(caught.value).startswith(str(path))

    def test_a_jpeg_cut_anywhere_in_its_blocks_is_a_truncated_image(self) -> None:
        """Cut inside a block, it was "cannot decode image (OSError: Truncated File Read)";
        between two blocks, "cannot decode image (OSError: cannot load this image)"; past its
        first scan's start, "truncated image". From its second block on (before it, no reader
        knows it for a JPEG) it is one reason."""
        exif = Image.Exif()
        exif[0x0112] = 1
        buffer = io.BytesIO()
        textured(1, (200, 150)).save(buffer, "JPEG", quality=90, exif=exif)
        whole = buffer.getvalue()
        second_block = 4 + int.from_bytes(whole[4:6], "big")
        reasons = {}
        for length in range(second_block, whole.index(b"\xff\xda") + 40):
            with pytest.raises(ImageError) as caught:
                hash_source("upload", Recipe(), data=whole[:length])
            reasons.setdefault(caught.value.reason, length)
        assert reasons.keys() == {"truncated image"}, reasons

    def test_pixel_limit_refuses_before_decoding(self, tmp_path: Path) -> None:
        path = save(textured(2, (400, 300)), str(tmp_path / "big.png"))
        with pytest.raises(ImageError, match="over the limit"):
            hash_file(path, Recipe(), max_pixels=100_000)
        assert hash_file(path, Recipe(), max_pixels=120_000).bits == 64

    @pytest.mark.parametrize("size", [(20_000, 20_000), (100_000, 100_000), (65_535, 65_535)])
    def test_far_over_the_pixel_limit_is_refused_with_our_limit(
        self, tmp_path: Path, size: tuple[int, int]
    ) -> None:
        """A review: over twice Pillow's global limit (178,956,970 pixels) an image was refused
        with Pillow's message and limit, not the caller's --max-pixels."""
        import struct
        import zlib

        def chunk(kind: bytes, body: bytes) -> bytes:
            return (struct.pack(">I", len(body)) + kind + body
                    + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

        width, height = size
        data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                                 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
        expected = f"refused: {width} x {height} pixels is over the limit of 50,000,000"
        with pytest.raises(ImageError) as caught:
            hash_source("upload", Recipe(), 50_000_000, data=data)
        assert caught.value.reason == expected
        path = tmp_path / "huge.png"
        path.write_bytes(data)
        with pytest.raises(ImageError) as caught:
            hash_file(str(path), Recipe(), max_pixels=50_000_000)
        assert caught.value.reason == expected


class TestGridResampling:
    @pytest.mark.parametrize("size", [(9, 8), (32, 32), (64, 64), (128, 128)])
    def test_dense_and_banded_ways_give_the_same_cells(self, size: tuple[int, int]) -> None:
        from neardup.core import sampling

        for seed, shape in enumerate([(200, 300), (375, 500), (141, 97)]):
            pixels = np.asarray(textured(seed, (shape[1], shape[0])).convert("L"))
            extent = (shape[1] - 0.5, shape[0] - 0.25)  # a reduced decode's partial last pixel
            dense = sampling.dense_grid(pixels, extent, size)
            banded = sampling.banded_grid(pixels, extent, size)
            assert np.array_equal(dense, banded), (seed, size)

    @pytest.mark.parametrize("size", [(9, 8), (32, 32), (128, 128)])
    def test_a_very_long_side_is_streamed_to_the_same_cells(
        self, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from neardup.core import sampling

        for seed, shape in enumerate([(7, 3000), (2900, 5), (1200, 1500), (3, 2500)]):
            pixels = np.asarray(textured(seed, (shape[1], shape[0])).convert("L"))
            extent = (shape[1] - 0.5, shape[0] - 0.25)
            expected = sampling.grid(pixels, extent, size)  # dense or banded
            with monkeypatch.context() as patched:
                patched.setattr(sampling, "LONG_SIDE", 1000)
                patched.setattr(sampling, "STREAM_PIXELS", 700)  # several chunks a cell
                streamed = sampling.grid(pixels, extent, size)
            assert np.array_equal(streamed, expected), (seed, size)

    def test_filters_thousands_of_pixels_wide_are_weighed_by_blocks_to_within_1e_3(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from neardup.core import sampling

        monkeypatch.setattr(sampling, "STEP", 1e-12)  # the cells as computed, unrounded
        rng = np.random.default_rng(3)
        for shape, size in [((2, 300_000), (9, 8)), ((300_000, 3), (9, 8)),
                            ((3, 400_000), (32, 32))]:
            pixels = (rng.random(shape) * 255).astype(np.uint8)
            pixels[:, : shape[1] // 3] //= 3
            extent = (shape[1] - 0.5, shape[0] - 0.25)
            blocked = sampling.grid(pixels, extent, size)
            with monkeypatch.context() as patched:
                patched.setattr(sampling, "BLOCK_FRACTION", 10**9)  # a weight per pixel
                exact = sampling.grid(pixels, extent, size)
            assert np.abs(blocked - exact).max() < 1e-3, (shape, size)

    def test_a_hostile_long_picture_costs_no_filter_of_cells_by_pixels(self) -> None:
        """A 47 KB PNG of 24,000,000 x 2 pixels (under the pixel limit) had the grid build a
        9 x 24,000,000 filter and its temporaries: 7 GB at the peak for one upload. Here 2 rows
        of 3,000,000 (6 MB of pixels) must not cost more than a few times that."""
        import tracemalloc

        from neardup.core import sampling

        pixels = np.zeros((2, 3_000_000), dtype=np.uint8)
        pixels[:, 1_000_000:] = 200
        tracemalloc.start()
        try:
            cells = sampling.grid(pixels, (3_000_000.0, 2.0), (9, 8))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 40_000_000, peak
        assert cells[:, 0].max() < 1 and cells[:, -1].min() > 199  # dark left, light right

    def test_a_blank_picture_gives_equal_cells_both_ways(self) -> None:
        from neardup.core import sampling

        pixels = np.full((210, 333), 255, dtype=np.uint8)
        for size in [(9, 8), (128, 128)]:
            assert np.all(sampling.grid(pixels, (333.0, 210.0), size) == 255.0)


def test_filters_are_kept_within_a_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # Photos come in hundreds of sizes: the filters stay cached (an LRU by count was emptied over
    # and over on CALTECH-101), but never past the budget, and an evicted one is computed again
    # to the same values.
    from neardup.core import sampling

    monkeypatch.setattr(sampling, "_cache", type(sampling._cache)())
    monkeypatch.setattr(sampling, "_cache_bytes", 0)
    monkeypatch.setattr(sampling, "CACHE_BYTES", 9 * 300 * 8 * 3)  # three 9 x 300 filters
    first = sampling.lanczos_weights(300, 300.0, 9)
    assert sampling.lanczos_weights(300, 300.0, 9) is first  # kept
    for side in range(301, 306):
        sampling.lanczos_weights(side, float(side), 9)
    assert sampling._cache_bytes <= sampling.CACHE_BYTES
    assert len(sampling._cache) <= 3 and (300, 300.0, 9) not in sampling._cache
    again = sampling.lanczos_weights(300, 300.0, 9)
    assert again is not first and np.array_equal(again, first)
    assert sampling.lanczos_weights(4000, 4000.0, 9).shape == (9, 4000)  # long: not kept
    assert (4000, 4000.0, 9) not in sampling._cache


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_wide_samples_are_scaled_to_8_bits_in_bands(mode: str) -> None:
    from neardup.core import hashing, sampling

    rng = np.random.default_rng(3)
    if mode == "F":
        values = rng.uniform(-50, 300, size=(70, 90)).astype(np.float32)
        image = Image.fromarray(values, "F")
    elif mode == "I":
        values = rng.integers(-70000, 200000, size=(70, 90), dtype=np.int32)
        image = Image.fromarray(values, "I")
    else:
        image = Image.new(mode, (90, 70))
        image.putdata([int(v) for v in rng.integers(0, 65536, size=70 * 90)])
    # The rule, written out: 16- and 32-bit samples / 257 rounded down, everything clipped.
    samples = np.asarray(image, dtype=np.float64)
    expected = np.clip(samples if mode == "F" else samples / 257.0, 0, 255).astype(np.uint8)
    assert np.array_equal(hashing.gray_pixels(image), expected)
    assert np.array_equal(np.asarray(hashing.flatten(image)), expected)  # ImageHash's path too
    with pytest.MonkeyPatch.context() as patched:  # in bands of a few rows, as for a huge picture
        patched.setattr(sampling, "PIXELS_PER_BLOCK", 90 * 3)
        assert np.array_equal(hashing.gray_pixels(image), expected)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_a_huge_16_bit_png_is_hashed_without_a_float_copy(tmp_path: Path) -> None:
    # 64 megapixels of 16-bit gray in a file of a few hundred KB: 128 MB decoded. The float64
    # copy flatten() makes would be 512 MB more; hashing must stay well under that.
    import subprocess
    import sys

    path = tmp_path / "wide.png"
    samples = (np.arange(8000, dtype=np.uint32)[None, :] * 8 + np.arange(8000)[:, None]) % 65536
    Image.fromarray(samples.astype(np.uint16)).save(path)
    # The peak of this process alone (VmHWM starts anew at exec; ru_maxrss would count pytest's).
    script = ("import sys; from neardup.core.hashing import Recipe, hash_file;"
              " hash_file(sys.argv[1], Recipe());"
              " print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, check=True)
    peak_mb = int(done.stdout.split()[-1]) / 1024
    assert peak_mb < 128 + 64 + 250, peak_mb  # decoded + 8-bit result + the interpreter, numpy


def test_a_file_read_in_short_pieces_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    """A network file system may give less than asked before a file's end: reading stops early
    only once the size the file had is in hand, so such a file is hashed whole, not cut."""
    from neardup.core import hashing

    path = tmp_path / "photo.jpg"
    save(textured(seed=3), path, quality=90)
    data = path.read_bytes()
    expected = hash_file(str(path), Recipe())
    real_read = os.read
    sizes: list[int] = []

    def short_read(descriptor: int, count: int) -> bytes:
        chunk = real_read(descriptor, min(count, 1000))
        sizes.append(len(chunk))
        return chunk

    monkeypatch.setattr(hashing.os, "read", short_read)
    assert hashing.read_file(str(path)).read() == data
    assert len(sizes) > 2
    assert hash_file(str(path), Recipe()) == expected

    # A file system that says 0 bytes (procfs) or a size out of date, and gives short pieces:
    # read to the end all the same (a review found such files cut after the size said). (Not
    # told apart: a piece ending exactly where an out-of-date size says, as no file system gives
    # short of its own idea of the end.)
    real_fstat = os.fstat
    for said in (0, 1001, 2001):
        def stale_fstat(descriptor: int, said: int = said) -> os.stat_result:
            status = list(real_fstat(descriptor))
            status[6] = said  # st_size
            return os.stat_result(status)

        monkeypatch.setattr(hashing.os, "fstat", stale_fstat)
        assert hashing.read_file(str(path)).read() == data, said
        assert hash_file(str(path), Recipe()) == expected


def test_a_proc_file_is_read_whole() -> None:
    """procfs gives size 0 and data a page at a time (a review: cut at 4 KB)."""
    from neardup.core import hashing

    if not os.path.exists("/proc/self/smaps"):
        pytest.skip("no /proc/self/smaps on this system")
    whole = hashing.read_file("/proc/self/smaps").read()
    assert len(whole) > 8192 and whole.endswith(b"\n")


def test_a_float_picture_with_white_at_1_hashes_as_the_same_picture_in_8_bits(tmp_path: Path) -> None:
    # Image editors and scientific software write float TIFFs with white at 1.0; read as 8-bit
    # levels (clipped) such a photo was black, and answered as a blank picture.
    from neardup.core import hashing, sampling
    from neardup.features import extract

    fractions = np.asarray(textured(seed=5).convert("L"), dtype=np.float32) / 255.0
    floats, plain = tmp_path / "fractions.tif", tmp_path / "plain.png"
    Image.fromarray(fractions, "F").save(floats)
    Image.fromarray(np.clip(fractions * 255.0, 0, 255).astype(np.uint8)).save(plain)
    recipe = hashing.Recipe()
    assert hashing.hash_file(str(floats), recipe) == hashing.hash_file(str(plain), recipe)
    with Image.open(floats) as image:
        with pytest.MonkeyPatch.context() as patched:  # the range read in bands, as it is hashed
            patched.setattr(sampling, "PIXELS_PER_BLOCK", image.width * 3)
            banded = hashing.gray_pixels(image)
        with Image.open(plain) as eight_bits:
            assert np.array_equal(banded, np.asarray(eight_bits))
            assert np.array_equal(extract.analysis_frame(image), extract.analysis_frame(eight_bits))
    # One sample past 1 and the picture's samples are levels again, clipped as before.
    levels = fractions.copy()
    levels[0, 0] = 1.5
    assert np.array_equal(hashing.gray_pixels(Image.fromarray(levels, "F")),
                          np.clip(levels, 0, 255).astype(np.uint8))
