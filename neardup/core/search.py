"""Finding stored images near a query hash.

`HashIndex` is the reference: every distinct stored hash in one uint64 array, XOR and popcount
vectorised with numpy. Any faster index must return exactly what it returns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .hashing import Hash, is_low_information
from .multiindex import MultiIndex, WideMultiIndex, build_tables, build_wide_tables
from .store import Store, hash_to_words, hex_keys_to_words

# Measured on CALTECH-101: copies resized by +-5% and re-saved as JPEG keep the exact 64-bit dHash
# only ~75% of the time, but all stay within 4 bits, while only 256 of 41.8 million pairs of distinct
# images are that close. 4 finds every such copy at a negligible false-match rate.
DEFAULT_MAX_DISTANCE = 4


@dataclass(frozen=True, slots=True)
class Match:
    """A stored image near the query: its path relative to the dataset root, and how near."""

    path: str
    distance: int | None  # None: not near by hash (found by local features only)
    hash_hex: str
    # Stores with local features only (neardup.features): how it was found and verified.
    found_by: str | None = None  # "hash", "features" or "hash+features"
    inliers: int | None = None
    verified: bool | None = None


class HashIndex:
    """Hamming search over the distinct hashes of a store.

    Brute force (XOR and popcount over every hash, vectorised) is the reference. For large stores
    a multi-index is chosen automatically (MultiIndex for 64-bit hashes, WideMultiIndex for any
    other length); it returns exactly the same answers (property tests hold both to that) while
    reading a tiny fraction of the hashes.
    """

    def __init__(
        self, matrix: np.ndarray, bits: int, multi: MultiIndex | WideMultiIndex | None = None
    ) -> None:
        if matrix.ndim != 2 or matrix.shape[1] != (bits + 63) // 64:
            raise ValueError("need a (count, words) array of uint64")
        self.matrix = matrix
        self.bits = bits
        self.multi = multi

    @classmethod
    def from_store(cls, store: Store) -> HashIndex:
        matrix = store.hash_matrix()
        bits = store.recipe.bits
        multi: MultiIndex | WideMultiIndex | None = None
        if bits == 64 and matrix.shape[0] >= MULTI_INDEX_MIN_HASHES:
            values = matrix[:, 0]
            tables = store.cached_array("multiindex", lambda: build_tables(values))
            multi = MultiIndex(values, tables)
        elif matrix.shape[0] >= MULTI_INDEX_MIN_HASHES:
            wide = store.cached_array("widemultiindex", lambda: build_wide_tables(matrix, bits))
            multi = WideMultiIndex(matrix, bits, wide)
        return cls(matrix, bits, multi)

    @classmethod
    def from_hashes(cls, hashes: list[Hash], *, multi_index: bool | None = None) -> HashIndex:
        """An index over these hashes (tests and benchmarks); multi_index None decides by size."""
        bits = hashes[0].bits if hashes else 64
        keys = sorted({value.hex().encode("ascii") for value in hashes})
        matrix = hex_keys_to_words(keys, bits)
        if multi_index is None:
            multi_index = len(keys) >= MULTI_INDEX_MIN_HASHES
        if not multi_index:
            return cls(matrix, bits)
        if bits == 64:
            return cls(matrix, bits, MultiIndex(matrix[:, 0]))
        return cls(matrix, bits, WideMultiIndex(matrix, bits))

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def within(self, query: Hash, max_distance: int) -> list[tuple[str, int]]:
        """(hash hex, distance) of every stored hash within max_distance, nearest first."""
        if query.bits != self.bits:
            raise ValueError(f"a {query.bits}-bit query against {self.bits}-bit hashes")
        if max_distance <= 0 and self.matrix.shape[1] == 1:
            positions, distances = self.exact(query)
        elif self.multi is not None and self.multi.worth_it(max_distance):
            positions, distances = self.multi.within(query.value, max_distance)
        else:
            positions, distances = self.scan(query, max_distance)
        # Positions follow the hashes' ascending order, so this sorts by distance, then hash.
        order = np.lexsort((positions, distances))
        width = (self.bits + 3) // 4
        return [(self.hex_at(int(positions[i]), width), int(distances[i])) for i in order]

    def within_many(self, queries: list[Hash], max_distance: int) -> list[list[tuple[str, int]]]:
        """within() for each query.

        One vectorised pass per query on purpose: scanning a batch together with numpy
        broadcasting was measured 5x slower per query at 10^6 hashes (4.1 ms against 0.76 ms),
        because the (hashes x queries) temporaries cost more memory traffic than they save.
        """
        return [self.within(query, max_distance) for query in queries]

    def scan(self, query: Hash, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
        """The reference: every hash's distance, computed at once."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        words = hash_to_words(query)
        if self.matrix.shape[1] == 1:  # 64-bit hashes: no per-row sum needed (3x less memory traffic)
            distances = np.bitwise_count(self.matrix[:, 0] ^ words[0])
        else:
            distances = np.bitwise_count(self.matrix ^ words).sum(axis=1, dtype=np.int64)
        hits = np.flatnonzero(distances <= max_distance)
        return hits, distances[hits].astype(np.int64)

    def exact(self, query: Hash) -> tuple[np.ndarray, np.ndarray]:
        """Distance 0 over sorted 64-bit hashes: one binary search."""
        values = self.matrix[:, 0]
        position = int(np.searchsorted(values, np.uint64(query.value)))
        if position < values.size and int(values[position]) == query.value:
            return np.array([position]), np.array([0])
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)

    def hex_at(self, position: int, width: int) -> str:
        value = 0
        for word in self.matrix[position]:
            value = (value << 64) | int(word)
        return format(value, f"0{width}x")


# Below this, one vectorised scan is already well under a tenth of a millisecond.
MULTI_INDEX_MIN_HASHES = 20_000


def find_matches(
    store: Store,
    query: Hash,
    max_distance: int,
    index: HashIndex | None = None,
    *,
    include_low_information: bool = False,
) -> list[Match]:
    """Every stored image within max_distance of the query, ordered by distance then path."""
    return find_matches_many(store, [query], max_distance, index,
                             include_low_information=include_low_information)[0]


def find_matches_many(
    store: Store,
    queries: list[Hash],
    max_distance: int,
    index: HashIndex | None = None,
    *,
    include_low_information: bool = False,
) -> list[list[Match]]:
    """The matches of each query, computed together, each list ordered by distance then path.

    Distance 0 is the exact bucket: one indexed lookup, no scan and no index needed. Blank and
    smooth images (low-information hashes) match each other whatever they show, so unless asked
    they are neither matched as queries nor reported as matches.
    """
    wanted = [include_low_information or not is_low_information(query) for query in queries]
    searched = [query for query, keep in zip(queries, wanted, strict=True) if keep]
    if max_distance <= 0:
        found = [[(query.hex(), 0)] for query in searched]
    else:
        if index is None:
            index = HashIndex.from_store(store)
        found = index.within_many(searched, max_distance)
    answers = iter(found)
    results: list[list[Match]] = []
    for query, keep in zip(queries, wanted, strict=True):
        if not keep:
            results.append([])
            continue
        matches = [
            Match(path, distance, key)
            for key, distance in next(answers)
            if include_low_information or not is_low_information(Hash.from_hex(key, query.bits))
            for path in store.bucket(key)
        ]
        matches.sort(key=lambda match: (match.distance, match.path))
        results.append(matches)
    return results


def merge_matches(plain: list[Match], mirrored: list[Match]) -> list[Match]:
    """Matches of a query and of its mirror image: each path once, at its smaller distance."""
    best: dict[str, Match] = {}
    for match in plain + mirrored:
        if match.path not in best or match.distance < best[match.path].distance:
            best[match.path] = match
    return sorted(best.values(), key=lambda match: (match.distance, match.path))


def resolve_stored_path(dataset_root: str, relpath: str) -> str | None:
    """Join a stored relative path to its dataset root, or None if it would leave the root.

    A store may come from someone else: an entry like '../../etc/passwd' or '/etc/passwd' is never
    turned into a path outside the dataset.
    """
    if not relpath or relpath.startswith("/") or "\\" in relpath or "\0" in relpath:
        return None
    parts = relpath.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return os.path.join(dataset_root, *parts)
