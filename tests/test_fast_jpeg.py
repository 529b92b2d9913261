"""The fast JPEG path (simplejpeg) gives the hashes and the errors Pillow's path gives (issue 14).

Every JPEG is hashed twice: as installed, and with the fast decoder hidden (Pillow decodes). Sizes
straddle each decode-scale boundary, subsamplings, gray, progressive, restart markers, EXIF
orientations, CMYK; then real CALTECH-101 photos, then damaged files.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image

from neardup.core import hashing, jpeg
from neardup.core.hashing import Recipe, hash_source, scale_boundaries
from neardup.errors import ImageError

from .imagegen import save, textured

pytestmark = pytest.mark.skipif(
    not jpeg.available(), reason="simplejpeg is not installed (pip install -r requirements-fast.txt)"
)

XMP_TURNED = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
              b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/"'
              b' tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')

RECIPES = [Recipe(), Recipe(algorithm="phash"), Recipe(hash_size=16), Recipe(algorithm="ahash"),
           Recipe(preprocess_version=3)]


def outcome(path: str, recipe: Recipe, *, data: bytes | None = None) -> tuple[str, str | None]:
    """(hash and mirror hash as hex, or the error's reason) of one hashing."""
    try:
        plain, mirrored = hash_source(path, recipe, data=data, mirror=True)
    except ImageError as error:
        return "error", error.reason
    assert mirrored is not None
    return plain.hex(), mirrored.hex()


def both_ways(path: str, recipe: Recipe, monkeypatch: pytest.MonkeyPatch,
              data: bytes | None = None) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
    fast = outcome(path, recipe, data=data)
    with monkeypatch.context() as patched:
        patched.setattr(jpeg, "simplejpeg", None)
        assert not jpeg.available()
        slow = outcome(path, recipe, data=data)
    return fast, slow


def boundary_sizes(recipe: Recipe) -> list[tuple[int, int]]:
    """Sizes whose shorter side sits just below and above each decode-scale boundary."""
    sizes = []
    for edge in scale_boundaries(recipe).values():  # where a decode at 1/2, 1/4, 1/8 begins
        sizes += [(edge * 4 // 3 + 1, edge - 1), (edge * 4 // 3 + 3, edge + 1),
                  (edge + 5, edge * 3 // 2 + 7)]  # portrait too
    return [size for size in sizes if size[0] * size[1] <= 12_500_000]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda recipe: recipe.describe())
def test_same_hashes_across_every_decode_scale(
    tmp_path: Path, recipe: Recipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number, size in enumerate(boundary_sizes(recipe)):
        picture = textured(number, (64, 48)).resize(size, Image.Resampling.BICUBIC)
        subsampling = (0, 1, 2)[number % 3]  # 4:4:4, 4:2:2, 4:2:0
        path = save(picture, str(tmp_path / f"{number}.jpg"), quality=90, subsampling=subsampling)
        fast, slow = both_ways(path, recipe, monkeypatch)
        assert fast == slow, (size, subsampling)
        assert fast[0] != "error"


def test_same_hashes_for_every_kind_of_jpeg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picture = textured(7, (333, 251))
    kinds = {
        "gray": (picture.convert("L"), {}),
        "progressive": (picture, {"progressive": True}),
        "restart markers": (picture, {"restart_marker_blocks": 3}),
        "optimised tables": (picture, {"optimize": True}),
        "CMYK (Pillow decodes it)": (picture.convert("CMYK"), {}),
        "quality 30": (picture, {"quality": 30}),
        "one pixel": (picture.resize((1, 1)), {}),
        "odd sizes": (picture.resize((1203, 797)), {}),
    }
    for orientation in range(1, 9):  # EXIF: Pillow reads it, and turns the grid
        exif = Image.Exif()
        exif[0x0112] = orientation
        kinds[f"EXIF orientation {orientation}"] = (picture, {"exif": exif})
    # Pillow reads an orientation from XMP as well.
    kinds["XMP orientation 6"] = (picture, {"xmp": XMP_TURNED})
    kinds["MPO (Pillow decodes it in colour)"] = (picture, {"format": "MPO", "save_all": True,
                                                            "append_images": [picture]})
    for name, (image, options) in kinds.items():
        path = save(image, str(tmp_path / f"{name}.jpg"), **options)
        for recipe in (Recipe(), Recipe(algorithm="phash")):
            fast, slow = both_ways(path, recipe, monkeypatch)
            assert fast == slow, name
            assert fast[0] != "error", name
        data = Path(path).read_bytes()  # an upload takes the same path as a file
        assert both_ways("upload", Recipe(), monkeypatch, data=data)[0] == outcome(path, Recipe())


def test_an_exif_orientation_is_honoured(tmp_path: Path) -> None:
    # A JPEG with an orientation goes to Pillow, which reads it: the sideways file stored with
    # "turn me back" hashes as the upright picture.
    upright = textured(3, (400, 300))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; shown after a quarter turn clockwise
    stored = save(upright.transpose(Image.Transpose.ROTATE_90), str(tmp_path / "turned.jpg"),
                  exif=exif, quality=95)
    plain = save(upright, str(tmp_path / "upright.jpg"), quality=95)
    assert hashing.hash_file(stored, Recipe()).distance(hashing.hash_file(plain, Recipe())) <= 2


def test_a_plain_jpeg_never_reaches_pillow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(textured(4, (300, 200)), str(tmp_path / "plain.jpg"), quality=90)
    expected = hashing.hash_file(path, Recipe())

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("Pillow was asked to open a plain JPEG")

    monkeypatch.setattr(Image, "open", refuse)
    assert hashing.hash_file(path, Recipe()) == expected


def test_real_photos_hash_the_same_both_ways(
    caltech_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = sorted(caltech_root.glob("*/image_000[1-3].jpg"))
    assert len(photos) > 250
    for photo in photos:
        fast, slow = both_ways(str(photo), Recipe(), monkeypatch)
        assert fast == slow, photo


def test_damaged_jpegs_get_the_same_answer_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Truncated, bytes overwritten in the header and in the picture, markers cut out: whatever
    # Pillow answers (a hash, or a reason), the fast path answers too, but where the data ends
    # before the picture (a marker written over the picture's data): Pillow keeps libjpeg's
    # warning to itself and decodes the rest as grey, the fast path says "truncated image". No
    # other exception escapes.
    buffer = io.BytesIO()
    textured(9, (320, 240)).save(buffer, "JPEG", quality=85)
    original = buffer.getvalue()
    rng = random.Random(14)
    variants = [original[:cut] for cut in (2, 3, 20, 200, 600, len(original) // 2, -2)]
    for _ in range(120):
        damaged = bytearray(original)
        for _ in range(rng.choice((1, 3, 20))):
            where = rng.randrange(2, len(damaged)) if rng.random() < 0.5 else rng.randrange(2, 700)
            damaged[where] = rng.randrange(256)
        variants.append(bytes(damaged))
    marker = original.index(b"\xff\xc4")  # a Huffman table cut out
    variants.append(original[:marker] + original[marker + 30:])
    # Between two segments: junk bytes, fill bytes, a TEM marker, a second SOI, an EOI.
    for inserted in (b"\x00\x00", b"\xff\xff\xff", b"\xff\x01", b"\xff\xd8", b"\xff\xd9",
                     b"\xff\xd0"):
        variants.append(original[:marker] + inserted + original[marker:])
    for number, data in enumerate(variants):
        path = tmp_path / f"damaged-{number}.jpg"
        path.write_bytes(data)
        fast, slow = both_ways(str(path), Recipe(), monkeypatch)
        if fast != slow:
            assert fast == ("error", "truncated image") and slow[0] != "error", number
            with pytest.raises(jpeg.CutShort):
                jpeg.decode_luma(data, (320, 240))


def test_a_jpeg_cut_short_is_truncated_even_closed_by_an_end_marker(tmp_path: Path) -> None:
    """A JPEG cut short was refused as "truncated image", but the same bytes closed by an EOI
    marker were hashed: libjpeg says "premature end of data segment", fills the rest of the
    picture with grey, and the hash matched nothing. So was a header claiming far more picture
    than its data holds. Both decodes the fast decoder makes say so: the plain JPEG's, and the
    one within Pillow's opening of a JPEG holding EXIF."""
    buffer = io.BytesIO()
    textured(9, (320, 240)).save(buffer, "JPEG", quality=85)
    plain = buffer.getvalue()
    buffer = io.BytesIO()
    textured(9, (320, 240)).save(buffer, "JPEG", quality=85, exif=Image.Exif())
    with_exif = buffer.getvalue()
    frame = plain.index(b"\xff\xc0")
    claiming_more = bytearray(plain)
    claiming_more[frame + 5 : frame + 9] = (9999).to_bytes(2, "big") + (10000).to_bytes(2, "big")
    damaged = [original[: len(original) // cut] + b"\xff\xd9"
               for original in (plain, with_exif) for cut in (2, 10)] + [bytes(claiming_more)]
    for number, data in enumerate(damaged):
        path = tmp_path / f"cut-{number}.jpg"
        path.write_bytes(data)
        assert outcome(str(path), Recipe()) == ("error", "truncated image"), number
        assert outcome("upload", Recipe(), data=data) == ("error", "truncated image"), number
    # Bytes between the picture's data and its end marker leave the picture whole (libjpeg's
    # "Corrupt JPEG data: 3 extraneous bytes before marker 0xd9", common in cameras' files).
    original = tmp_path / "original.jpg"
    original.write_bytes(plain)
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(plain[:-2] + b"\x00\x12\x34\xff\xd9")
    assert outcome(str(padded), Recipe()) == outcome(str(original), Recipe())
