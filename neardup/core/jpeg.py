"""Grayscale JPEG decoding through simplejpeg, when it is installed (the optional extra `fast`).

Pillow and simplejpeg both decode with libjpeg-turbo, with the same settings for a grayscale
output (accurate integer IDCT, luma taken as it is stored), so they give the same pixels at every
scale; a test holds them equal. simplejpeg goes straight from the bytes to a numpy array, without
Pillow's Python decode loop and its copy into an array: on 300 x 200 CALTECH-101 photos it halves
the decode (bench/index_speed.py). Pillow remains the decoder for everything this path does not
take, so a hash never depends on which of the two is installed.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

try:  # optional: requirements-fast.txt
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None

# libjpeg's colour spaces whose grayscale output is the stored luma (or the only channel). Other
# three-channel JPEGs (Adobe RGB-coded, YCCK, CMYK) are converted by formulas that are left to
# Pillow, whatever simplejpeg would do with them.
LUMA_SPACES = ("Gray", "YCbCr")


# Every scan of a JPEG is a pass over all of its blocks, and libjpeg decodes as many scans as a
# file holds: a 3.4 MB upload of 100,000 near-empty progressive scans took 28 s, a 58 KB
# arithmetic-coded one of 3,000 sequential scans 15 s, and a 4.7 KB one of 251 progressive scans
# over 100 megapixels 3.7 s (hostile reviews). So the scans of every JPEG that is not Huffman-coded
# sequential (where a scan's bytes grow with its picture, and 5 MB decoded in 0.57 s) are counted
# before decoding, and a JPEG is refused beyond MAX_SCANS scans, or beyond MAX_SCAN_BLOCKS scans
# times 8 x 8 blocks (about 100 million a second are decoded: the limit is about half a second,
# and a 100-megapixel progressive photo of 12 scans, 19 million, is far below it). Photos hold
# one to about a dozen scans. Counting reads every byte (1.6 ms for a 12-megapixel photo), which
# the Huffman-coded sequential JPEGs that most photos are never pay.
MAX_SCANS = 256
MAX_SCAN_BLOCKS = 50_000_000
START_OF_SCAN = b"\xff\xda"
# Start-of-frame markers: SOF0 and SOF1 are Huffman-coded sequential; the rest (progressive,
# lossless, arithmetic-coded, hierarchical) have their scans counted. C4, C8 and CC are not frames.
HUFFMAN_SEQUENTIAL = frozenset((0xC0, 0xC1))
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def scan_count(data: bytes) -> int:
    """How many scans a JPEG's bytes hold, or more: a marker cannot appear inside entropy-coded
    data (a 0xFF byte there is followed by 0 or a restart marker), but may inside a metadata
    block or an embedded thumbnail, which only ever adds to the count."""
    return data.count(START_OF_SCAN)


def frame_header(data: bytes) -> tuple[int, int, int] | None:
    """(start-of-frame marker, width, height) of the JPEG these bytes begin, or None when the
    walk over its blocks does not reach a whole frame header (not a JPEG, bytes between blocks,
    cut short)."""
    for position, marker in _blocks(data):
        if marker in _FRAMES:
            if position + 9 > len(data):
                return None
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            return marker, width, height
    return None


def needs_scan_count(head: bytes) -> bool:
    """Whether a JPEG, from its first bytes, must have its scans counted: anything but a
    Huffman-coded sequential frame, including a frame the walk does not find."""
    frame = frame_header(head)
    return frame is None or frame[0] not in HUFFMAN_SEQUENTIAL


def decoding_refusal(scans: int, width: int, height: int) -> str | None:
    """Why a JPEG of this many scans over this picture is not decoded, or None."""
    blocks = -(-width // 8) * -(-height // 8)
    if scans <= MAX_SCANS and scans * blocks <= MAX_SCAN_BLOCKS:
        return None
    return (f"refused: a JPEG of {scans:,} scans over {width} x {height} pixels (each scan is a"
            " pass over the whole picture: decoding it would take seconds; photos have about"
            " ten)")


def available() -> bool:
    """Whether the fast decoder is installed."""
    return simplejpeg is not None


# Blocks Pillow acts on when it opens a JPEG, which would change its hash: EXIF and XMP (Pillow
# reads the orientation from either) and MPF (a multi-picture file, which Pillow opens as MPO and
# decodes in colour). A JPEG holding none of them is hashed without opening it in Pillow at all.
PILLOW_BLOCKS = (b"Exif\x00\x00", b"http://ns.adobe.com/xap/1.0/", b"MPF\x00")
# Markers without a length that may stand between segments: RST0-7. Markers below 0xC0, a second
# SOI and EOI are left to Pillow (it refuses some of them and reads on past others).
_BARE_MARKERS = frozenset(range(0xD0, 0xD8))
_LEFT_TO_PILLOW = frozenset([*range(0xC0), 0xD8, 0xD9])
_START_OF_SCAN = 0xDA


def header_length(data: bytes) -> int | None:
    """Where the JPEG's first scan starts: Pillow reads its blocks up to there and no further.

    None for anything this strict walk does not follow (bytes between segments, a segment
    running past the end): such a file goes to Pillow, which resynchronises as it sees fit.
    """
    for position, marker in _blocks(data):
        if marker in _LEFT_TO_PILLOW:
            return None
        if marker == _START_OF_SCAN:
            return position
    return None


def _blocks(data: bytes) -> Iterator[tuple[int, int]]:
    """(position, marker) of each block of the JPEG these bytes begin, in order, as far as a
    strict walk follows them: it stops at bytes between blocks, at a block whose length runs
    past the end, and after the first scan's marker, a second SOI or an EOI."""
    if not data.startswith(b"\xff\xd8"):
        return
    position, end = 2, len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            return
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte before the marker
            position += 1
            continue
        yield position, marker
        if marker in _BARE_MARKERS:
            position += 2
            continue
        if marker in (_START_OF_SCAN, 0xD8, 0xD9):
            return
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if length < 2:
            return
        position += 2 + length


def plain_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a luma JPEG holding none of PILLOW_BLOCKS, when the fast decoder is
    installed; None otherwise (and for anything that is not a JPEG simplejpeg can read).
    """
    if simplejpeg is None or not data.startswith(b"\xff\xd8\xff"):
        return None
    header = header_length(data)
    if header is None:
        return None
    # Looked for in whole blocks' bytes, not only at their starts: a false alarm (their bytes
    # inside a table or a comment) only sends the file to Pillow.
    blocks = data[:header]
    if any(block in blocks for block in PILLOW_BLOCKS):
        return None
    try:
        height, width, space, _subsampling = simplejpeg.decode_jpeg_header(data)
    except ValueError:  # simplejpeg's every decoding error
        return None
    return (width, height) if space in LUMA_SPACES else None


def decode_luma(data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """The JPEG's grayscale pixels at `size` (width, height: the full size divided by 1, 2, 4 or 8
    and rounded up, as libjpeg scales), or None when simplejpeg finds anything wrong with the
    data (strict: libjpeg's warnings too) or decodes another size."""
    if simplejpeg is None:
        return None
    width, height = size
    try:
        # The smallest of libjpeg's scales keeping at least this size is the one asked for.
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY", min_width=width,
                                        min_height=height, strict=True)
    except ValueError:  # simplejpeg's every decoding error
        return None
    if pixels.shape[:2] != (height, width):
        return None
    return pixels[:, :, 0]


def decode_gray(image: Image.Image, stream: Any) -> np.ndarray | None:
    """The pixels Pillow would decode for this JPEG, drafted to mode "L" (see GridDecoder), or
    None where Pillow must decode it.

    `image` is the opened, not yet loaded, Pillow image (its size the drafted one); `stream` what
    it was opened from. None when simplejpeg is missing, the data is not in memory, the JPEG is
    not a luma one, or simplejpeg finds anything wrong with it: Pillow then decodes it and reports
    its own error, so a damaged file gets the same answer either way.
    """
    if simplejpeg is None or image.format != "JPEG" or image.mode != "L":
        return None
    if not isinstance(stream, io.BytesIO):  # a large file read as it is decoded
        return None
    data = stream.getvalue()
    try:
        if simplejpeg.decode_jpeg_header(data)[2] not in LUMA_SPACES:
            return None
    except ValueError:
        return None
    return decode_luma(data, image.size)
