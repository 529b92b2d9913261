"""Grayscale JPEG decoding through simplejpeg, when it is installed (the optional extra `fast`).

Pillow and simplejpeg both decode with libjpeg-turbo, with the same settings for a grayscale
output (accurate integer IDCT, luma taken as it is stored), so they give the same pixels at every
scale; a test holds them equal. simplejpeg goes straight from the bytes to a numpy array, without
Pillow's Python decode loop and its copy into an array: on 300 x 200 CALTECH-101 photos it halves
the decode (bench/index_speed.py). Pillow remains the decoder for everything this path does not
take, so a hash never depends on which of the two is installed; only a JPEG whose data ends
before its picture does is refused here (libjpeg's warning, which Pillow does not report).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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


# Every scan of a JPEG is a pass over all the blocks of the components it holds, and libjpeg
# decodes as many scans as a file holds, even empty ones: a 3.4 MB upload of 100,000 near-empty
# progressive scans took 28 s; 58 KB of arithmetic-coded sequential ones 15 s; 251 progressive
# scans over 100 megapixels in 4.7 KB 3.7 s; 2,000 Huffman-coded sequential scans in 20 KB 10 s (a
# sequential JPEG whose first scan holds only some of its components takes any number more);
# 200 arithmetic-coded DC scans of 4 components in 3.3 KB 15 s; 50 lossless scans in 563 bytes
# 3.7 s (hostile reviews). So before a JPEG is decoded its scans are counted, each weighed by the
# components it holds, the blocks of the picture and what the decoder does per block, measured on
# those files in units of about 10 ns: an AC scan of a progressive JPEG 1 (empty blocks are
# skipped in runs: about 100 million a second), a scan holding the DC coefficients (every scan of
# a sequential JPEG) 2 when Huffman-coded, 8 when arithmetic-coded (13 million a second); a
# lossless scan per pixel rather than per 8 x 8 block. A JPEG is refused beyond MAX_SCANS scans
# or MAX_DECODE_WORK (about a second; a 96-megapixel arithmetic-coded progressive photo is about
# 50 million, a 100-megapixel Huffman-coded one 24 million). The one kind not counted is a
# Huffman-coded sequential JPEG whose first scan holds all its components (most photos): libjpeg
# stops at a second scan there. Counting reads every byte (1.6 ms for a 12-megapixel photo),
# which those never pay.
MAX_SCANS = 256
MAX_DECODE_WORK = 100_000_000
DC_SCAN_COST = 2
ARITHMETIC_DC_SCAN_COST = 8
# The start-of-scan marker, as the walk over blocks sees it and as bytes to search for.
SOS = 0xDA
START_OF_SCAN = bytes((0xFF, SOS))
# Start-of-frame markers (C4, C8 and CC are not frames): SOF0 and SOF1 are Huffman-coded
# sequential, 9 to 15 but 12 arithmetic-coded, 3, 7, 11 and 15 lossless.
HUFFMAN_SEQUENTIAL = frozenset((0xC0, 0xC1))
PROGRESSIVE = frozenset((0xC2, 0xC6, 0xCA, 0xCE))
ARITHMETIC = frozenset((0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
LOSSLESS = frozenset((0xC3, 0xC7, 0xCB, 0xCF))
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True, slots=True)
class Frame:
    """What a JPEG's blocks up to its first scan declare."""

    marker: int  # its start-of-frame marker
    width: int
    height: int
    components: int
    first_scan_components: int | None  # None: the first scan's header was not reached

    def needs_scan_count(self) -> bool:
        """All but a Huffman-coded sequential JPEG whose first scan holds all its components."""
        return not (self.marker in HUFFMAN_SEQUENTIAL
                    and self.first_scan_components == self.components)

    def decoding_refusal(self, tally: tuple[int, int, int], width: int | None = None,
                         height: int | None = None) -> str | None:
        """Why a JPEG of this frame and these scans (scan_tally's) is not decoded, or None.
        `width` and `height`: the picture's size where the decoder says otherwise (Pillow's)."""
        scans, dc_components, ac_components = tally
        if self.marker not in PROGRESSIVE:  # libjpeg decodes whole blocks whatever Ss says
            dc_components, ac_components = dc_components + ac_components, 0
        width = self.width if width is None else width
        height = self.height if height is None else height
        dc_cost = ARITHMETIC_DC_SCAN_COST if self.marker in ARITHMETIC else DC_SCAN_COST
        work = (dc_components * dc_cost + ac_components) * (-(-width // 8) * -(-height // 8))
        if self.marker in LOSSLESS:
            work *= 64  # pixels, not blocks
        if scans <= MAX_SCANS and work <= MAX_DECODE_WORK:
            return None
        counted = f"more than {MAX_SCANS}" if scans > MAX_SCANS else f"{scans:,}"
        return (f"refused: a JPEG of {counted} scans over {width} x {height} pixels (each scan"
                " is a pass over the whole picture: decoding it would take seconds; photos have"
                " about ten)")


# A frame the walk does not reach (bytes between blocks): counted, weighed as arithmetic-coded.
UNKNOWN_FRAME = Frame(0xC9, 0, 0, 1, None)


# The furthest a scan's header is read from its marker: length, component count, two bytes per
# component (at most 255) and Ss.
_SCAN_HEADER_REACH = 5 + 2 * 255 + 1


def scan_tally(chunks: Iterable[bytes], stop_after: int = MAX_SCANS) -> tuple[int, int, int]:
    """(scans, components held by scans of DC coefficients, components held by AC scans) in a
    JPEG's bytes, or more: a marker cannot appear inside entropy-coded data (a 0xFF byte there is
    followed by 0 or a restart marker), but may inside a metadata block or an embedded
    thumbnail, which only adds. Stops counting past `stop_after` scans (then already refused).

    `chunks`: the bytes in order, in one piece or as a file is read: a file of any apparent
    size is counted without holding it whole (1 GiB of zeros after a photo took 1.1 GB)."""
    scans = dc_components = ac_components = 0
    window, ended, pieces = b"", False, iter(chunks)
    while not ended and scans <= stop_after:
        chunk = next(pieces, None)
        ended = chunk is None
        window += chunk or b""
        position = window.find(START_OF_SCAN)
        while position >= 0 and scans <= stop_after:
            if not ended and position + _SCAN_HEADER_REACH > len(window):
                break  # its header may go on in the next chunk
            scans += 1
            held = max(1, window[position + 4]) if position + 4 < len(window) else 1
            first = position + 5 + 2 * held  # the scan's first coefficient, Ss
            if first < len(window) and window[first] > 0:
                ac_components += held
            else:
                dc_components += held
            position = window.find(START_OF_SCAN, position + 2)
        # Kept for the next chunk: a header not yet whole, or a last 0xFF its marker may follow.
        window = window[position:] if position >= 0 else window[-1:]
    return scans, dc_components, ac_components


def frame_header(data: bytes) -> Frame | None:
    """The frame the JPEG these bytes begin declares, or None when the walk over its blocks does
    not reach a whole frame header (not a JPEG, bytes between blocks, cut short)."""
    return _header(data)[1]


def header_cut_short(data: bytes) -> bool:
    """Whether these bytes, a whole file, begin a JPEG and end inside its blocks before its first
    scan does (Pillow then says "Truncated File Read", "cannot load this image" or not an image,
    by where the cut falls)."""
    if not data.startswith(b"\xff\xd8\xff"):
        return False
    following = 2  # where the block after the last one walked over begins
    for position, marker in _blocks(data):
        if marker in (SOS, 0xD8, 0xD9):
            return False
        if marker in _BARE_MARKERS:
            following = position + 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if length < 2:
            return False  # damaged, not cut
        following = position + 2 + length
    return following + 4 > len(data)


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


def _header(data: bytes) -> tuple[int | None, Frame | None]:
    """(where the first scan starts, the frame) from one walk over the blocks (the fast path
    needs both, and a walk is a tenth of the fast path's Python time on a small photo).

    Pillow reads a JPEG's blocks up to its first scan and no further. The position is None for
    anything this strict walk does not follow (bytes between segments, a segment running past
    the end, a marker it leaves to Pillow): such a file goes to Pillow, which resynchronises as
    it sees fit."""
    plain, frame = True, None
    for position, marker in _blocks(data):
        if marker in _LEFT_TO_PILLOW:
            plain = False
        if marker in _FRAMES and frame is None:
            if position + 10 > len(data):
                return None, None
            frame = Frame(marker, int.from_bytes(data[position + 7 : position + 9], "big"),
                          int.from_bytes(data[position + 5 : position + 7], "big"),
                          data[position + 9], None)
        elif marker == SOS:
            if frame is not None:
                first = data[position + 4] if position + 4 < len(data) else None
                frame = Frame(frame.marker, frame.width, frame.height, frame.components, first)
            return (position if plain else None), frame
    return None, frame


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
        if marker in (SOS, 0xD8, 0xD9):
            return
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if length < 2:
            return
        position += 2 + length


def plain_size(data: bytes) -> tuple[tuple[int, int], Frame] | None:
    """(width, height) of a luma JPEG holding none of PILLOW_BLOCKS, with its frame, when the fast
    decoder is installed; None otherwise (and for anything that is not a JPEG simplejpeg can
    read).
    """
    if simplejpeg is None or not data.startswith(b"\xff\xd8\xff"):
        return None
    header, frame = _header(data)
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
    if space not in LUMA_SPACES:
        return None
    return (width, height), frame or UNKNOWN_FRAME


class CutShort(ValueError):
    """The JPEG's data ends before its picture does."""


# libjpeg's warnings that the data ends before the picture: a file cut short and closed by an EOI
# marker, or a header claiming more picture than its data holds. libjpeg decodes the rest as
# grey, and Pillow, which keeps libjpeg's warnings to itself, hashes that. Other warnings ("N
# extraneous bytes before marker", common in cameras' files) leave the picture whole.
_CUT_SHORT_WARNINGS = ("premature end of data segment", "Premature end of JPEG file")


def decode_luma(data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """The JPEG's grayscale pixels at `size` (width, height: the full size divided by 1, 2, 4 or 8
    and rounded up, as libjpeg scales), or None when simplejpeg finds anything else wrong with
    the data (strict: libjpeg's warnings too) or decodes another size. Raises CutShort when the
    data ends before the picture does."""
    if simplejpeg is None:
        return None
    width, height = size
    try:
        # The smallest of libjpeg's scales keeping at least this size is the one asked for.
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY", min_width=width,
                                        min_height=height, strict=True)
    except ValueError as error:  # simplejpeg's every decoding error
        if any(warning in str(error) for warning in _CUT_SHORT_WARNINGS):
            raise CutShort(str(error)) from error
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
    its own error, so a damaged file gets the same answer either way; but CutShort is raised
    where the data ends before the picture does (Pillow would decode the rest as grey).
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
