"""Resampling a decoded image to a hash's small grid, in floating point, wherever it was decoded.

A JPEG decoded at 1/2, 1/4 or 1/8 scale covers the same picture as the full decode, in fewer
pixels whose last row and column may stand for a partial block. `grid` places its Lanczos filter
in the coordinates of the full-size picture (the decoded region may end mid-pixel), so the filter
covers the same part of the picture whatever the decode scale: the path an image takes changes its
grid by a fraction of a gray level, not by a shift. With `cover`, such a partial last pixel also
weighs only as much of the picture as it covers (recipe v5; see _weights).

The grid is kept in floating point. Rounding it to 8 bits, as resizing a Pillow "L" image does,
creates ties between neighbouring cells of smooth regions, and a tie broken by a rounding step
flips a dHash bit: on CALTECH-101 that rounding alone costs 7 to 10 points of exact-bucket recall
on resized and re-compressed copies (bench/decode_margin.py; docs/accuracy.md).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

# Pillow's Lanczos support: 3 lobes, widened by the reduction factor when shrinking.
LANCZOS_LOBES = 3.0
# Pixels converted to float at a time (16 MB of float64) by dense_grid, so a 100-megapixel PNG
# never needs an 800 MB float copy.
PIXELS_PER_BLOCK = 1 << 21
# OpenBLAS spreads a matrix product of more than 2^18 multiply-adds over threads that spin while
# they wait; with one worker per core already (index.py), or on a busy machine, that made pHash's
# 32 x 32 grid ten times slower than dHash's 9 x 8. Products are cut below it and stay on one
# thread.
SINGLE_THREAD_PRODUCT = 1 << 18
# Grids up to this many cells (pHash-64's 32 x 32) use dense products; larger ones bands.
DENSE_CELLS = 32 * 32
# A side longer than this (no camera's; a hostile PNG's 24,000,000 x 2) is reduced in a stream
# (streamed_grid): the other ways hold a cells x pixels filter.
LONG_SIDE = 1 << 16
# Pixels filtered at a time by streamed_grid (2 MB of float64 per chunk).
STREAM_PIXELS = 1 << 18
# Where a cell's filter spans thousands of pixels, streamed_grid weighs blocks of pixels, about
# this many per filter width (_blocked_reduction).
BLOCK_FRACTION = 4096
# Cells are rounded to this fraction of a gray level. Finer than any difference a picture makes,
# coarser than the floating-point noise of summing a few hundred weighted pixels, so a blank
# picture gives exactly equal cells (and the all-zero dHash of a blank image), not noise.
STEP = 1 / 64


# The filters are kept for the sides met so far, up to this many bytes in all: CALTECH-101 alone
# has 796 different (side, cells) pairs, 17 MB of dHash-64 filters; an LRU of 512 entries, as
# before, was emptied over and over and cost index.py a third of its time. A side longer than
# CACHED_SIDE is rare and its filter large: computed anew each time.
CACHE_BYTES = 64 << 20
CACHED_SIDE = 2048

_cache: OrderedDict[tuple[int, float, int, bool], np.ndarray] = OrderedDict()
_cache_bytes = 0
_cache_lock = threading.Lock()  # the checker hashes in several threads


def lanczos_weights(pixels: int, extent: float, cells: int, cover: bool = False) -> np.ndarray:
    """(cells, pixels) float64 weights: each row a Lanczos-3 filter over the decoded pixels."""
    global _cache_bytes
    if pixels > CACHED_SIDE:
        return _weights(pixels, extent, cells, cover)
    key = (pixels, extent, cells, cover)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    weights = _weights(pixels, extent, cells, cover)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = weights
            _cache_bytes += weights.nbytes
            while _cache_bytes > CACHE_BYTES:
                _cache_bytes -= _cache.popitem(last=False)[1].nbytes
    return weights


def _weights(pixels: int, extent: float, cells: int, cover: bool = False) -> np.ndarray:
    """(cells, pixels) float64 weights: each row a Lanczos-3 filter over the decoded pixels.

    `extent` is how many decoded pixels the picture spans (pixels, or less when the decoder
    rounded a partial block up to a whole pixel). The filter is Pillow's: centres at
    (i + 0.5) * extent / cells, support 3 output cells, rows normalised to sum to 1.

    With `cover`, a last pixel that stands for a partial block is weighed by the share of it
    the picture covers, at the middle of that share: without, it counted as a whole pixel (in a
    1/8 decode, 8 full-size pixels where the picture may have 1), so the edge row and column of
    the grid leant on the picture's last pixels as the whole decode does not, differently for a
    copy a few pixels larger. On 200 CALTECH-101 pairs built across the 1/4-to-1/8 boundary
    (bench/straddle.py --seed 17), the exact bucket went from 181 pairs to 192 (plain ImageHash:
    194), and every set of pairs straddling the boundaries (six seeds) now keeps at least as many
    pairs as plain ImageHash at every threshold (docs/accuracy.md).
    """
    scale = extent / cells
    widen = max(scale, 1.0)
    centres = (np.arange(cells, dtype=np.float64) + 0.5) * scale
    positions = np.arange(pixels, dtype=np.float64) + 0.5
    covered = np.ones(pixels)
    if cover and pixels - 1 < extent < pixels:
        covered[-1] = extent - (pixels - 1)
        positions[-1] = pixels - 1 + covered[-1] / 2
    weights = _lanczos((positions[None, :] - centres[:, None]) / widen) * covered
    totals = weights.sum(axis=1, keepdims=True)
    # A row can only sum to zero for degenerate sizes (a filter with no pixel under it): fall
    # back to the nearest pixel rather than divide by zero.
    empty = totals[:, 0] <= 1e-9
    if empty.any():
        nearest = np.clip(centres[empty].astype(np.int64), 0, pixels - 1)
        weights[empty] = 0.0
        weights[np.flatnonzero(empty), nearest] = 1.0
        totals = weights.sum(axis=1, keepdims=True)
    result = weights / totals
    result.flags.writeable = False
    return result


def _lanczos(x: np.ndarray) -> np.ndarray:
    """Pillow's Lanczos-3 filter at x (in output cells from the cell's centre), not normalised."""
    # sinc(x) * sinc(x / 3) = 3 sin(pi x) sin(pi x / 3) / (pi x)^2, with sin(pi x) from
    # sin(pi x / 3) (sin 3a = 3 sin a - 4 sin^3 a): one sine per weight, not two. Photos come in
    # many heights, so these weights are computed for about one image in six.
    third = np.sin(x * (np.pi / LANCZOS_LOBES))
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = LANCZOS_LOBES * third * third * (3.0 - 4.0 * third * third) / (np.pi * x) ** 2
    weights[x == 0] = 1.0
    weights[np.abs(x) >= LANCZOS_LOBES] = 0.0  # a cell's filter covers a few of the row's pixels
    return weights


def grid(pixels: np.ndarray, extent: tuple[float, float], size: tuple[int, int],
         cover: bool = False) -> np.ndarray:
    """Resample 8-bit gray `pixels` (rows, columns) to `size` = (width, height), as float64
    gray levels rounded to STEP.

    `extent` = (width, height) of the picture in decoded pixels (see lanczos_weights). Two ways
    to the same cells (they agree after rounding to STEP; a test holds them to it): dense
    products for small grids (dHash, aHash, pHash), per-cell bands for large ones (wHash reads
    up to 512 x 512, where dense products would cost cells x pixels).
    """
    width, height = size
    if max(pixels.shape) > LONG_SIDE:
        # Only a whole decode is this long (a JPEG's sides stop at 65,535 pixels): no partial
        # pixel for `cover` to weigh.
        return streamed_grid(pixels, extent, size)
    if width * height <= DENSE_CELLS:
        return dense_grid(pixels, extent, size, cover)
    return banded_grid(pixels, extent, size, cover)


def streamed_grid(
    pixels: np.ndarray, extent: tuple[float, float], size: tuple[int, int]
) -> np.ndarray:
    """grid() for a picture with a side longer than LONG_SIDE: its long side reduced first, a
    chunk of filter at a time, then the other. The filters of the other ways are matrices of
    cells x pixels: a 47 KB PNG of 24,000,000 x 2 pixels (under the pixel limit) made them
    gigabytes (7 GB at the peak for one upload, and two at once had the checker killed for want
    of memory), where this holds a few megabytes more than the pixels."""
    rows, columns = pixels.shape
    width, height = size
    if columns >= rows:  # the rows reduced across first: (rows, width), then down
        across = _streamed_reduction(pixels.T, extent[0], width)  # (width, rows)
        down = lanczos_weights(rows, extent[1], height) if rows <= LONG_SIDE else None
        cells = (down @ across.T if down is not None
                 else _streamed_reduction(across.T, extent[1], height))
    else:  # a tall picture: down first, (height, columns), then across
        partial = _streamed_reduction(pixels, extent[1], height)  # (height, columns)
        cells = partial @ lanczos_weights(columns, extent[0], width).T
    return np.round(cells / STEP) * STEP


def _streamed_reduction(pixels: np.ndarray, extent: float, cells: int) -> np.ndarray:
    """(cells, other) float64: `pixels` (long side first, then the other; 8-bit or float)
    filtered along its first axis to `cells`, as lanczos_weights(...) @ pixels would give,
    computing each cell's filter only over the pixels under it, STREAM_PIXELS at a time."""
    long_side = pixels.shape[0]
    scale = extent / cells
    widen = max(scale, 1.0)
    block = int(widen) // BLOCK_FRACTION
    if block > 1:
        return _blocked_reduction(pixels, cells, scale, widen, block)
    sums = np.zeros((cells, pixels.shape[1]), dtype=np.float64)
    for cell in range(cells):
        centre = (cell + 0.5) * scale
        # The pixels whose centres lie within the filter's reach (a few cells wide).
        first = max(0, int(np.floor(centre - LANCZOS_LOBES * widen - 0.5)))
        last = min(long_side, int(np.ceil(centre + LANCZOS_LOBES * widen + 0.5)) + 1)
        total = 0.0
        step = max(1, STREAM_PIXELS // max(1, pixels.shape[1]))  # lines of the long side
        for start in range(first, last, step):
            stop = min(last, start + step)
            weights = _lanczos((np.arange(start, stop, dtype=np.float64) + 0.5 - centre) / widen)
            total += float(weights.sum())
            sums[cell] += weights @ pixels[start:stop].astype(np.float64)
        if total <= 1e-9:  # no pixel under the filter (degenerate sizes): the nearest pixel
            nearest = min(max(int(centre), 0), long_side - 1)
            sums[cell] = pixels[nearest].astype(np.float64)
        else:
            sums[cell] /= total
    return sums


def banded_grid(
    pixels: np.ndarray, extent: tuple[float, float], size: tuple[int, int], cover: bool = False
) -> np.ndarray:
    """grid() cell by cell, each reading only the pixels under its filter."""
    rows, columns = pixels.shape
    width, height = size
    across = lanczos_weights(columns, extent[0], width, cover)
    down = lanczos_weights(rows, extent[1], height, cover)
    # Each cell reads only the pixels under its filter (a band a few cells wide), so the work
    # follows the filter's support, not cells x pixels. einsum keeps to one thread and converts
    # the 8-bit pixels to float through a small buffer, never the whole picture at once.
    partial = np.empty((height, columns), dtype=np.float64)
    for cell, (first, last) in enumerate(_bands(down)):
        partial[cell] = np.einsum("k,kj->j", down[cell, first:last], pixels[first:last])
    cells = np.empty((height, width), dtype=np.float64)
    for cell, (first, last) in enumerate(_bands(across)):
        cells[:, cell] = np.einsum("ik,k->i", partial[:, first:last], across[cell, first:last])
    return np.round(cells / STEP) * STEP


def dense_grid(
    pixels: np.ndarray, extent: tuple[float, float], size: tuple[int, int], cover: bool = False
) -> np.ndarray:
    """grid() as two matrix products over every pixel: fastest for small grids."""
    rows, columns = pixels.shape
    width, height = size
    across = lanczos_weights(columns, extent[0], width, cover)
    down = lanczos_weights(rows, extent[1], height, cover)
    step = max(1, min(PIXELS_PER_BLOCK // max(1, columns),
                      SINGLE_THREAD_PRODUCT // max(1, height * columns)))
    # The first block's product is the partial sum itself (adding it to zeros changes no bit):
    # one array fewer to fill per image, a few microseconds of a 300 x 200 photo's 40.
    partial = down[:, :step] @ pixels[:step].astype(np.float64)
    for start in range(step, rows, step):
        block = pixels[start : start + step].astype(np.float64)
        partial += down[:, start : start + step] @ block
    step = max(1, SINGLE_THREAD_PRODUCT // max(1, columns * width))
    if step >= height:  # one product (every grid of dHash, aHash and pHash on a photo)
        cells = partial @ across.T
    else:
        cells = np.empty((height, width), dtype=np.float64)
        for start in range(0, height, step):
            cells[start : start + step] = partial[start : start + step] @ across.T
    return np.round(cells / STEP) * STEP


def _blocked_reduction(pixels: np.ndarray, cells: int, scale: float, widen: float, block: int
                       ) -> np.ndarray:
    """_streamed_reduction() where each cell's filter spans thousands of pixels: the pixels are
    summed in blocks of `block` (widen / BLOCK_FRACTION) and each block weighed at its centre.
    The filter hardly changes across a block: the cells move by at most 2.3e-4 gray levels from
    a weight per pixel (random pixels, measured; STEP is 1/64), which cost 12 s for one
    49,000,000 x 1 picture (six filter weights per pixel of the long side), where this takes
    0.03 s."""
    long_side, other = pixels.shape
    whole = long_side // block
    count = whole + (1 if long_side % block else 0)
    block_sums = np.empty((count, other), dtype=np.float64)
    per_chunk = max(1, STREAM_PIXELS // (block * max(1, other)))  # blocks summed at a time
    for first in range(0, whole, per_chunk):
        last = min(whole, first + per_chunk)
        block_sums[first:last] = pixels[first * block:last * block].reshape(
            last - first, block, other).sum(axis=1, dtype=np.float64)
    sizes = np.full(count, float(block))
    centres = np.arange(count, dtype=np.float64) * block + block / 2
    if count > whole:  # the last, shorter block
        block_sums[whole] = pixels[whole * block:].sum(axis=0, dtype=np.float64)
        sizes[whole] = long_side - whole * block
        centres[whole] = whole * block + sizes[whole] / 2
    result = np.empty((cells, other), dtype=np.float64)
    for cell in range(cells):
        centre = (cell + 0.5) * scale
        first = max(0, int((centre - LANCZOS_LOBES * widen) // block) - 1)
        last = min(count, int((centre + LANCZOS_LOBES * widen) // block) + 2)
        weights = _lanczos((centres[first:last] - centre) / widen)
        total = float(weights @ sizes[first:last])
        if total <= 1e-9:  # no pixel under the filter (degenerate sizes): the nearest pixel
            result[cell] = pixels[min(max(int(centre), 0), long_side - 1)].astype(np.float64)
        else:
            result[cell] = (weights @ block_sums[first:last]) / total
    return result


def _bands(weights: np.ndarray) -> list[tuple[int, int]]:
    """For each row of a weight matrix, the [first, last) range of its non-zero weights."""
    bands = []
    for row in weights:
        nonzero = np.flatnonzero(row)
        bands.append((int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.size else (0, 0))
    return bands


def orient(cells: np.ndarray, orientation: int) -> np.ndarray:
    """The grid as a person sees it: apply an EXIF orientation (1-8) to a grid made upright-less.

    Lanczos resampling commutes with flips and quarter turns, so turning the small grid gives what
    turning the whole picture first would, for a fraction of the work.
    """
    if orientation == 2:
        return cells[:, ::-1]
    if orientation == 3:
        return cells[::-1, ::-1]
    if orientation == 4:
        return cells[::-1, :]
    if orientation == 5:
        return cells.T
    if orientation == 6:
        return np.rot90(cells, -1)
    if orientation == 7:
        return cells[::-1, ::-1].T
    if orientation == 8:
        return np.rot90(cells, 1)
    return cells


def swaps_axes(orientation: int) -> bool:
    """Whether this EXIF orientation turns the picture by a quarter (width and height swap)."""
    return orientation in (5, 6, 7, 8)
