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
from typing import BinaryIO

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
