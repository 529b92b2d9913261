"""What a TIFF's first directory declares, read before Pillow opens it.

Pillow parses a TIFF's first directory as it opens the file and keeps a Python object for every
strip or tile it lists: a 32 MB TIFF of 4 million one-row strips (4 megapixels) took 1.5 GB and
44 s before a pixel was decoded, far beyond what its size in pixels lets the checker's memory
budget expect. Photos and scans list a few thousand strips (a 100-megapixel scan with one row
per strip, 10,000); more than MAX_BLOCKS is refused unopened, and so is a directory with any
numeric entry of more than MAX_VALUES values.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

MAX_BLOCKS = 65_536
# Tags whose value counts the blocks of the picture: StripOffsets, TileOffsets.
_BLOCK_TAGS = (273, 324)
# Entries read from the first directory at most (photos have tens); a longer one is refused too.
_MAX_ENTRIES = 4_096
# Values one numeric entry may hold. Pillow unpacks every value of the tags it knows into Python
# objects as it opens the file: an XResolution of 3.5 million rationals took 600 MB and 10 s
# before a pixel was decoded. A 16-bit palette (ColorMap) holds 196,608. Bytes, text and
# undefined blobs (an ICC profile, XMP) are read whole, whatever their length.
MAX_VALUES = 262_144
_BLOB_TYPES = frozenset((1, 2, 6, 7))  # BYTE, ASCII, SBYTE, UNDEFINED
# Tags of one number read here: ImageWidth, ImageLength, TileWidth, TileLength.
_SIZE_TAGS = (256, 257, 322, 323)
# libtiff allocates a whole tile to decode it, however small the picture: a 783 KB TIFF of
# 256 x 256 pixels in one 16384 x 16384 deflate tile took 843 MB (a hostile review). A tile of
# more pixels than MAX_TILE_PIXELS and over TILE_SLACK times the picture (its sides rounded up
# to 16, as tiles are) is refused; writers use tiles of 256 to 1024 pixels a side, and a tile
# bigger than the picture only by rounding.
MAX_TILE_PIXELS = 4 * 1024 * 1024
TILE_SLACK = 4


def is_tiff(head: bytes) -> bool:
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def directory_problem(stream: BinaryIO) -> str | None:
    """Why the first directory of the TIFF in `stream` is not given to Pillow, or None (also for
    anything that is not a TIFF, or whose header cannot be followed: Pillow then says why). The
    stream is left where it was."""
    where = stream.tell()
    try:
        stream.seek(0)
        head = stream.read(16)
        if not is_tiff(head):
            return None
        order = "<" if head[:2] == b"II" else ">"
        big = head[2:4] in (b"+\x00", b"\x00+")  # BigTIFF: 8-byte counts and offsets
        if big:
            directory = struct.unpack(order + "Q", head[8:16])[0]
            count_format, entry_format, entry_size = "Q", "HHQQ", 20
        else:
            directory = struct.unpack(order + "I", head[4:8])[0]
            count_format, entry_format, entry_size = "H", "HHII", 12
        stream.seek(directory)
        raw = stream.read(struct.calcsize(count_format))
        if len(raw) < struct.calcsize(count_format):
            return None
        entries = struct.unpack(order + count_format, raw)[0]
        if entries > _MAX_ENTRIES:
            return f"a TIFF directory of {entries:,} entries (photos have tens)"
        table = stream.read(entries * entry_size)
        sizes: dict[int, int] = {}
        for offset in range(0, len(table) - entry_size + 1, entry_size):
            tag, kind, count, _value = struct.unpack_from(order + entry_format, table, offset)
            # The first entry of a tag counts, as for libtiff (and Pillow): a TileWidth of
            # 16384 followed by one of 16 was decoded as 16384 tiles (a review).
            if tag in _SIZE_TAGS and tag not in sizes and count >= 1:
                number = _number(table, offset + (12 if big else 8), kind, order, 8 if big else 4)
                if number is not None:
                    sizes[tag] = number
            if tag in _BLOCK_TAGS and count > MAX_BLOCKS:
                return (f"a TIFF of more than {MAX_BLOCKS:,} strips or tiles (each costs memory"
                        " before a pixel is decoded; photos have a few thousand)")
            if kind not in _BLOB_TYPES and count > MAX_VALUES:
                return (f"a TIFF whose tag {tag} holds {count:,} values (each costs memory before"
                        f" a pixel is decoded; more than {MAX_VALUES:,} are refused)")
        return _tile_problem(sizes)
    except (OSError, struct.error, ValueError, OverflowError):
        return None
    finally:
        stream.seek(where)


# Every integer type, read unsigned: libtiff takes a size of any of them (a TileWidth typed SLONG
# was decoded as 16384-pixel tiles while only SHORT, LONG and LONG8 were read here, a review).
# BYTE, SHORT, LONG, SBYTE, SSHORT, SLONG, LONG8, SLONG8, IFD, IFD8.
_INTEGER_FORMATS = {1: "B", 3: "H", 4: "I", 6: "B", 8: "H", 9: "I", 13: "I", 16: "Q", 17: "Q",
                    18: "Q"}


def _number(table: bytes, where: int, kind: int, order: str, field: int) -> int | None:
    """The first integer held in the value field at `where` (of `field` bytes), or None."""
    form = _INTEGER_FORMATS.get(kind)
    if form is None or struct.calcsize(form) > field or where + struct.calcsize(form) > len(table):
        return None
    return int(struct.unpack_from(order + form, table, where)[0])


def _tile_problem(sizes: dict[int, int]) -> str | None:
    """Why the tiles the directory declares cost far more than its picture, or None."""
    width, height = sizes.get(256, 0), sizes.get(257, 0)
    tile_width, tile_height = sizes.get(322), sizes.get(323)
    if tile_width is None or tile_height is None or not width or not height:
        return None  # a TIFF of strips (libtiff bounds a strip by the picture), or Pillow says
    tile = tile_width * tile_height
    picture = (-(-width // 16) * 16) * (-(-height // 16) * 16)
    if tile <= MAX_TILE_PIXELS or tile <= TILE_SLACK * picture:
        return None
    return (f"a TIFF of {width} x {height} pixels in tiles of {tile_width} x {tile_height}"
            " (each tile is decoded whole: far more memory than the picture needs)")


def refusal(stream: BinaryIO) -> str | None:
    """Why the TIFF in `stream` is not opened ("refused: ..."), or None."""
    problem = directory_problem(stream)
    return None if problem is None else f"refused: {problem}"
