"""Multi-index hashing: exact Hamming search without scanning every hash.

`MultiIndex` serves 64-bit hashes, `WideMultiIndex` hashes of any other length (dHash-256).

Split each hash into m = 3 substrings (22, 21 and 21 bits). If two hashes differ in at most r bits,
then by the pigeonhole principle some substring differs in at most floor(r / 3) bits. So probing,
in each substring's sorted table, every value within floor(r / 3) bits of the query's substring
finds every hash within r, and checking those candidates' full distances drops the rest. The
answer is exactly brute force's (a property test holds it to that); only the work differs.

Memory: per hash, 3 substrings x (uint32 value + uint32 position) = 24 bytes, beside the 8 of the
hash itself. Build: three argsorts.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from itertools import combinations

import numpy as np

WIDTHS = (22, 21, 21)  # most significant substring first; sums to 64
SHIFTS = (42, 21, 0)
PARTS = len(WIDTHS)
# Beyond this many bits per substring the probe lists themselves grow too long to be worth it.
MAX_SUBSTRING_RADIUS = 4
# Measured by bench/search_speed.py: a probe costs about 80 ns, scanning one hash about 1.5 ns.
# The multi-index is used only where its probes cost less than a scan of every hash would.
HASHES_PER_PROBE = 60


class MultiIndex:
    """Sorted substring tables over a fixed array of distinct 64-bit hashes."""

    def __init__(self, values: np.ndarray, tables: np.ndarray | None = None) -> None:
        """values: (n,) uint64. tables: a (2 * PARTS, n) uint32 array from `tables`, or None."""
        self.values = np.ascontiguousarray(values, dtype=np.uint64)
        self.tables = build_tables(self.values) if tables is None else tables
        if self.tables.shape != (2 * PARTS, self.values.size):
            raise ValueError("substring tables do not fit the hashes")

    def worth_it(self, max_distance: int, lookups: int = 1) -> bool:
        """Whether probing beats scanning every hash for this radius and this many hashes, when a
        query needs `lookups` probings (one per setting of its undecided bits) or one scan."""
        radius = max_distance // PARTS
        if radius > MAX_SUBSTRING_RADIUS:
            return False
        probes = sum(len(flip_masks(width, radius)) for width in WIDTHS)
        return self.values.size > HASHES_PER_PROBE * probes * lookups

    def within(self, query: int, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions (into values) and distances of every hash within max_distance of query."""
        radius = max_distance // PARTS
        found = []
        for part in range(PARTS):
            sorted_values = self.tables[2 * part]
            positions = self.tables[2 * part + 1]
            probes = substring(query, part) ^ flip_masks(WIDTHS[part], radius)
            starts = np.searchsorted(sorted_values, probes, side="left")
            ends = np.searchsorted(sorted_values, probes, side="right")
            found.append(positions[_ranges(starts, ends)])
        candidates = np.unique(np.concatenate(found))
        distances = np.bitwise_count(self.values[candidates] ^ np.uint64(query)).astype(np.int64)
        keep = distances <= max_distance
        return candidates[keep].astype(np.int64), distances[keep]

    def pairs_within(self, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair of stored hashes within max_distance, each once: positions (first <
        second) and distances. within() for every hash at once: per substring and probe mask,
        one vectorised pass over all the hashes instead of a Python call per hash (--groups on
        a million hashes)."""
        radius = max_distance // PARTS
        found_first, found_second = [], []
        for part in range(PARTS):
            sorted_values = self.tables[2 * part]
            positions = self.tables[2 * part + 1]
            subs = ((self.values >> np.uint64(SHIFTS[part]))
                    & np.uint64((1 << WIDTHS[part]) - 1)).astype(np.uint32)
            for mask in flip_masks(WIDTHS[part], radius):
                probes = subs ^ mask
                starts = np.searchsorted(sorted_values, probes, side="left")
                ends = np.searchsorted(sorted_values, probes, side="right")
                for first, second in _candidate_pairs(starts, ends, positions):
                    near = np.bitwise_count(self.values[first] ^ self.values[second]) \
                        <= max_distance
                    found_first.append(first[near])
                    found_second.append(second[near])
        if not found_first:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        # A pair is found once per substring it agrees on: each kept once.
        keys = np.unique((np.concatenate(found_first).astype(np.uint64) << np.uint64(32))
                         | np.concatenate(found_second).astype(np.uint64))
        first = (keys >> np.uint64(32)).astype(np.int64)
        second = (keys & np.uint64(0xFFFF_FFFF)).astype(np.int64)
        distances = np.bitwise_count(self.values[first] ^ self.values[second]).astype(np.int64)
        return first, second, distances


# Candidate pairs checked at a time by MultiIndex.pairs_within: 48 MB of temporaries.
PAIRS_PER_CHUNK = 1 << 21


def _candidate_pairs(
    starts: np.ndarray, ends: np.ndarray, positions: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(first, second) positions with first < second: each hash (the query, its own position)
    against the table run [start, end) its probe found, a chunk of queries at a time."""
    lengths = (ends - starts).astype(np.int64)
    totals = np.cumsum(lengths)
    query = 0
    while query < lengths.size:
        done_before = int(totals[query - 1]) if query else 0
        last = int(np.searchsorted(totals, done_before + PAIRS_PER_CHUNK, side="right"))
        last = max(last, query + 1)  # one query with a huge run: alone in its chunk
        chunk = slice(query, last)
        counts = lengths[chunk]
        if counts.sum():
            first = np.repeat(np.arange(query, last, dtype=np.int64), counts)
            second = positions[_ranges(starts[chunk], ends[chunk])].astype(np.int64)
            keep = first < second
            yield first[keep], second[keep]
        query = last


def substring(value: int, part: int) -> np.uint32:
    return np.uint32((value >> SHIFTS[part]) & ((1 << WIDTHS[part]) - 1))


def build_tables(values: np.ndarray) -> np.ndarray:
    """For each substring: its values sorted, and the position in `values` each came from.

    Ties keep their order in `values` (a stable sort). Each substring is sorted with its position
    in the low 32 bits of one uint64, which sorts ties by position: 6x quicker than three stable
    argsorts (0.1 s at 10^6 hashes instead of 0.6 s), and the same tables.
    """
    if values.size >= 1 << 32:
        raise ValueError("multi-index tables hold positions in 32 bits")
    values = np.asarray(values, dtype=np.uint64)
    tables = np.empty((2 * PARTS, values.size), dtype=np.uint32)
    positions = np.arange(values.size, dtype=np.uint64)
    for part in range(PARTS):
        subs = (values >> np.uint64(SHIFTS[part])) & np.uint64((1 << WIDTHS[part]) - 1)
        combined = np.sort((subs << np.uint64(32)) | positions)
        tables[2 * part] = (combined >> np.uint64(32)).astype(np.uint32)
        tables[2 * part + 1] = (combined & np.uint64(0xFFFF_FFFF)).astype(np.uint32)
    return tables


@lru_cache(maxsize=32)
def flip_masks(width: int, radius: int) -> np.ndarray:
    """Every mask of `width` bits with at most `radius` bits set (XOR them in to probe)."""
    masks = [0]
    for count in range(1, radius + 1):
        masks.extend(sum(1 << bit for bit in bits) for bits in combinations(range(width), count))
    result = np.array(masks, dtype=np.uint32)
    result.flags.writeable = False
    return result


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenate the integer ranges [start, end) without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total)


# -- hashes of any length ------------------------------------------------------------------------
#
# A hash of b bits (b != 64) is cut into m = ceil(b / 16) substrings of 16 bits, counted from its
# least significant end (the last may be shorter). If two hashes differ in at most r bits, some
# substring differs in at most floor(r / m) bits, so probing each substring's table with every
# value within floor(r / m) bits of the query's finds every hash within r; the candidates' full
# distances drop the rest. One set of tables serves every radius: for dHash-256 (m = 16), r = 8
# probes each table with the query's own substring (16 probes), r = 16 with it and its 16
# one-bit neighbours (272 probes), r = 32 with the 137 values within 2 bits.
#
# Sixteen-bit substrings index a table directly (65,536 buckets), so no binary search: per table,
# the positions of the hashes sorted by substring (uint32) and where each value's run starts.
# Memory: 4 bytes per substring per hash (64 for dHash-256, beside its 32), plus 256 KiB per
# substring for the run starts. Build: one 16-bit radix sort per substring.

WIDE_SUBSTRING_BITS = 16
_WIDE_BUCKETS = 1 << WIDE_SUBSTRING_BITS
# Candidates are gathered at random and checked in full; beyond this share of the hashes, one
# sequential scan of them all is cheaper and gives the same answer.
WIDE_SCAN_SHARE = 0.25


def wide_layout(bits: int) -> list[tuple[int, int, int]]:
    """(word, shift, width) of each 16-bit substring, in the (count, words) layout of the store."""
    words = (bits + 63) // 64
    layout = []
    for start in range(0, bits, WIDE_SUBSTRING_BITS):
        width = min(WIDE_SUBSTRING_BITS, bits - start)
        layout.append((words - 1 - start // 64, start % 64, width))
    return layout


def wide_substrings(matrix: np.ndarray, bits: int) -> np.ndarray:
    """(m, count) uint16: every hash's substrings."""
    layout = wide_layout(bits)
    subs = np.empty((len(layout), matrix.shape[0]), dtype=np.uint16)
    for part, (word, shift, width) in enumerate(layout):
        column = matrix[:, word] >> np.uint64(shift)
        subs[part] = (column & np.uint64((1 << width) - 1)).astype(np.uint16)
    return subs


def build_wide_tables(matrix: np.ndarray, bits: int) -> np.ndarray:
    """(m, 65537 + count) uint32: per substring, its run starts then the positions sorted by it."""
    count = matrix.shape[0]
    if count >= 1 << 32:
        raise ValueError("multi-index tables hold positions in 32 bits")
    layout = wide_layout(bits)
    tables = np.empty((len(layout), _WIDE_BUCKETS + 1 + count), dtype=np.uint32)
    for part, row in enumerate(wide_substrings(matrix, bits)):
        tables[part, 0] = 0
        tables[part, 1:_WIDE_BUCKETS + 1] = np.cumsum(np.bincount(row, minlength=_WIDE_BUCKETS))
        tables[part, _WIDE_BUCKETS + 1:] = np.argsort(row, kind="stable")  # radix sort: 16 bits
    return tables


class WideMultiIndex:
    """16-bit substring tables over a fixed (count, words) array of distinct hashes of `bits`."""

    def __init__(self, matrix: np.ndarray, bits: int, tables: np.ndarray | None = None) -> None:
        self.matrix = matrix
        self.bits = bits
        self.layout = wide_layout(bits)
        self.tables = build_wide_tables(matrix, bits) if tables is None else tables
        if self.tables.shape != (len(self.layout), _WIDE_BUCKETS + 1 + matrix.shape[0]):
            raise ValueError("substring tables do not fit the hashes")

    def substring_radius(self, max_distance: int) -> int:
        return max(0, max_distance) // len(self.layout)

    def worth_it(self, max_distance: int, lookups: int = 1) -> bool:
        """Whether probing beats scanning every hash for this radius and this many hashes, when a
        query needs `lookups` probings (one per setting of its undecided bits) or one scan."""
        radius = self.substring_radius(max_distance)
        if radius > MAX_SUBSTRING_RADIUS:
            return False
        probes = sum(len(flip_masks(width, radius)) for _word, _shift, width in self.layout)
        return self.matrix.shape[0] > HASHES_PER_PROBE * probes * lookups

    def within(self, query: int, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions (into the matrix) and distances of every hash within max_distance of query."""
        radius = self.substring_radius(max_distance)
        words = self.matrix.shape[1]
        query_words = np.array(
            [(query >> (64 * (words - 1 - i))) & 0xFFFF_FFFF_FFFF_FFFF for i in range(words)],
            dtype=np.uint64,
        )
        starts, ends, tables = [], [], []
        for part, (word, shift, width) in enumerate(self.layout):
            value = (int(query_words[word]) >> shift) & ((1 << width) - 1)
            probes = (np.uint32(value) ^ flip_masks(width, radius)).astype(np.int64)
            table = self.tables[part]
            starts.append(table[probes].astype(np.int64) + _WIDE_BUCKETS + 1)
            ends.append(table[probes + 1].astype(np.int64) + _WIDE_BUCKETS + 1)
            tables.append(np.full(probes.size, part, dtype=np.int64))
        start, end = np.concatenate(starts), np.concatenate(ends)
        if int((end - start).sum()) > WIDE_SCAN_SHARE * self.matrix.shape[0]:
            candidates = np.arange(self.matrix.shape[0])
        else:
            flat = self.tables.reshape(-1)
            row_offset = np.concatenate(tables) * self.tables.shape[1]
            candidates = np.unique(flat[_ranges(start + row_offset, end + row_offset)])
            candidates = candidates.astype(np.int64)
        distances = np.bitwise_count(self.matrix[candidates] ^ query_words).sum(
            axis=1, dtype=np.int64)
        keep = distances <= max_distance
        return candidates[keep], distances[keep]


def tables_shape(bits: int, count: int) -> tuple[int, int]:
    """The shape of the tables of either multi-index over `count` hashes of `bits` (for checking
    a cached copy before use)."""
    if bits == 64:
        return (2 * PARTS, count)
    return (len(wide_layout(bits)), _WIDE_BUCKETS + 1 + count)


def table_positions(tables: np.ndarray, bits: int) -> np.ndarray:
    """The part of the tables that holds positions into the hashes (each must be below count)."""
    return tables[1::2] if bits == 64 else tables[:, _WIDE_BUCKETS + 1:]
