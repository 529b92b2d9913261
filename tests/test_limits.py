"""The decode memory budget (service/limits.py): estimates from headers, and sharing between threads."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neardup.service.limits import (
    DEFAULT_DECODE_MEMORY,
    DecodeBudget,
    DecodeBusy,
    DecodeTooLarge,
    cost_bound,
    decode_cost,
)


def header_of(image: Image.Image, format: str = "PNG") -> Image.Image:  # noqa: A002
    """The image as an upload's header is seen: opened, not decoded."""
    stream = io.BytesIO()
    image.save(stream, format)
    return Image.open(io.BytesIO(stream.getvalue()))


class TestCostBound:
    """The checker reserves a small plain JPEG's decode memory from its bytes (cost_bound), so
    its worker process need not send the header first: the bound must cover what the worker
    would have reserved (decode_cost), whatever the JPEG holds."""

    @pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
    def test_it_covers_decode_cost_at_every_size_up_to_its_limit(self, mode: str) -> None:
        for size in [(8, 8), (300, 200), (1000, 1000), (999, 1001)]:
            stream = io.BytesIO()
            picture = Image.fromarray(np.random.default_rng(1).integers(
                0, 255, (size[1], size[0], len(mode)), np.uint8).squeeze(), None)
            picture.convert(mode).save(stream, "JPEG", quality=20)
            data = stream.getvalue()
            bound = cost_bound(data)
            if len(data) > 64 * 1024 or size[0] * size[1] > 1_000_000:
                assert bound is None, size
                continue
            assert bound is not None and bound >= decode_cost(Image.open(io.BytesIO(data)),
                                                              frame=True), size

    def test_anything_else_is_left_to_the_worker_to_report(self) -> None:
        def saved(format: str, **options: object) -> bytes:  # noqa: A002
            stream = io.BytesIO()
            Image.new("RGB", (300, 200), (10, 200, 30)).save(stream, format, **options)
            return stream.getvalue()

        assert cost_bound(saved("JPEG")) is not None
        assert cost_bound(saved("JPEG", progressive=True)) is None  # a coefficient buffer
        assert cost_bound(saved("PNG")) is None
        assert cost_bound(None) is None and cost_bound(b"") is None
        assert cost_bound(b"\xff\xd8\xff\xd9") is None  # no frame header


class TestDecodeCost:
    def test_deeper_samples_and_transparency_cost_more(self) -> None:
        size = (200, 100)
        gray = decode_cost(header_of(Image.new("L", size)))
        rgb = decode_cost(header_of(Image.new("RGB", size)))
        rgba = decode_cost(header_of(Image.new("RGBA", size)))
        deep = decode_cost(header_of(Image.fromarray(np.zeros((100, 200), dtype="<u2"))))
        buffers = 16 * 2**20 + 200 * 32  # and Pillow's pointers to rows (of the longer side)
        assert gray == 200 * 100 * (2 * 1 + 2) + buffers
        assert rgb == 200 * 100 * (2 * 4 + 2) + buffers  # Pillow keeps RGB in four bytes a pixel
        assert rgba == rgb + 200 * 100 * 16
        assert deep > rgb  # 16-bit samples go through float64 arrays

    def test_a_tall_thin_picture_counts_its_rows(self) -> None:
        # 1 x 49,000,000 gray pixels, 95 KB as a PNG: 1,370 MB measured at the peak (a hostile
        # review), 213 MB estimated from its pixels. Only the header is needed here.
        def chunk(kind: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data)))

        # The same turned on its side: an EXIF orientation of 5 to 8 makes the upright copies as
        # tall (a 45,000,000 x 1 PNG with orientation 6 took 1.6 GB, a later review).
        for width, height, measured in ((1, 49_000_000, 1_370e6), (2, 24_000_000, 781e6),
                                        (49_000_000, 1, 1_370e6), (24_000_000, 2, 781e6)):
            header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            png = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            cost = decode_cost(Image.open(io.BytesIO(png)))
            assert cost >= measured
            assert cost > DEFAULT_DECODE_MEMORY  # so the checker refuses it (413)

    def test_a_jpeg_counts_at_its_reduced_decode_size(self) -> None:
        image = header_of(Image.new("RGB", (2000, 1600)), "JPEG")
        full = decode_cost(image)
        image.draft("L", (250, 200))
        assert decode_cost(image) - 16 * 2**20 < (full - 16 * 2**20) / 20

    def test_a_tiff_tile_counts_whole(self, tmp_path: Path) -> None:
        """A hostile review: libtiff allocates a whole tile to decode it, however small the
        picture: 256 x 256 pixels in one 16384 x 16384 tile took 843 MB against 17 estimated."""
        from .hostile_images import tiled_tiff

        image = Image.open(tiled_tiff(tmp_path / "tiled.tif", 64, 2048))
        assert decode_cost(image) >= 2048 * 2048 * 3 + 16 * 2**20

    def test_a_progressive_jpeg_counts_its_coefficients_at_full_size(self) -> None:
        """A hostile review: libjpeg keeps every coefficient of a progressive JPEG, decoded at
        1/8 scale or not: a 767 KB progressive CMYK JPEG of 7000 x 7000 took 444 MB against
        24 MB estimated."""
        stream = io.BytesIO()
        Image.new("CMYK", (2000, 1600)).save(stream, "JPEG", progressive=True)
        image = Image.open(io.BytesIO(stream.getvalue()))
        image.draft("L", (250, 200))
        coefficients = 250 * 200 * 64 * 2 * 4  # 8 x 8 blocks of 2-byte coefficients, 4 components
        assert decode_cost(image) >= coefficients
        sequential = header_of(Image.new("CMYK", (2000, 1600)), "JPEG")
        sequential.draft("L", (250, 200))
        # Decoded a row of blocks at a time: no coefficient buffer.
        assert decode_cost(sequential) - 16 * 2**20 < coefficients / 10

    def test_a_jpeg_whose_first_scan_holds_one_component_counts_its_coefficients(self) -> None:
        """Its other components come in later scans: libjpeg keeps every coefficient too. Only
        the header is read here, so the first scan's component count is simply rewritten."""
        stream = io.BytesIO()
        Image.new("RGB", (2000, 1600)).save(stream, "JPEG", subsampling=0)
        data = bytearray(stream.getvalue())
        data[data.index(b"\xff\xda") + 4] = 1
        image = Image.open(io.BytesIO(bytes(data)))
        image.draft("L", (250, 200))
        assert decode_cost(image) >= 250 * 200 * 64 * 2 * 3


class TestDecodeBudget:
    def test_reservations_are_given_back_however_the_block_ends(self) -> None:
        budget = DecodeBudget(1000, wait=0.1)
        with budget.reservation() as held:
            held.take("a", 600)
            assert budget.used == 600
        assert budget.used == 0
        with pytest.raises(ValueError), budget.reservation() as held:
            held.take("b", 700)
            raise ValueError("the decode failed")
        assert budget.used == 0

    def test_more_than_the_whole_budget_is_refused_at_once(self) -> None:
        budget = DecodeBudget(1000, wait=10)
        started = time.monotonic()
        with pytest.raises(DecodeTooLarge) as refused, budget.reservation() as held:
            held.take("upload", 5 * 2**20)
        assert time.monotonic() - started < 1
        assert refused.value.reason == ("refused: decoding it would take about 5 MB, over the"
                                        " decode memory limit of 0 MB")

    @pytest.mark.parametrize(("limit", "amount", "said"), [
        (64 * 2**20, 64 * 2**20 + 1, "about 65 MB, over the decode memory limit of 64 MB"),
        (512 * 2**20, 512 * 2**20 + 2**19, "about 513 MB, over the decode memory limit of 512 MB"),
        (int(63.5 * 2**20), int(63.55 * 2**20), "about 63.6 MB, over the decode memory limit of"
                                                " 63.5 MB"),
    ])
    def test_just_over_the_budget_never_reads_as_the_budget(self, limit: int, amount: int,
                                                             said: str) -> None:
        """A review: "would take about 64 MB, over the decode memory limit of 64 MB"."""
        with pytest.raises(DecodeTooLarge) as refused, DecodeBudget(limit).reservation() as held:
            held.take("upload", amount)
        assert refused.value.reason == f"refused: decoding it would take {said}"

    def test_a_decode_waits_for_room_then_gives_up_busy(self) -> None:
        budget = DecodeBudget(1000, wait=0.2)
        release = threading.Event()

        def holder() -> None:
            with budget.reservation() as held:
                held.take("first", 800)
                release.wait(10)

        thread = threading.Thread(target=holder)
        thread.start()
        while budget.used == 0:
            time.sleep(0.01)
        with pytest.raises(DecodeBusy), budget.reservation() as held:
            held.take("second", 300)  # 800 + 300 > 1000: waits 0.2 s, then busy

        budget.wait = 10  # now room comes while it waits
        threading.Timer(0.2, release.set).start()
        with budget.reservation() as held:
            held.take("third", 300)
            assert budget.used == 300
        thread.join()
        assert budget.used == 0


# Hashes or decodes for features (as the checker's worker does) one upload in a fresh process, and
# prints the estimate and the rise of its resident memory's high-water mark, in bytes.
_PEAK = """
import io, sys
from PIL import Image
from neardup.core.hashing import Recipe, decoder_settings, hash_source
from neardup.features.extract import read_frame
from neardup.service.limits import decode_cost
def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))
kind, frame = sys.argv[1], sys.argv[2] == "frame"
stream = io.BytesIO()
Image.new("RGB", (2000, 2000), (10, 200, 30)).save(stream, kind)
data = stream.getvalue()
header = Image.open(io.BytesIO(data))
decoder_settings(Recipe())(header)
estimate = decode_cost(header, frame=frame)
with open("/proc/self/clear_refs", "w") as reset:
    reset.write("5")
before = status("VmRSS")
read_frame("x", 10**9, data) if frame else hash_source("x", Recipe(), 10**9, data=data)
print(estimate, status("VmHWM") - before)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize(("kind", "use"), [("WEBP", "hash"), ("WEBP", "frame"), ("PNG", "frame")])
def test_the_estimate_covers_what_decoding_takes(kind: str, use: str) -> None:
    """A hostile review: 7000 x 7000 WebP uploads, estimated at 506 MB, took 736 to 745 MB to
    hash (libwebp's own buffer) and more decoded for local features (an upright and an RGB copy
    at full size), under a decode budget of 512 MB."""
    done = subprocess.run([sys.executable, "-c", _PEAK, kind, use], capture_output=True,
                          text=True, check=True)
    estimate, peak = map(int, done.stdout.split())
    assert peak > 20 * 2**20  # the decode is measured (4 megapixels)
    assert estimate >= peak, (estimate / 2**20, peak / 2**20)
