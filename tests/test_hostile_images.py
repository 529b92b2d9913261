"""Every kind of image a stranger can upload: hashed as a person sees it, or refused with a reason."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from neardup.cli import index as index_cli
from neardup.cli import search as search_cli
from neardup.core import hashing, jpeg
from neardup.core.discovery import image_extensions
from neardup.core.hashing import (
    Recipe,
    describe_failure,
    enable_optional_formats,
    hash_decoded_and_mirror,
    hash_file,
    hash_source,
    is_low_information,
)
from neardup.core.names import one_line, printable, shown_path
from neardup.errors import ImageError, install_hint

from . import hostile_images as zoo
from .conftest import PROJECT_ROOT

DEFAULT = Recipe()


def distance_to_reference(tmp: Path, path: Path, recipe: Recipe = DEFAULT) -> int:
    return hash_file(str(path), recipe).distance(hash_file(str(zoo.reference(tmp)), recipe))


class TestColourModesAndFormats:
    @pytest.mark.parametrize("maker", [zoo.cmyk_jpeg, zoo.grayscale_jpeg, zoo.progressive_jpeg,
                                       zoo.palette_png, zoo.sixteen_bit_png, zoo.avif,
                                       zoo.cielab_tiff],
                             ids=lambda maker: maker.__name__)
    def test_hashes_like_the_rgb_picture(self, tmp_path: Path, maker) -> None:  # type: ignore[no-untyped-def]
        assert distance_to_reference(tmp_path, maker(tmp_path)) <= 4

    def test_lossless_containers_hash_identically(self, tmp_path: Path) -> None:
        for path in zoo.lossless_variants(tmp_path):
            limit = 4 if path.suffix == ".gif" else 0  # GIF keeps only 256 colours
            assert distance_to_reference(tmp_path, path) <= limit, path.name

    def test_one_bit_images_hash_without_error(self, tmp_path: Path) -> None:
        value = hash_file(str(zoo.one_bit_png(tmp_path)), DEFAULT)
        assert not is_low_information(value)


# Every mode Pillow has. TIFFs carry most of them (Pillow writes all but "La", "RGBa", "HSV",
# "I;16L" and "I;16N"; "La" is a TIFF with premultiplied alpha); the others reach hashing and the
# features as a PIL image given to the Python API.
ALL_MODES = ["1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
             "LAB", "HSV", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"]
TIFF_MODES = ["1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I", "F",
              "I;16", "I;16B"]
# Each preprocessing version and each way the bits are taken from its picture.
EVERY_RECIPE = [Recipe(), Recipe(preprocess_version=3), Recipe(preprocess_version=2),
                Recipe(preprocess_version=1), Recipe("phash", 8), Recipe("whash", 8),
                Recipe("ahash", 8, preprocess_version=2)]
# Modes plain ImageHash cannot convert to gray, so --exact cannot hash them.
NOT_EXACT = {"LAB": "unsupported colour mode LAB with --exact (plain ImageHash cannot read it)",
             "La": "unsupported colour mode La with --exact (plain ImageHash cannot read it)"}


def mode_tiff(tmp: Path, mode: str) -> Path:
    if mode == "La":
        return zoo.premultiplied_gray_tiff(tmp)
    path = tmp / f"{mode.replace(';', '_')}.tif"
    zoo.in_mode(mode).save(path)
    return path


class TestEveryColourMode:
    """A review: a CIELab TIFF (Photoshop's) made every conversion to gray raise ValueError, which
    nothing turned into a refusal: index.py's whole run died with a traceback at every run, the
    --stdin checker died, --serve answered 500."""

    def test_a_tiff_in_any_mode_is_hashed_and_its_features_read(self, tmp_path: Path) -> None:
        from neardup.features.extract import read_frame

        for mode in TIFF_MODES:
            path = mode_tiff(tmp_path, mode)
            with Image.open(path) as opened:
                assert opened.mode == mode
            for recipe in EVERY_RECIPE:
                plain, flipped = hash_source(str(path), recipe, mirror=True)
                assert flipped is not None and plain.bits == recipe.bits
            assert read_frame(str(path)).shape[:2] == (120, 160), mode
            if mode in NOT_EXACT:
                with pytest.raises(ImageError) as refused:
                    hash_source(str(path), Recipe(exact=True), mirror=True)
                assert str(refused.value) == f"{path}: {NOT_EXACT[mode]}"
            else:
                hash_source(str(path), Recipe(exact=True), mirror=True)

    def test_a_pil_image_in_any_mode_is_hashed_and_seen_by_the_features(self) -> None:
        from neardup.features.extract import analysis_frame

        for mode in ALL_MODES:
            image = zoo.in_mode(mode)
            for recipe in EVERY_RECIPE:
                hash_decoded_and_mirror(image, recipe)
            assert analysis_frame(image).shape[:2] == (120, 160), mode

    def test_a_cielab_picture_is_seen_in_colour_else_by_its_lightness(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """In sRGB through Pillow's colour management (littlecms), so it hashes like the same
        picture in RGB and the features compare its colours; where that is missing, its
        lightness band in gray."""
        from PIL import ImageCms

        from neardup.features.extract import read_frame

        path = zoo.cielab_tiff(tmp_path)
        reference = str(zoo.reference(tmp_path))
        assert hash_file(str(path), DEFAULT).distance(hash_file(reference, DEFAULT)) <= 1
        frame = read_frame(str(path)).astype(np.int16)
        original = np.asarray(zoo.picture(), dtype=np.int16)
        assert frame.shape == original.shape and np.abs(frame - original).mean() < 2

        def unavailable(*args: object, **kwargs: object) -> None:
            raise ImageCms.PyCMSError("no colour management here")

        monkeypatch.setattr(ImageCms, "buildTransform", unavailable)
        assert not is_low_information(hash_file(str(path), DEFAULT))
        with Image.open(path) as opened:
            lightness = np.asarray(opened.getchannel("L"))
        assert np.array_equal(read_frame(str(path)), lightness)  # gray: no colour to compare

    def test_a_mode_no_conversion_is_known_for_is_refused_in_one_line(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A mode a newer Pillow or a plug-in may bring, whose conversions are unknown here, is
        refused from the header, not left to raise midway (CMYK stands for it here)."""
        from neardup.features.extract import read_frame

        path = mode_tiff(tmp_path, "CMYK")
        monkeypatch.setattr(hashing, "COLOUR_MODES", hashing.COLOUR_MODES - {"CMYK"})
        for read in (lambda: hash_source(str(path), DEFAULT, mirror=True),
                     lambda: read_frame(str(path))):
            with pytest.raises(ImageError) as refused:
                read()
            assert str(refused.value) == f"{path}: unsupported colour mode CMYK"


class TestTransparency:
    def test_premultiplied_alpha_hashes_as_straight_alpha(self, tmp_path: Path) -> None:
        straight = zoo.with_hidden_colour(tmp_path, "LA", seed=1)
        with Image.open(straight) as opened:
            premultiplied = zoo.premultiplied_gray_tiff(tmp_path, opened.convert("RGBA"))
        assert hash_file(str(premultiplied), DEFAULT) == hash_file(str(straight), DEFAULT)

    @pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
    def test_colour_under_alpha_zero_does_not_change_the_hash(self, tmp_path: Path, mode: str) -> None:
        first = zoo.with_hidden_colour(tmp_path, mode, seed=1)
        second = zoo.with_hidden_colour(tmp_path, mode, seed=2)
        assert hash_file(str(first), DEFAULT) == hash_file(str(second), DEFAULT)

    def test_a_transparency_table_longer_than_the_palette_is_ignored_as_libpng_does(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        # A review: 300 alpha entries for 16 colours raised ValueError when the picture was put
        # on white, a traceback that ended index.py, -q and --stdin.
        broken = zoo.palette_png_with_alphas(tmp_path / "broken.png", bytes(300))
        opaque = zoo.palette_png_with_alphas(tmp_path / "opaque.png", b"\xff" * 16)
        assert hash_file(str(broken), DEFAULT) == hash_file(str(opaque), DEFAULT)
        assert hash_file(str(broken), Recipe(exact=True)) == hash_file(str(opaque), Recipe(exact=True))
        # A table no longer than the palette still counts: transparent pixels show white.
        clear = zoo.palette_png_with_alphas(tmp_path / "clear.png", bytes(16))
        assert hash_file(str(clear), DEFAULT) != hash_file(str(opaque), DEFAULT)
        with warnings.catch_warnings():
            # --exact: as plain ImageHash, which leaves the table out, but without Pillow's
            # warning about it (two lines on stderr per such PNG with -q and --stdin)
            warnings.simplefilter("error")
            assert hash_file(str(clear), Recipe(exact=True)) == hash_file(str(opaque), Recipe(exact=True))
        folder = tmp_path / "images"
        folder.mkdir()
        broken.rename(folder / "broken.png")
        zoo.reference(folder)
        store = str(tmp_path / "db.shelve")
        assert index_cli.main(["-d", str(folder), "-s", store, "-q", "-j", "1", "--features"]) == 0
        assert "broken.png" not in capsys.readouterr().err
        assert search_cli.main(["-s", store, "-q", str(folder / "broken.png")]) == 0
        assert "broken.png" in capsys.readouterr().out


def test_a_float_picture_holding_nan_hashes_without_a_warning(tmp_path: Path) -> None:
    # A hostile review: NaN samples put numpy's "invalid value encountered in cast" on stderr
    # for every upload (past the checker's log limit), and the hash was undefined.
    samples = np.asarray(zoo.picture().convert("L"), dtype=np.float32)
    samples[:4, :4] = np.nan
    samples[-4:, -4:] = np.inf
    path = tmp_path / "nan.tif"
    Image.fromarray(samples, "F").save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hashed = hash_file(str(path), DEFAULT)
    as_shown = np.nan_to_num(samples, nan=0.0, posinf=255.0)
    plain = tmp_path / "plain.png"
    Image.fromarray(np.clip(as_shown, 0, 255).astype(np.uint8)).save(plain)
    assert hashed == hash_file(str(plain), DEFAULT)


class TestFirstFrame:
    @pytest.mark.parametrize("extension", ["gif", "webp", "png", "tiff"])
    def test_animations_and_multi_page_files_hash_their_first_frame(
        self, tmp_path: Path, extension: str
    ) -> None:
        moving = zoo.animated(tmp_path, extension)
        still = zoo.single_frame(tmp_path, extension)
        assert hash_file(str(moving), DEFAULT) == hash_file(str(still), DEFAULT)
        assert hash_file(str(moving), Recipe(exact=True)) == hash_file(str(still), Recipe(exact=True))


class TestLowInformation:
    @pytest.mark.parametrize("colour", [(255, 255, 255), (200, 10, 10)], ids=["white", "red"])
    def test_blank_images_are_flagged_under_every_algorithm(
        self, tmp_path: Path, colour: tuple[int, int, int]
    ) -> None:
        path = zoo.blank(tmp_path, "blank.png", colour)
        for algorithm in ("dhash", "phash", "ahash", "whash"):
            assert is_low_information(hash_file(str(path), Recipe(algorithm)))

    @pytest.mark.parametrize(("horizontal", "rising"), [(True, True), (True, False), (False, True)],
                             ids=["rising", "falling", "vertical"])
    def test_smooth_gradients_are_flagged_under_dhash(
        self, tmp_path: Path, horizontal: bool, rising: bool
    ) -> None:
        # dHash compares neighbours, so a ramp gives all ones or all zeros; aHash and pHash give a
        # half-and-half pattern instead, which is no more likely to collide than a photo's.
        path = zoo.gradient(tmp_path, "ramp.png", horizontal=horizontal, rising=rising)
        assert is_low_information(hash_file(str(path), DEFAULT))

    def test_a_photo_is_not_flagged(self, tmp_path: Path) -> None:
        assert not is_low_information(hash_file(str(zoo.reference(tmp_path)), DEFAULT))

    def test_blanks_do_not_match_each_other_unless_asked(
        self, in_tmp: Path, capsys: pytest.CaptureFixture
    ) -> None:
        images = in_tmp / "images"
        images.mkdir()
        zoo.blank(images, "white.png", (255, 255, 255))
        zoo.blank(images, "black.png", (0, 0, 0))
        zoo.reference(images)
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        assert "2 low-information" in capsys.readouterr().out

        zoo.blank(in_tmp, "grey.png", (128, 128, 128))
        assert search_cli.main(["-s", "db.shelve", "-q", "grey.png", "--json"]) == 1
        captured = capsys.readouterr()
        (record,) = json.loads(captured.out)
        assert record["low_information"] is True and record["matches"] == []
        assert "low-information image" in captured.err

        assert search_cli.main(["-s", "db.shelve", "-q", "grey.png",
                                "--include-low-information"]) == 0
        listed = sorted(line.split("\t")[1] for line in capsys.readouterr().out.splitlines())
        assert listed == ["images/black.png", "images/white.png"]

        # A real photo never lists the blanks, even at a generous distance.
        search_cli.main(["-s", "db.shelve", "-q", "images/reference.png", "-m", "64"])
        assert "black" not in capsys.readouterr().out


def heif_plugin_installed() -> bool:
    return "heif" in enable_optional_formats()


class TestHeic:
    @pytest.mark.skipif(not heif_plugin_installed(), reason="pillow-heif (requirements-heic.txt)"
                        " is not installed")
    def test_heic_photos_hash_like_the_picture_with_the_plug_in(self, tmp_path: Path) -> None:
        path = tmp_path / "photo.heic"
        zoo.picture().save(path, quality=95)
        assert distance_to_reference(tmp_path, path) <= 4
        assert ".heic" in image_extensions()

    @pytest.mark.skipif(heif_plugin_installed(), reason="pillow-heif is installed, so HEIC is read")
    def test_heic_without_the_plug_in_says_so(self, tmp_path: Path) -> None:
        with pytest.raises(ImageError, match="unsupported format: HEIC .*pillow-heif"):
            hash_file(str(zoo.heic_lookalike(tmp_path)), DEFAULT)

    def test_the_reason_names_the_format_and_the_remedy(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from neardup.core import hashing

        error = UnidentifiedImageError("cannot identify")
        path = zoo.heic_lookalike(tmp_path)
        monkeypatch.setattr(hashing, "readable_formats", lambda: ("JPEG", "PNG"))
        assert describe_failure(str(path), error) == (
            "unsupported format: HEIC (the pillow-heif plug-in reads it:"
            f" {install_hint('heic')})")
        # With the plug-in, a file it cannot read is damaged; installing it again would not help.
        monkeypatch.setattr(hashing, "readable_formats", lambda: ("JPEG", "PNG", "HEIF"))
        assert describe_failure(str(path), error) == (
            "damaged HEIC file (the pillow-heif plug-in cannot read it)")

    def test_a_reason_is_one_line_whatever_the_decoder_said(self, tmp_path: Path) -> None:
        error = ValueError("Invalid input: Unexpected end of file\n(points to file position 416)\n)")
        assert describe_failure(str(tmp_path / "x.heic"), error) == (
            "cannot decode image (ValueError: Invalid input: Unexpected end of file (points to"
            " file position 416) ))")

    def test_heic_files_are_reported_not_passed_over_without_the_plug_in(
            self, in_tmp: Path, capsys: pytest.CaptureFixture,
            monkeypatch: pytest.MonkeyPatch) -> None:
        # Without pillow-heif, Pillow registers no .heic extension: the walk passed such files
        # over like a manifest.csv, so a folder of iPhone photos indexed nothing and said nothing.
        from neardup.core import discovery, hashing

        monkeypatch.setattr(discovery, "readable_formats", lambda: ("JPEG", "PNG"))
        monkeypatch.setattr(hashing, "readable_formats", lambda: ("JPEG", "PNG"))
        discovery.image_extensions.cache_clear()
        try:
            assert {".heic", ".heif", ".avif"} <= discovery.image_extensions()
            os.makedirs("photos")
            zoo.heic_lookalike(Path("photos"))
            zoo.picture().save("photos/other.jpg")
            assert index_cli.main(["-d", "photos", "-s", "db.shelve", "-q", "-j", "1"]) == 0
            captured = capsys.readouterr()
            # The same words as every other missing extra: the command that installs it.
            assert (f"photos/photo.heic: unsupported format: HEIC (the pillow-heif plug-in reads"
                    f" it: {install_hint('heic')})") in captured.err
            assert "failed 1" in captured.out
        finally:
            discovery.image_extensions.cache_clear()

    def test_a_broken_heic_is_refused_either_way(self, tmp_path: Path) -> None:
        with pytest.raises(ImageError):
            hash_file(str(zoo.heic_lookalike(tmp_path)), DEFAULT)


def test_a_damaged_avif_and_formats_not_read_are_named_as_such(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: a truncated AVIF was blamed on a Pillow that reads AVIF, and a PPM (a format
    Pillow reads, neardup does not) was called "a format Pillow cannot read"."""
    from neardup.core import hashing

    error = UnidentifiedImageError("cannot identify")
    avif_head = b"\x00\x00\x00\x1cftypavif" + bytes(16)
    monkeypatch.setattr(hashing, "readable_formats", lambda: ("JPEG", "MPO", "PNG", "WEBP"))
    assert describe_failure("cut.avif", error, avif_head) == (
        "unsupported format: AVIF (this Pillow was built without AVIF support)")
    assert describe_failure("x.bin", error, b"not an image at all") == (
        "not an image, or a format neardup does not read (it reads JPEG, PNG and WebP)")
    monkeypatch.setattr(hashing, "readable_formats", lambda: ("JPEG", "PNG", "AVIF"))
    assert describe_failure("cut.avif", error, avif_head) == (
        "damaged AVIF file (Pillow cannot read it)")
    monkeypatch.undo()
    zoo.picture().save(tmp_path / "photo.ppm")
    with pytest.raises(ImageError, match=r"unsupported format: Netpbm PBM/PGM/PPM \(not read\)"):
        hash_file(str(tmp_path / "photo.ppm"), DEFAULT)
    if "AVIF" in hashing.readable_formats():
        zoo.picture().save(tmp_path / "photo.avif")
        data = (tmp_path / "photo.avif").read_bytes()
        (tmp_path / "cut.avif").write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageError, match="damaged AVIF file"):
            hash_file(str(tmp_path / "cut.avif"), DEFAULT)


def test_an_avif_is_refused_where_its_coded_picture_is_larger_than_it_declares(
        tmp_path: Path) -> None:
    """A review: a 3 KB AVIF whose ispe box declared 64 x 64 held a 16000 x 16000 picture; Pillow
    reported 64 x 64, so it passed the pixel limit and the checker's memory budget, and libavif
    decoded it whole (1 GB each). Here a 1,024 x 1,024 picture declares 64 x 64 (the same lie,
    smaller), and an AVIF whose sequence header cannot be found is damaged."""
    if "AVIF" not in hashing.readable_formats():
        pytest.skip("this Pillow reads no AVIF")
    honest = tmp_path / "honest.avif"
    Image.new("RGB", (1024, 1024), (10, 20, 30)).save(honest, quality=10, speed=10)
    data = bytearray(honest.read_bytes())
    at = data.find(b"ispe")
    assert struct.unpack_from(">II", data, at + 8) == (1024, 1024)
    struct.pack_into(">II", data, at + 8, 64, 64)
    (tmp_path / "lies.avif").write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"refused: its coded pictures \(1, the largest 1024 x"
                                         r" 1024 pixels\) are far larger than the 64 x 64 it"
                                         r" declares"):
        hash_file(str(tmp_path / "lies.avif"), DEFAULT)
    data[8:12] = b"mif1"  # another major brand Pillow's AVIF plug-in takes
    (tmp_path / "lies-mif1.avif").write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"the largest 1024 x 1024 pixels\) are far larger"):
        hash_file(str(tmp_path / "lies-mif1.avif"), DEFAULT)
    # Frames in a track: not read (their sizes are not checked before decoding).
    frames = [Image.new("RGB", (128, 96), (40 * number, 0, 0)) for number in range(3)]
    frames[0].save(tmp_path / "moving.avif", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="refused: an AVIF image sequence"):
        hash_file(str(tmp_path / "moving.avif"), DEFAULT)
    # Honest pictures, with and without transparency, odd sizes among them, are hashed.
    for size, mode in (((1024, 1024), "RGB"), ((301, 17), "RGB"), ((64, 48), "RGBA")):
        path = tmp_path / f"{size[0]}-{mode}.avif"
        zoo.picture().convert(mode).resize(size).save(path)
        assert hash_file(str(path), DEFAULT).bits == 64
    hash_file(str(honest), DEFAULT)
    # The sequence header's first byte made into another kind of OBU: nothing says the size.
    data = bytearray(honest.read_bytes())
    mdat = data.find(b"mdat") + 4
    header_at = data.index(bytes([0x0A]), mdat)  # obu_type 1, has_size_field
    data[header_at] = 0x7A  # obu_type 15, padding
    (tmp_path / "hidden.avif").write_bytes(bytes(data))
    with pytest.raises(ImageError, match="damaged AVIF file"):
        hash_file(str(tmp_path / "hidden.avif"), DEFAULT)


def test_an_avif_hiding_its_size_behind_a_first_small_sequence_header_is_refused(
        tmp_path: Path) -> None:
    """A second review: the picture's data began with a sequence header saying 64 x 64 (as its
    ispe did) and went on with one saying 16000 x 16000, which the decoder takes; only the first
    was read. Every sequence header of every AV1 item counts now."""
    if "AVIF" not in hashing.readable_formats():
        pytest.skip("this Pillow reads no AVIF")
    from neardup.core import avif

    def encoded(size: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (size, size), (10, 20, 30)).save(buffer, "AVIF", quality=10, speed=10)
        return buffer.getvalue()

    def item(data: bytes) -> tuple[int, int, int]:
        """(where the iloc box's body starts, the item's offset, its length): one extent."""
        meta = next((start + 4, end) for kind, start, end in avif._boxes(
            io.BytesIO(data), 0, len(data)) if kind == b"meta")
        iloc = next(start for kind, start, _ in avif._boxes(io.BytesIO(data), *meta)
                    if kind == b"iloc")
        [(offset, length)] = next(iter(avif._locations(data[iloc:]).values()))[1]
        return iloc, offset, length

    small, large = encoded(64), encoded(512)
    _, offset, length = item(small)
    small_header = next(obu for obu in _obus(small[offset:offset + length]) if obu[0] >> 3 == 1)
    iloc, offset, length = item(large)
    assert bytes([large[iloc]]) == b"\0" and large[iloc + 4] == 0x44  # version 0, 4-byte fields
    data = bytearray(large[:offset] + small_header + large[offset:])
    at = data.find(b"ispe")
    struct.pack_into(">II", data, at + 8, 64, 64)
    # The extent's length (iloc v0: item_count, item_ID, data_reference_index, extent_count,
    # offset, then length), and the mdat box around the item.
    struct.pack_into(">I", data, iloc + 18, length + len(small_header))
    mdat = data.find(b"mdat") - 4
    struct.pack_into(">I", data, mdat, struct.unpack_from(">I", data, mdat)[0] + len(small_header))
    (tmp_path / "second.avif").write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"largest 512 x 512 pixels\) are far larger than the 64"
                                         r" x 64"):
        hash_file(str(tmp_path / "second.avif"), DEFAULT)


def _obus(data: bytes) -> list[bytes]:
    """The OBUs of an AV1 stream whose OBUs all carry their size."""
    found = []
    position = 0
    while position < len(data):
        start = position
        position += 1 + ((data[position] >> 2) & 1)
        size = shift = 0
        while True:
            byte = data[position]
            position += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        position += size
        found.append(data[start:position])
    return found


def test_avifs_damaged_anywhere_are_an_image_error_never_a_crash(tmp_path: Path) -> None:
    """The AVIF check parses boxes and bits a stranger wrote: 300 copies of a picture with bytes
    changed at random in its header and first coded bytes are each hashed or refused in one
    line (ImageError), nothing else."""
    if "AVIF" not in hashing.readable_formats():
        pytest.skip("this Pillow reads no AVIF")
    path = tmp_path / "picture.avif"
    zoo.picture().save(path, quality=30, speed=10)
    original = path.read_bytes()
    mdat = original.find(b"mdat")
    rng = np.random.default_rng(11)
    outcomes = {"hashed": 0, "refused": 0}
    for number in range(300):
        data = bytearray(original)
        for _ in range(int(rng.integers(1, 6))):
            at = int(rng.integers(0, min(len(data), mdat + 64)))
            data[at] = int(rng.integers(0, 256))
        damaged = tmp_path / f"{number}.avif"
        damaged.write_bytes(bytes(data))
        try:
            hash_file(str(damaged), DEFAULT)
            outcomes["hashed"] += 1
        except ImageError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == 300, outcomes


class TestRefused:

    @pytest.mark.parametrize("keep", [20, 200])
    def test_a_truncated_webp_is_said_as_such(self, tmp_path: Path, keep: int) -> None:
        """A review: a WebP cut short said "cannot decode image (OSError: could not create
        decoder object)", where every other format says "truncated image"."""
        buffer = io.BytesIO()
        zoo.picture().save(buffer, "WEBP", quality=80)
        (tmp_path / "cut.webp").write_bytes(buffer.getvalue()[:keep])
        with pytest.raises(ImageError) as refused:
            hash_file(str(tmp_path / "cut.webp"), DEFAULT)
        assert refused.value.reason in ("truncated or damaged WebP file", "truncated image")

    def test_a_tiff_tile_far_larger_than_its_picture_is_refused(self, tmp_path: Path) -> None:
        """A hostile review: a 783 KB TIFF of 256 x 256 pixels in one 16384 x 16384 deflate
        tile made libtiff allocate the whole tile (843 MB) to decode it, in index.py as in the
        checker, whose memory budget counts pixels."""
        bomb = zoo.tiled_tiff(tmp_path / "bomb.tif", 256, 8192, zlib.compress(bytes(1024)))
        with pytest.raises(ImageError, match="refused: a TIFF of 256 x 256 pixels in tiles of"
                                             " 8192 x 8192"):
            hash_file(str(bomb), DEFAULT)
        # Tiles somewhat larger than a small picture, as writers make them, are read.
        hash_file(str(zoo.tiled_tiff(tmp_path / "small.tif", 100, 256)), DEFAULT)
        hash_file(str(zoo.tiled_tiff(tmp_path / "one.tif", 1000, 1024)), DEFAULT)

    @pytest.mark.parametrize(("tile_type", "doubled"), [(9, False), (3, False), (4, True)])
    def test_a_huge_tile_is_refused_however_its_size_is_written(
            self, tmp_path: Path, tile_type: int, doubled: bool) -> None:
        """A review of the refusal above: tile sizes typed SLONG (libtiff takes any integer
        type), or given twice with the huge one first (libtiff keeps the first), were decoded as
        16384-pixel tiles: 293 MB for one gray picture of 256 x 256."""
        bomb = zoo.tiled_tiff(tmp_path / "bomb.tif", 256, 8192, zlib.compress(bytes(1024)),
                              tile_type=tile_type, doubled=doubled)
        with pytest.raises(ImageError, match="refused: a TIFF of 256 x 256 pixels in tiles of"
                                             " 8192 x 8192"):
            hash_file(str(bomb), DEFAULT)

    @pytest.mark.parametrize("big_tiff", [False, True])
    def test_a_tiff_of_too_many_strips_is_refused_before_pillow_parses_it(
            self, tmp_path: Path, big_tiff: bool) -> None:
        """4 million one-row strips (32 MB, 4 megapixels) took 1.5 GB and 44 s in Pillow's
        header before a pixel was decoded; the checker's memory budget counts pixels."""
        def strips(rows: int) -> Path:
            path = tmp_path / f"{rows}.tif"
            Image.fromarray(np.random.default_rng(rows).integers(0, 255, (rows, 4), np.uint8)
                            ).save(path, "TIFF", tiffinfo={278: 1}, big_tiff=big_tiff)
            return path

        with pytest.raises(ImageError, match="refused: a TIFF of more than 65,536 strips"):
            hash_file(str(strips(70_000)), DEFAULT)
        hash_file(str(strips(60_000)), DEFAULT)  # a tall scan with one row per strip is read
        # Pillow unpacks every value of a tag it knows: 3.5 million rationals in XResolution
        # took 600 MB and 10 s before a pixel was decoded.
        many = zoo.tiff_with_entry(tmp_path / "xres.tif", 282, 5, struct.pack("<II", 72, 1)
                                   * 300_000, 300_000)
        with pytest.raises(ImageError, match="refused: a TIFF whose tag 282 holds 300,000 values"):
            hash_file(str(many), DEFAULT)
        # Two values where one is expected: Pillow warns, two lines on stderr per file (the
        # checker's log limit did not hold them back).
        warned = zoo.tiff_with_entry(tmp_path / "two.tif", 282, 5, struct.pack("<IIII", 72, 1,
                                                                              72, 1), 2)
        run = subprocess.run([sys.executable, "-c", "import sys; from neardup.core.hashing"
                              " import hash_file, Recipe; print(hash_file(sys.argv[1], Recipe()))",
                              str(warned)], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
        assert run.returncode == 0 and run.stderr == "", run.stderr
        if importlib.util.find_spec("cv2") is not None:  # the features' decode too
            from neardup.features.extract import read_frame

            with pytest.raises(ImageError, match="refused: a TIFF of more than 65,536 strips"):
                read_frame(str(strips(70_000)))

    def test_a_png_of_millions_of_chunks_is_refused_before_pillow_walks_them(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Pillow walks a PNG's chunks one at a time in Python: 32 MiB of empty chunks (2.8
        million) before or after the image data took 8 s of CPU to hash, one-byte IDATs as long.
        Refused from a count of them, on every path: a file, one too large to read whole, an
        upload, the features' reading, and the size read to pick which duplicate to keep."""
        from neardup.core import hashing, png
        from neardup.service.checker import Checker

        reason = "refused: a PNG of more than 262,144 chunks"
        over = png.MAX_CHUNKS + 10
        for where in ("before", "after", "split"):
            bomb = zoo.chunk_bomb(tmp_path / f"{where}.png", over, where)
            with pytest.raises(ImageError, match=reason):
                hash_file(str(bomb), DEFAULT)
        bomb = tmp_path / "before.png"
        with monkeypatch.context() as patched:
            patched.setattr(hashing, "WHOLE_FILE_BYTES", 1_000)  # read through the open file
            patched.setattr(png, "READ_BYTES", 4_096)  # the count's window moves along it
            with pytest.raises(ImageError, match=reason):
                hash_file(str(bomb), DEFAULT)
        assert hashing.picture_size(str(bomb)) is None
        if importlib.util.find_spec("cv2") is not None:
            from neardup.features.extract import read_frame

            with pytest.raises(ImageError, match=reason):
                read_frame(str(bomb))
        images = tmp_path / "images"
        images.mkdir()
        plain = zoo.chunk_bomb(images / "plain.png", 0)
        store = str(tmp_path / "db.shelve")
        assert index_cli.main(["-d", str(images), "-s", store, "-q", "-j", "1"]) == 0
        with Checker(store) as checker:
            assert reason in checker.check_upload(bomb.read_bytes())["error"]
        # A PNG of many chunks, but fewer (a 100-megapixel picture of noise written by libpng,
        # in IDATs of 8 KB, has about 98,000) is hashed as before, on both reading paths.
        many = zoo.chunk_bomb(tmp_path / "many.png", 100_000, "split")
        expected = hash_file(str(plain), DEFAULT)
        assert hash_file(str(many), DEFAULT) == expected
        with monkeypatch.context() as patched:
            patched.setattr(hashing, "WHOLE_FILE_BYTES", 1_000)
            patched.setattr(png, "READ_BYTES", 4_096)
            assert hash_file(str(many), DEFAULT) == expected
        # The count stops past its limit, and counts the same whatever its window.
        with bomb.open("rb") as stream:
            assert png.chunk_count(stream, stop_after=10) == 11
        whole = png.chunk_count(many.open("rb"))
        assert whole == 100_002  # IHDR and IEND too
        for size in (8, 13, 100, 4_096):
            monkeypatch.setattr(png, "READ_BYTES", size)
            with many.open("rb") as stream:
                assert png.chunk_count(stream) == whole

    def test_a_decompression_bomb_is_refused_from_its_header(self, tmp_path: Path) -> None:
        bomb = zoo.png_bomb(tmp_path)
        assert bomb.stat().st_size < 1000
        # 2,500 megapixels: Pillow itself refuses it while reading the header, whatever our limit.
        with pytest.raises(ImageError, match="refused as a decompression bomb: 50000 x 50000"
                                             " pixels is over Pillow's limit of 178,956,970"):
            hash_file(str(bomb), DEFAULT, max_pixels=10**10)

    @pytest.mark.parametrize("chunk", ["zTXt", "iCCP"])
    def test_a_chunk_that_inflates_past_pillows_limit_is_said_in_our_words(
            self, tmp_path: Path, chunk: str) -> None:
        """2 KB of PNG whose compressed text (or colour profile) inflates to 2 MB: Pillow refuses
        it, and the line named Pillow's constant (a review)."""
        from PIL import PngImagePlugin

        path = tmp_path / "chatty.png"
        picture = Image.new("RGB", (64, 48), "red")
        if chunk == "zTXt":
            info = PngImagePlugin.PngInfo()
            info.add_text("Comment", "a" * 2**21, zip=True)
            picture.save(path, pnginfo=info)
        else:
            picture.save(path, icc_profile=b"\0" * 2**21)
        assert path.stat().st_size < 10_000
        with pytest.raises(ImageError, match=r"chatty.png: refused: a text or colour-profile"
                                             r" chunk in it inflates past Pillow's limit of 1 MB"):
            hash_file(str(path), DEFAULT)

    def test_our_pixel_limit_refuses_from_the_header(self, tmp_path: Path) -> None:
        bomb = zoo.png_bomb(tmp_path, 9000, 9000)  # 81 megapixels in a few hundred bytes
        with pytest.raises(ImageError, match="9000 x 9000 pixels is over the limit of 1,000,000"):
            hash_file(str(bomb), DEFAULT, max_pixels=1_000_000)

    def test_a_bomb_in_a_folder_is_one_line_and_the_run_goes_on(
        self, in_tmp: Path, capsys: pytest.CaptureFixture
    ) -> None:
        images = in_tmp / "images"
        images.mkdir()
        zoo.png_bomb(images, 9000, 9000)
        zoo.reference(images)
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1",
                               "--max-pixels", "1000000"]) == 0
        captured = capsys.readouterr()
        assert "images/bomb.png: refused: 9000 x 9000 pixels is over the limit" in captured.err
        assert "indexed 1, unchanged 0, removed 0, failed 1" in captured.out

    def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding(
        self, in_tmp: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each scan of a progressive JPEG is a pass over the whole picture: 5,000 scans of a few
        dozen bytes each took seconds to decode (100,000 in 3.4 MB: 28 s, on the checker's event
        loop). Refused from the count, on every path: the fast decoder's, Pillow's, a file too
        large to read in one piece, and the features' reading."""
        from neardup.core import hashing

        images = in_tmp / "images"
        images.mkdir()
        bomb = zoo.scan_bomb(images)
        zoo.reference(images)
        assert bomb.stat().st_size < 300_000
        reason = "refused: a JPEG of more than 256 scans"
        with pytest.raises(ImageError, match=reason):
            hash_file(str(bomb), DEFAULT)
        with monkeypatch.context() as patched:
            patched.setattr(hashing, "WHOLE_FILE_BYTES", 1_000)  # read through the open file
            with pytest.raises(ImageError, match=reason):
                hash_file(str(bomb), DEFAULT)
        if importlib.util.find_spec("cv2") is not None:
            from neardup.features.extract import read_frame

            with pytest.raises(ImageError, match=reason):
                read_frame(str(bomb))
        started = time.perf_counter()
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        assert time.perf_counter() - started < 5
        captured = capsys.readouterr()
        assert "images/scans.jpg: refused: a JPEG of more than 256 scans" in captured.err
        assert "indexed 1, unchanged 0, removed 0, failed 1" in captured.out
        # A real progressive photo (about ten scans) is hashed as before.
        hash_file(str(zoo.progressive_jpeg(in_tmp)), DEFAULT)

    def test_scans_are_counted_as_a_large_file_is_read_not_from_a_copy_in_memory(
        self, tmp_path: Path
    ) -> None:
        """A progressive JPEG followed by 1 GiB of zeros (a sparse file: 32 KB on disk) was read
        whole to count its scans: 1.1 GB of memory for one query, 2.1 GB at 2 GiB."""
        from neardup.service.checker import Checker

        images = tmp_path / "images"
        images.mkdir()
        photo = zoo.progressive_jpeg(images)
        store = str(tmp_path / "db.shelve")
        assert index_cli.main(["-d", str(images), "-s", store, "-q", "-j", "1"]) == 0
        expected = hash_file(str(photo), DEFAULT)
        os.truncate(photo, 64 * 2**20)
        with Checker(store) as checker:
            assert checker.check_file(str(photo))["hash"] == expected.hex()  # the store loaded
            tracemalloc.start()
            try:
                assert hash_file(str(photo), DEFAULT) == expected  # index.py and search.py -q
                assert checker.check_file(str(photo))["hash"] == expected.hex()  # --stdin
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        assert peak < 8 * 2**20
        # Counted in pieces, a scan's marker or header split between two of them counts the same.
        whole = photo.read_bytes()[:50_000]
        for size in (1, 2, 3, 100, 517):
            pieces = (whole[start : start + size] for start in range(0, len(whole), size))
            assert jpeg.scan_tally(pieces) == jpeg.scan_tally((whole,))

    def test_scans_are_counted_in_every_frame_but_huffman_sequential_and_in_mpo(
        self, tmp_path: Path
    ) -> None:
        """A review got past a count made only in progressive JPEGs: arithmetic-coded sequential
        scans (58 KB, 15 s to decode), the same bomb behind an MPO block (Pillow opens it as MPO,
        not JPEG: 6 s), and fewer scans over a far larger picture (251 over 100 megapixels in
        4.7 KB: 3.7 s)."""
        reason = "refused: a JPEG of more than 256 scans"
        with pytest.raises(ImageError, match=reason):
            hash_file(str(zoo.sequential_scan_bomb(tmp_path)), DEFAULT)
        # Huffman-coded sequential too, where its first scan leaves components to later ones.
        with pytest.raises(ImageError, match=reason):
            hash_file(str(zoo.partial_first_scan_bomb(tmp_path)), DEFAULT)
        wrapped = zoo.mpo_wrapped(tmp_path, zoo.scan_bomb(tmp_path))
        with Image.open(wrapped) as opened:
            assert opened.format == "MPO"
        with pytest.raises(ImageError, match=reason):
            hash_file(str(wrapped), DEFAULT)
        wide = tmp_path / "wide.jpg"  # 250 scans (fewer than 256) over 49 megapixels
        wide.write_bytes(zoo.repeated_scan(7000, 245))
        with pytest.raises(ImageError, match=r"refused: a JPEG of 25\d scans over 7000 x 7000"):
            hash_file(str(wide), DEFAULT)
        few = tmp_path / "few.jpg"  # the same number of scans over a small picture is decoded
        few.write_bytes(zoo.repeated_scan(600, 245))
        hash_file(str(few), DEFAULT)

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file; permissions cannot be tested")
    def test_an_unreadable_file(self, tmp_path: Path) -> None:
        path = zoo.reference(tmp_path)
        path.chmod(0)
        with pytest.raises(ImageError, match="permission denied"):
            hash_file(str(path), DEFAULT)

    def test_permission_errors_are_named(self) -> None:
        assert describe_failure("x.jpg", PermissionError(13, "Permission denied")) == "permission denied"


class TestAwkwardNames:

    def test_the_systems_errors_are_said_as_such_without_the_path(self, tmp_path: Path) -> None:
        (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
        (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
        with pytest.raises(ImageError) as loop:
            hash_file(str(tmp_path / "loop1"), DEFAULT)
        assert loop.value.reason == "cannot read (too many levels of symbolic links)"
        with pytest.raises(ImageError) as long_name:
            hash_file(str(tmp_path / ("a" * 300 + ".jpg")), DEFAULT)
        assert long_name.value.reason == "cannot read (file name too long)"
    def test_non_utf8_spaces_and_newlines(
        self, in_tmp: Path, capsysbinary: pytest.CaptureFixture
    ) -> None:
        images = in_tmp / "images"
        images.mkdir()
        picture = zoo.picture()
        names = [b"caf\xe9.png", b"with space.png", b"new\nline.png",
                 "B\u202egnp.exe.png".encode(),  # shows as "Bexe.png" reversed on a terminal
                 "zw\u200bsp.png".encode(), "no\u00a0break.png".encode()]  # as "zwsp.png", ...
        for name in names:
            picture.save(os.path.join(os.fsencode(images), name), format="PNG")
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        assert b"indexed 6" in capsysbinary.readouterr().out

        assert search_cli.main(["-s", "db.shelve", "-q", "images/with space.png"]) == 0
        lines = capsysbinary.readouterr().out.splitlines()
        assert len(lines) == 6, "one line per match, whatever the names hold"
        # The name's own bytes come back, as ls prints them; a newline is shown escaped, and so
        # is a character that would reverse the rest of the line on a terminal.
        assert b"0\timages/caf\xe9.png" in lines and b"0\timages/new\\nline.png" in lines
        assert b"0\timages/B\\u202egnp.exe.png" in lines
        # Nor does a name print as another: a zero-width or a no-break space shows (a review).
        assert b"0\timages/zw\\u200bsp.png" in lines and b"0\timages/no\\u00a0break.png" in lines

        assert search_cli.main(["-s", "db.shelve", "-q", "images/with space.png", "--json"]) == 0
        (record,) = json.loads(capsysbinary.readouterr().out)
        # A name that is not UTF-8 gives its exact bytes in relpath_base64 (relpath holds U+FFFD
        # for them, valid for strict JSON parsers).
        relpaths = sorted(base64.b64decode(match["relpath_base64"]) if "relpath_base64" in match
                          else match["relpath"].encode() for match in record["matches"])
        assert relpaths == sorted(names)


    @pytest.mark.parametrize(("name", "printed"), [
        ("zw\u200bsp.png", "zw\\u200bsp.png"),  # would print as "zwsp.png"
        ("zw\u200dsp.png", "zw\\u200dsp.png"),  # a joiner with nothing to join
        ("\u200dstart.png", "\\u200dstart.png"),
        ("no\u00a0break.png", "no\\u00a0break.png"),  # would print as "no break.png"
        ("x\U000e0067.png", "x\\U000e0067.png"),  # past U+FFFF: eight digits
        ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.png",  # Persian, with a ZWNJ
         "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.png"),
        ("\u0915\u094d\u200d\u0937.png", "\u0915\u094d\u200d\u0937.png"),  # Devanagari
        ("\U0001f468\u200d\U0001f469\u200d\U0001f467.png",  # an emoji family
         "\U0001f468\u200d\U0001f469\u200d\U0001f467.png"),
        ("\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f.png",
         "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f.png"),
        # A third review: kept after any letter, they printed "caf\u00e9" and "\u00e9" alike.
        ("caf\u00e9\u200d.png", "caf\u00e9\\u200d.png"),
        ("caf\u00e9\u200c.png", "caf\u00e9\\u200c.png"),
        ("\u00e9\U000e0061\U000e0062.png", "\u00e9\\U000e0061\\U000e0062.png"),
        # A fourth: other marks drawn as nothing, kept after ASCII ("a\ufe0f" printed as "a").
        ("a\ufe0f.png", "a\\ufe0f.png"),
        ("1\ufe0f.png", "1\\ufe0f.png"),
        ("caf\u00e9\ufe0e.png", "caf\u00e9\\ufe0e.png"),
        ("x\u034f.png", "x\\u034f.png"),
        ("\u3164.png", "\\u3164.png"),  # a Hangul filler, a letter drawn as nothing
        ("a\u2800b.png", "a\\u2800b.png"),  # a blank braille cell
        ("\u115f.png", "\\u115f.png"),
        ("\ufff0.png", "\\ufff0.png"),  # no character assigned
        # ... and kept where writing uses them: an emoji's picture form, a keycap, an
        # ideograph's variant, a Mongolian variant form, a syllable of conjoining jamo.
        ("\u2764\ufe0f.png", "\u2764\ufe0f.png"),
        ("1\ufe0f\u20e3.png", "1\ufe0f\u20e3.png"),
        ("\u8fbb\U000e0100.png", "\u8fbb\U000e0100.png"),
        ("\u1820\u180b.png", "\u1820\u180b.png"),
        ("\u2764\ufe0f\u200d\U0001f525.png", "\u2764\ufe0f\u200d\U0001f525.png"),
        ("\U0001f468\U0001f3fd\u200d\U0001f4bb.png", "\U0001f468\U0001f3fd\u200d\U0001f4bb.png"),
        ("\u0dc1\u0dca\u200d\u0dbb\u0dd3.png", "\u0dc1\u0dca\u200d\u0dbb\u0dd3.png"),  # Sinhala
        ("\u271d\ufe0f.png", "\u271d\ufe0f.png"),  # LATIN CROSS, an emoji whatever its name
        # A fifth review: still kept after any non-Latin character, they printed alike names
        # whose marks follow a combining accent, a Greek, Cyrillic or fullwidth letter, an
        # ideograph, another mark; a flag's tags with no cancel tag; a literal U+FFFD as a
        # terminal draws a byte that is not UTF-8.
        ("cafe\u0301\ufe0e.png", "cafe\u0301\\ufe0e.png"),
        ("\u03b1\ufe0f.png", "\u03b1\\ufe0f.png"),
        ("\u0430\ufe00.png", "\u0430\\ufe00.png"),
        ("\uff21\ufe0f.png", "\uff21\\ufe0f.png"),
        ("\u4e00\u034f.png", "\u4e00\\u034f.png"),
        ("\u4e00\u200d\u4e00.png", "\u4e00\\u200d\u4e00.png"),
        ("\u2764\ufe0f\ufe0f.png", "\u2764\ufe0f\\ufe0f.png"),
        ("1\ufe00\u20e3.png", "1\\ufe00\u20e3.png"),
        ("\u1100\u1161\u1160.png", "\u1100\u1161\\u1160.png"),
        ("\u115f\u1161.png", "\\u115f\u1161.png"),
        ("\U0001f3f4\U000e0061.png", "\U0001f3f4\\U000e0061.png"),
        ("\ufffd.jpg", "\\ufffd.jpg"),
        # A sixth: kept after ASCII symbols, any symbol, a letter of a joining script without a
        # virama, an escaped selector, an escape's own digit; flags of any tags.
        ("a+\ufe00b.jpg", "a+\\ufe00b.jpg"),
        ("\u0628\ufe00.jpg", "\u0628\\ufe00.jpg"),
        ("\u00a9\u200d\u00a9.jpg", "\u00a9\\u200d\u00a9.jpg"),
        ("\u00b0\ufe0f.jpg", "\u00b0\\ufe0f.jpg"),
        ("a\ufe0f\u200d\U0001f600.jpg", "a\\ufe0f\\u200d\U0001f600.jpg"),
        ("\u0915\u200d\u0916.jpg", "\u0915\\u200d\u0916.jpg"),
        ("\u0627\u200c\u0627.jpg", "\u0627\\u200c\u0627.jpg"),  # alef joins no letter after it
        ("\u2000\ufe0f\u20e3", "\\u2000\\ufe0f\u20e3"),
        ("\U0001f3f4\U000e0078\U000e0079\U000e007f.jpg",
         "\U0001f3f4\\U000e0078\\U000e0079\\U000e007f.jpg"),
        ("a\U00016fe4.jpg", "a\\U00016fe4.jpg"),
        # ... and valid names it had mangled or must keep: a chillu at a word's end, a Mongolian
        # vowel separator, emoji forms of symbols of other categories, a rainbow flag, ra-phala.
        ("\u0d05\u0d35\u0d28\u0d4d\u200d.jpg", "\u0d05\u0d35\u0d28\u0d4d\u200d.jpg"),
        ("\u1828\u1820\u1836\u1822\u180e\u1820.jpg", "\u1828\u1820\u1836\u1822\u180e\u1820.jpg"),
        ("\u2139\ufe0f\u25fb\ufe0f.jpg", "\u2139\ufe0f\u25fb\ufe0f.jpg"),
        ("\U0001f3f3\ufe0f\u200d\U0001f308.jpg", "\U0001f3f3\ufe0f\u200d\U0001f308.jpg"),
        ("\u09b0\u200d\u09cd\u09af.jpg", "\u09b0\u200d\u09cd\u09af.jpg"),
        ("\u0646\u0645\u06cc\u200c\u062f\u0627\u0646\u0645.jpg",
         "\u0646\u0645\u06cc\u200c\u062f\u0627\u0646\u0645.jpg"),
        ("\U0001f3c3\u200d\u2640\ufe0f.jpg", "\U0001f3c3\u200d\u2640\ufe0f.jpg"),
        # A seventh: ZWNJ after a virama with no letter after it, ZWJ between Arabic letters
        # that join anyway, a selector no ideograph has, a vowel separator at a word's end, a
        # virama-class mark of another script; and, kept, 15.1's head shake and an Arabic
        # letter's joining form at a word's end.
        ("\u0915\u094d\u200c.jpg", "\u0915\u094d\\u200c.jpg"),
        ("\u0628\u200d\u0628.jpg", "\u0628\\u200d\u0628.jpg"),
        ("\u4e00\ufe05.jpg", "\u4e00\\ufe05.jpg"),
        ("\u1820\u180e.jpg", "\u1820\\u180e.jpg"),
        ("a\u0e3a\u200d.jpg", "a\u0e3a\\u200d.jpg"),
        ("\U0001f642\u200d\u2194\ufe0f.jpg", "\U0001f642\u200d\u2194\ufe0f.jpg"),
        ("\u0644\u200d.jpg", "\u0644\u200d.jpg"),
    ])
    def test_invisible_characters_are_escaped_and_joiners_kept_in_writing(
            self, name: str, printed: str) -> None:
        """Two reviews: a zero-width or no-break space printed a name as another; then the
        joiners Persian, Devanagari and emoji sequences are written with were escaped too."""
        assert printable(name) == printed
        assert shown_path(name) == printed
        assert one_line(f"{name}: cannot decode") == f"{printed}: cannot decode"


    def test_a_name_with_a_surrogate_no_file_system_gives_is_shown(self) -> None:
        """A review: a lone surrogate outside U+DC80-DCFF (a name that came as text, from JSON)
        raised UnicodeEncodeError in the page's escaping."""
        assert shown_path("a\ud800b.jpg") == "a\\xed\\xa0\\x80b.jpg"
        assert shown_path(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"  # as before


class TestOnlyRasterFormats:
    """Pillow picks its plug-in from the content; only the raster formats we mean to read are tried."""

    @pytest.mark.parametrize(("body", "named"), [
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "PostScript"),
        (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "PDF"),
        (b"8BPS\x00\x01" + bytes(26), "PSD"),
        (b"SIMPLE  =                    T" + bytes(50), "FITS"),
    ])
    def test_documents_named_jpg_are_refused_by_name(self, tmp_path: Path, monkeypatch,  # type: ignore[no-untyped-def]
                                                     body: bytes, named: str) -> None:
        from PIL import EpsImagePlugin

        def no_ghostscript(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise AssertionError("the EPS plug-in was reached")

        monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
        path = tmp_path / "x.jpg"
        path.write_bytes(body)
        with pytest.raises(ImageError) as caught:
            hash_file(str(path), DEFAULT)
        assert named in caught.value.reason

    def test_extensions_are_those_of_the_raster_formats(self) -> None:
        extensions = image_extensions()
        assert {".jpg", ".png", ".webp", ".gif", ".bmp", ".tif"} <= extensions
        assert not {".eps", ".ps", ".pdf", ".fits", ".psd", ".xpm", ".ico"} & extensions


def test_a_bug_in_our_code_is_not_reported_as_a_bad_image(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Only opening and decoding are guarded: an error in the hash step propagates as itself."""
    import neardup.core.hashing as hashing

    path = zoo.reference(tmp_path)

    def broken(image, size):  # type: ignore[no-untyped-def]
        raise TypeError("a bug")

    monkeypatch.setitem(hashing.ALGORITHMS, "dhash", broken)  # the v2 and --exact hash step
    monkeypatch.setattr(hashing, "grid_bits", broken)  # the default (v3 and later) hash step
    with pytest.raises(TypeError, match="a bug"):
        hash_file(str(path), DEFAULT)
    with pytest.raises(TypeError, match="a bug"):
        hash_file(str(path), Recipe(preprocess_version=2))


def _png_cases() -> dict[str, dict[str, object]]:
    """PNGs of each kind whose last rows hold the value neardup fills the memory with (the
    worst case: only counting the image data tells them from a short file)."""
    rng = np.random.default_rng(7)

    def noise(*shape: int, top: int = 256) -> np.ndarray:
        return rng.integers(0, top, shape).astype(np.uint8)

    gray, rgb = noise(40, 50), noise(40, 50, 3)
    gray[-3:], rgb[-3:] = 251, (3, 251, 7)
    rgba, la = noise(40, 50, 4), noise(40, 50, 2)
    rgba[-3:], la[-3:] = (3, 251, 7, 5), (251, 3)
    deep = rng.integers(0, 65536, (40, 50)).astype(np.uint16)
    deep[-3:] = 65521
    bits = noise(40, 7)
    bits[-3:] = 0xFF
    palette = bytes(noise(256 * 3))
    return {
        "gray": {"pixels": gray, "colour_type": 0},
        "rgb": {"pixels": rgb, "colour_type": 2},
        "rgba": {"pixels": rgba, "colour_type": 6},
        "gray and alpha": {"pixels": la, "colour_type": 4},
        "palette": {"pixels": gray, "colour_type": 3, "palette": palette},
        "16-bit gray": {"pixels": deep, "colour_type": 0, "depth": 16},
        "1-bit": {"pixels": bits, "colour_type": 0, "depth": 1},
        "interlaced rgb": {"pixels": rgb, "colour_type": 2, "interlaced": True},
        "interlaced gray": {"pixels": gray[:39], "colour_type": 0, "interlaced": True},
    }


@pytest.mark.parametrize("kind", list(_png_cases()))
def test_a_png_whose_image_data_stops_short_is_refused_and_a_whole_one_is_not(
        tmp_path: Path, kind: str) -> None:
    """A hostile review: a PNG whose image data held half of its rows (a complete zlib stream)
    was hashed as if whole; Pillow decodes it without an error, the missing rows left as the
    memory was. Whole PNGs ending in the value the memory is filled with must still decode."""
    case = _png_cases()[kind]
    whole = zoo.raw_png(tmp_path / "whole.png", **case)  # type: ignore[arg-type]
    with Image.open(whole) as reference:
        expected = np.asarray(reference.convert("RGBA"))  # Pillow's own reading of it
    with hashing.open_image(str(whole)) as image:
        assert np.array_equal(np.asarray(image.convert("RGBA")), expected)
    for kept in (0.5, 0.97):  # half, and all but the last row or so
        short = zoo.raw_png(tmp_path / f"short{kept}.png", rows_kept=kept, **case)  # type: ignore[arg-type]
        with pytest.raises(ImageError, match="truncated image \\(its image data ends before its"
                           " last row\\)"):
            hash_file(str(short), DEFAULT)
