from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from neardup.core.hashing import ALGORITHMS, DRAFT_SIDE, Hash, Recipe, hash_file
from neardup.errors import ImageError

from .imagegen import save, textured

# Golden hashes on real CALTECH-101 photos, pinned so that a Pillow or ImageHash upgrade that
# shifts hashes (and so invalidates every stored index) is caught. (dHash-64, pHash-64) each.
GOLDEN_EXACT = {  # plain ImageHash: imagehash.dhash(Image.open(path))
    "Faces/image_0001.jpg": ("b2b3a56d71d90928", "daac3991979292f8"),
    "Leopards/image_0001.jpg": ("9898f0b2a8ca84b4", "90b972633c4ec766"),
    "airplanes/image_0001.jpg": ("09692539691b4915", "fad4a12b9a70b48e"),
    "BACKGROUND_Google/tmp": ("5574144435476627", "ffd22ea19205d32c"),
    "pagoda/image_0010.jpg": ("34e2c30c9b9c38d1", "918e1f947a7e5078"),
}
GOLDEN_DEFAULT = {  # our default recipe: grayscale JPEG decoding at reduced scale
    **GOLDEN_EXACT,
    "Faces/image_0001.jpg": ("b2b3a56d71d90928", "daac3999979292d8"),  # 510x337, decoded at 1/2
}
GOLDEN_DHASH16_FACE = (
    "d6c8d68cd60ed606d6733663b663b623b613b653b343b35190e280c38ec21ee2"
)


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


IMAGEHASH = {"dhash": imagehash.dhash, "phash": imagehash.phash,
             "ahash": imagehash.average_hash, "whash": imagehash.whash}


class TestAgreesWithImageHash:
    @pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
    @pytest.mark.parametrize("size", [8, 16])
    @pytest.mark.parametrize("exact", [True, False])
    def test_bit_for_bit_on_plain_images(
        self, tmp_path: Path, algorithm: str, size: int, exact: bool
    ) -> None:
        # --exact on any file; the default recipe on files it has no reason to change (an
        # upright, opaque, 8-bit PNG: only JPEGs are decoded differently).
        suffix = ".jpg" if exact else ".png"
        for seed in range(3):
            path = save(textured(seed, (120, 90)), str(tmp_path / f"{seed}{suffix}"))
            expected = str(IMAGEHASH[algorithm](Image.open(path), size))
            assert hash_file(path, Recipe(algorithm, size, exact=exact)).hex() == expected

    @pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
    def test_default_recipe_decodes_jpegs_in_gray_at_reduced_scale(
        self, tmp_path: Path, algorithm: str
    ) -> None:
        path = save(textured(8, (1200, 900)), str(tmp_path / "big.jpg"), quality=90)
        with Image.open(path) as image:
            image.draft("L", (DRAFT_SIDE, DRAFT_SIDE))
            assert image.size == (300, 225)  # libjpeg scaled it by 1/4 while decoding
            expected = str(IMAGEHASH[algorithm](image, 8))
        assert hash_file(path, Recipe(algorithm)).hex() == expected
        plain = hash_file(path, Recipe(algorithm, exact=True))
        assert hash_file(path, Recipe(algorithm)).distance(plain) <= 6

    def test_odd_bit_lengths_match_imagehash_hex(self, tmp_path: Path) -> None:
        path = save(textured(5), str(tmp_path / "a.png"))
        expected = str(imagehash.dhash(Image.open(path), 6))  # 36 bits: 9 hex digits
        assert hash_file(path, Recipe("dhash", 6)).hex() == expected


class TestGolden:
    def test_arithmetic_pattern(self, tmp_path: Path) -> None:
        path = save(arithmetic_pattern(), str(tmp_path / "pattern.png"))
        assert hash_file(path, Recipe()).hex() == "36dbd9d9363636d9"
        assert hash_file(path, Recipe("phash", 8)).hex() == "9543fcfc835455a4"

    @pytest.mark.parametrize("relpath", sorted(GOLDEN_EXACT))
    def test_caltech_photos(self, caltech_root: Path, relpath: str) -> None:
        path = str(caltech_root / relpath)
        dhash, phash = GOLDEN_EXACT[relpath]
        assert hash_file(path, Recipe(exact=True)).hex() == dhash
        assert hash_file(path, Recipe("phash", 8, exact=True)).hex() == phash
        dhash, phash = GOLDEN_DEFAULT[relpath]
        assert hash_file(path, Recipe()).hex() == dhash
        assert hash_file(path, Recipe("phash", 8)).hex() == phash

    def test_caltech_dhash_256(self, caltech_root: Path) -> None:
        path = str(caltech_root / "Faces/image_0001.jpg")
        assert hash_file(path, Recipe("dhash", 16)).hex() == GOLDEN_DHASH16_FACE


class TestWhatAPersonSees:
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

    def test_pixel_limit_refuses_before_decoding(self, tmp_path: Path) -> None:
        path = save(textured(2, (400, 300)), str(tmp_path / "big.png"))
        with pytest.raises(ImageError, match="over the limit"):
            hash_file(path, Recipe(), max_pixels=100_000)
        assert hash_file(path, Recipe(), max_pixels=120_000).bits == 64
