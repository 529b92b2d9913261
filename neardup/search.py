"""Finding stored images near a query hash.

`HashIndex` is the reference: every distinct stored hash in one uint64 array, XOR and popcount
vectorised with numpy. Any faster index must return exactly what it returns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .hashing import Hash, is_low_information
from .store import Store, hash_to_words

# Measured on CALTECH-101: copies resized by +-5% and re-saved as JPEG keep the exact 64-bit dHash
# only ~75% of the time, but all stay within 4 bits, while only 256 of 41.8 million pairs of distinct
# images are that close. 4 finds every such copy at a negligible false-match rate.
DEFAULT_MAX_DISTANCE = 4


@dataclass(frozen=True, slots=True)
class Match:
    """A stored image near the query: its path relative to the dataset root, and how near."""

    path: str
    distance: int
    hash_hex: str


class HashIndex:
    """Brute-force Hamming search over the distinct hashes of a store."""

    def __init__(self, keys: list[str], matrix: np.ndarray) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != len(keys):
            raise ValueError("need one row of words per key")
        self.keys = keys
        self.matrix = matrix

    @classmethod
    def from_store(cls, store: Store) -> HashIndex:
        keys, matrix = store.hash_matrix()
        return cls(keys, matrix)

    def __len__(self) -> int:
        return len(self.keys)

    def within(self, query: Hash, max_distance: int) -> list[tuple[str, int]]:
        """(hash hex, distance) of every stored hash within max_distance, nearest first."""
        if not self.keys:
            return []
        words = hash_to_words(query)
        distances = np.bitwise_count(self.matrix ^ words).sum(axis=1, dtype=np.int64)
        hits = np.flatnonzero(distances <= max_distance)
        order = np.lexsort((hits, distances[hits]))  # by distance, then by key (keys are sorted)
        return [(self.keys[i], int(distances[i])) for i in hits[order]]


def find_matches(
    store: Store,
    query: Hash,
    max_distance: int,
    index: HashIndex | None = None,
    *,
    include_low_information: bool = False,
) -> list[Match]:
    """Every stored image within max_distance of the query, ordered by distance then path.

    Distance 0 is the exact bucket: one indexed lookup, no scan and no index needed. Blank and
    smooth images (low-information hashes) match each other whatever they show, so unless asked
    they are neither matched as queries nor reported as matches.
    """
    if not include_low_information and is_low_information(query):
        return []
    if max_distance <= 0:
        key = query.hex()
        return [Match(path, 0, key) for path in sorted(store.bucket(key))]
    if index is None:
        index = HashIndex.from_store(store)
    matches = [
        Match(path, distance, key)
        for key, distance in index.within(query, max_distance)
        if include_low_information or not is_low_information(Hash.from_hex(key, query.bits))
        for path in store.bucket(key)
    ]
    matches.sort(key=lambda match: (match.distance, match.path))
    return matches


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
