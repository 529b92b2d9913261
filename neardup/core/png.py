"""How many chunks a PNG holds, counted before Pillow opens it.

Pillow walks a PNG's chunks one at a time in Python (as it opens the file, as it decodes, and
after the picture, up to IEND), about 3 us each whatever they hold: 32 MiB of empty ancillary
chunks (2.8 million) before the image data took 8.3 s of CPU to hash, after it 7.6 s, the image
data split into one-byte IDATs 8.0 s, empty IDATs 3.7 s (hostile review). So every kind of chunk
counts, IDATs too. Encoders write few: libpng (OpenCV, ImageMagick) cuts the image data into
IDATs of 8 KB, Pillow of 64 KB, so a 100-megapixel 16-bit RGBA picture of noise (800 MB) written
by libpng has about 98,000 chunks, one of the 179 megapixels Pillow opens at most 175,000. A PNG
of more than MAX_CHUNKS is refused unopened (at the limit, hashing it takes about a second).
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

from PIL import Image

MAX_CHUNKS = 262_144
SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The count reads a window of the file this long at a time, from a chunk's header: a file of any
# apparent size is counted without holding it whole, and a chunk's data beyond the window is
# skipped, not read.
READ_BYTES = 1 << 20
_HEADER = struct.Struct(">I4s")  # a chunk's length and type


def chunk_count(stream: BinaryIO, stop_after: int = MAX_CHUNKS) -> int:
    """The chunks of the PNG in `stream`, up to IEND or to where a chunk's header is cut short;
    0 for anything that is not a PNG. Stops counting past `stop_after` (then already refused).
    The stream is left where it was."""
    where = stream.tell()
    try:
        stream.seek(0)
        window = stream.read(READ_BYTES)
        if not window.startswith(SIGNATURE):
            return 0
        start, position, count = 0, len(SIGNATURE), 0  # window's offset, the next header's
        while count <= stop_after:
            offset = position - start
            if offset + _HEADER.size > len(window):
                stream.seek(position)
                window, start, offset = stream.read(READ_BYTES), position, 0
                if len(window) < _HEADER.size:
                    break
            length, kind = _HEADER.unpack_from(window, offset)
            count += 1
            if kind == b"IEND":
                break
            position += length + _HEADER.size + 4  # its data and CRC
        return count
    finally:
        stream.seek(where)


def refusal(stream: BinaryIO) -> str | None:
    """Why the PNG in `stream` is not opened ("refused: ..."), or None (also for anything that is
    not a PNG)."""
    if chunk_count(stream) <= MAX_CHUNKS:
        return None
    return (f"refused: a PNG of more than {MAX_CHUNKS:,} chunks (Pillow reads each one in Python:"
            " it would take seconds; a 100-megapixel picture has at most about 100,000)")


# -- image data that stops before the last row -------------------------------------------------
# A PNG whose image data is a complete zlib stream holding fewer rows than its header declares
# decodes in Pillow without an error (its zlib decoder stops at the stream's end and never counts
# rows): the rows never written stay as the memory was, and the picture was hashed, missing half
# of itself (a hostile review). libpng says "Not enough image data". So the memory is filled
# first with a value few pictures have (prefill); only where the last rows still hold it after
# decoding is the image data inflated again and counted (rows_missing), to tell a short file
# from a picture whose bottom has that colour.
_UNLIKELY = {"1": 1, "L": 251, "LA": (251, 3), "P": 251, "RGB": (3, 251, 7),
             "RGBA": (3, 251, 7, 5), "I;16": 65521, "I;16B": 65521, "I": 2_147_483_629}
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type
# Adam7's passes: (first column, first row, column step, row step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))
_INFLATE_STEP = 1 << 20  # inflated bytes held at a time while counting


def prefill(image: Image.Image) -> None:
    """Before `image.load()` of a PNG: its memory filled with an unlikely value (see above)."""
    value = _UNLIKELY.get(image.mode)
    if image.format == "PNG" and value is not None:
        image.im = Image.core.fill(image.mode, image.size, value)


def rows_missing(image: Image.Image, stream: BinaryIO) -> bool:
    """After `image.load()` of a prefilled PNG: whether its image data stops before its last row.
    The last two rows are looked at (an interlaced picture's odd rows come in its last pass)."""
    value = _UNLIKELY.get(image.mode)
    if image.format != "PNG" or value is None:
        return False
    width, height = image.size
    unlikely = Image.new(image.mode, (width, 1), value).tobytes()
    if not any(image.crop((0, y, width, y + 1)).tobytes() == unlikely
               for y in range(max(0, height - 2), height)):
        return False
    return _image_data_short(stream)


def _image_data_short(stream: BinaryIO) -> bool:
    """Whether the inflated IDAT data is shorter than IHDR's picture needs (rows and filter
    bytes), read chunk by chunk and inflated a step at a time."""
    where = stream.tell()
    try:
        stream.seek(len(SIGNATURE))
        needed: int | None = None
        inflater = zlib.decompressobj()
        got = 0
        while True:
            header = stream.read(_HEADER.size)
            if len(header) < _HEADER.size:
                break
            length, kind = _HEADER.unpack(header)
            if kind == b"IHDR":
                needed = _raw_bytes(stream.read(length))
                stream.seek(4, 1)
            elif kind == b"IDAT" and needed is not None:
                data = stream.read(length)
                stream.seek(4, 1)
                while data and got < needed:
                    got += len(inflater.decompress(data, _INFLATE_STEP))
                    data = inflater.unconsumed_tail
                if got >= needed:
                    return False
            elif kind in (b"IEND", b"fdAT") or (kind != b"IDAT" and got):
                break  # the default picture's data is over
            else:
                stream.seek(length + 4, 1)
        return needed is not None and got < needed
    except (OSError, zlib.error, struct.error):
        return False  # Pillow decoded it: a stream it read whole is not judged here again
    finally:
        stream.seek(where)


def _raw_bytes(ihdr: bytes) -> int | None:
    """The inflated size of a picture's image data, from its IHDR chunk."""
    if len(ihdr) < 13:
        return None
    width, height, depth, colour, _compression, _filter, interlace = struct.unpack(">IIBBBBB",
                                                                                   ihdr[:13])
    channels = _CHANNELS.get(colour)
    if channels is None:
        return None

    def row_bytes(columns: int) -> int:
        return 1 + (columns * channels * depth + 7) // 8  # a filter byte, then the pixels

    if not interlace:
        return height * row_bytes(width)
    total = 0
    for column, row, column_step, row_step in _ADAM7:
        columns = (width - column + column_step - 1) // column_step
        rows = (height - row + row_step - 1) // row_step
        if columns > 0 and rows > 0:
            total += rows * row_bytes(columns)
    return total
