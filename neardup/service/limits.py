"""What one upload may cost the checker: its pixels, and the memory decoding it takes.

A few-KB PNG can claim 10000 x 10000 16-bit pixels; decoding it and bringing it to 8 bits took
2.0 GB. So before a single pixel is decoded, the header's size and sample format give an estimate
of the memory the decode and its preprocessing will take, and that much is reserved from a budget
shared by every decode in the process. An upload that could never fit is refused at once; one that
fits later waits a little, and is answered 503 if room does not come in time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

from ..core import jpeg
from ..errors import ImageError

# Uploads come from strangers, so their limit is lower than the 100 megapixels allowed for files
# being indexed: 50 megapixels is above every phone camera's default output (12-48 MP) and a
# third of the memory a 16-bit 10000 x 10000 PNG asks for.
DEFAULT_UPLOAD_MAX_PIXELS = 50_000_000
# Decoding memory for all uploads at once. With the body buffers (in-flight limit x upload limit)
# and the search index this keeps the whole service well under 1.5 GB (bench/abuse.py).
DEFAULT_DECODE_MEMORY = 512 * 1024 * 1024
# How long an upload waits for decode memory held by others before it is answered 503.
DEFAULT_DECODE_WAIT = 10.0

# Bytes Pillow keeps per pixel for each mode (RGB is stored in four bytes, like RGBA).
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 4, "La": 4, "PA": 4, "RGB": 4, "RGBA": 4, "RGBa": 4,
                 "RGBX": 4, "CMYK": 4, "YCbCr": 4, "LAB": 4, "HSV": 4, "I": 4, "F": 4,
                 "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Preprocessing (hashing.normalise) brings samples deeper than 8 bits to 8 through float64 arrays:
# two of them alive at once, plus the 8-bit result.
_HIGH_DEPTH_WORK = 8 + 8 + 1
# ...and composites transparency: an RGBA copy, a canvas, the composite and the RGB result.
_ALPHA_WORK = 4 + 4 + 4 + 4
# What a decode takes whatever the image's size: the decoder's buffers (9 MB measured for a
# 16-megapixel JPEG decoded at 1/8 scale, bench/decode_memory.py).
_DECODER_BUFFERS = 16 * 1024 * 1024
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
# ...and converts the two modes Pillow cannot bring to gray (hashing.flatten): CIELab to an sRGB
# copy; premultiplied gray to its two bands, then an RGBa and an RGBA picture.
_CONVERSION_WORK = {"LAB": 4, "La": 1 + 1 + 4 + 4}
# Pillow keeps a pointer to each row of an image, and about three images of the picture's height
# are alive at the peak: a PNG of 1 x 49,000,000 gray pixels (95 KB) took 1,370 MB and 2 x
# 24,000,000 781 MB (search.py -q on a store with features, /usr/bin/time), against 213 and
# 209 MB estimated from pixels alone (a hostile review: four at once took a server to 1.9 GB
# under a decode budget of 512 MB). 8 bytes x 3 images, and some margin. Counted for the longer
# side: an EXIF orientation of 5 to 8 turns the picture upright, and the upright copies have as
# many rows as the file has columns (a later review: a 44 KB PNG of 45,000,000 x 1 pixels with
# orientation 6 took 1.6 GB, estimated at 200 MB from its rows as stored). The orientation cannot
# be read first: a PNG may keep its eXIf chunk after the pixels.
_ROW_WORK = 32
# libwebp decodes into a buffer of its own (4 bytes a pixel) that Pillow then copies: a 4000 x
# 4000 WebP, lossless or not, peaked at 244 to 248 MB hashed, against 169 estimated (a hostile
# review: 7000 x 7000 ones, estimated 506 MB, took 736 to 745 MB under a 512 MB budget). 8, not
# 6: a second review's lossless ones went 2 to 4 % over with 6 (330 MB against 325 at 4500 x 4500).
_WEBP_DECODER = 8
# extract.analysis_frame makes an upright copy and an RGB one at full size before it reduces
# them: 4000 x 4000 RGB uploads decoded for features peaked at 192 (PNG), 196 (AVIF) and 312 MB
# (WebP) against 169 estimated, 78 MB more than hashing the same file; a gray one (52 MB) did not.
_FRAME_WORK = 6
_GRAY_FRAME_MODES = {"1", "L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def decode_cost(image: Image.Image, *, frame: bool = False) -> int:
    """Bytes decoding and preparing this image will take at its peak, from its header alone.

    Call after the decoder was told its reduced size (a JPEG draft), so that size is what counts.
    The decoded image counts twice (an upright copy is made), plus two bytes a pixel for the
    grayscale copy the hash is taken from and its working arrays, plus those of 16-bit samples
    and of transparency, plus Pillow's pointers to rows, plus the decoder's buffers.
    bench/decode_memory.py holds it to the peaks measured on 4000 x 4000 uploads (8-bit gray
    60 MB, RGB 121, RGBA 311, 16-bit gray 302, a JPEG 9): it estimates 77, 169, 413, 367 and
    17 MB. `frame`: decoded for local features (extract.read_frame), which makes an upright
    copy and a colour one at full size before it reduces them (FRAME_WORK).
    """
    width, height = image.size
    pixels = width * height
    mode = image.mode
    per_pixel = 2 * _STORED_BYTES.get(mode, 4) + 2
    if mode in _HIGH_DEPTH_MODES:
        per_pixel += _HIGH_DEPTH_WORK
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        per_pixel += _ALPHA_WORK
    per_pixel += _CONVERSION_WORK.get(mode, 0)
    if image.format == "WEBP":
        per_pixel += _WEBP_DECODER
    if frame and mode not in _GRAY_FRAME_MODES:
        per_pixel += _FRAME_WORK
    return (pixels * per_pixel + max(width, height) * _ROW_WORK + _DECODER_BUFFERS
            + _tiff_blocks(image) + _jpeg_coefficients(image))


# A JPEG this small in bytes and pixels, Huffman-coded sequential with every component in its
# first scan, has its decode cost bounded from its frame header alone (cost_bound), read by our
# own parser (jpeg.py) without a decoder: most CALTECH-101 photos are such (51 of 9,145 are over
# 64 KB). The byte limit bounds the parse (a header of 4-byte blocks: 30 ms per 256 KB).
BOUNDED_MAX_BYTES = 64 * 1024
BOUNDED_MAX_PIXELS = 1_000_000


def cost_bound(data: bytes | None) -> int | None:
    """At least what decode_cost will say of a small plain JPEG (above), from its bytes alone;
    None for anything else. The checker reserves it before the worker process decodes, instead
    of a round trip to hear the header from the worker (a third of a millisecond an upload)."""
    if data is None or len(data) > BOUNDED_MAX_BYTES or not data.startswith(b"\xff\xd8"):
        return None
    frame = jpeg.frame_header(data)
    if (frame is None or frame.needs_scan_count()
            or frame.width * frame.height > BOUNDED_MAX_PIXELS):
        return None
    # decode_cost at full size (a draft only makes it smaller), at its most bytes a pixel, decoded
    # for its features too; a sequential JPEG whose first scan holds every component keeps no
    # coefficient buffer.
    return (frame.width * frame.height * (2 * max(_STORED_BYTES.values()) + 2 + _FRAME_WORK)
            + max(frame.width, frame.height) * _ROW_WORK + _DECODER_BUFFERS)


def _tiff_blocks(image: Image.Image) -> int:
    """The buffer libtiff decodes a TIFF's tile or strip into, one at a time: a whole tile
    however small the picture (256 x 256 pixels in one 16384 x 16384 deflate tile took 843 MB
    against 17 MB estimated from pixels; tiff.py refuses the absurd ones, this counts the rest).
    Uncompressed strips are read by Pillow row by row."""
    tags = getattr(image, "tag_v2", None)
    if image.format != "TIFF" or tags is None:
        return 0
    try:
        samples = int(tags.get(277, 1))
        bits = tags.get(258, 8)
        depth = max(bits) if isinstance(bits, tuple) and bits else int(bits)
        # Decoded through TIFFReadRGBA* (YCbCr, JPEG in TIFF) it is four bytes a pixel.
        per_pixel = max(4, samples * -(-depth // 8))
        if 322 in tags and 323 in tags:
            return int(tags[322]) * int(tags[323]) * per_pixel
        if int(tags.get(259, 1)) == 1:
            return 0
        width, height = image.size
        return width * min(int(tags.get(278, height)), height) * per_pixel
    except (TypeError, ValueError):
        return 0  # Pillow refuses such tags when it decodes


# Bytes read from a JPEG's start to find its first scan's header: Pillow stops right after the
# scan's marker, so its position plus the longest scan header.
_SCAN_HEADER_BYTES = 5 + 2 * 255 + 1


def _jpeg_coefficients(image: Image.Image) -> int:
    """The coefficient buffer libjpeg keeps for a progressive or multi-scan JPEG: every 8 x 8
    block of every component at full size, two bytes a coefficient, decoded at 1/8 scale or not
    (a 767 KB progressive CMYK JPEG of 7000 x 7000 took 444 MB against 24 MB estimated, a
    hostile review). A sequential JPEG whose first scan holds every component is decoded a row
    of blocks at a time."""
    if image.format not in ("JPEG", "MPO"):
        return 0
    layers = getattr(image, "layer", None) or []
    if not image.info.get("progressive") and not _multi_scan(image, len(layers)):
        return 0
    config = getattr(image, "decoderconfig", ())  # (scale, 0) once draft reduced the size
    scale = config[0] if config and config[0] else 1
    width, height = image.size[0] * scale, image.size[1] * scale
    factors = [(max(1, h), max(1, v)) for _, h, v, _ in layers] or [(1, 1)]
    most_h, most_v = max(h for h, _ in factors), max(v for _, v in factors)
    total = 0
    for h, v in factors:
        # The component's blocks across and down, rounded up to whole MCUs.
        across = _round_up(_ceil(width * h, 8 * most_h), h)
        down = _round_up(_ceil(height * v, 8 * most_v), v)
        total += across * down * 64 * 2
    return total


def _ceil(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _round_up(number: int, step: int) -> int:
    return _ceil(number, step) * step


def _multi_scan(image: Image.Image, components: int) -> bool:
    """Whether the JPEG's first scan holds fewer than all its components (then it has several)."""
    stream = getattr(image, "fp", None)
    if stream is None or components < 2:
        return False
    try:
        where = stream.tell()
        stream.seek(0)
        head = stream.read(where + _SCAN_HEADER_BYTES)
        stream.seek(where)
    except (OSError, ValueError):
        return False
    frame = jpeg.frame_header(head)
    return (frame is not None and frame.first_scan_components is not None
            and frame.first_scan_components < frame.components)


# Both are ImageErrors so that hashing.open_image, which turns anything else raised while opening
# into "cannot decode image", passes them on unchanged.
class DecodeBusy(ImageError):
    """No decode memory came free in time: the client should try again shortly (503)."""


class DecodeTooLarge(ImageError):
    """The upload would need more decode memory than the whole budget: it can never fit (413)."""


class DecodeBudget:
    """Memory shared by concurrent decodes: each reserves its estimate before decoding."""

    def __init__(self, capacity: int, wait: float = DEFAULT_DECODE_WAIT) -> None:
        self.capacity = capacity
        self.wait = wait
        self._used = 0
        self._room = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    @contextmanager
    def reservation(self) -> Iterator[Reservation]:
        """A reservation that gives back whatever it took when the block ends, however it ends."""
        held = Reservation(self)
        try:
            yield held
        finally:
            held.release()

    def _take(self, name: str, amount: int) -> None:
        if amount > self.capacity:
            # Rounded up, and both to a tenth where whole megabytes would read alike ("about 64
            # MB, over the decode memory limit of 64 MB": a review).
            needed, limit = mb(amount, up=True), mb(self.capacity)
            if needed == limit:
                needed = f"{math.ceil(amount / 2**20 * 10) / 10:,.1f} MB"
                limit = f"{math.floor(self.capacity / 2**20 * 10) / 10:,.1f} MB"
            raise DecodeTooLarge(name, f"refused: decoding it would take about {needed}, over"
                                       f" the decode memory limit of {limit}")
        with self._room:
            if not self._room.wait_for(lambda: self._used + amount <= self.capacity, self.wait):
                raise DecodeBusy(name, f"busy: {mb(self._used)} of {mb(self.capacity)} decode memory in"
                                 " use by other uploads; try again shortly")
            self._used += amount

    def _give_back(self, amount: int) -> None:
        with self._room:
            self._used -= amount
            self._room.notify_all()


class Reservation:
    def __init__(self, budget: DecodeBudget) -> None:
        self._budget = budget
        self.amount = 0

    def take(self, name: str, amount: int) -> None:
        if self.amount:
            raise RuntimeError("a reservation is taken once")
        self._budget._take(name, amount)
        self.amount = amount

    def release(self) -> None:
        if self.amount:
            self._budget._give_back(self.amount)
            self.amount = 0


def mb(amount: int, *, up: bool = False) -> str:
    megabytes = amount / 2**20
    return f"{math.ceil(megabytes) if up else round(megabytes):,} MB"


# glibc's malloc serves blocks of M_MMAP_THRESHOLD or more with mmap, returned to the system when
# freed, but raises the threshold to the largest such block freed (up to 32 MB): after the first
# large uploads, the next ones' buffers came from the heap and stayed with the process (a review:
# 32 uploads of 30 MB at once, three times, left the server at 1.0 GB, idle). Set, the threshold
# stays where it is.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024


def large_blocks_returned() -> None:
    """Fix glibc's mmap threshold (above), where there is glibc; elsewhere nothing. Called by
    the checker's server and by each decoding worker (whose decoded pictures are as large)."""
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass  # not glibc (macOS, musl's stub): its own allocator's ways
