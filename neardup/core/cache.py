"""Search arrays kept beside a store (`db.shelve.cache/`), so that a search does not rebuild them.

An entry holds the sorted hash array, and for large 64-bit stores the multi-index tables, of one
state of the store, named by the store's id and generation; its manifest is written last:

    <store_id>-<generation>.json   <store_id>-<generation>.hashes.npy   <...>.multiindex.npy

The generation moves with every change of `Dict`, whatever program made it (triggers, see
neardup.core.store), so an entry stands for exactly one state; a reader uses the newest entry at or
before the store's generation and follows the keys logged as changed since (neardup.core.search).

Nothing is trusted as found: the manifest must name this store, a generation the change log still
covers, the store's current schema cookie (dropping or re-creating a trigger moves it), the change
that made its generation and the WINDOW - 1 before it where the log still holds them (a restored
copy reaches the same generation by other changes), the hashes those changes touched that the store
holds now, unchanged since, in the entry (HashIndex.from_store: a restored copy changed by the same
key, another way) and, for the
current generation, the store's row count and its first and last keys; each array must have the
dtype, shape and CRC-32 the manifest records, the hashes must be in strictly ascending order and
the table positions in range. Anything else is ignored and the arrays are built again.

The same folder keeps arrays derived from the local features (the feature index and its owners:
cached_array), named by the store's id, both generations, the features' token, the build and
the array's CRC-32, checked on every read.

Readers may write entries (in a folder they cannot write to they simply build in memory); only
index.py deletes them, and only entries older than the generation it has just cached, so a reader
on an older snapshot can never delete the newer entry another process relies on.
"""

from __future__ import annotations

import json
import os
import stat
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from .hashwords import rows_increasing, words_to_hex
from .multiindex import table_positions, tables_shape
from .store import Store

# Below this many distinct hashes, reading them from SQLite is as quick as a cache file.
CACHE_MIN_HASHES = 20_000
MANIFEST_VERSION = 1
# A partial file older than this was left by a process that died while writing it.
STALE_PARTIAL_SECONDS = 3600


# The last changes before an entry's generation that its manifest records (Entry.window).
WINDOW = 256


@dataclass(frozen=True, slots=True)
class Entry:
    generation: int
    matrix: np.ndarray  # (count, words) uint64, strictly ascending
    tables: np.ndarray | None  # (6, count) uint32 multi-index tables, or None
    # The hashes (hex) changed by the last WINDOW changes up to `generation`: each that the store
    # holds now and that has not changed since must be in `matrix` (HashIndex.from_store checks).
    window: tuple[str, ...] = ()


def folder_of(store: Store) -> str:
    return store.path + ".cache"


def _stem(store: Store, generation: int) -> str:
    return f"{store.store_id}-{generation}"


def entries(store: Store) -> list[int]:
    """Generations with a manifest for this store, newest first."""
    try:
        names = os.listdir(folder_of(store))
    except OSError:
        return []
    prefix = f"{store.store_id}-"
    found = []
    for name in names:
        if name.startswith(prefix) and name.endswith(".json"):
            number = name[len(prefix):-len(".json")]
            if number.isdigit():
                found.append(int(number))
    return sorted(found, reverse=True)


def load(store: Store, *, newest: int, oldest: int) -> Entry | None:
    """The newest valid entry whose generation is from `oldest` to `newest`, or None."""
    for generation in entries(store):
        if oldest <= generation <= newest:
            entry = _load(store, generation, current=generation == newest)
            if entry is not None:
                return entry
    return None


def read_json(path: str) -> Any:
    """A cache file's JSON, or None: not a regular file (a FIFO would block the reader), not
    readable or not JSON."""
    if not _is_regular(path):
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return None


def load_array(path: str) -> np.ndarray | None:
    """A cached .npy array, memory-mapped, or None for anything that is not one: not a regular
    file, empty or cut short (numpy raises EOFError), a header numpy refuses."""
    if not _is_regular(path):
        return None
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _load(store: Store, generation: int, *, current: bool) -> Entry | None:
    folder = folder_of(store)
    stem = _stem(store, generation)
    manifest = read_json(os.path.join(folder, stem + ".json"))
    if not isinstance(manifest, dict) or not _manifest_fits(store, manifest, generation):
        return None
    # The change that made this generation, where both the entry and the store's log know it: a
    # copy of the store restored and changed apart reaches the same generation by another change
    # (an entry cached for one history, and followed by the other's log, missed an image).
    recorded, logged = manifest.get("logged_key"), store.logged_key(generation)
    if recorded is not None and logged is not None and recorded != logged:
        return None
    # The same for each of the last changes before it that the log still holds: a restored copy
    # changed apart by the same key at that generation (a 3.13 shelve adding a path where the
    # abandoned history deleted the bucket) differs in an earlier change, or in what the change
    # left (checked by HashIndex.from_store on the window's hashes).
    window = _window(manifest.get("log"))
    if window is None:
        return None
    since = store.changes_since()
    now = dict(store.log_window(generation, WINDOW))
    if any(seq > since and seq in now and now[seq] != key for seq, key in window):
        return None
    count = manifest["hashes"]
    words = (store.recipe.bits + 63) // 64
    matrix = _load_array(folder, stem, "hashes", manifest, np.uint64, (count, words))
    if matrix is None or not rows_increasing(matrix):
        return None
    tables = None
    if "multiindex" in manifest["arrays"]:
        bits = store.recipe.bits
        tables = _load_array(folder, stem, "multiindex", manifest, np.uint32,
                             tables_shape(bits, count))
        if tables is None or (count and int(table_positions(tables, bits).max()) >= count):
            return None
    if current:
        # The store as it is now must be the store this entry was made from: same number of rows,
        # and its first and last hash present (a store restored from a backup reaches an old
        # generation number again with other contents).
        if store.hash_count() != manifest["rows"]:
            return None
        bits = store.recipe.bits
        if count and not (store.has_key(words_to_hex(matrix[0], bits))
                          and store.has_key(words_to_hex(matrix[-1], bits))):
            return None
    hashes = tuple(dict.fromkeys(text for _, key in window
                                 if (text := _hash_of_raw(key)) is not None))
    return Entry(generation, matrix, tables, hashes)


def _window(recorded: object) -> list[tuple[int, str]] | None:
    """A manifest's "log" as (sequence number, raw key hex) pairs; [] for a manifest of an
    earlier neardup that has none; None for anything malformed."""
    if recorded is None:
        return []
    if not isinstance(recorded, list):
        return None
    pairs = []
    for item in recorded:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)
                and isinstance(item[1], str)):
            return None
        pairs.append((item[0], item[1]))
    return pairs


def _hash_of_raw(key_hex: str) -> str | None:
    """The hash a logged key names (its ASCII hex text), or None for a key that names none."""
    try:
        text = bytes.fromhex(key_hex).decode("ascii")
        int(text, 16)
    except ValueError:
        return None
    return text.lower()


def _manifest_fits(store: Store, manifest: dict[str, Any], generation: int) -> bool:
    try:
        return (manifest["version"] == MANIFEST_VERSION
                and manifest["store_id"] == store.store_id
                and manifest["generation"] == generation
                and manifest["bits"] == store.recipe.bits
                and manifest["schema_version"] == store.schema_version()
                and isinstance(manifest["hashes"], int) and manifest["hashes"] >= 0
                and isinstance(manifest["rows"], int)
                and isinstance(manifest["arrays"], dict) and "hashes" in manifest["arrays"])
    except (KeyError, TypeError):
        return False


def _load_array(folder: str, stem: str, name: str, manifest: dict[str, Any], dtype: type,
                shape: tuple[int, int]) -> np.ndarray | None:
    described = manifest["arrays"][name]
    array = load_array(os.path.join(folder, f"{stem}.{name}.npy"))
    if array is None:
        return None
    if (array.dtype != np.dtype(dtype) or array.shape != shape or not array.flags.c_contiguous
            or not isinstance(described, dict)):
        return None
    if array.size and zlib.crc32(memoryview(array).cast("B")) != described.get("crc32"):
        return None
    return array


def save(store: Store, generation: int, matrix: np.ndarray, tables: np.ndarray | None,
         rows: int) -> bool:
    """Write an entry for this generation (a reader may too); False where the folder is not
    writable. Files are written under temporary names and renamed; the manifest comes last."""
    folder = folder_of(store)
    stem = _stem(store, generation)
    arrays: dict[str, Any] = {}
    try:
        os.makedirs(folder, exist_ok=True)
        for name, array in (("hashes", matrix), ("multiindex", tables)):
            if array is None:
                continue
            array = np.ascontiguousarray(array)
            _write_then_rename(os.path.join(folder, f"{stem}.{name}.npy"),
                               lambda stream, array=array: np.save(stream, array,
                                                                   allow_pickle=False))
            crc = crc32_of(array)
            arrays[name] = {"crc32": crc}
        manifest = {"version": MANIFEST_VERSION, "store_id": store.store_id,
                    "generation": generation, "bits": store.recipe.bits,
                    "schema_version": store.schema_version(), "hashes": int(matrix.shape[0]),
                    "rows": rows, "arrays": arrays,
                    "logged_key": store.logged_key(generation),
                    "log": [[seq, key] for seq, key in store.log_window(generation, WINDOW)]}
        _write_then_rename(os.path.join(folder, stem + ".json"),
                           lambda stream: json.dump(manifest, stream), text=True)
        return True
    except OSError:
        return False  # a read-only place: the arrays still serve this process


def _write_then_rename(final: str, write: Callable[[IO[Any]], object], *,
                       text: bool = False) -> None:
    """Write a file under a temporary name, then rename it to `final`, so that no reader ever
    sees it half written. When writing fails (a disk full, a quota, an I/O error; or Ctrl-C)
    the partial file is removed before the error goes on: left there, every search on a full
    disk added one, each as large as the arrays, until index.py pruned them an hour later."""
    partial = f"{final}.{os.getpid()}.partial"
    try:
        with open(partial, "w" if text else "wb", encoding="utf-8" if text else None) as stream:
            write(stream)
        os.replace(partial, final)
    except BaseException:
        try:
            os.remove(partial)
        except OSError:
            pass  # never made, or the folder went read-only: prune removes it later
        raise


def forget_other_histories(store: Store) -> None:
    """Delete every entry of a later state than the store's own (index.py, as it starts).

    A store restored from a copy goes back to an older generation, and its next changes reach
    the generations of the abandoned history again, with other contents: an entry cached for
    one of those (same store id, same generation, same row count, same first and last hash) was
    used and a search missed an image the store held (a hostile review). Only the writer calls
    this, under the store's lock: no reader can have cached a state later than the committed one,
    so such an entry is another history's.
    """
    folder = folder_of(store)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    generation, features = store.generation(), store.feature_generation()
    prefix = f"{store.store_id}-"
    doomed = []
    for name in names:
        stem = name.split(".", 1)[0]
        if name.startswith(prefix):
            number = stem[len(prefix):]
            if number.isdigit() and int(number) > generation:
                doomed.append(name)
        elif (named := cached_array_state(name)) is not None and named[1] == store.store_id:
            if named[2][0] > generation or named[2][1] > features:  # the feature index's files
                doomed.append(name)
    doomed.sort(key=lambda name: not name.endswith(".json"))  # manifests first, as in prune
    for name in doomed:
        try:
            os.remove(os.path.join(folder, name))
        except OSError:
            pass


def prune(store: Store, keep: int) -> None:
    """Delete every entry older than `keep` (and other stores', and dead processes' partial files).

    Only the writer (index.py) calls this, after caching generation `keep`; newer entries, which a
    reader may have written meanwhile for a later state, are kept.
    """
    folder = folder_of(store)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    prefix = f"{store.store_id}-"
    now = time.time()
    doomed = []
    for name in names:
        path = os.path.join(folder, name)
        if name.endswith(".partial"):
            try:
                if now - os.path.getmtime(path) > STALE_PARTIAL_SECONDS:
                    doomed.append(path)
            except OSError:
                pass
            continue
        named = cached_array_state(name)
        if named is not None:
            # The feature index's files (cached_array, which removes its own older ones):
            # only another store's are removed here.
            if named[1] != store.store_id:
                doomed.append(path)
            continue
        generation = None
        if name.startswith(prefix):
            number = name[len(prefix):].split(".", 1)[0]
            generation = int(number) if number.isdigit() else None
        if generation is None or generation < keep:
            doomed.append(path)
    # Manifests first: an entry without its manifest is never read, whatever is left of it.
    doomed.sort(key=lambda path: not path.endswith(".json"))
    for path in doomed:
        try:
            os.remove(path)
        except OSError:
            pass


# -- arrays derived from the features (the feature index), named by the state they were built from


def cached_array(
    store: Store, name: str, build: Callable[[], np.ndarray], *, small_too: bool = False,
    build_version: int = 0, fresh: bool = False,
) -> np.ndarray:
    """An array derived from the features, kept beside the store until they change (the
    feature index). Named by the store's id, generation and feature generation, so it is
    never read for another state, and by `build_version` (when not 0), which the caller bumps
    when the same records start giving another array: one built by an older neardup is then
    not used. The name also carries the array's CRC-32, checked on every read: a file cut
    short, emptied or rewritten behind our back is built again, never used. `fresh`: build it
    again whatever is cached (the caller found the cached one does not fit). Small stores
    (unless `small_too`) and folders that cannot be written simply build it again. Only
    older states' and builds' files are removed, never a newer one another process may be
    using."""
    if store.hash_count() < CACHE_MIN_HASHES and not small_too:
        return build()
    folder = folder_of(store)
    # Compared as tuples below: a name without a build version (an older neardup's) sorts
    # before every build of the same state.
    state = (store.generation(), store.feature_generation()) + (
        (build_version,) if build_version else ())
    # The features' token as well: a copy of the store restored and changed apart reaches
    # the same generations with other features (an index cached for one answered the other
    # wrongly, a review found).
    stem = (f"{name}-{store.store_id}-" + "-".join(str(part) for part in state)
            + f".{store.feature_token()}")
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        names = []
    for found in names if not fresh else ():
        crc = found[len(stem) + 1:-len(".npy")]
        if found.startswith(stem + ".") and found.endswith(".npy") and len(crc) == 8:
            array = load_array(os.path.join(folder, found))
            if array is not None and f"{crc32_of(array):08x}" == crc:
                return array
    array = np.ascontiguousarray(build())
    cached = os.path.join(folder, f"{stem}.{crc32_of(array):08x}.npy")
    try:
        os.makedirs(folder, exist_ok=True)
        _write_then_rename(cached, lambda stream: np.save(stream, array, allow_pickle=False))
        for other in os.listdir(folder):
            named = cached_array_state(other)
            if named is None or named[:2] != (name, store.store_id):
                continue
            if named[2] < state or (named[2] == state and other != os.path.basename(cached)):
                os.remove(os.path.join(folder, other))
    except OSError:
        pass  # a read-only place: the array still serves this process
    return array


@dataclass(frozen=True)
class EarlierArrays:
    """What earlier_cached_arrays found: each array by name, and its CRC-32 (checked against the
    file's name, so a caller comparing CRCs need not read the array again)."""

    arrays: dict[str, np.ndarray]
    crcs: dict[str, int]


def earlier_cached_arrays(store: Store, names: tuple[str, ...], build_version: int
                          ) -> EarlierArrays | None:
    """The arrays `names` that cached_array kept for the newest earlier state of this store
    (the same build, all of them from that one state), each passing its CRC; None if there is
    no such state. What a build of the current state may start from (the feature index keeps
    the lists it trained, and the lists of unchanged images: neardup.features.index)."""
    now = (store.generation(), store.feature_generation()) + (
        (build_version,) if build_version else ())
    found: dict[tuple[tuple[int, ...], str], dict[str, str]] = {}
    folder = folder_of(store)
    try:
        listed = os.listdir(folder)
    except OSError:
        return None
    for file_name in listed:
        named = cached_array_state(file_name)
        if named is None or named[0] not in names or named[1] != store.store_id:
            continue
        state = named[2]
        if state >= now or len(state) != len(now) or (build_version and state[-1] != build_version):
            continue
        token = file_name.split(".")[1] if file_name.count(".") == 3 else ""
        found.setdefault((state, token), {})[named[0]] = file_name
    for _key, files in sorted(found.items(), reverse=True):
        if set(files) != set(names):
            continue
        arrays, crcs = {}, {}
        for name, file_name in files.items():
            array = load_array(os.path.join(folder, file_name))
            crc = file_name.rsplit(".", 2)[-2]
            if array is None or f"{crc32_of(np.ascontiguousarray(array)):08x}" != crc:
                break
            arrays[name], crcs[name] = array, int(crc, 16)
        else:
            return EarlierArrays(arrays, crcs)
    return None


def cached_array_state(file_name: str) -> tuple[str, str, tuple[int, ...]] | None:
    """(name, store id, state) of a file cached_array wrote (`<name>-<store id>-<generation>
    -<feature generation>[-<build>][.<features' token>].<crc>.npy`; store ids are 32 hex digits),
    or None for any other file name."""
    if not file_name.endswith(".npy"):
        return None
    parts = file_name.split(".", 1)[0].split("-")
    for position in range(1, len(parts)):
        part = parts[position]
        if len(part) == 32 and all(digit in "0123456789abcdef" for digit in part):
            numbers = parts[position + 1:]
            if 2 <= len(numbers) <= 3 and all(number.isdigit() for number in numbers):
                return ("-".join(parts[:position]), part,
                        tuple(int(number) for number in numbers))
            return None
    return None


def crc32_of(array: np.ndarray) -> int:
    """CRC-32 of a C-contiguous array's bytes (about 1 GB/s: 0.2 s for the feature index of 10^5
    images)."""
    return zlib.crc32(memoryview(array).cast("B")) if array.size else 0
