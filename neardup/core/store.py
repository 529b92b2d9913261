"""The index on disk: a shelve of hash -> paths, in one SQLite file.

Layout. Table `Dict(key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)` is exactly what Python 3.13's
`dbm.sqlite3` uses, so `shelve.open(path, "r")` on 3.13+ reads our buckets: key = the hash as lowercase
hex (ASCII bytes), value = a pickled sorted list of paths relative to the dataset root. Beside it:
`neardup_meta` (format version, recipe, dataset root, library versions) and `neardup_files` (path,
size, mtime, hash) which makes re-runs incremental and lets a changed or deleted file leave its old
bucket. Both are written in the same transaction, so they never disagree.

Why SQLite and not the `shelve` default: on this Python `dbm` falls back to `dbm.dumb`, which writes its
index only on close (a crash loses everything) and spends about 580 bytes per key. SQLite in WAL mode
commits atomically, survives kill -9, and lets searches read a consistent snapshot while indexing runs.

Safety: values are unpickled by an unpickler that refuses every global, so a planted pickle cannot run
code; only lists of strings are accepted.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pickle
import shelve
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from .hashing import Hash, Recipe

FORMAT_VERSION = 1
# Below this many distinct hashes, reading them from SQLite is as quick as a cache file.
CACHE_MIN_HASHES = 20_000
# Protocol 2 has no frame header: 4 bytes less per bucket than 4, and every Python 3 reads it.
PICKLE_PROTOCOL = 2

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS neardup_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
    " WITHOUT ROWID",
    # Paths are stored as the bytes the OS gave us: names that are not valid UTF-8 still round-trip.
    "CREATE TABLE IF NOT EXISTS neardup_files (path BLOB PRIMARY KEY, size INTEGER NOT NULL,"
    " mtime_ns INTEGER NOT NULL, hash BLOB NOT NULL) WITHOUT ROWID",  # hash: raw bytes, not hex
)


class RefusingUnpickler(pickle.Unpickler):
    """An unpickler for plain data only: any reference to a class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}")


def safe_loads(data: bytes) -> Any:
    return RefusingUnpickler(io.BytesIO(data)).load()


class SqliteDict(MutableMapping[bytes, bytes]):
    """A dbm-style bytes -> bytes mapping over the `Dict` table of an open connection.

    It does not commit: the Store wraps each batch of writes in one transaction.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    def __getitem__(self, key: bytes) -> bytes:
        row = self._db.execute("SELECT value FROM Dict WHERE key = ?", (bytes(key),)).fetchone()
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._db.execute(
            "INSERT INTO Dict (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (bytes(key), bytes(value)),
        )

    def __delitem__(self, key: bytes) -> None:
        if self._db.execute("DELETE FROM Dict WHERE key = ?", (bytes(key),)).rowcount == 0:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (bytes, bytearray)):
            return False
        row = self._db.execute("SELECT 1 FROM Dict WHERE key = ?", (bytes(key),)).fetchone()
        return row is not None

    def __iter__(self) -> Iterator[bytes]:
        for (key,) in self._db.execute("SELECT key FROM Dict"):
            yield bytes(key)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM Dict").fetchone()[0])

    def close(self) -> None:
        """Shelf.close() calls this; the Store owns and closes the connection."""


class SafeShelf(shelve.Shelf):
    """A shelve whose values can only be plain lists of strings (paths)."""

    def __getitem__(self, key: str) -> list[str]:
        raw = self.dict[key.encode(self.keyencoding)]  # KeyError: no such bucket
        try:
            value = safe_loads(raw)
        except Exception as error:
            raise StoreError(f"bucket {key}: unreadable or unsafe value ({error})") from error
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise StoreError(f"bucket {key}: expected a list of paths, found {type(value).__name__}")
        return value


@dataclass(frozen=True, slots=True)
class IndexedFile:
    """One hashed file, as the indexer hands it to the store."""

    relpath: str
    size: int
    mtime_ns: int
    hash_hex: str
    features: bytes | None = None  # local features (stores with features only; see below)


@dataclass(frozen=True, slots=True)
class FileState:
    size: int
    mtime_ns: int


class Store:
    """An open index. Use `Store.open_for_writing` or `Store.open_for_reading`, then close it."""

    def __init__(self, path: str, connection: sqlite3.Connection, lock: io.BufferedWriter | None):
        self.path = path
        self._db = connection
        self._lock = lock
        self.shelf = SafeShelf(SqliteDict(connection), protocol=PICKLE_PROTOCOL)
        meta = self._read_meta()
        self.recipe = stored_recipe(path, meta["recipe"])
        self.dataset_root = meta["dataset_root"]
        self.meta = meta

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open_for_writing(
        cls, path: str, recipe: Recipe, dataset_root: str, versions: dict[str, str]
    ) -> Store:
        """Open (creating if needed) for one writer. A second writer is refused, not interleaved."""
        lock = _take_writer_lock(path)
        try:
            connection = _connect(path, readonly=False)
            try:
                _initialise_or_check(connection, path, recipe, dataset_root, versions)
                return cls(path, connection, lock)
            except BaseException:
                connection.close()
                raise
        except BaseException:
            lock.close()
            raise

    @classmethod
    def open_for_reading(cls, path: str, *, shared_between_threads: bool = False) -> Store:
        """Open read-only. shared_between_threads: the caller serialises access with a lock."""
        if not os.path.exists(path):
            raise StoreError(f"{path}: no such store (build one with index.py)")
        if os.path.isdir(path):
            raise StoreError(f"{path}: is a folder, not a store")
        connection = _connect(path, readonly=True, same_thread=not shared_between_threads)
        try:
            _check_is_neardup_store(connection, path)
            return cls(path, connection, None)
        except BaseException:
            connection.close()
            raise

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------------

    def file_states(self) -> dict[str, FileState]:
        """Every indexed path with the size and mtime it had when hashed."""
        rows = self._db.execute("SELECT path, size, mtime_ns FROM neardup_files")
        return {os.fsdecode(bytes(path)): FileState(size, mtime) for path, size, mtime in rows}

    def image_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM neardup_files").fetchone()[0])

    def bucket(self, hash_hex: str) -> list[str]:
        """The paths stored under one hash: a single indexed lookup."""
        try:
            return self.shelf[hash_hex]
        except KeyError:
            return []

    def hash_matrix(self) -> np.ndarray:
        """All distinct hashes in ascending order, as a (count, words) uint64 array."""
        return self.cached_array("hashes", self._read_hash_matrix)

    def _read_hash_matrix(self) -> np.ndarray:
        width = (self.recipe.bits + 3) // 4
        odd = self._db.execute("SELECT COUNT(*) FROM Dict WHERE length(key) != ?", (width,))
        if odd.fetchone()[0]:
            raise StoreError(f"{self.path}: holds keys that are not {self.recipe.bits}-bit hashes")
        keys = [bytes(key) for (key,) in self._db.execute("SELECT key FROM Dict ORDER BY key")]
        try:
            return hex_keys_to_words(keys, self.recipe.bits)
        except ValueError as error:
            raise StoreError(f"{self.path}: {error}") from error

    def hash_count(self) -> int:
        return len(self.shelf.dict)

    def generation(self) -> int:
        row = self._db.execute("SELECT value FROM neardup_meta WHERE name = 'generation'")
        return int(row.fetchone()[0])

    def cached_array(
        self, name: str, build: Callable[[], np.ndarray], *, small_too: bool = False
    ) -> np.ndarray:
        """An array derived from the store, kept on disk beside it until the store changes.

        The file name carries the store's id and generation, so a cache is never read for a
        store that changed since it was written. Small stores (unless `small_too`: arrays slow to
        build whatever the size), and folders we cannot write to, simply build the array again.
        """
        if self.hash_count() < CACHE_MIN_HASHES and not small_too:
            return build()
        folder = self.path + ".cache"
        stamp = f"{self.meta['store_id']}-{self.generation()}"
        cached = os.path.join(folder, f"{name}-{stamp}.npy")
        try:
            return np.load(cached, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            pass
        array = build()
        try:
            os.makedirs(folder, exist_ok=True)
            partial = f"{cached}.{os.getpid()}.partial"
            with open(partial, "wb") as stream:
                np.save(stream, array, allow_pickle=False)
            os.replace(partial, cached)
            for old in os.listdir(folder):  # earlier generations are of no use to anyone
                if old.startswith(f"{name}-") and old != os.path.basename(cached):
                    os.remove(os.path.join(folder, old))
        except OSError:
            pass  # a read-only place: the array still serves this process
        return array

    # -- writing -------------------------------------------------------------------------------

    def apply(self, indexed: Iterable[IndexedFile], removed: Iterable[str]) -> None:
        """Record hashed files and forget removed ones, all in one transaction.

        Idempotent: a path already stored under the same hash is not listed again, and a path whose
        hash changed leaves its old bucket, so no path is ever listed twice.
        """
        additions: dict[str, set[str]] = {}
        removals: dict[str, set[str]] = {}
        indexed, removed = list(indexed), list(removed)
        with self._transaction():
            self._apply_features(indexed, removed)
            for item in indexed:
                key = os.fsencode(item.relpath)
                old = self._stored_hash(key)
                if old is not None and old != item.hash_hex:
                    removals.setdefault(old, set()).add(item.relpath)
                if old != item.hash_hex:
                    additions.setdefault(item.hash_hex, set()).add(item.relpath)
                self._db.execute(
                    "INSERT INTO neardup_files (path, size, mtime_ns, hash) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (path) DO UPDATE SET size = excluded.size,"
                    " mtime_ns = excluded.mtime_ns, hash = excluded.hash",
                    (key, item.size, item.mtime_ns, bytes.fromhex(item.hash_hex)),
                )
            for relpath in removed:
                key = os.fsencode(relpath)
                old = self._stored_hash(key)
                if old is not None:
                    removals.setdefault(old, set()).add(relpath)
                    self._db.execute("DELETE FROM neardup_files WHERE path = ?", (key,))
            for hash_hex in additions.keys() | removals.keys():
                paths = set(self.bucket(hash_hex))
                paths |= additions.get(hash_hex, set())
                paths -= removals.get(hash_hex, set())
                if paths:
                    self.shelf[hash_hex] = sorted(paths)
                elif hash_hex in self.shelf:
                    del self.shelf[hash_hex]
            if additions or removals:
                # Every change of the set of hashes gets a new generation: caches name theirs.
                self._db.execute(
                    "UPDATE neardup_meta SET value = CAST(value AS INTEGER) + 1"
                    " WHERE name = 'generation'"
                )

    def _stored_hash(self, path_key: bytes) -> str | None:
        row = self._db.execute("SELECT hash FROM neardup_files WHERE path = ?", (path_key,))
        found = row.fetchone()
        return None if found is None else bytes(found[0]).hex()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: cannot start a write ({error})") from error
        try:
            yield
            self._db.execute("COMMIT")
        except sqlite3.Error as error:  # disk full, read-only file system, I/O error
            self._rollback()
            raise StoreError(f"{self.path}: cannot write ({error}); the store keeps its last"
                             " committed state") from error
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite may already have rolled back on its own (e.g. after SQLITE_FULL)

    def compact(self) -> None:
        """Rewrite the file with full pages. Hashes arrive in random order, so after a large
        import SQLite's pages are only about 70% full; this saves about 6% (10 bytes an image)."""
        try:
            self._db.execute("VACUUM")
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: cannot compact ({error}); the store is unchanged") from error

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read a consistent view: an index.py committing meanwhile is not seen half-way."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def _read_meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT name, value FROM neardup_meta").fetchall())

    # -- local features (neardup.features) -----------------------------------------------------
    # One table of its own, created by enable_features and written by _apply_features inside
    # apply()'s transaction, so a file's hash and its features are committed together or not at
    # all. The integer id is stable while the path stays: the feature index names images by it.

    def feature_recipe(self) -> dict[str, Any] | None:
        """The recorded feature recipe, or None for a hash-only store."""
        row = self._db.execute("SELECT value FROM neardup_meta WHERE name = 'feature_recipe'")
        found = row.fetchone()
        return None if found is None else dict(json.loads(found[0]))

    def enable_features(
        self, recipe: dict[str, Any], describe: Callable[[dict[str, Any]], str]
    ) -> None:
        """Keep local features from now on; a store made with another feature recipe refuses."""
        stored = self.feature_recipe()
        if stored is not None:
            if stored != recipe:
                raise StoreError(f"{self.path}: holds features made with {describe(stored)},"
                                 f" this run asks for {describe(recipe)}; use another --shelve")
            return
        with self._transaction():
            self._db.execute(_FEATURE_TABLE)
            self._db.execute("INSERT INTO neardup_meta (name, value) VALUES ('feature_recipe', ?)",
                             (json.dumps(recipe, sort_keys=True),))

    def paths_without_features(self) -> set[str]:
        """Indexed files whose features are not stored (indexed before features were enabled)."""
        rows = self._db.execute("SELECT path FROM neardup_files WHERE path NOT IN"
                                " (SELECT path FROM neardup_features)")
        return {os.fsdecode(bytes(path)) for (path,) in rows}

    def feature_count(self) -> int:
        if self.feature_recipe() is None:
            return 0
        return int(self._db.execute("SELECT COUNT(*) FROM neardup_features").fetchone()[0])

    def feature_rows(self) -> Iterator[tuple[int, str, bytes]]:
        """(id, path, features) of every stored image, by id."""
        for image_id, path, data in self._db.execute(
                "SELECT id, path, data FROM neardup_features ORDER BY id"):
            yield int(image_id), os.fsdecode(bytes(path)), bytes(data)

    def features_by_id(self, ids: Iterable[int]) -> dict[int, tuple[str, bytes]]:
        wanted = sorted(set(ids))
        found: dict[int, tuple[str, bytes]] = {}
        for start in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for image_id, path, data in self._db.execute(
                    f"SELECT id, path, data FROM neardup_features WHERE id IN ({marks})", chunk):
                found[int(image_id)] = (os.fsdecode(bytes(path)), bytes(data))
        return found

    def features_of_path(self, relpath: str) -> tuple[int, bytes] | None:
        row = self._db.execute("SELECT id, data FROM neardup_features WHERE path = ?",
                               (os.fsencode(relpath),)).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def hash_of_path(self, relpath: str) -> str | None:
        """The stored hash (hex) of one indexed file."""
        return self._stored_hash(os.fsencode(relpath))

    def _apply_features(self, indexed: list[IndexedFile], removed: list[str]) -> None:
        """apply()'s part for features: in its transaction, before its own writes."""
        if self.feature_recipe() is None:  # a hash-only store: one lookup per batch, nothing else
            return
        for item in indexed:
            key = os.fsencode(item.relpath)
            if item.features is None:  # features of an older version of the file are stale
                self._db.execute("DELETE FROM neardup_features WHERE path = ?", (key,))
            else:
                self._db.execute(
                    "INSERT INTO neardup_features (path, data) VALUES (?, ?)"
                    " ON CONFLICT (path) DO UPDATE SET data = excluded.data",
                    (key, item.features))
        for relpath in removed:
            self._db.execute("DELETE FROM neardup_features WHERE path = ?",
                             (os.fsencode(relpath),))
        # Caches and checkers reload on a new generation; features changed even if hashes did not.
        self._db.execute("UPDATE neardup_meta SET value = CAST(value AS INTEGER) + 1"
                         " WHERE name = 'generation'")


# Rowid table (not WITHOUT ROWID): records of about 4 KB, and ids the feature index can keep.
_FEATURE_TABLE = ("CREATE TABLE IF NOT EXISTS neardup_features (id INTEGER PRIMARY KEY,"
                  " path BLOB UNIQUE NOT NULL, data BLOB NOT NULL)")


def stored_recipe(path: str, text: str) -> Recipe:
    """The recipe a store records, or a StoreError naming the store (one from a newer neardup)."""
    try:
        return Recipe.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as error:
        raise StoreError(f"{path}: its recipe cannot be used here: {error}") from error


def hex_keys_to_words(keys: list[bytes], bits: int) -> np.ndarray:
    """Decode fixed-width hex keys into a (count, words) uint64 array, most significant word first.

    Vectorised: a million keys decode in tens of milliseconds instead of a second of int(key, 16).
    """
    width = (bits + 3) // 4
    words = (bits + 63) // 64
    if not keys:
        return np.zeros((0, words), dtype=np.uint64)
    raw = np.frombuffer(b"".join(keys), dtype=np.uint8)
    if raw.size != len(keys) * width:
        raise ValueError(f"hash keys must be {width} hex digits each")
    nibbles = _HEX_VALUES[raw.reshape(len(keys), width)]
    if (nibbles > 15).any():
        raise ValueError("a hash key is not lowercase hex")
    padded = np.zeros((len(keys), words * 16), dtype=np.uint64)
    padded[:, words * 16 - width:] = nibbles
    shifts = np.arange(60, -1, -4, dtype=np.uint64)
    # The nibbles occupy disjoint bits, so their sum is their bitwise OR.
    return (padded.reshape(len(keys), words, 16) << shifts).sum(axis=2, dtype=np.uint64)


def hash_to_words(value: Hash) -> np.ndarray:
    """The same word layout as hex_keys_to_words, for one query hash."""
    words = (value.bits + 63) // 64
    return np.array(
        [(value.value >> (64 * (words - 1 - i))) & 0xFFFF_FFFF_FFFF_FFFF for i in range(words)],
        dtype=np.uint64,
    )


_HEX_VALUES = np.full(256, 255, dtype=np.uint8)
_HEX_VALUES[np.frombuffer(b"0123456789", dtype=np.uint8)] = np.arange(10)
_HEX_VALUES[np.frombuffer(b"abcdef", dtype=np.uint8)] = np.arange(10, 16)


# -- helpers for opening -----------------------------------------------------------------------


def _connect(path: str, readonly: bool, same_thread: bool = True) -> sqlite3.Connection:
    try:
        if readonly:
            # Not SQLite's mode=ro: that cannot open a WAL store whose -shm file was cleaned away.
            # query_only makes any write through this connection an error instead.
            connection = sqlite3.connect(path, isolation_level=None,
                                         check_same_thread=same_thread)
            connection.execute("PRAGMA query_only = ON")
            try:
                connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:
                # A store on read-only media: nothing can change it, so read it as immutable.
                connection.close()
                uri = Path(os.path.abspath(path)).as_uri() + "?immutable=1"
                connection = sqlite3.connect(uri, uri=True, isolation_level=None,
                                             check_same_thread=same_thread)
            except sqlite3.DatabaseError as error:
                connection.close()
                raise StoreError(f"{path}: not a neardup store ({error})") from error
        else:
            connection = sqlite3.connect(path, isolation_level=None)
            _check_is_sqlite(connection, path)  # before any pragma can write to a foreign file
            connection.execute("PRAGMA journal_mode = WAL")
            # FULL: a committed batch survives a power cut too, at one fsync per batch.
            connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA busy_timeout = 10000")
        return connection
    except sqlite3.Error as error:
        raise StoreError(f"{path}: cannot open store ({error})") from error


def _check_is_sqlite(connection: sqlite3.Connection, path: str) -> None:
    try:
        connection.execute("SELECT name FROM sqlite_master").fetchall()
    except sqlite3.OperationalError as error:  # I/O error, locked, disk full: not a verdict
        connection.close()
        raise StoreError(f"{path}: cannot open store ({error})") from error
    except sqlite3.DatabaseError as error:  # "file is not a database"
        connection.close()
        raise StoreError(f"{path}: exists and is not a neardup store ({error})") from error


def _check_is_neardup_store(connection: sqlite3.Connection, path: str) -> None:
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as error:
        raise StoreError(f"{path}: not a neardup store ({error})") from error
    if "neardup_meta" not in tables:
        raise StoreError(f"{path}: not a neardup store (no neardup_meta table)")
    version = connection.execute(
        "SELECT value FROM neardup_meta WHERE name = 'format_version'"
    ).fetchone()
    if version is None or version[0] != str(FORMAT_VERSION):
        found = "none" if version is None else version[0]
        raise StoreError(
            f"{path}: store format version {found}, this neardup reads version {FORMAT_VERSION}"
        )


def _initialise_or_check(
    connection: sqlite3.Connection,
    path: str,
    recipe: Recipe,
    dataset_root: str,
    versions: dict[str, str],
) -> None:
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as error:
        raise StoreError(f"{path}: exists and is not a neardup store ({error})") from error
    if tables and "neardup_meta" not in tables:
        raise StoreError(f"{path}: exists and is not a neardup store; choose another --shelve")
    if not tables:
        connection.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            connection.execute(statement)
        meta = {
            "format_version": str(FORMAT_VERSION),
            "store_id": uuid.uuid4().hex,
            "generation": "0",
            "recipe": json.dumps(recipe.to_dict(), sort_keys=True),
            "dataset_root": dataset_root,
            "versions": json.dumps(versions, sort_keys=True),
        }
        connection.executemany("INSERT INTO neardup_meta (name, value) VALUES (?, ?)", meta.items())
        connection.execute("COMMIT")
        return
    _check_is_neardup_store(connection, path)
    meta = dict(connection.execute("SELECT name, value FROM neardup_meta").fetchall())
    stored = stored_recipe(path, meta["recipe"])
    if stored != recipe:
        raise StoreError(
            f"{path}: built with {stored.describe()}, this run asks for {recipe.describe()};"
            " use the same options or another --shelve"
        )
    if meta["dataset_root"] != dataset_root:
        raise StoreError(
            f"{path}: indexes {meta['dataset_root']}, not {dataset_root}; use another --shelve"
        )


def _take_writer_lock(path: str) -> io.BufferedWriter:
    """One writer at a time, decided by an advisory lock beside the store, with a clear message."""
    lock_path = path + ".lock"
    try:
        lock = open(lock_path, "ab")
    except OSError as error:
        raise StoreError(f"{path}: cannot create lock file {lock_path} ({error.strerror})") from error
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StoreError(f"{path}: another index.py is writing to this store; try again when it"
                         " has finished") from None
    return lock
