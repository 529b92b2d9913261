"""A zoo of awkward image files, generated on demand (no binaries in the repository).

Each maker writes one file and returns its path. `reference(tmp)` is the plain RGB picture most of
them are derived from, so a test can check that each variant hashes like what a person sees.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .imagegen import textured

PICTURE_SIZE = (160, 120)


def picture() -> Image.Image:
    return textured(42, PICTURE_SIZE)


def other_picture() -> Image.Image:
    return textured(43, PICTURE_SIZE)


def reference(tmp: Path) -> Path:
    path = tmp / "reference.png"
    picture().save(path)
    return path


# -- colour modes and formats: each should hash like the reference ---------------------------

def cmyk_jpeg(tmp: Path) -> Path:
    path = tmp / "cmyk.jpg"
    picture().convert("CMYK").save(path, quality=95)
    return path


def grayscale_jpeg(tmp: Path) -> Path:
    path = tmp / "gray.jpg"
    picture().convert("L").save(path, quality=95)
    return path


def progressive_jpeg(tmp: Path) -> Path:
    path = tmp / "progressive.jpg"
    picture().save(path, quality=95, progressive=True)
    return path


def palette_png(tmp: Path) -> Path:
    path = tmp / "palette.png"
    picture().convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(path)
    return path


def sixteen_bit_png(tmp: Path) -> Path:
    path = tmp / "deep.png"
    gray = np.asarray(picture().convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray.astype("<u2")).save(path)
    return path


def one_bit_png(tmp: Path) -> Path:
    path = tmp / "onebit.png"
    picture().convert("1").save(path)
    return path


def cielab_tiff(tmp: Path) -> Path:
    """A CIELab TIFF, as Photoshop writes one (Pillow opens it in mode "LAB")."""
    path = tmp / "cielab.tif"
    picture().convert("LAB").save(path)
    return path


def in_mode(mode: str, image: Image.Image | None = None) -> Image.Image:
    """The picture (or `image`, RGB or RGBA) in any of Pillow's modes: 16-bit ones scaled to their
    range, "La" (gray premultiplied by alpha) and "HSV" built band by band."""
    source = picture() if image is None else image
    if mode.startswith("I;16"):
        gray = np.asarray(source.convert("L"), dtype=np.uint16) * 257
        order = ">u2" if mode == "I;16B" else "<u2" if mode != "I;16N" else "=u2"
        return Image.frombytes(mode, source.size, gray.astype(order).tobytes())
    if mode == "La":  # Pillow converts nothing with an alpha band to it
        straight = source.convert("RGBA")
        gray = np.asarray(straight.convert("L"), dtype=np.uint16)
        alpha = np.asarray(straight.getchannel("A"), dtype=np.uint16)
        premultiplied = ((gray * alpha + 127) // 255).astype(np.uint8)
        return Image.merge("La", (Image.fromarray(premultiplied), Image.fromarray(
            alpha.astype(np.uint8))))
    return source.convert(mode)


def premultiplied_gray_tiff(tmp: Path, image: Image.Image | None = None) -> Path:
    """A gray TIFF with associated (premultiplied) alpha, which Pillow opens in mode "La" and
    cannot write: written as "LA" and its ExtraSamples tag changed from unassociated (2) to
    associated (1)."""
    path = tmp / "premultiplied.tif"
    layers = in_mode("La", image)
    straight = Image.merge("LA", layers.split())  # the same bytes, labelled LA to be written
    buffer = io.BytesIO()
    straight.save(buffer, "TIFF")
    unassociated = struct.pack("<HHIH", 338, 3, 1, 2)
    data = buffer.getvalue()
    assert data.count(unassociated) == 1
    path.write_bytes(data.replace(unassociated, struct.pack("<HHIH", 338, 3, 1, 1)))
    return path


def lossless_variants(tmp: Path) -> list[Path]:
    paths = []
    for name, options in (("plain.webp", {"lossless": True}), ("plain.bmp", {}),
                          ("plain.tiff", {}), ("plain.gif", {})):
        path = tmp / name
        picture().save(path, **options)
        paths.append(path)
    return paths


def avif(tmp: Path) -> Path:
    path = tmp / "picture.avif"
    picture().save(path, quality=95)
    return path


# -- transparency: hidden colour must not count ---------------------------------------------

def with_hidden_colour(tmp: Path, mode: str, seed: int) -> Path:
    """Left half opaque picture, right half fully transparent over random colour."""
    rgba = np.asarray(picture().convert("RGBA")).copy()
    rng = np.random.default_rng(seed)
    rgba[:, 80:, :3] = rng.integers(0, 256, size=rgba[:, 80:, :3].shape, dtype=np.uint8)
    rgba[:, 80:, 3] = 0
    image = Image.fromarray(rgba)
    path = tmp / f"alpha-{mode}-{seed}.png"
    if mode == "LA":
        image.convert("LA").save(path)
    elif mode == "P":
        # A palette with one transparent entry (index 255), as GIFs and small PNGs carry.
        paletted = image.convert("RGB").quantize(colors=255)
        indices = np.asarray(paletted).copy()
        indices[:, 80:] = 255
        result = Image.fromarray(indices)
        palette = (paletted.getpalette() or [])[: 255 * 3]
        palette += [0, 0, 0] * (255 - len(palette) // 3)
        result.putpalette(palette + [int(value) for value in rng.integers(0, 256, 3)])
        result.save(path, transparency=255)
    else:
        image.save(path)
    return path


# -- animations and multi-page files: the first frame counts --------------------------------

def animated(tmp: Path, extension: str) -> Path:
    path = tmp / f"animated.{extension}"
    first, second = picture(), other_picture()
    options: dict[str, object] = {"save_all": True, "append_images": [second], "duration": 100}
    if extension == "webp":
        options["lossless"] = True
    first.save(path, **options)
    return path


def single_frame(tmp: Path, extension: str) -> Path:
    path = tmp / f"single.{extension}"
    options: dict[str, object] = {"lossless": True} if extension == "webp" else {}
    picture().save(path, **options)
    return path


# -- degenerate pictures ----------------------------------------------------------------------

def blank(tmp: Path, name: str, colour: tuple[int, int, int]) -> Path:
    path = tmp / name
    Image.new("RGB", PICTURE_SIZE, colour).save(path)
    return path


def gradient(tmp: Path, name: str, horizontal: bool, rising: bool) -> Path:
    ramp = np.linspace(0, 255, PICTURE_SIZE[0] if horizontal else PICTURE_SIZE[1])
    if not rising:
        ramp = ramp[::-1]
    if horizontal:
        pixels = np.tile(ramp, (PICTURE_SIZE[1], 1))
    else:
        pixels = np.tile(ramp[:, None], (1, PICTURE_SIZE[0]))
    path = tmp / name
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


# -- files that are not what they claim ---------------------------------------------------------

def heic_lookalike(tmp: Path) -> Path:
    """The first bytes of a HEIC file (an ISO media 'ftyp' box, brand heic) and nothing more."""
    path = tmp / "photo.heic"
    path.write_bytes(struct.pack(">I", 24) + b"ftypheic" + b"\0\0\0\0" + b"mif1heic" + b"\0" * 64)
    return path


def png_bomb(tmp: Path, width: int = 50_000, height: int = 50_000) -> Path:
    """A valid-looking PNG header claiming width x height pixels, in a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    rows = zlib.compress(b"\0" * 4096, 9)  # the start of the pixel data; the rest never comes
    path = tmp / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows)
                     + chunk(b"IEND", b""))
    return path


def scan_bomb(tmp: Path, repeats: int = 5_000, side: int = 600, name: str = "scans.jpg") -> Path:
    """A valid progressive JPEG whose first AC scan is repeated `repeats` times: each repeat is a
    few dozen bytes, and the decoder makes a pass over the whole picture for every one."""
    path = tmp / name
    path.write_bytes(repeated_scan(side, repeats))
    return path


def repeated_scan(side: int, repeats: int) -> bytes:
    flat = np.full((side, side), 128, np.uint8)  # its AC scans hold almost nothing
    buffer = io.BytesIO()
    Image.fromarray(flat).save(buffer, "JPEG", progressive=True, quality=95)
    data = buffer.getvalue()
    starts = [index for index in range(len(data) - 1) if data[index:index + 2] == b"\xff\xda"]
    first, after = starts[1], starts[2]
    return data[:after] + data[first:after] * repeats + data[after:]


def sequential_scan_bomb(tmp: Path, repeats: int = 5_000) -> Path:
    """A sequential JPEG declared arithmetic-coded (SOF9) holding `repeats` more scans: libjpeg
    takes any number of one-component scans in such a file, each a pass over the picture in about
    20 bytes (the frame is declared here, not coded: the file is refused before decoding)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((600, 600), 128, np.uint8)).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue().replace(b"\xff\xc0", b"\xff\xc9", 1)
    scan = data.index(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    path = tmp / "sequential.jpg"
    path.write_bytes(data[:end] + data[scan:end] * repeats + data[end:])
    return path


def partial_first_scan_bomb(tmp: Path, repeats: int = 5_000) -> Path:
    """A Huffman-coded sequential colour JPEG whose first scan holds only its first component,
    followed by `repeats` empty scans of its second: libjpeg then expects more scans and takes
    any number, each a pass over the picture in 10 bytes (2,000 over 16 megapixels: 10 s)."""
    buffer = io.BytesIO()
    Image.new("RGB", (600, 600), (90, 120, 150)).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    scan = data.index(b"\xff\xda")
    length = int.from_bytes(data[scan + 2:scan + 4], "big")
    one = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"  # component 1 alone
    empty = b"\xff\xda\x00\x08\x01\x02\x11\x00\x3f\x00"  # component 2, no data
    end = data.rindex(b"\xff\xd9")
    path = tmp / "partial.jpg"
    path.write_bytes(data[:scan] + one + data[scan + 2 + length:end] + empty * repeats
                     + data[end:])
    return path


def mpo_wrapped(tmp: Path, jpeg: Path) -> Path:
    """The JPEG with a multi-picture (MPF) block put in front, as a two-picture MPO has: Pillow
    then opens it as an MPO and decodes the JPEG as its first picture."""
    made = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(made, "MPO", save_all=True,
                                            append_images=[Image.new("RGB", (16, 16), "blue")])
    mpo = made.getvalue()
    start = mpo.index(b"\xff\xe2")
    block = mpo[start:start + 2 + int.from_bytes(mpo[start + 2:start + 4], "big")]
    data = jpeg.read_bytes()
    path = tmp / "wrapped.mpo.jpg"
    path.write_bytes(data[:2] + block + data[2:])
    return path


def tiff_with_entry(path: Path, tag: int, kind: int, values: bytes, count: int) -> Path:
    """A 64 x 64 gray TIFF (one strip) whose directory also holds `tag` of `count` values of
    TIFF type `kind`, little-endian: the rest of the file is a plain picture."""
    side = 64
    pixels = bytes((x * 4) & 255 for x in range(side)) * side
    entries = [(256, 3, 1, struct.pack("<H", side)), (257, 3, 1, struct.pack("<H", side)),
               (258, 3, 1, struct.pack("<H", 8)), (259, 3, 1, struct.pack("<H", 1)),
               (262, 3, 1, struct.pack("<H", 1)), (273, 4, 1, None),
               (277, 3, 1, struct.pack("<H", 1)), (278, 3, 1, struct.pack("<H", side)),
               (279, 4, 1, struct.pack("<I", len(pixels))), (tag, kind, count, values)]
    entries.sort(key=lambda entry: entry[0])
    table_end = 8 + 2 + 12 * len(entries) + 4
    blobs = b""
    table = b""
    offsets = {}
    for entry_tag, entry_kind, entry_count, payload in entries:
        if payload is None or len(payload) <= 4:
            value = (payload or b"").ljust(4, b"\0")
        else:
            value = struct.pack("<I", table_end + len(blobs))
            blobs += payload
        offsets[entry_tag] = len(table) + 8  # where its value field sits, from the entry start
        table += struct.pack("<HHI", entry_tag, entry_kind, entry_count) + value
    pixel_offset = table_end + len(blobs)
    position = offsets[273]
    table = table[:position] + struct.pack("<I", pixel_offset) + table[position + 4:]
    data = (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)) + table
            + struct.pack("<I", 0) + blobs + pixels)
    path.write_bytes(data)
    return path


def png_chunk(kind: bytes, data: bytes = b"") -> bytes:
    """One PNG chunk: length, type, data and CRC."""
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def palette_png_with_alphas(path: Path, alphas: bytes, colours: int = 16) -> Path:
    """A palette PNG of `colours` colours given the transparency table `alphas` (tRNS), which
    may hold more entries than the palette (a broken or hostile file)."""
    opaque = picture().convert("P", palette=Image.Palette.ADAPTIVE, colors=colours)
    buffer = io.BytesIO()
    opaque.save(buffer, "PNG")
    data = buffer.getvalue()
    first_data = data.find(b"IDAT") - 4
    path.write_bytes(data[:first_data] + png_chunk(b"tRNS", alphas) + data[first_data:])
    return path


def chunk_bomb(path: Path, chunks: int, where: str = "before", kind: bytes = b"tEXt") -> Path:
    """A valid 160 x 120 PNG holding `chunks` empty chunks of `kind` (12 bytes each) `where`
    ("before" or "after") its image data, or ("split") its image data cut into that many IDATs of
    at most one byte, the rest empty. Pillow walks every chunk in Python."""
    buffer = io.BytesIO()
    picture().convert("L").save(buffer, "PNG")
    data = buffer.getvalue()
    signature_and_header = data[:33]  # the signature and IHDR
    width, height = PICTURE_SIZE
    pixels = np.asarray(picture().convert("L"))
    rows = zlib.compress(b"".join(b"\0" + pixels[row].tobytes() for row in range(height)), 9)
    assert len(pixels[0]) == width
    filler = png_chunk(kind) * chunks
    end = png_chunk(b"IEND")
    if where == "before":
        body = filler + png_chunk(b"IDAT", rows)
    elif where == "after":
        body = png_chunk(b"IDAT", rows) + filler
    else:
        pieces = b"".join(png_chunk(b"IDAT", rows[start:start + 1]) for start in range(len(rows)))
        body = pieces + png_chunk(b"IDAT") * max(0, chunks - len(rows))
    path.write_bytes(signature_and_header + body + end)
    return path


def tiled_tiff(path: Path, side: int, tile: int, compressed: bytes | None = None, *,
               tile_type: int = 4, doubled: bool = False) -> Path:
    """An RGB TIFF of side x side pixels in one deflate tile declared tile x tile (its data the
    whole tile of gray unless `compressed` is given): libtiff allocates the whole tile to decode
    it, whatever the picture's size. `tile_type`: the TIFF type of the tile sizes (4 LONG, 9
    SLONG, 3 SHORT); `doubled`: each tile size given twice, the declared one first and 16 after
    (libtiff keeps the first)."""
    data = compressed if compressed is not None else zlib.compress(b"\x80" * (tile * tile * 3), 9)
    bits = struct.pack("<HHH", 8, 8, 8)
    size_format = "<H" if tile_type == 3 else "<i" if tile_type == 9 else "<I"
    tile_entries = [(tag, tile_type, 1, struct.pack(size_format, value))
                    for tag in (322, 323) for value in ((tile, 16) if doubled else (tile,))]
    count = 10 + len(tile_entries)
    table_end = 8 + 2 + 12 * count + 4
    entries = [(256, 4, 1, struct.pack("<I", side)), (257, 4, 1, struct.pack("<I", side)),
               (258, 3, 3, struct.pack("<I", table_end)), (259, 3, 1, struct.pack("<H", 8)),
               (262, 3, 1, struct.pack("<H", 2)), (277, 3, 1, struct.pack("<H", 3)),
               (284, 3, 1, struct.pack("<H", 1)), *tile_entries,
               (324, 4, 1, struct.pack("<I", table_end + len(bits))),
               (325, 4, 1, struct.pack("<I", len(data))), (339, 3, 1, struct.pack("<H", 1))]
    assert len(entries) == count
    table = b"".join(struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")
                     for tag, kind, count, value in entries)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)) + table
                     + struct.pack("<I", 0) + bits + data)
    return path


def raw_png(path: Path, pixels: np.ndarray, *, colour_type: int, depth: int = 8,
            interlaced: bool = False, rows_kept: float = 1.0, palette: bytes = b"") -> Path:
    """A PNG written from `pixels` (rows x columns [x channels], already packed to bytes per row
    for depths under 8) with filter 0, straight or Adam7-interlaced, whose image data (a complete
    zlib stream) keeps only the first `rows_kept` share of the rows it should hold: libpng calls
    such a file short of image data, Pillow decoded it without a word."""
    height, width = pixels.shape[:2]
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2")
    passes = ([(0, 0, 1, 1)] if not interlaced else
              [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
               (0, 1, 1, 2)])
    rows: list[bytes] = []
    for column, row, column_step, row_step in passes:
        part = pixels[row::row_step, column::column_step]
        rows += [b"\x00" + line.tobytes() for line in part if part.shape[1]]
    kept = b"".join(rows[: round(len(rows) * rows_kept)])
    header = struct.pack(">IIBBBBB", width if depth >= 8 else width * 8 // depth, height, depth,
                         colour_type, 0, 0, int(interlaced))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
                     + (png_chunk(b"PLTE", palette) if palette else b"")
                     + png_chunk(b"IDAT", zlib.compress(kept)) + png_chunk(b"IEND"))
    return path
