"""From an image file to a perceptual hash.

This module owns every preprocessing decision (orientation, transparency, bit depth, pixel limit), so a
store can name the exact recipe that produced its hashes and refuse to mix two recipes.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

HashFunction = Callable[[Image.Image, int], imagehash.ImageHash]

ALGORITHMS: dict[str, HashFunction] = {
    "dhash": imagehash.dhash,
    "phash": imagehash.phash,
    "ahash": imagehash.average_hash,
    "whash": imagehash.whash,
}

# Bumped whenever the normalising preprocessing changes the bits it produces; stores record it.
# 1: orientation, alpha, bit depth. 2: JPEGs decoded in grayscale at reduced scale (DRAFT_SIDE).
PREPROCESS_VERSION = 2

# JPEGs are decoded by libjpeg straight to grayscale and scaled down by 1/2, 1/4 or 1/8 while
# decoding, keeping both sides at least this many pixels per 8 hash bits of side. Measured on
# CALTECH-101 (600 copies resized +-5% and saved as JPEG, and all 41.8 million photo pairs):
# 128 keeps every copy within 4 bits of its original (a full decode: the same) and 245 photo
# pairs within 4 bits (full decode: 256), at 1.8x the speed on 300x200 photos and 4.7x on 12 MP.
# Smaller targets are faster but lose copies: 64 keeps 99.5% within 4 bits, 1/8 scale only 86.7%.
DRAFT_SIDE = 128

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

    def __post_init__(self) -> None:
        if self.bits <= 0 or not 0 <= self.value < (1 << self.bits):
            raise ValueError(f"hash value does not fit in {self.bits} bits")

    def hex(self) -> str:
        """Fixed-width lowercase hex, identical to `str(imagehash_object)`."""
        return format(self.value, f"0{(self.bits + 3) // 4}x")

    def distance(self, other: Hash) -> int:
        """Hamming distance: the number of differing bits."""
        if other.bits != self.bits:
            raise ValueError(f"cannot compare a {self.bits}-bit hash with a {other.bits}-bit hash")
        return (self.value ^ other.value).bit_count()

    @classmethod
    def from_hex(cls, text: str, bits: int) -> Hash:
        if len(text) != (bits + 3) // 4:
            raise ValueError(f"{text!r} is not a {bits}-bit hex hash")
        return cls(int(text, 16), bits)

    @classmethod
    def from_imagehash(cls, image_hash: imagehash.ImageHash) -> Hash:
        flat = np.asarray(image_hash.hash, dtype=bool).ravel()
        packed = int.from_bytes(np.packbits(flat).tobytes(), "big")
        padding = (-flat.size) % 8  # packbits pads the last byte on its low side
        return cls(packed >> padding, int(flat.size))

    def __str__(self) -> str:
        return self.hex()


def is_low_information(value: Hash) -> bool:
    """True for the degenerate hashes of blank, single-colour and smooth-gradient images.

    Such images give (nearly) all-zero or all-one bits under every ImageHash algorithm, so they
    would "match" every other blank image. The band is bits/16 wide (4 bits of 64): no photo of
    CALTECH-101's 9,145 has a dHash within it (the fewest set bits there is 5, the most 56).
    """
    band = value.bits // 16
    ones = value.value.bit_count()
    return ones <= band or ones >= value.bits - band


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
        if self.hash_size < 2:
            raise ValueError("hash size must be at least 2")
        if self.algorithm == "whash" and self.hash_size & (self.hash_size - 1):
            raise ValueError("whash needs a hash size that is a power of 2")

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
        return cls(
            algorithm=str(data["algorithm"]),
            hash_size=int(data["hash_size"]),
            exact=bool(data["exact"]),
            preprocess_version=int(data["preprocess_version"]),
        )


def normalise(image: Image.Image) -> Image.Image:
    """Return the first frame, upright, without transparency and with 8-bit samples."""
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not cost us the picture itself
        upright = image.copy()
    if upright is None:  # Pillow < 10 returns None when transposing in place; we never do
        upright = image.copy()

    if upright.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's convert('L') clips 16-bit samples at 255, turning most 16-bit images white.
        samples = np.asarray(upright, dtype=np.float64) / 257.0
        upright = Image.fromarray(np.clip(samples, 0, 255).astype(np.uint8))
    elif upright.mode == "F":
        upright = Image.fromarray(np.clip(np.asarray(upright), 0, 255).astype(np.uint8))

    has_alpha = upright.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        upright.mode == "P" and "transparency" in upright.info
    )
    if has_alpha:
        rgba = upright.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        upright = Image.alpha_composite(canvas, rgba).convert("RGB")
    return upright


def decode_reduced(image: Image.Image, recipe: Recipe) -> None:
    """Ask the decoder for a smaller grayscale image where that is cheaper (JPEG); before load."""
    if image.format == "JPEG":
        side = DRAFT_SIDE * max(1, recipe.hash_size // 8)
        image.draft("L", (side, side))


def decoder_settings(recipe: Recipe) -> Callable[[Image.Image], None] | None:
    """What to tell the decoder before it decodes (None: decode as plain ImageHash does)."""
    if recipe.exact:
        return None
    return lambda image: decode_reduced(image, recipe)


def prepare(image: Image.Image, recipe: Recipe) -> Image.Image:
    """The decoded image as the recipe shows it to the hash."""
    return image if recipe.exact else normalise(image)


def hash_prepared(prepared: Image.Image, recipe: Recipe) -> Hash:
    return Hash.from_imagehash(ALGORITHMS[recipe.algorithm](prepared, recipe.hash_size))


def hash_image(image: Image.Image, recipe: Recipe) -> Hash:
    """Hash a decoded image according to the recipe."""
    return hash_prepared(prepare(image, recipe), recipe)


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


@contextmanager
def open_image(
    path: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    data: bytes | None = None,
    before_load: Callable[[Image.Image], None] | None = None,
) -> Iterator[Image.Image]:
    """Open and decode an image (its first frame), refusing bombs and formats we do not read.

    Only opening and decoding are guarded: what they raise becomes an ImageError with a short
    reason. What the caller then does with the pixels is not, so a bug in our code stays a bug
    instead of being reported as a bad image. `before_load` runs between reading the header and
    decoding (to ask for a reduced decode). With `data`, the image is read from those bytes (an
    upload) and `path` only names it.
    """
    stream: io.BufferedIOBase | None = None
    image: Image.Image | None = None
    try:
        stream = open(path, "rb") if data is None else io.BytesIO(data)
        with warnings.catch_warnings():
            # Pillow's warning would fire for anything over ~89 megapixels and say nothing useful:
            # the limit below is ours, and --max-pixels sets it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream, formats=readable_formats())
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    path, f"refused: {width} x {height} pixels is over the limit of {max_pixels:,}"
                )
            if before_load is not None:
                before_load(image)
            image.load()
    except Exception as error:  # noqa: BLE001 - hostile files raise anything; each becomes a report
        if image is not None:
            image.close()
        if stream is not None:
            stream.close()
        if isinstance(error, ImageError):
            raise
        head = None if data is None else data[:32]
        raise ImageError(path, describe_failure(path, error, head)) from error
    try:
        yield image
    finally:
        image.close()
        stream.close()


def hash_file(path: str, recipe: Recipe, max_pixels: int = DEFAULT_MAX_PIXELS) -> Hash:
    """Hash one image file, or raise ImageError with a short reason a person can act on."""
    with open_image(path, max_pixels, before_load=decoder_settings(recipe)) as image:
        return hash_image(image, recipe)


def hash_file_and_mirror(
    path: str, recipe: Recipe, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Hash, Hash]:
    """The file's hash and its mirror image's, from one decode (for --mirror)."""
    with open_image(path, max_pixels, before_load=decoder_settings(recipe)) as image:
        prepared = prepare(image, recipe)
        return hash_prepared(prepared, recipe), hash_prepared(ImageOps.mirror(prepared), recipe)


def hash_bytes(
    data: bytes, recipe: Recipe, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "upload"
) -> Hash:
    """Hash an image held in memory (an upload); errors name it `name`."""
    if not data:
        raise ImageError(name, "empty file")
    with open_image(name, max_pixels, data=data, before_load=decoder_settings(recipe)) as image:
        return hash_image(image, recipe)


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
    if isinstance(error, Image.DecompressionBombError):
        return f"refused as a decompression bomb by Pillow ({error})"
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
        if unsupported:
            return f"unsupported format: {unsupported}"
        return "not an image, or a format Pillow cannot read"
    if isinstance(error, OSError) and "truncated" in str(error):
        return "truncated image"
    return f"cannot decode image ({type(error).__name__}: {error})"


# ISO media brands of image formats Pillow reads only with a plug-in (pillow-heif for HEIC/HEIF;
# AVIF is built into recent Pillow wheels, but not every build).
_ISO_IMAGE_BRANDS = {
    b"heic": "HEIC (install the pillow-heif plug-in to read it)",
    b"heix": "HEIC (install the pillow-heif plug-in to read it)",
    b"hevc": "HEIC (install the pillow-heif plug-in to read it)",
    b"heif": "HEIF (install the pillow-heif plug-in to read it)",
    b"mif1": "HEIF (install the pillow-heif plug-in to read it)",
    b"msf1": "HEIF (install the pillow-heif plug-in to read it)",
    b"avif": "AVIF (this Pillow was built without AVIF support)",
    b"avis": "AVIF (this Pillow was built without AVIF support)",
}


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
)


def _unsupported_format(head: bytes) -> str | None:
    if head[4:8] == b"ftyp":
        return _ISO_IMAGE_BRANDS.get(head[8:12])
    for signature, name in _REFUSED_SIGNATURES:
        if head.startswith(signature):
            return name
    return None
