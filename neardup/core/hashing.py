"""From an image file to a perceptual hash.

This module owns every preprocessing decision (orientation, transparency, bit depth, pixel limit), so a
store can name the exact recipe that produced its hashes and refuse to mix two recipes.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache, partial
from typing import Any

import imagehash
import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from ..errors import ImageError, install_hint
from . import avif, jpeg, png, sampling, tiff

HashFunction = Callable[[Image.Image, int], imagehash.ImageHash]

ALGORITHMS: dict[str, HashFunction] = {
    "dhash": imagehash.dhash,
    "phash": imagehash.phash,
    "ahash": imagehash.average_hash,
    "whash": imagehash.whash,
}

# Bumped whenever the normalising preprocessing changes the bits it produces; stores record it.
# 1: orientation, alpha, bit depth. 2: JPEGs decoded in grayscale at reduced scale (DRAFT_SIDE).
# 3: the hash's grid resampled in floating point from a decode whose scale keeps DECODE_MARGIN
#    pixels per grid cell, the filter placed in full-size coordinates (neardup.core.sampling).
# 4: v3 with wider margins for the 1/4 and 1/8 decodes (DECODE_MARGINS_V4).
# 5: v4, a reduced decode's partial last row and column weighed by the part of the picture they
#    cover (sampling.grid's `cover`).
# 6: v5, dHash's neighbouring cells within TIE_BAND of each other read as a tie (bit 0).
# 7: v6 with a JPEG decoded at 1/2 scale from half the margin (DECODE_MARGINS; v4-v6 keep
#    DECODE_MARGINS_V4).
PREPROCESS_VERSION = 7
# Every version this neardup can still hash with, so a store made by an older one stays searchable.
PREPROCESS_VERSIONS = (1, 2, 3, 4, 5, 6, 7)

# v6: dHash cells that differ by less than this many gray levels give a 0 bit, as equal ones do.
# The float grid (v3 and later) otherwise decides every such comparison, and on a nearly flat
# photo saved again at JPEG quality 60 what decides it is compression noise: a white kangaroo
# photo and its copy resized by 4 % came 8 bits apart, their flipped cells 0.02 to 0.2 levels
# apart, where plain ImageHash's 8-bit grid read them as ties (2 bits). Half a level is the tie
# rate of that 8-bit grid (two cells x apart round to one level with probability 1 - x for
# x < 1), without its rounding lottery: cells 0.1 apart either side of a level boundary. Measured
# on pair sets built to straddle the decode scales (bench/straddle.py and 26 other
# constructions) and on resize and jpeg copies: see docs/accuracy.md. The edge moves rather than
# goes: cells about half a level apart (a gentle even slope) are now decided by hundredths of a
# level (README, Limits).
TIE_BAND = 0.5

# A query's dHash bit whose two cells differ by within this many gray levels of the edge that
# decides it (tie_band: 0.5 from v6 on, 0 before) is one its picture leaves undecided: a copy
# resized by a fraction of a percent or saved again moves such cells by tenths of a level and
# often flips the bit. Search counts an undecided bit of the query as agreeing with any stored
# hash (Hash.undecided); the stored hashes are unchanged. Measured with search.py --evaluate on
# 600 resize and 600 jpeg copies of CALTECH-101 for each of four seeds (bench/recipe_vs_exact.sh
# 505 606 707 808, the same stores searched each way): exact-bucket recall, resize 90.0 to 91.7 %
# without, 96.0 to 98.0 % with 0.1, 98.0 to 99.0 % with 0.2 (plain ImageHash 78.0 to 80.5 %);
# jpeg 79.8 to 87.2 %, 89.2 to 94.0 % and 94.3 to 96.7 % (70.2 to 73.8 %). What it costs is other
# images within the default distance 4: 115 without, 124 with 0.1, 141 with 0.2 (plain ImageHash
# 129), so 0.1. A CALTECH-101 photo holds 0.4 such bits on average.
UNDECIDED_BAND = 0.1
# At most this many undecided bits per query, those nearest the edge: search looks up each of
# their 2**n settings in the exact bucket and the multi-index, so this bounds a query's cost at
# 16 lookups (a photo with more is mostly one whose cells are all about half a level apart, a
# gentle slope, where no small number of bits would do).
MAX_UNDECIDED = 4

# v2 only: JPEGs decoded in grayscale at 1/2, 1/4 or 1/8 scale keeping both sides at least this
# many pixels per 8 hash bits of side. Its threshold moved nearly equal sizes onto different paths
# (300 x 253 decoded whole, 305 x 257 at 1/2: 5 bits apart), which v3 replaces.
DRAFT_SIDE = 128

# v3: a JPEG is decoded at 1/2, 1/4 or 1/8 scale only while its shorter side keeps at least this
# many decoded pixels per cell of the hash's grid (144 for the 9 x 8 of dHash-64, so 300 x 200
# photos decode whole and 12-megapixel ones at 1/8). A reduced decode is a per-block filter whose
# blocks sit differently in a resized copy, so it must stay far finer than a cell. Measured by
# bench/decode_margin.py (600 resized copies, seed 101), exact-bucket recall: margin 16, 90.0 %
# (plain ImageHash 79.2 %); 8 (300 x 200 photos at 1/2), 80.2 %; 4, 70.7 %; 1 (nearly always
# 1/8), 50.3 %. bench/straddle.py checks pairs built across each of its boundaries.
DECODE_MARGIN = 16
# v4: the margin for each reduced scale. Plain ImageHash's own error shrinks as pictures grow (more
# pixels under each cell), a reduced decode's does not: at 16 pixels per cell, v3's 1/4 and 1/8
# decodes put copies 2 or 3 bits apart that plain ImageHash kept in one bucket. With 40 at those
# two scales, pairs straddling each boundary (bench/straddle.py, six seeds) stay at least as close
# as plain ImageHash keeps them at every threshold in 10 sets of 12 (v3: 4; v5, the same margins
# with a partial last pixel weighed by what it covers, in all 12), and a 4000 x 3000
# photo (41.7 pixels per cell) still decodes at 1/8, where indexing must stay fast; a 12-megapixel
# photo of another shape (4288 x 2848, 4608 x 2592) decodes at 1/4, about 12 % slower. At 1/2,
# from 288 pixels (dHash-64), plain ImageHash is still the noisier of the two.
DECODE_MARGINS_V4 = {2: 16, 4: 40, 8: 40}
# v7: 8 decoded pixels per cell at 1/2 (from 144 pixels for dHash-64), so that the 300 x 200
# photos of a typical collection decode at 1/2, not whole: the full-scale decode was more than
# half of indexing's time on CALTECH-101 (7,232 of its 9,145 photos change path; index.py -j 1
# about 20 % faster, bench/index_speed.py). v3's margin of 8 had cost exact-bucket recall
# (80.2 % against 90.0 %), but v5's partial pixel and v6's tie band took most of that error
# away. On ten seeds of bench/recipe_vs_exact.sh (search.py's own counts, undecided bits
# included): resize copies in the exact bucket 94.8 to 97.7 % (v6 96.0 to 98.0 %, plain
# ImageHash 77.0 to 80.5 %), jpeg copies 89.7 to 93.2 % (v6 89.2 to 94.0 %), copies within the
# default distance as with v6, other images 355 against 360; pairs built across 144 pixels stay at
# least as close as plain ImageHash keeps them (bench/straddle.py). docs/accuracy.md has each
# seed. 1/4 and 1/8 keep v4's margins.
DECODE_MARGINS = {2: 8, 4: 40, 8: 40}

# Checked from the header, before any pixel is decoded: a few-KB PNG can claim gigabytes. Pillow
# only warns up to twice its own limit (about 179 megapixels) and refuses beyond, whatever we say;
# a photo rarely has more than 100 megapixels, so we refuse above that unless told otherwise.
DEFAULT_MAX_PIXELS = 100_000_000

# Transparent pixels are composited onto this, so colour hidden under alpha=0 cannot change the hash.
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True, slots=True)
class Hash:
    """A perceptual hash: `bits` bits, most significant first, as ImageHash orders them."""

    value: int
    bits: int
    # A query's bits that its picture left undecided (UNDECIDED_BAND): they count as agreeing with
    # any other hash. Stored hashes have none; equality and hashing ignore it (the same bits).
    undecided: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.bits <= 0 or not 0 <= self.value < (1 << self.bits):
            raise ValueError(f"hash value does not fit in {self.bits} bits")
        if not 0 <= self.undecided < (1 << self.bits):
            raise ValueError(f"undecided bits do not fit in {self.bits} bits")

    def hex(self) -> str:
        """Fixed-width lowercase hex, identical to `str(imagehash_object)`."""
        return self._hex(self.value)

    def undecided_hex(self) -> str:
        """The undecided bits as a mask in hex(), same width: its 1 bits are left out of the
        distance search reports."""
        return self._hex(self.undecided)

    def _hex(self, bits: int) -> str:
        return format(bits, f"0{(self.bits + 3) // 4}x")

    def distance(self, other: Hash) -> int:
        """Hamming distance: the number of differing bits (undecided or not)."""
        if other.bits != self.bits:
            raise ValueError(f"cannot compare a {self.bits}-bit hash with a {other.bits}-bit hash")
        return (self.value ^ other.value).bit_count()

    def search_distance(self, stored: Hash) -> int:
        """The distance search reports for a stored hash with this one as the query: the
        differing bits this one did not leave undecided."""
        if stored.bits != self.bits:
            raise ValueError(f"cannot compare a {self.bits}-bit hash with a {stored.bits}-bit hash")
        return ((self.value ^ stored.value) & ~self.undecided).bit_count()

    def settled(self) -> Iterator[Hash]:
        """Every hash the undecided bits could make, each without undecided bits (2**n of them:
        the hash itself when none are undecided). A stored hash is within d of this hash exactly
        when it is within d of one of them."""
        positions = [bit for bit in range(self.bits) if self.undecided >> bit & 1]
        base = self.value & ~self.undecided
        for setting in range(1 << len(positions)):
            value = base
            for index, bit in enumerate(positions):
                if setting >> index & 1:
                    value |= 1 << bit
            yield Hash(value, self.bits)

    @classmethod
    def from_hex(cls, text: str, bits: int) -> Hash:
        if len(text) != (bits + 3) // 4:
            raise ValueError(f"{text!r} is not a {bits}-bit hex hash")
        return cls(int(text, 16), bits)

    @classmethod
    def from_imagehash(cls, image_hash: imagehash.ImageHash) -> Hash:
        return cls.from_bits(np.asarray(image_hash.hash, dtype=bool))

    @classmethod
    def from_bits(cls, bits: np.ndarray, undecided: np.ndarray | None = None) -> Hash:
        """From a boolean array, row by row, first bit most significant (ImageHash's order), and
        optionally which of them are undecided (same shape)."""
        return cls(_packed(bits), int(np.asarray(bits).size),
                   0 if undecided is None else _packed(undecided))

    def __str__(self) -> str:
        return self.hex()


def _packed(bits: np.ndarray) -> int:
    """A boolean array as an integer, first element most significant."""
    flat = np.asarray(bits, dtype=bool).ravel()
    padding = (-flat.size) % 8  # packbits pads the last byte on its low side
    return int.from_bytes(np.packbits(flat).tobytes(), "big") >> padding


def is_low_information(value: Hash) -> bool:
    """True for the degenerate hashes of blank, single-colour and smooth-gradient images.

    Such images give (nearly) all-zero or all-one bits under every ImageHash algorithm, so they
    would "match" every other blank image. The band is bits/16 wide (4 bits of 64): no photo of
    CALTECH-101's 9,145 has a dHash within it (the fewest set bits there is 5, the most 56).
    """
    return is_low_information_count(value.value.bit_count(), value.bits)


def is_low_information_count(ones: int, bits: int) -> bool:
    """is_low_information() from a hash's number of set bits (for many hashes at once)."""
    band = bits // 16
    return ones <= band or ones >= bits - band


# 32 x 32 = 1,024 bits: four times the longest hash measured useful here (dHash-256); beyond it a
# hash costs seconds per image and per query and finds nothing more.
MAX_HASH_SIZE = 32


@dataclass(frozen=True, slots=True)
class Recipe:
    """How hashes are made. Two stores can be compared only when their recipes are equal."""

    algorithm: str = "dhash"
    hash_size: int = 8
    # exact=True hashes `Image.open(path)` untouched, bit for bit like plain ImageHash, for users who
    # compare our hashes with other tools'. exact=False first shows the hash what a person sees.
    exact: bool = False
    preprocess_version: int = PREPROCESS_VERSION

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            known = ", ".join(sorted(ALGORITHMS))
            raise ValueError(f"unknown hash algorithm {self.algorithm!r} (known: {known})")
        if not 2 <= self.hash_size <= MAX_HASH_SIZE:
            raise ValueError(f"hash size must be from 2 to {MAX_HASH_SIZE}"
                             f" ({MAX_HASH_SIZE ** 2} bits)")
        if self.algorithm == "whash" and self.hash_size & (self.hash_size - 1):
            raise ValueError("whash needs a hash size that is a power of 2")
        if not self.exact and self.preprocess_version not in PREPROCESS_VERSIONS:
            known = ", ".join(f"v{version}" for version in PREPROCESS_VERSIONS)
            raise ValueError(
                f"preprocessing v{self.preprocess_version} is not known to this neardup"
                f" (it hashes with {known}): upgrade neardup to use this store"
            )

    @property
    def bits(self) -> int:
        return self.hash_size * self.hash_size

    def describe(self) -> str:
        mode = "exact ImageHash" if self.exact else f"normalised v{self.preprocess_version}"
        return f"{self.algorithm}-{self.hash_size} ({self.bits} bits, {mode})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """The recipe as to_dict wrote it. Each field must have its own type: converted, a stored
        `"exact": "yes"` read as exact, `true` as preprocessing v1, and 1e999 ended in an
        OverflowError traceback (a review)."""
        algorithm, size = data["algorithm"], data["hash_size"]
        exact, version = data["exact"], data["preprocess_version"]
        if not (isinstance(algorithm, str) and type(size) is int and type(exact) is bool
                and type(version) is int):
            raise ValueError("its fields are not a name, a whole number, true or false and a"
                             f" whole number ({algorithm!r}, {size!r}, {exact!r}, {version!r})")
        return cls(algorithm=algorithm, hash_size=size, exact=exact, preprocess_version=version)


def normalise(image: Image.Image) -> Image.Image:
    """Return the first frame, upright, without transparency and with 8-bit samples."""
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not cost us the picture itself
        upright = image.copy()
    if upright is None:  # Pillow < 10 returns None when transposing in place; we never do
        upright = image.copy()
    return flatten(upright)


def flatten(upright: Image.Image) -> Image.Image:
    """8-bit samples without transparency (transparent pixels shown on BACKGROUND), in a mode
    Pillow converts to "L" and "RGB" (CIELab in sRGB: see from_cielab)."""
    if upright.mode in WIDE_MODES:
        # Pillow's convert('L') clips 16-bit samples at 255, turning most 16-bit images white.
        upright = Image.fromarray(gray_pixels(upright))
    elif upright.mode == "LAB":
        upright = from_cielab(upright)
    elif upright.mode == "La":
        # Gray premultiplied by its alpha (a TIFF's associated alpha), which Pillow converts to
        # nothing: made straight through RGBa, which it does convert, then composited as RGBA.
        gray, alpha = upright.getchannel(0), upright.getchannel(1)
        upright = Image.merge("RGBa", (gray, gray, gray, alpha)).convert("RGBA")

    has_alpha = upright.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        upright.mode == "P" and "transparency" in upright.info
    )
    if has_alpha:
        rgba = upright.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        upright = Image.alpha_composite(canvas, rgba).convert("RGB")
    return upright


# Modes whose samples are wider than a byte: flatten() scales them to 8 bits.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

# Every mode flatten() brings to one Pillow converts to gray and RGB: those Pillow converts itself,
# and "LAB" and "La", which it converts to neither. An image in any other mode (a newer Pillow's, a
# plug-in's) is refused from its header, "unsupported colour mode X": a conversion failing midway
# raises ValueError, which no caller reports as a bad image (a review: one CIELab TIFF among the
# photos ended every index.py run with a traceback, and the --stdin checker with it).
COLOUR_MODES = frozenset({"1", "L", "P", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK",
                          "YCbCr", "LAB", "HSV", *WIDE_MODES})
# Modes plain ImageHash cannot convert to gray, so --exact (hashing as it does) cannot hash them.
NOT_EXACT_MODES = ("LAB", "La")


def mode_refusal(image: Image.Image, recipe: Recipe | None = None) -> str | None:
    """Why an image's colour mode cannot be read (or hashed with `recipe`); None when it can."""
    if image.mode not in COLOUR_MODES:
        return f"unsupported colour mode {image.mode}"
    if recipe is not None and recipe.exact and image.mode in NOT_EXACT_MODES:
        return f"unsupported colour mode {image.mode} with --exact (plain ImageHash cannot read it)"
    return None


def from_cielab(image: Image.Image) -> Image.Image:
    """A CIELab picture (a TIFF Photoshop wrote) in sRGB, by Pillow's colour management
    (littlecms), so that it hashes as the same picture in RGB does and the features see its
    colours. Its lightness band alone is a gray, but another one: on 300 CALTECH-101 photos
    converted to CIELab, dHash-64 of the sRGB picture is 0.19 bits from the RGB photo's on average
    (86 % equal), of the lightness band 0.92 (46 % equal). Where this Pillow has no colour
    management, the lightness band it is."""
    try:
        from PIL import ImageCms  # loads littlecms: only for the rare CIELab picture

        return image.convert("RGB")  # through ImageCms's sRGB profile
    except ImportError:  # Pillow built without littlecms: raised when the transform is made
        return image.getchannel("L")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image.getchannel("L")


def gray_pixels(image: Image.Image) -> np.ndarray:
    """The decoded image as 8-bit gray levels: flatten() then convert("L").

    16-bit and 32-bit samples are divided by 257 (rounded down, clipped to 0-255), float ones
    clipped, a band of rows at a time: a float64 copy of the whole picture, as before, took 800 MB
    for a 100-megapixel 16-bit PNG (1.9 GB at the peak for a 1 MB file); this needs the decoded
    picture and its 8-bit result. Float samples that all lie within 0 to 1 (the convention of
    the programs that write float TIFFs) are read as fractions of white (see float_gain).
    """
    if image.mode not in WIDE_MODES:
        flat = flatten(image)
        return np.asarray(flat if flat.mode == "L" else flat.convert("L"))
    width, height = image.size
    pixels = np.empty((height, width), dtype=np.uint8)
    rows = max(1, sampling.PIXELS_PER_BLOCK // max(1, width))
    gain = float_gain(image, rows) if image.mode == "F" else 1.0
    for top in range(0, height, rows):
        band = np.asarray(image.crop((0, top, width, min(height, top + rows))))
        if image.mode == "F":
            # NaN as black and infinities at either end, as Pillow's convert("L") gives them:
            # cast as they were, each NaN put numpy's RuntimeWarning on stderr (two lines per
            # upload, past the checker's log limit; a hostile review) and its value undefined.
            pixels[top : top + rows] = np.clip(np.nan_to_num(band * gain, nan=0.0, posinf=255.0,
                                                             neginf=0.0), 0, 255)
        elif image.mode == "I":  # any 32-bit value: as flatten() scales it
            pixels[top : top + rows] = np.clip(band / 257.0, 0, 255)
        else:  # 16-bit: floor(x / 257), in integers
            pixels[top : top + rows] = band // 257
    return pixels


def float_gain(image: Image.Image, rows: int) -> float:
    """255 for a float picture whose finite samples all lie within 0 to 1, else 1 (its samples
    taken as 8-bit levels, clipped, as Pillow's convert("L") takes them).

    Image editors (GIMP, Photoshop's 32-bit mode) and scientific software write float TIFFs with
    white at 1.0; read as levels, such a photo became black and was answered as a blank picture.
    A picture that holds a sample over 1 keeps the levels rule: 0 to 1 is then not its range.
    """
    width, height = image.size
    for top in range(0, height, rows):
        band = np.asarray(image.crop((0, top, width, min(height, top + rows))))
        finite = band[np.isfinite(band)]
        if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
            return 1.0
    return 255.0


def decode_reduced(image: Image.Image, recipe: Recipe) -> None:
    """v2: ask the decoder for a smaller grayscale image where that is cheaper (JPEG)."""
    if image.format == "JPEG":
        side = DRAFT_SIDE * max(1, recipe.hash_size // 8)
        image.draft("L", (side, side))


def uses_grid(recipe: Recipe) -> bool:
    """Whether the recipe resamples its own grid (v3 and later) rather than handing ImageHash an
    image."""
    return not recipe.exact and recipe.preprocess_version >= 3


def covers_partial(recipe: Recipe) -> bool:
    """Whether a reduced decode's partial last pixel weighs only what it covers (v5 and later)."""
    return recipe.preprocess_version >= 5


def tie_band(recipe: Recipe) -> float:
    """How far apart dHash's neighbouring cells must be to give a 1 bit (v6 and later: TIE_BAND
    gray levels; before, any amount)."""
    return TIE_BAND if recipe.preprocess_version >= 6 else 0.0


def grid_size(recipe: Recipe, picture: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the grid the recipe's algorithm reads, as ImageHash resizes to it.

    whash's grid follows the picture (the largest power of 2 within its shorter side), as in
    ImageHash; the other algorithms' is fixed by the hash size.
    """
    size = recipe.hash_size
    if recipe.algorithm == "dhash":
        return size + 1, size
    if recipe.algorithm == "phash":
        return size * 4, size * 4
    if recipe.algorithm == "whash":
        side = max(2 ** int(np.log2(max(1, min(picture)))), size)
        return side, side
    return size, size


def decode_margins(recipe: Recipe) -> dict[int, int]:
    """Decoded pixels per grid cell each reduced JPEG scale must keep, for a recipe that reads its
    own grid (v3 and later; uses_grid)."""
    if recipe.preprocess_version <= 3:
        return dict.fromkeys((2, 4, 8), DECODE_MARGIN)
    if recipe.preprocess_version <= 6:
        return dict(DECODE_MARGINS_V4)
    return dict(DECODE_MARGINS)


def decode_scale(picture: tuple[int, int], cells: tuple[int, int], recipe: Recipe) -> int:
    """The largest JPEG decode scale (8, 4, 2, 1) keeping the recipe's margin per grid cell."""
    shorter = min(picture)
    margins = decode_margins(recipe)
    for scale in (8, 4, 2):
        if shorter >= scale * margins[scale] * max(cells):
            return scale
    return 1


def scale_boundaries(recipe: Recipe) -> dict[int, int]:
    """For each reduced scale, the shorter side from which a JPEG decodes at it, for a recipe that
    reads its own grid of a fixed size (not whash's, which follows the picture)."""
    cells = max(grid_size(recipe, (0, 0)))
    return {scale: scale * margin * cells for scale, margin in decode_margins(recipe).items()}


class GridDecoder:
    """The grid recipes' (v3 and later) before-load step for one image: picks the decode and remembers
    what it covers, and decodes a JPEG's grayscale pixels itself when the fast decoder can
    (neardup.core.jpeg)."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.extent: tuple[float, float] | None = None  # the picture in decoded pixels
        self.pixels: np.ndarray | None = None  # decoded here rather than by Pillow

    def read_pixels(self, image: Image.Image, stream: Any) -> bool:
        """open_image's decode step: True when the pixels were decoded here (Pillow's are not)."""
        self.pixels = jpeg.decode_gray(image, stream)
        return self.pixels is not None

    def __call__(self, image: Image.Image) -> None:
        if image.format != "JPEG":
            return
        width, height = image.size
        scale = decode_scale(image.size, grid_size(self.recipe, image.size), self.recipe)
        # Grayscale straight from libjpeg even at full scale: the colour planes are never
        # converted, and their samples never upsampled.
        drafted = image.draft("L", (max(1, width // scale), max(1, height // scale)))
        if drafted is not None:
            box = drafted[1]
            self.extent = (box[2] - box[0], box[3] - box[1])


def plain_jpeg_grid(data: bytes, recipe: Recipe, max_pixels: int) -> np.ndarray | None:
    """The grid (v3 and later) of a JPEG decoded by the fast decoder alone, without Pillow; None for
    anything else (Pillow then opens it, and reports what is wrong with it).

    Only a JPEG holding nothing Pillow would act on takes this path (see jpeg.plain_size): it is
    upright as stored, and decoded as GridDecoder has Pillow decode it, at the same scale (Pillow's
    draft rounds the reduced size up and places the picture over size / scale decoded pixels).
    A test holds its hashes equal to Pillow's path.
    """
    plain = jpeg.plain_size(data)
    if plain is None or plain[0][0] * plain[0][1] > max_pixels:
        return None
    size, frame = plain
    if frame.needs_scan_count() and frame.decoding_refusal(jpeg.scan_tally((data,)), *size):
        return None  # Pillow's path refuses it with the reason
    width, height = size
    cells = grid_size(recipe, size)
    scale = decode_scale(size, cells, recipe)
    try:
        pixels = jpeg.decode_luma(data, (-(-width // scale), -(-height // scale)))
    except jpeg.CutShort:
        return None  # Pillow's path refuses it with the reason
    if pixels is None:
        return None
    return sampling.grid(pixels, (width / scale, height / scale), cells, covers_partial(recipe))


def decoder_settings(recipe: Recipe) -> Callable[[Image.Image], None] | None:
    """What to tell the decoder before it decodes (None: decode as plain ImageHash does).

    v3 and later return a fresh GridDecoder: ask for one per image.
    """
    if recipe.exact or recipe.preprocess_version < 2:
        return None
    if uses_grid(recipe):
        return GridDecoder(recipe)
    return lambda image: decode_reduced(image, recipe)


def prepare(image: Image.Image, recipe: Recipe) -> Image.Image:
    """The decoded image as the recipe shows it to the hash (v1, v2 and --exact)."""
    if not recipe.exact:
        return normalise(image)
    if image.mode == "P" and isinstance(image.info.get("transparency"), bytes):
        # ImageHash's convert("L") leaves a palette's transparency table out of the gray picture,
        # and Pillow warns about it: two lines of UserWarning on stderr per such PNG with -q and
        # --stdin. The same pixels without the table and without the warning.
        image = image.copy()
        del image.info["transparency"]
    return image


def hash_prepared(prepared: Image.Image, recipe: Recipe) -> Hash:
    return Hash.from_imagehash(ALGORITHMS[recipe.algorithm](prepared, recipe.hash_size))


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when absent or unreadable."""
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not cost us the picture itself
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright_grid(
    image: Image.Image, recipe: Recipe, decoder: Callable[[Image.Image], None] | None = None
) -> np.ndarray:
    """v3 and later: the recipe's grid of the decoded image as a person sees it, in float gray
    levels.

    `decoder`: the GridDecoder that decoded it, which knows the picture's size in decoded pixels
    when a reduced decode rounded it up, and holds the pixels when it decoded them itself.
    """
    orientation = exif_orientation(image)
    extent = pixels = None
    if isinstance(decoder, GridDecoder):
        extent, pixels = decoder.extent, decoder.pixels
    if pixels is None:
        pixels = gray_pixels(image)
    width, height = grid_size(recipe, image.size)
    if sampling.swaps_axes(orientation):
        width, height = height, width
    extent = extent or (float(image.width), float(image.height))
    return sampling.orient(sampling.grid(pixels, extent, (width, height), covers_partial(recipe)),
                           orientation)


def grid_bits(cells: np.ndarray, recipe: Recipe) -> np.ndarray:
    """The hash bits of a grid (v3 and later): ImageHash's rule for each algorithm, on float gray
    levels (dHash's near ties read as ties from v6 on: TIE_BAND)."""
    size = recipe.hash_size
    if recipe.algorithm == "dhash":
        return cells[:, 1:] - cells[:, :-1] > tie_band(recipe)
    if recipe.algorithm == "ahash":
        return cells > cells.mean()
    if recipe.algorithm == "phash":
        import scipy.fftpack  # ImageHash's own dependency; imported on first use as it does

        spectrum = scipy.fftpack.dct(scipy.fftpack.dct(cells.astype(np.float64), axis=0), axis=1)
        low = spectrum[:size, :size]
        return low > np.median(low)
    # whash: ImageHash's wavelet steps on the grid (8-bit, as it reads images); its own resize to
    # image_scale is then a copy.
    levels = Image.fromarray(np.clip(np.rint(cells), 0, 255).astype(np.uint8))
    return np.asarray(imagehash.whash(levels, size, image_scale=cells.shape[0]).hash)


def undecided_bits(cells: np.ndarray, recipe: Recipe) -> np.ndarray | None:
    """Which of a grid's dHash bits its picture leaves undecided: the most_undecided() whose
    cells' difference is nearest the edge, among those within UNDECIDED_BAND of it (None for the
    other algorithms)."""
    if recipe.algorithm != "dhash":
        return None
    margin = np.abs(cells[:, 1:] - cells[:, :-1] - tie_band(recipe))
    near = margin < UNDECIDED_BAND
    most = most_undecided(margin.size)
    if np.count_nonzero(near) > most:
        nearest = np.argsort(margin, axis=None, kind="stable")[:most]
        near = np.zeros(margin.size, dtype=bool)
        near[nearest] = True
        near = near.reshape(margin.shape)
    return near


def most_undecided(bits: int) -> int:
    """How many of a query's bits may be undecided: MAX_UNDECIDED, and at most one in 16 (a
    16-bit dHash, --hash-size 4, gets 1: 4 would leave a quarter of its bits counting nothing)."""
    return min(MAX_UNDECIDED, bits // 16)


def grid_hash(cells: np.ndarray, recipe: Recipe) -> Hash:
    """v3 and later: the hash of a grid, its undecided bits marked."""
    return Hash.from_bits(grid_bits(cells, recipe), undecided_bits(cells, recipe))


def grid_hashes(cells: np.ndarray, recipe: Recipe, mirror: bool) -> tuple[Hash, Hash | None]:
    """v3 and later: the hash of an upright grid, and with `mirror` the mirror image's (None
    without)."""
    return grid_hash(cells, recipe), grid_hash(cells[:, ::-1], recipe) if mirror else None


def hash_decoded(
    image: Image.Image, recipe: Recipe, decoder: Callable[[Image.Image], None] | None = None
) -> Hash:
    """Hash an image that open_image decoded with decoder_settings(recipe) as `decoder`."""
    if uses_grid(recipe):
        return grid_hash(upright_grid(image, recipe, decoder), recipe)
    return hash_prepared(prepare(image, recipe), recipe)


def hash_decoded_and_mirror(
    image: Image.Image,
    recipe: Recipe,
    decoder: Callable[[Image.Image], None] | None = None,
    *,
    mirror: bool = True,
) -> tuple[Hash, Hash | None]:
    """hash_decoded, and the mirror image's hash from the same decode (None unless `mirror`)."""
    if uses_grid(recipe):
        return grid_hashes(upright_grid(image, recipe, decoder), recipe, mirror)
    prepared = prepare(image, recipe)
    plain = hash_prepared(prepared, recipe)
    return plain, hash_prepared(ImageOps.mirror(prepared), recipe) if mirror else None


# The raster formats neardup reads, by Pillow's format name; no other Pillow plug-in is ever given
# a file or an upload. Pillow picks its decoder from the content, not the name, so without this a
# PostScript body named x.jpg reaches the EPS plug-in, which runs Ghostscript. The same list decides
# which file extensions index.py considers (neardup.core.discovery).
RASTER_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF")


@lru_cache(maxsize=1)
def enable_optional_formats() -> tuple[str, ...]:
    """Register Pillow plug-ins that are installed (pillow-heif for HEIC/HEIF); return their names.

    Called on first use rather than at import, so importing neardup does no work.
    """
    enabled = []
    try:
        import pillow_heif  # optional: requirements-heic.txt
    except ImportError:
        pass
    else:
        pillow_heif.register_heif_opener()
        enabled.append("heif")
    return tuple(enabled)


@lru_cache(maxsize=1)
def readable_formats() -> tuple[str, ...]:
    """RASTER_FORMATS that this Pillow (with its installed plug-ins) can actually open."""
    enable_optional_formats()
    Image.init()
    return tuple(name for name in RASTER_FORMATS if name in Image.OPEN)


# Files up to this size are read in one call and parsed from memory: Pillow's JPEG header parser
# reads a few bytes at a time, about 40 reads per photo, each a Python call (about a tenth of
# the time to hash a 300 x 200 photo). Larger files are streamed as before.
WHOLE_FILE_BYTES = 16 * 1024 * 1024


def open_regular_file(path: str) -> io.BufferedReader:
    """Open a file for reading; FIFOs, devices and sockets are refused without blocking on them.

    Opened non-blocking and checked on the open descriptor, so a name swapped for a FIFO between
    a check and the open cannot hang a checker either.
    """
    descriptor, _size = _open_regular(path)
    return os.fdopen(descriptor, "rb")


def _open_regular(path: str) -> tuple[int, int]:
    """open_regular_file's descriptor and the file's size, before any Python file object."""
    if "\0" in path:
        raise ImageError(path.replace("\0", "\\0"), "a file name cannot hold a NUL byte")
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        status = os.fstat(descriptor)
        if stat.S_ISDIR(status.st_mode):
            raise ImageError(path, "is a directory")
        if not stat.S_ISREG(status.st_mode):
            raise ImageError(path, "not a regular file (a FIFO, device or socket): not read")
        return descriptor, status.st_size
    except BaseException:
        os.close(descriptor)
        raise


def read_file(path: str) -> io.BufferedIOBase:
    """The file as a stream: in memory when small (see WHOLE_FILE_BYTES), else the open file."""
    descriptor, size = _open_regular(path)
    if size > WHOLE_FILE_BYTES:
        return os.fdopen(descriptor, "rb")
    try:
        # Straight from the descriptor (a photo is one read): a buffered file object costs more
        # than the read itself. Read to the end (as much as fits in memory), whatever the size
        # said a moment ago, but for the common case below.
        chunks = []
        left = WHOLE_FILE_BYTES + 1
        while left > 0:
            asked = min(left, max(size + 1, 65536))
            chunk = os.read(descriptor, asked)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
            if len(chunk) < asked and 0 < size == WHOLE_FILE_BYTES + 1 - left:
                # Less than asked, and exactly the size fstat gave: the end, without a second
                # system call per photo to learn it. Not where the size is 0 or out of date
                # (procfs, some FUSE file systems), which also give data in short pieces: read
                # on (a review: /proc/self/maps cut at 4 KB, indexed photos dropped as truncated).
                break
    finally:
        os.close(descriptor)
    return io.BytesIO(chunks[0] if len(chunks) == 1 else b"".join(chunks))


def read_source(path: str, data: bytes | None = None) -> io.BufferedIOBase:
    """The image's bytes as a stream, from the file or from `data` (an upload `path` names); what
    reading raises becomes an ImageError with a short reason."""
    try:
        return read_file(path) if data is None else io.BytesIO(data)
    except ImageError:
        raise
    except Exception as error:  # noqa: BLE001 - a vanished or unreadable file becomes a report
        raise ImageError(path, describe_failure(path, error)) from error


@contextmanager
def open_image(
    path: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    data: bytes | None = None,
    stream: io.BufferedIOBase | None = None,
    before_load: Callable[[Image.Image], None] | None = None,
    read_pixels: Callable[[Image.Image, Any], bool] | None = None,
) -> Iterator[Image.Image]:
    """Open and decode an image (its first frame), refusing bombs and formats we do not read.

    Only opening and decoding are guarded: what they raise becomes an ImageError with a short
    reason. What the caller then does with the pixels is not, so a bug in our code stays a bug
    instead of being reported as a bad image. `before_load` runs between reading the header and
    decoding (to ask for a reduced decode). `read_pixels(image, stream)` may decode the pixels
    itself and return True, and the image is then yielded with its header only. With `data`, the
    image is read from those bytes (an upload) and `path` only names it; with `stream`, from that
    stream (read_source's, closed here).
    """
    image: Image.Image | None = None
    try:
        if stream is None:
            stream = read_file(path) if data is None else io.BytesIO(data)
        with warnings.catch_warnings():
            # Pillow's warnings say nothing a person can act on: its decompression bomb warning
            # fires for anything over ~89 megapixels (the limit below is ours, and --max-pixels
            # sets it), and its metadata warnings ("tag 282 had too many entries") put two lines
            # on stderr per upload that asks for them, past the checker's log limit.
            warnings.simplefilter("ignore")
            # Before Pillow parses a TIFF's directory, or walks a PNG's chunks.
            refused = tiff.refusal(stream) or png.refusal(stream)
            if refused is not None:
                raise ImageError(path, refused)
            image = Image.open(stream, formats=readable_formats())
            width, height = image.size
            # Before anything counts on that size: an AVIF's is only what it declares.
            if image.format == "AVIF" and (refused := avif.refusal(stream, image.size)):
                raise ImageError(path, refused)
            if width * height > max_pixels:
                raise ImageError(
                    path, f"refused: {width} x {height} pixels is over the limit of {max_pixels:,}"
                )
            _refuse_mode(path, image)
            if image.format in ("JPEG", "MPO"):  # (an MPO: more pictures after the first)
                frame = jpeg.frame_header(_image_bytes(data, stream, HEADER_BYTES)) or jpeg.UNKNOWN_FRAME
                refusal = (frame.decoding_refusal(_scan_tally(data, stream), width, height)
                           if frame.needs_scan_count() else None)
                if refusal is not None:
                    raise ImageError(path, refusal)
            if before_load is not None:
                before_load(image)
            if read_pixels is None or not read_pixels(image, stream):
                png.prefill(image)
                image.load()
                if png.rows_missing(image, stream):
                    raise ImageError(path, "truncated image (its image data ends before its last"
                                     " row)")
                _refuse_mode(path, image)  # as decoded (a decoder may change it)
                _ignore_invalid_palette_alpha(image)
    except Exception as error:  # noqa: BLE001 - hostile files raise anything; each becomes a report
        reason = None
        # Pillow's reason for a JPEG cut inside its blocks depends on where the cut falls (its
        # errors carry no errno; a read error's does).
        if isinstance(error, OSError) and error.errno is None and _cut_in_jpeg_blocks(data, stream):
            reason = "truncated image"
        if isinstance(error, Image.DecompressionBombError) and stream is not None:
            # Pillow refuses on its own over twice its global MAX_IMAGE_PIXELS (178,956,970),
            # before our check: a review found uploads of 20000 x 20000 told Pillow's limit and
            # "could be decompression bomb DOS attack" instead of the caller's --max-pixels.
            reason = _bomb_refusal(error, stream, max_pixels)
        if image is not None:
            image.close()
        if stream is not None:
            stream.close()
        if isinstance(error, ImageError):
            raise
        reason = reason or describe_failure(path, error, None if data is None else data[:32])
        raise ImageError(path, reason) from error
    try:
        yield image
    finally:
        image.close()
        stream.close()


def _refuse_mode(path: str, image: Image.Image) -> None:
    refusal = mode_refusal(image)
    if refusal is not None:
        raise ImageError(path, refusal)


def _ignore_invalid_palette_alpha(image: Image.Image) -> None:
    """A palette image's transparency table with more entries than its palette is ignored, as
    libpng (and so browsers) ignore it: Pillow keeps it, and showing the picture on white then
    raised ValueError ("palette index out of range"), which a hostile review's 64 x 64 PNG with
    300 alpha entries for 16 colours turned into a traceback ending index.py, --stdin and -q
    (and a 500 from --serve)."""
    alphas = image.info.get("transparency")
    if image.mode != "P" or not isinstance(alphas, bytes) or image.palette is None:
        return
    if len(alphas) > len(image.palette.palette) // len(image.palette.mode):
        del image.info["transparency"]


def _bomb_refusal(error: Exception, stream: Any, max_pixels: int) -> str:
    """Our refusal for an image Pillow refused as a decompression bomb: its width and height
    read from its header by the format's own plug-in (without the global check, which is left
    alone: changing Image.MAX_IMAGE_PIXELS would change it for every thread), else the pixel
    count Pillow's message gives."""
    size = None
    try:
        stream.seek(0)
        prefix = stream.read(16)
        for name in readable_formats():
            factory, accept = Image.OPEN.get(name, (None, None))
            known = accept(prefix) if accept is not None else False
            if factory is None or not known or isinstance(known, str):
                continue
            stream.seek(0)
            try:
                with factory(stream, "") as found:
                    size = found.size
                break
            except Exception:  # noqa: BLE001,S112 - not this format: the next one
                continue
    except Exception:  # noqa: BLE001 - the count in Pillow's message below
        size = None
    if size is not None:
        width, height = size
        shown, pixels = f"{width} x {height} pixels", width * height
    else:
        found = re.search(r"\((\d+) pixels\)", str(error))
        if found is None:
            return f"refused: over Pillow's limit of {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels"
        pixels = int(found.group(1))
        shown = f"{pixels:,} pixels"
    if pixels > max_pixels:
        return f"refused: {shown} is over the limit of {max_pixels:,}"
    # Under the caller's limit but over the one Pillow enforces for every caller.
    return (f"refused as a decompression bomb: {shown} is over Pillow's limit of"
            f" {2 * (Image.MAX_IMAGE_PIXELS or 0):,}")


def picture_size(path: str) -> tuple[int, int] | None:
    """The picture's width and height read from its header alone, or None where it cannot be
    read (for choosing which of a group of duplicates to keep; nothing is decoded)."""
    try:
        with open_regular_file(path) as stream:  # the header only: the file is not read whole
            if tiff.refusal(stream) is not None or png.refusal(stream) is not None:
                return None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # as open_image
                with Image.open(stream, formats=readable_formats()) as image:
                    return image.size
    except Exception:  # noqa: BLE001 - any file may be anything: then its size is unknown
        return None


# What is read of a JPEG to walk its blocks up to its first scan.
HEADER_BYTES = 1 << 20


def _image_bytes(data: bytes | None, stream: Any, size: int) -> bytes:
    """An image's first `size` bytes (a JPEG's blocks up to its frame, as a rule), from memory
    when they are there, else from the open file, left where it was."""
    if data is None and isinstance(stream, io.BytesIO):
        data = bytes(stream.getbuffer()[:size])
    if data is not None:
        return data[:size]
    where = stream.tell()
    stream.seek(0)
    read = stream.read(size)
    stream.seek(where)
    return read


def _cut_in_jpeg_blocks(data: bytes | None, stream: Any) -> bool:
    """Whether the image is a whole JPEG file that ends inside its blocks, before its first scan
    (jpeg.header_cut_short)."""
    if stream is None:
        return False
    try:
        opening = _image_bytes(data, stream, HEADER_BYTES)
    except (OSError, ValueError):  # unreadable, or closed by the decoder
        return False
    return len(opening) < HEADER_BYTES and jpeg.header_cut_short(opening)


# A file too large to read whole (WHOLE_FILE_BYTES) has its scans counted a piece of this size at
# a time.
SCAN_COUNT_CHUNK_BYTES = 1 << 20


def _scan_tally(data: bytes | None, stream: Any) -> tuple[int, int, int]:
    """jpeg.scan_tally of all an image's bytes, from memory when they are there, else read from
    the open file a piece at a time (its apparent size may be anything: a sparse file), which is
    left where it was."""
    if data is None and isinstance(stream, io.BytesIO):
        data = stream.getvalue()
    if data is not None:
        return jpeg.scan_tally((data,))
    where = stream.tell()
    stream.seek(0)
    try:
        return jpeg.scan_tally(iter(partial(stream.read, SCAN_COUNT_CHUNK_BYTES), b""))
    finally:
        stream.seek(where)


def hash_source(
    name: str,
    recipe: Recipe,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    data: bytes | None = None,
    mirror: bool = False,
    on_header: Callable[[Image.Image], None] | None = None,
) -> tuple[Hash, Hash | None]:
    """Hash a file (or, with `data`, bytes that `name` only names), and with `mirror` its mirror
    image too, from one decode. The one place every caller hashes through, so a query and a stored
    image always take the same path.

    `on_header` runs after the recipe has told the decoder its reduced size and before decoding
    (the checker reserves decode memory there).
    """
    if data is not None and not data:
        raise ImageError(name, "empty file")
    stream = read_source(name, data)
    if on_header is None and uses_grid(recipe) and isinstance(stream, io.BytesIO):
        cells = plain_jpeg_grid(stream.getvalue(), recipe, max_pixels)
        if cells is not None:
            stream.close()
            return grid_hashes(cells, recipe, mirror)
    decoder = decoder_settings(recipe)

    def before_load(image: Image.Image) -> None:
        refusal = mode_refusal(image, recipe)  # --exact: a mode plain ImageHash cannot read
        if refusal is not None:
            raise ImageError(name, refusal)
        if decoder is not None:
            decoder(image)
        if on_header is not None:
            on_header(image)

    read_pixels = decoder.read_pixels if isinstance(decoder, GridDecoder) else None
    with open_image(name, max_pixels, data=data, stream=stream, before_load=before_load,
                    read_pixels=read_pixels) as image:
        return hash_decoded_and_mirror(image, recipe, decoder, mirror=mirror)


def hash_file(path: str, recipe: Recipe, max_pixels: int = DEFAULT_MAX_PIXELS) -> Hash:
    """Hash one image file, or raise ImageError with a short reason a person can act on."""
    return hash_source(path, recipe, max_pixels)[0]


def hash_file_and_mirror(
    path: str, recipe: Recipe, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Hash, Hash]:
    """The file's hash and its mirror image's, from one decode (for --mirror)."""
    plain, flipped = hash_source(path, recipe, max_pixels, mirror=True)
    assert flipped is not None
    return plain, flipped


def describe_failure(path: str, error: BaseException, head: bytes | None = None) -> str:
    """Turn what Pillow or the OS raised into a reason a person can act on.

    `head`: the first bytes of the image when it is not a file (an upload).
    """
    if isinstance(error, FileNotFoundError):
        return "file not found (deleted or a broken link?)"
    if isinstance(error, IsADirectoryError):
        return "is a directory"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, MemoryError):
        return "out of memory decoding it (lower --max-pixels, or allow more memory)"
    if isinstance(error, Image.DecompressionBombError):
        return f"refused as a decompression bomb by Pillow ({_one_line(error)})"
    if isinstance(error, UnidentifiedImageError):
        if head is None:
            try:
                with open(path, "rb") as stream:
                    head = stream.read(32)
            except OSError:
                head = b""
        if not head:
            return "empty file"
        unsupported = _unsupported_format(head)
        if unsupported and unsupported.startswith("HEI") and "HEIF" in readable_formats():
            # The plug-in is there and read the file's brand, but not the rest of it.
            return f"damaged {unsupported[:4]} file (the pillow-heif plug-in cannot read it)"
        if unsupported and unsupported.startswith("AVIF") and "AVIF" in readable_formats():
            # This Pillow reads AVIF: a file cut short or damaged (a review: a truncated AVIF
            # was blamed on the Pillow build).
            return "damaged AVIF file (Pillow cannot read it)"
        if unsupported:
            return f"unsupported format: {unsupported}"
        return f"not an image, or a format neardup does not read (it reads {_formats_read()})"
    if isinstance(error, jpeg.CutShort) or (isinstance(error, OSError)
                                            and "truncated" in str(error).lower()):
        return "truncated image"
    if isinstance(error, OSError) and "could not create decoder object" in str(error):
        # Pillow's WebP decoder's words for a file cut short or damaged (a review): every other
        # format says "truncated image".
        return "truncated or damaged WebP file"
    if isinstance(error, ValueError) and "MAX_TEXT_CHUNK" in str(error):
        # Pillow's own guard: a text or colour-profile chunk that inflates past its limit (a
        # review found Pillow's wording, naming its constant, in the line).
        return ("refused: a text or colour-profile chunk in it inflates past Pillow's limit of"
                f" {PngImagePlugin.MAX_TEXT_CHUNK // 2**20} MB (a decompression bomb?)")
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        # The system's error, not the decoder's (Pillow's carry no errno): a link loop, a name
        # too long, a read error. Said without the path the caller already names.
        return f"cannot read ({error.strerror[0].lower()}{error.strerror[1:]})"
    return f"cannot decode image ({type(error).__name__}: {_one_line(error)})"


def _one_line(error: BaseException) -> str:
    """An exception's text on one line (libheif's messages hold line breaks): one report, one
    line."""
    return " ".join(str(error).split())


# ISO media brands of image formats Pillow reads only with a plug-in (pillow-heif for HEIC/HEIF;
# AVIF is built into recent Pillow wheels, but not every build).
_ISO_IMAGE_BRANDS = {
    b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC",
    b"heif": "HEIF", b"mif1": "HEIF", b"msf1": "HEIF",
    b"avif": "AVIF", b"avis": "AVIF",
}


@cache
def _iso_format_remedy(name: str) -> str:
    """What a format of _ISO_IMAGE_BRANDS needs, with the command that installs it, the same
    words as every other missing extra (read once: a folder of HEIC photos asks for each)."""
    if name == "AVIF":
        return "AVIF (this Pillow was built without AVIF support)"
    return f"{name} (the pillow-heif plug-in reads it: {install_hint('heic')})"


# Formats Pillow has a plug-in for but neardup never hands to it (see RASTER_FORMATS): named in
# the refusal, so a person knows the file was recognised and refused, not misread.
_REFUSED_SIGNATURES = (
    (b"%!PS-Adobe", "PostScript/EPS (not read: Pillow would run Ghostscript on it)"),
    (b"%!", "PostScript (not read: Pillow would run Ghostscript on it)"),
    (b"\xc5\xd0\xd3\xc6", "EPS (not read: Pillow would run Ghostscript on it)"),
    (b"%PDF", "PDF (a document, not an image)"),
    (b"8BPS", "Photoshop PSD (not read)"),
    (b"SIMPLE  =", "FITS (not read)"),
    (b"/* XPM */", "XPM (not read)"),
    (b"\x00\x00\x01\x00", "ICO (not read)"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000 (not read)"),
    (b"\xffO\xffQ", "JPEG 2000 (not read)"),
    (b"qoif", "QOI (not read)"),
    (b"DDS ", "DDS (not read)"),
)
# Netpbm's PBM, PGM, PPM and PAM: "P1" to "P7" and a whitespace.
_NETPBM = re.compile(rb"P[1-7][ \t\r\n]")


def _formats_read() -> str:
    """The formats this installation reads, for a refusal: "JPEG, PNG, ... and HEIF"."""
    names = [{"WEBP": "WebP"}.get(name, name) for name in readable_formats()
             if name != "MPO"]  # an MPO is a JPEG, to a person
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def _unsupported_format(head: bytes) -> str | None:
    if head[4:8] == b"ftyp":
        name = _ISO_IMAGE_BRANDS.get(head[8:12])
        return None if name is None else _iso_format_remedy(name)
    for signature, name in _REFUSED_SIGNATURES:
        if head.startswith(signature):
            return name
    if _NETPBM.match(head):
        return "Netpbm PBM/PGM/PPM (not read)"
    return None
