"""What an AVIF's coded pictures really cost, read before they are decoded.

Pillow reports an AVIF's size from its `ispe` box, a declaration; libavif decodes the AV1 streams
whatever size their own sequence headers give. A review made a 3 KB file declaring 64 x 64 whose
picture is 16000 x 16000: it passed the pixel limit and the checker's decode-memory budget (both
read the declared size), and each decode took 1 GB. A second review hid the same picture behind
an unused larger `ispe`, in a 1 x 1 grid's tile, in the alpha plane, and behind a second sequence
header. So every AV1 item of the file (the picture, its tiles, its alpha plane) has every
sequence header in its data read here, and a file whose coded pictures add up to more than
ALLOWANCE times the size Pillow reports is refused before decoding.

Only as much of the ISO base media file format and of AV1 as that needs: the boxes meta, iinf,
iloc and idat, OBU headers, and the sequence header's fields up to max_frame_{width,height} (AV1
specification, 5.3 and 5.5).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

# The major brands Pillow's AVIF plug-in takes a file by (mif1 and msf1 too: a review-built
# lie with its major brand made mif1 was decoded as AVIF all the same).
BRANDS = (b"avif", b"avis", b"mif1", b"msf1")
# A box read whole to be parsed (iinf, iloc): an encoder writes a few hundred bytes.
MAX_BOX_BYTES = 1 << 20
# The coded pixels allowed for each declared one: the colour picture and its alpha plane (2), and
# a grid's tiles reaching past its edges (encoders cut tiles of 256 or 512 pixels: a 4032 x 3024
# photo in 512-pixel tiles codes 3 % more), with a margin of 64 pixels on each side.
ALLOWANCE = 2.5
MARGIN = 64
# Item data read whole to walk its OBUs: more than this is not a still picture (a 100-megapixel
# AVIF at a high quality is tens of megabytes).
MAX_ITEM_BYTES = 256 << 20
_MAX_BOXES = 10_000  # a file of more boxes than this is not a picture libavif makes
SEQUENCE_HEADER = 1  # obu_type


class _Malformed(Exception):
    """The boxes cannot be read: left to the decoder, which refuses such files itself."""


class _Unreadable(Exception):
    """An AV1 item whose coded size cannot be read: refused, as what it declares cannot be
    trusted (a hostile file could hide its sequence header where this does not look)."""


def refusal(stream: BinaryIO, declared: tuple[int, int]) -> str | None:
    """Why the AVIF in `stream`, which Pillow says is `declared` (width, height), is not decoded
    ("refused: ..."), or None (also for anything that is not an AVIF, and for boxes too damaged
    to walk: libavif refuses those itself). The stream is left where it was."""
    where = stream.tell()
    try:
        stream.seek(0)
        head = stream.read(12)
        if len(head) < 12 or head[4:8] != b"ftyp" or head[8:12] not in BRANDS:
            return None
        try:
            if _is_sequence(stream):
                return ("refused: an AVIF image sequence (the size of its frames is not checked"
                        " before decoding, so it is not read)")
            coded = _coded_sizes(stream)
        except _Malformed:
            return None
        except _Unreadable:
            return "damaged AVIF file (the AV1 sequence header of its picture cannot be read)"
    finally:
        stream.seek(where)
    width, height = declared
    allowed = ALLOWANCE * (width + 2 * MARGIN) * (height + 2 * MARGIN)
    if sum(coded_width * coded_height for coded_width, coded_height in coded) <= allowed:
        return None
    largest = max(coded, key=lambda size: size[0] * size[1])
    return (f"refused: its coded pictures ({len(coded)}, the largest {largest[0]} x {largest[1]}"
            f" pixels) are far larger than the {width} x {height} it declares")


def _is_sequence(stream: BinaryIO) -> bool:
    """Whether the file has a movie box: frames in a track, whose sizes _coded_sizes does not read
    (libavif decodes a sequence's track, not its still items)."""
    return any(kind == b"moov" for kind, _, _ in _boxes(stream, 0, _end_of(stream)))


def _coded_sizes(stream: BinaryIO) -> list[tuple[int, int]]:
    """The coded size of every AV1 item: the largest of all the sequence headers in its data."""
    meta = None
    for kind, start, end in _boxes(stream, 0, _end_of(stream)):
        if kind == b"meta":
            meta = (start + 4, end)  # a full box: version and flags first
            break
    if meta is None:
        raise _Malformed
    av1_items: set[int] = set()
    locations: dict[int, tuple[int, list[tuple[int, int]]]] = {}
    idat_start = None
    for kind, start, end in _boxes(stream, *meta):
        if kind in (b"iinf", b"iloc") and end - start > MAX_BOX_BYTES:
            raise _Unreadable
        if kind == b"iinf":
            av1_items |= _av1_items(_read(stream, start, end))
        elif kind == b"iloc":
            locations.update(_locations(_read(stream, start, end)))
        elif kind == b"idat":
            idat_start = start
    coded = []
    for item in sorted(av1_items):
        method, extents = locations.get(item, (0, []))
        if not extents or method not in (0, 1) or (method == 1 and idat_start is None):
            raise _Unreadable  # method 2, data made from other items: not what encoders write
        data = bytearray()
        for offset, length in extents:  # an item's OBUs may run on from one extent to the next
            if method == 1:
                offset += idat_start or 0
            if length == 0:
                length = _end_of(stream) - offset
            if length < 0 or len(data) + length > MAX_ITEM_BYTES:
                raise _Unreadable
            chunk = _read(stream, offset, offset + length)
            if len(chunk) != length:
                raise _Unreadable  # cut short
            data += chunk
        try:
            coded.append(_coded_size(bytes(data)))
        except _Malformed:
            raise _Unreadable from None
    return coded


def _end_of(stream: BinaryIO) -> int:
    stream.seek(0, 2)
    return stream.tell()


def _read(stream: BinaryIO, start: int, end: int) -> bytes:
    stream.seek(start)
    return stream.read(max(0, end - start))


def _boxes(stream: BinaryIO, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, where its body starts, where it ends) of each box from `start` to `end`."""
    found = []
    position = start
    while position + 8 <= end:
        if len(found) >= _MAX_BOXES:
            raise _Malformed
        stream.seek(position)
        header = stream.read(16)
        if len(header) < 8:
            break
        size, kind = struct.unpack_from(">I4s", header)
        body = position + 8
        if size == 1:
            if len(header) < 16:
                raise _Malformed
            size = struct.unpack_from(">Q", header, 8)[0]
            body += 8
        elif size == 0:
            size = end - position
        if size < body - position or position + size > end:
            raise _Malformed
        found.append((kind, body, position + size))
        position += size
    return found


def _av1_items(body: bytes) -> set[int]:
    """The IDs of the `av01` items an iinf box lists."""
    reader = _Bytes(body)
    version = reader.int(1)
    reader.int(3)
    count = reader.int(2 if version == 0 else 4)
    items = set()
    for _ in range(count):
        size, kind = reader.int(4), reader.take(4)
        entry = _Bytes(reader.take(size - 8))
        if kind != b"infe":
            continue
        entry_version = entry.int(1)
        entry.int(3)
        if entry_version < 2:
            continue  # no item type: not an AV1 item
        item = entry.int(2 if entry_version == 2 else 4)
        entry.int(2)  # item_protection_index
        if entry.take(4) == b"av01":
            items.add(item)
    return items


def _locations(body: bytes) -> dict[int, tuple[int, list[tuple[int, int]]]]:
    """Each item's construction method and (offset, length) extents, from an iloc box."""
    reader = _Bytes(body)
    version = reader.int(1)
    reader.int(3)
    sizes = reader.int(1)
    offset_size, length_size = sizes >> 4, sizes & 15
    sizes = reader.int(1)
    base_size, index_size = sizes >> 4, (sizes & 15) if version in (1, 2) else 0
    count = reader.int(2 if version < 2 else 4)
    found = {}
    for _ in range(count):
        item = reader.int(2 if version < 2 else 4)
        method = reader.int(2) & 15 if version in (1, 2) else 0
        reader.int(2)  # data_reference_index
        base = reader.int(base_size)
        extents = []
        for _ in range(reader.int(2)):
            reader.int(index_size)
            offset = reader.int(offset_size)
            extents.append((base + offset, reader.int(length_size)))
        found[item] = (method, extents)
    return found


def _coded_size(data: bytes) -> tuple[int, int]:
    """The largest max_frame_width and max_frame_height of all the sequence headers among the
    OBUs of an item's data (a decoder takes the latest; a review put a small one first)."""
    reader = _Bytes(data)
    width = height = 0
    while reader.position < len(data):
        header = reader.int(1)
        kind, extension, has_size = (header >> 3) & 15, (header >> 2) & 1, (header >> 1) & 1
        if extension:
            reader.int(1)
        size = reader.leb128() if has_size else len(data) - reader.position
        payload = reader.take(size)
        if kind == SEQUENCE_HEADER:
            # Its fields end within a few hundred bytes (32 operating points at most): a
            # payload padded to megabytes is not read as one number.
            coded_width, coded_height = _sequence_header_size(_Bits(payload[:1024]))
            width, height = max(width, coded_width), max(height, coded_height)
    if not width:
        raise _Malformed  # no sequence header at all
    return width, height


def _sequence_header_size(bits: _Bits) -> tuple[int, int]:
    bits.read(3)  # seq_profile
    bits.read(1)  # still_picture
    if bits.read(1):  # reduced_still_picture_header
        bits.read(5)  # seq_level_idx[0]
    else:
        decoder_model = False
        buffer_delay_bits = 0
        if bits.read(1):  # timing_info_present_flag
            bits.read(32)  # num_units_in_display_tick
            bits.read(32)  # time_scale
            if bits.read(1):  # equal_picture_interval
                bits.uvlc()  # num_ticks_per_picture_minus_1
            decoder_model = bool(bits.read(1))
            if decoder_model:
                buffer_delay_bits = bits.read(5) + 1
                bits.read(32)  # num_units_in_decoding_tick
                bits.read(5)  # buffer_removal_time_length_minus_1
                bits.read(5)  # frame_presentation_time_length_minus_1
        initial_display_delay = bits.read(1)
        for _ in range(bits.read(5) + 1):  # operating points
            bits.read(12)  # operating_point_idc
            if bits.read(5) > 7:  # seq_level_idx
                bits.read(1)  # seq_tier
            if decoder_model and bits.read(1):  # decoder_model_present_for_this_op
                bits.read(buffer_delay_bits)  # decoder_buffer_delay
                bits.read(buffer_delay_bits)  # encoder_buffer_delay
                bits.read(1)  # low_delay_mode_flag
            if initial_display_delay and bits.read(1):
                bits.read(4)  # initial_display_delay_minus_1
    width_bits, height_bits = bits.read(4) + 1, bits.read(4) + 1
    return bits.read(width_bits) + 1, bits.read(height_bits) + 1


class _Bytes:
    """Big-endian fields from a box's body; past its end is _Malformed."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def take(self, count: int) -> bytes:
        if count < 0 or self.position + count > len(self.data):
            raise _Malformed
        chunk = self.data[self.position:self.position + count]
        self.position += count
        return chunk

    def int(self, count: int) -> int:
        return int.from_bytes(self.take(count), "big") if count else 0

    def leb128(self) -> int:
        value = 0
        for index in range(8):
            byte = self.int(1)
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                return value
        raise _Malformed


class _Bits:
    """AV1's f(n) and uvlc() fields, most significant bit first."""

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.left = 8 * len(data)

    def read(self, count: int) -> int:
        if count > self.left:
            raise _Malformed
        self.left -= count
        return (self.value >> self.left) & ((1 << count) - 1)

    def uvlc(self) -> int:
        zeros = 0
        while not self.read(1):
            zeros += 1
            if zeros >= 32:
                return (1 << 32) - 1
        return self.read(zeros) + (1 << zeros) - 1
