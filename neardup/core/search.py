"""Finding stored images near a query hash.

`HashIndex` is the reference: every distinct stored hash in one uint64 array, XOR and popcount
vectorised with numpy. Any faster index must return exactly what it returns.

An index made from a store (`HashIndex.from_store`) answers for one state of it, its generation. It
is made from the newest cache entry beside the store (neardup.core.cache) plus the keys the store's
change log names as added since, kept in a small `extra` array scanned beside it; `follow` brings it
to a later state by reading only those keys. A key whose bucket is gone needs nothing: its bucket
lookup answers no path. So whichever program wrote the store, the answer is the current one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from . import cache
from .hashing import MAX_UNDECIDED, Hash, is_low_information
from .hashwords import hash_to_words, hex_keys_to_words, sort_distinct, words_to_hex
from .multiindex import MultiIndex, WideMultiIndex, build_tables
from .store import Store

# Measured on CALTECH-101: copies resized by +-5% and re-saved as JPEG keep the exact 64-bit dHash
# only ~75% of the time, but all stay within 4 bits, while only 256 of 41.8 million pairs of distinct
# images are that close. 4 finds every such copy at a negligible false-match rate.
DEFAULT_MAX_DISTANCE = 4
# An index follows at most this many keys added since its cached base (a brute-force scan of 20,000
# hashes takes about 20 us); beyond, the base is built again (search.py) or rebuilt in the
# background (a running checker).
DELTA_MAX = 20_000


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
    # Whether the stored image is the query's mirror image: the query's mirror image's hash was
    # the nearer (--mirror), or its mirror image is what verified (a store with local features).
    # None where the mirror image was not looked at.
    mirrored: bool | None = None


class HashIndex:
    """Hamming search over the distinct hashes of a store.

    Brute force (XOR and popcount over every hash, vectorised) is the reference. For large stores
    a multi-index is chosen automatically (MultiIndex for 64-bit hashes, WideMultiIndex for any
    other length); it returns exactly the same answers (property tests hold both to that) while
    reading a tiny fraction of the hashes. `extra` holds
    hashes added to the store after `matrix` was made, scanned by brute force.
    """

    def __init__(self, matrix: np.ndarray, bits: int, multi: MultiIndex | WideMultiIndex | None = None, *,
                 extra: np.ndarray | None = None, generation: int = -1,
                 schema: int | None = None, tracked: bool = False) -> None:
        words = (bits + 63) // 64
        if matrix.ndim != 2 or matrix.shape[1] != words:
            raise ValueError("need a (count, words) array of uint64")
        self.matrix = matrix
        self.bits = bits
        self.multi = multi
        self.extra = extra if extra is not None else np.zeros((0, words), dtype=np.uint64)
        self.generation = generation  # the store state it answers for (-1: not from a store)
        self.schema = schema  # the store's schema cookie when the base was made
        self.tracked = tracked  # the store logs its changes, so follow() can be used
        self._extra_hex: frozenset[str] | None = None
        self._row_keys: np.ndarray | None = None

    @classmethod
    def from_store(cls, store: Store, *, max_delta: int = DELTA_MAX) -> HashIndex:
        """The index of the store's current state (call inside store.snapshot()).

        A cache entry is used if it is at most `max_delta` changes old and the change log still
        covers them (0: only an entry of this very generation); otherwise the hashes are read from
        the store and, for a store worth it, saved as a new entry for everyone else.
        """
        generation = store.generation()
        schema = store.schema_version()
        bits = store.recipe.bits
        rows = store.hash_count()
        cacheable = store.tracking and rows >= cache.CACHE_MIN_HASHES
        if cacheable:
            oldest = max(store.changes_since(), generation - max(0, max_delta))
            entry = cache.load(store, newest=generation, oldest=oldest)
            if entry is not None:
                multi: MultiIndex | WideMultiIndex | None = None
                if entry.tables is not None and bits == 64:
                    multi = MultiIndex(entry.matrix[:, 0], entry.tables)
                elif entry.tables is not None:
                    multi = WideMultiIndex(entry.matrix, bits, entry.tables)
                base = cls(entry.matrix, bits, multi, generation=entry.generation, schema=schema,
                           tracked=True)
                if base.holds_what_the_store_holds(store, entry.window):
                    return base.follow(store)
                # Another history's entry (a restored copy changed apart): built again below.
        matrix, _skipped = store.read_hash_keys()
        multi = None
        if bits == 64 and matrix.shape[0] >= MULTI_INDEX_MIN_HASHES:
            values = np.ascontiguousarray(matrix[:, 0])
            multi = MultiIndex(values, build_tables(values))
        elif matrix.shape[0] >= MULTI_INDEX_MIN_HASHES:
            multi = WideMultiIndex(matrix, bits)
        if cacheable:
            cache.save(store, generation, matrix, None if multi is None else multi.tables, rows)
        return cls(matrix, bits, multi, generation=generation, schema=schema,
                   tracked=store.tracking)

    def holds_what_the_store_holds(self, store: Store, hashes: tuple[str, ...]) -> bool:
        """Whether each of these hashes (a cache entry's last changes) that the store holds now
        and that has not changed since the entry's generation is in this base: an entry of the
        store's own history holds it."""
        if not hashes:
            return True
        changed_since = store.changed_keys(self.generation)
        held = [hash_hex for hash_hex in hashes
                if len(hash_hex) * 4 == self.bits and hash_hex not in changed_since
                and store.has_key(hash_hex)]
        return bool(self.base_contains(held).all()) if held else True

    def can_follow(self, store: Store) -> bool:
        """Whether follow() can bring this index to the store's current state from the log."""
        return (self.tracked and store.tracking and self.schema == store.schema_version()
                and store.changes_since() <= self.generation)

    def follow(self, store: Store) -> HashIndex:
        """This index brought to the store's current state: the keys added since become `extra`.
        Only for an index that can_follow (call inside store.snapshot())."""
        generation = store.generation()
        if generation == self.generation:
            return self
        changes = store.changed_keys(self.generation)
        present = [hash_hex for hash_hex, exists in changes.items() if exists]
        added = set(self.extra_hex()) - {hash_hex for hash_hex, exists in changes.items()
                                         if not exists}
        added.update(hash_hex for hash_hex, known in zip(
            present, self.base_contains(present), strict=True) if not known)
        extra = sort_distinct(hex_keys_to_words(sorted(k.encode("ascii") for k in added),
                                                self.bits))
        followed = HashIndex(self.matrix, self.bits, self.multi, extra=extra,
                             generation=generation, schema=self.schema, tracked=True)
        followed._extra_hex = frozenset(added)
        followed._row_keys = self._row_keys
        return followed

    def extra_hex(self) -> frozenset[str]:
        if self._extra_hex is None:
            self._extra_hex = frozenset(words_to_hex(row, self.bits) for row in self.extra)
        return self._extra_hex

    def base_contains(self, hashes: list[str]) -> np.ndarray:
        """For each hash (hex), whether the base array holds it: binary searches, vectorised."""
        if not hashes or self.matrix.shape[0] == 0:
            return np.zeros(len(hashes), dtype=bool)
        targets = hex_keys_to_words([hash_hex.encode("ascii") for hash_hex in hashes], self.bits)
        if self.matrix.shape[1] == 1:
            values = np.asarray(self.matrix[:, 0])
            probes = targets[:, 0]
        else:
            if self._row_keys is None:  # big-endian bytes sort as the numbers do
                width = 8 * self.matrix.shape[1]
                self._row_keys = np.ascontiguousarray(
                    np.asarray(self.matrix).astype(">u8")).view(f"S{width}")[:, 0]
            values = self._row_keys
            probes = np.ascontiguousarray(targets.astype(">u8")).view(values.dtype)[:, 0]
        positions = np.minimum(np.searchsorted(values, probes), values.size - 1)
        return values[positions] == probes

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
        return int(self.matrix.shape[0] + self.extra.shape[0])

    def keys(self) -> Iterator[str]:
        """Every hash as hex: the base in ascending order, then the extra ones."""
        width = (self.bits + 3) // 4
        for position in range(len(self)):
            yield self.hex_at(position, width)

    def within(self, query: Hash, max_distance: int) -> list[tuple[str, int]]:
        """(hash hex, distance) of every stored hash within max_distance, nearest first."""
        if query.bits != self.bits:
            raise ValueError(f"a {query.bits}-bit query against {self.bits}-bit hashes")
        if max_distance < 0:
            return []
        undecided = query.undecided.bit_count()
        # A query with undecided bits is looked up once per setting of them, or scanned once.
        lookups = 1 << undecided if undecided <= MAX_UNDECIDED else 0
        exact = max_distance == 0 and self.matrix.shape[1] == 1 and lookups > 0
        indexed = exact or (lookups > 0 and self.multi is not None
                            and self.multi.worth_it(max_distance, lookups))
        if indexed:  # each setting of the undecided bits looked up; each hash at its nearest
            positions, distances = _nearest([
                self.exact(settled) if exact else self.multi.within(settled.value, max_distance)
                for settled in query.settled()])
        else:  # the scan counts undecided bits as agreeing itself
            positions, distances = self.scan(query, max_distance)
        # Positions follow the hashes' ascending order, so this sorts by distance, then hash.
        order = np.lexsort((positions, distances))
        width = (self.bits + 3) // 4
        found = [(self.hex_at(int(positions[i]), width), int(distances[i])) for i in order]
        if self.extra.shape[0]:
            hits, extra_distances = _scan(self.extra, query, max_distance)
            found += [(words_to_hex(self.extra[int(i)], self.bits), int(d))
                      for i, d in zip(hits, extra_distances, strict=True)]
            found.sort(key=lambda pair: (pair[1], pair[0]))
        return found

    def pairs_within(self, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Every pair of hashes within max_distance, found at once: positions (as hex_at takes
        them; first < second) and distances. None where only a search per hash can tell: no
        64-bit multi-index, keys added since the cached arrays, or a radius it does not serve."""
        if (self.extra.shape[0] or not isinstance(self.multi, MultiIndex)
                or not self.multi.worth_it(max_distance)):
            return None
        return self.multi.pairs_within(max_distance)

    def within_many(self, queries: list[Hash], max_distance: int) -> list[list[tuple[str, int]]]:
        """within() for each query.

        One vectorised pass per query on purpose: scanning a batch together with numpy
        broadcasting was measured 5x slower per query at 10^6 hashes (4.1 ms against 0.76 ms),
        because the (hashes x queries) temporaries cost more memory traffic than they save.
        """
        return [self.within(query, max_distance) for query in queries]

    def scan(self, query: Hash, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
        """The reference: every hash's distance, computed at once."""
        return _scan(self.matrix, query, max_distance)

    def exact(self, query: Hash) -> tuple[np.ndarray, np.ndarray]:
        """Distance 0 over sorted 64-bit hashes: one binary search."""
        values = self.matrix[:, 0]
        position = int(np.searchsorted(values, np.uint64(query.value)))
        if position < values.size and int(values[position]) == query.value:
            return np.array([position]), np.array([0])
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)

    def rows(self) -> np.ndarray:
        """Every hash as (count, words) uint64, in position order: the base, then the extra."""
        if self.extra.shape[0]:
            return np.concatenate([np.asarray(self.matrix), self.extra])
        return np.asarray(self.matrix)

    def hex_keys(self) -> list[str]:
        """Every hash as hex, in position order (hex_at of each), built in bulk."""
        width = (self.bits + 3) // 4
        if self.matrix.shape[1] == 1:
            return [format(value, f"0{width}x") for value in self.rows()[:, 0].tolist()]
        return [self.hex_at(position, width) for position in range(len(self))]

    def set_bits(self) -> list[int]:
        """Every hash's number of set bits, in position order."""
        return np.bitwise_count(self.rows()).sum(axis=1).tolist()

    def hex_at(self, position: int, width: int) -> str:
        """The hash at a position: the base's, then the extra ones'."""
        base = self.matrix.shape[0]
        row = self.matrix[position] if position < base else self.extra[position - base]
        value = 0
        for word in row:
            value = (value << 64) | int(word)
        return format(value, f"0{width}x")


def _nearest(found: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(positions, distances) found by several lookups, each position once at its smallest."""
    if len(found) == 1:
        return found[0]
    positions = np.concatenate([hits for hits, _ in found])
    distances = np.concatenate([near for _, near in found])
    order = np.lexsort((distances, positions))
    positions, distances = positions[order], distances[order]
    first = np.ones(positions.size, dtype=bool)
    first[1:] = positions[1:] != positions[:-1]
    return positions[first], distances[first]


def _scan(matrix: np.ndarray, query: Hash, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    if matrix.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    wide = matrix.shape[1] > 1
    words = hash_to_words(query)
    # 64-bit hashes: one column, no per-row sum needed (3x less memory traffic).
    differ = matrix ^ words if wide else matrix[:, 0] ^ words[0]
    if query.undecided:  # they count as agreeing with any stored hash
        counted = ~hash_to_words(Hash(query.undecided, query.bits))
        differ &= counted if wide else counted[0]
    distances = np.bitwise_count(differ)
    if wide:
        distances = distances.sum(axis=1, dtype=np.int64)
    hits = np.flatnonzero(distances <= max_distance)
    return hits, distances[hits].astype(np.int64)


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
    if max_distance <= 0 and all(query.undecided.bit_count() <= MAX_UNDECIDED
                                 for query in searched):
        # Each setting of a query's undecided bits is a bucket of its own.
        found = [[(settled.hex(), 0) for settled in query.settled()] for query in searched]
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
    """Matches of a query and of its mirror image: each path once, at its smaller distance (the
    query's own on a tie), marked with which of the two it was."""
    best: dict[str, Match] = {}
    for match, flipped in [(match, False) for match in plain] + [(match, True) for match in mirrored]:
        if match.path not in best or match.distance < best[match.path].distance:
            best[match.path] = replace(match, mirrored=flipped)
    return sorted(best.values(), key=lambda match: (match.distance, match.path))


def resolve_stored_path(dataset_root: str, relpath: str) -> str | None:
    """Join a stored relative path to its dataset root, or None if it would leave the root.

    A store may come from someone else: an entry like '../../etc/passwd' or '/etc/passwd' is never
    turned into a path outside the dataset.
    """
    # A backslash is an ordinary character in a POSIX file name (neardup stores '/'-separated
    # paths), so it is kept: only what could leave the root is refused.
    if not relpath or relpath.startswith("/") or "\0" in relpath:
        return None
    parts = relpath.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return os.path.join(dataset_root, *parts)
