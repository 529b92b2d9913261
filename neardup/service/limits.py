"""What one upload may cost the checker: its pixels, and the memory decoding it takes.

A few-KB PNG can claim 10000 x 10000 16-bit pixels; decoding it and bringing it to 8 bits took
2.0 GB. So before a single pixel is decoded, the header's size and sample format give an estimate
of the memory the decode and its preprocessing will take, and that much is reserved from a budget
shared by every decode in the process. An upload that could never fit is refused at once; one that
fits later waits a little, and is answered 503 if room does not come in time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

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


def decode_cost(image: Image.Image) -> int:
    """Bytes decoding and preparing this image will take at its peak, from its header alone.

    Call after the decoder was told its reduced size (a JPEG draft), so that size is what counts.
    The decoded image counts twice (an upright copy is made), plus two bytes a pixel for the
    grayscale copy the hash is taken from and its working arrays, plus those of 16-bit samples
    and of transparency, plus the decoder's buffers. bench/decode_memory.py holds it to the
    peaks measured on 4000 x 4000 uploads (8-bit gray 60 MB, RGB 121, RGBA 311, 16-bit gray 302,
    a JPEG 9): it estimates 77, 169, 413, 367 and 17 MB.
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
    return pixels * per_pixel + _DECODER_BUFFERS


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
            raise DecodeTooLarge(name, f"refused: decoding it would take about {mb(amount)}, over"
                                       f" the decode memory limit of {mb(self.capacity)}")
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


def mb(amount: int) -> str:
    return f"{amount / 2**20:,.0f} MB"
