"""The index on disk: a shelve of hash -> paths, in one SQLite file.

Layout. Table `Dict(key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)` is exactly what Python 3.13's
`dbm.sqlite3` uses, so `shelve.open(path, "r")` on 3.13+ reads our buckets: key = the hash as lowercase
hex (ASCII bytes), value = a pickled sorted list of paths relative to the dataset root. Beside it:
`neardup_meta` (format version, recipe, dataset root, library versions) and `neardup_files` (path,
size, mtime, inode, ctime, hash) which makes re-runs incremental and lets a changed or deleted file
leave its old bucket. Both are written in the same transaction, so they never disagree.

Anyone may write `Dict` (a 3.13 `shelve` opened "w", the sqlite3 shell), so nothing derived from it
may trust that neardup made the last change. Triggers on `Dict` (stored in the file, so they run in
every writer's connection, whatever program it is) append each changed key to `neardup_changes`, whose
AUTOINCREMENT sequence is the store's generation, and keep row counts in `neardup_counts`. A cache names
the generation it was built from, a reader compares that with the store's in O(1), and a long-running
checker reads the few keys changed since instead of rebuilding (neardup.core.search, .cache).

Why SQLite and not the `shelve` default: on this Python `dbm` falls back to `dbm.dumb`, which writes its
index only on close (a crash loses everything) and spends about 580 bytes per key. SQLite in WAL mode
commits atomically, survives kill -9, and lets searches read a consistent snapshot while indexing runs.

Safety: values are unpickled by an unpickler that refuses every global, so a planted pickle cannot run
code; only lists of strings are accepted, and any other value is skipped with a line, never a reason
to refuse the whole store. Nothing is written to a file before it is known to be a neardup store (or a
new one); every SQLite error becomes one line (a damaged file says so), and a reader never reads a
store without its committed WAL.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shelve
import sqlite3
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ImageError, StoreError, command
from .hashing import DEFAULT_MAX_PIXELS, PREPROCESS_VERSIONS, Recipe, hash_file
from .hashwords import decode_joined_keys, hex_keys_to_words, sort_distinct
from .storefile import (
    Db,
    SqliteFailure,
    StoreDamaged,
    WriterLock,
    check_pages,
    check_store_path,
    connect_reader,
    connect_writer,
    file_size,
    probe_for_writing,
    sqlite_failure,
    write_transaction,
)

# 2: change tracking (neardup_changes, neardup_counts and the triggers) and each file's inode and
# ctime. Version 1 stores are read as they are and upgraded by the next index.py run.
FORMAT_VERSION = 2
# How long the writer's last checkpoint waits for readers on an older snapshot (Store.checkpoint).
CHECKPOINT_WAIT_MS = 2000
# Why Store.checkpoint() left commits in the -wal: a reader on an older snapshot, a full disk, a
# disk I/O error, another SQLite error.
CHECKPOINT_HELD, CHECKPOINT_FULL, CHECKPOINT_IO, CHECKPOINT_FAILED = "held", "full", "io", "failed"
# SQLite's primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF; named in the module only
# from Python 3.11 on, and not all of them).
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_FULL = 5, 6, 10, 13
READABLE_FORMATS = ("1", "2")
# Paths or hashes looked up in one statement (SQLite allows at least 999 parameters).
SQL_BATCH = 500
# Protocol 2 has no frame header: 4 bytes less per bucket than 4, and every Python 3 reads it.
PICKLE_PROTOCOL = 2
# Problems with stored entries one Store says before it says only that there are more.
MAX_PROBLEMS_SAID = 20
# Spans of the change log that neardup's own transactions wrote (meta "own_changes"), kept so
# that index.py can tell the changes other programs made; beyond this many, the two nearest are
# joined (the few changes between them then count as neardup's: relisted, not hashed again).
OWN_SPANS_KEPT = 64
# How much of a store is checked when it is opened. PRAGMA quick_check reads every page and checks
# its structure: about 4.5 ms per MB here (0.66 s at 10^6 images). PRAGMA integrity_check also
# checks that every index agrees with its table (a key changed in one and not the other): about 27
# ms per MB (4 s at 10^6). Readers check small stores whole when they open them; larger ones are
# checked in every page they read. index.py checks every store before it writes to it.
READER_INTEGRITY_MAX_BYTES = 2 << 20  # about 12,000 images: at most ~55 ms
READER_QUICK_CHECK_MAX_BYTES = 8 << 20  # about 50,000 images: at most ~36 ms
WRITER_INTEGRITY_MAX_BYTES = 32 << 20  # about 200,000 images: at most ~0.9 s, else quick_check
# neardup_files.ctime_ns of a file recorded within RACY_NS of the moment it was looked at ("racily
# clean", as git says): a later rewrite inside the same timestamp tick could keep its size, mtime
# and ctime, so the next run hashes it again instead of trusting them.
RACY = -1
RACY_NS = 2_000_000_000


# -- the schema: every table and trigger of the current format, in one place ----------------------
# A new table (local features, say) goes here, with a step in _upgrade for stores made before it;
# everything written goes through Store.transaction.

_TABLES = (
    "CREATE TABLE IF NOT EXISTS Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS neardup_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
    " WITHOUT ROWID",
    # Paths are stored as the bytes the OS gave us: names that are not valid UTF-8 still round-trip.
    # hash: raw bytes, not hex. inode and ctime_ns 0: not recorded yet (a format 1 store).
    "CREATE TABLE IF NOT EXISTS neardup_files (path BLOB PRIMARY KEY, size INTEGER NOT NULL,"
    " mtime_ns INTEGER NOT NULL, hash BLOB NOT NULL, inode INTEGER NOT NULL DEFAULT 0,"
    " ctime_ns INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    # Every key of Dict inserted, updated or deleted, in commit order. Only index.py prunes it.
    "CREATE TABLE IF NOT EXISTS neardup_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " key BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS neardup_counts (name TEXT PRIMARY KEY, n INTEGER NOT NULL)"
    " WITHOUT ROWID",
)

# Python 3.13's dbm.sqlite3 writes with REPLACE INTO, whose implicit delete fires no trigger (unless a
# connection turns recursive_triggers on): so rows are counted BEFORE INSERT, only when the key is new.
_TRIGGERS = {
    "neardup_dict_counted": "CREATE TRIGGER IF NOT EXISTS neardup_dict_counted BEFORE INSERT ON Dict"
    " WHEN NOT EXISTS (SELECT 1 FROM Dict WHERE key = NEW.key)"
    " BEGIN UPDATE neardup_counts SET n = n + 1 WHERE name = 'hashes'; END",
    "neardup_dict_inserted": "CREATE TRIGGER IF NOT EXISTS neardup_dict_inserted AFTER INSERT ON Dict"
    " BEGIN INSERT INTO neardup_changes (key) VALUES (NEW.key); END",
    "neardup_dict_updated": "CREATE TRIGGER IF NOT EXISTS neardup_dict_updated AFTER UPDATE ON Dict"
    " BEGIN INSERT INTO neardup_changes (key) VALUES (NEW.key);"
    " INSERT INTO neardup_changes (key) SELECT OLD.key WHERE OLD.key IS NOT NEW.key; END",
    "neardup_dict_deleted": "CREATE TRIGGER IF NOT EXISTS neardup_dict_deleted AFTER DELETE ON Dict"
    " BEGIN INSERT INTO neardup_changes (key) VALUES (OLD.key);"
    " UPDATE neardup_counts SET n = n - 1 WHERE name = 'hashes'; END",
    "neardup_files_inserted": "CREATE TRIGGER IF NOT EXISTS neardup_files_inserted AFTER INSERT ON"
    " neardup_files BEGIN UPDATE neardup_counts SET n = n + 1 WHERE name = 'images'; END",
    "neardup_files_deleted": "CREATE TRIGGER IF NOT EXISTS neardup_files_deleted AFTER DELETE ON"
    " neardup_files BEGIN UPDATE neardup_counts SET n = n - 1 WHERE name = 'images'; END",
}


def recipe_problem(recipe: Recipe) -> str | None:
    """Why this neardup cannot hash queries the way `recipe` hashed a store, or None if it can.

    The one place that compares what this neardup reproduces with a store's recipe (a new default
    preprocessing can keep older versions readable by listing them here). `exact` recipes hash the
    file untouched, so their preprocessing version does not matter.
    """
    if recipe.exact or recipe.preprocess_version in PREPROCESS_VERSIONS:
        return None
    known = ", ".join(f"v{version}" for version in PREPROCESS_VERSIONS)
    return (f"built with {recipe.describe()}, but this neardup hashes queries only with normalised"
            f" {known}, so its answers would be wrong; rebuild it with this"
            f" {command('index.py')} (another --shelve)")


def keeps_its_recipe(stored: Recipe, asked: Recipe) -> bool:
    """Whether a store made by an older neardup goes on being updated with its own recipe when a
    run asks for the same hash (algorithm, size, --exact or not) made today's way: every image of
    one store must be hashed alike, and this neardup still hashes with every preprocessing version
    it can read. `--exact` ignores the version altogether (an --exact store of 0.1.0 recorded v3).
    Rebuilding the store (another --shelve) moves it to the current preprocessing."""
    if (stored.algorithm, stored.hash_size, stored.exact) != (
            asked.algorithm, asked.hash_size, asked.exact):
        return False
    return stored.exact or stored.preprocess_version < asked.preprocess_version


class RefusingUnpickler(pickle.Unpickler):
    """An unpickler for plain data only: any reference to a class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}")


def safe_loads(data: bytes) -> Any:
    return RefusingUnpickler(io.BytesIO(data)).load()


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return bool(text)


def key_text(key: object) -> str:
    """A Dict key (bytes as shelve writes it, or text written by hand) as the hash's hex text it
    should be ("" for bytes that are not ASCII)."""
    if isinstance(key, str):
        return key
    try:
        return bytes(key).decode("ascii")  # type: ignore[arg-type]
    except UnicodeDecodeError:
        return ""


def _raw_hex(key: object) -> str:
    """A key as the change log stores it (bytes, or text written by hand), in hex."""
    return key.encode("utf-8", "surrogateescape").hex() if isinstance(key, str) else bytes(
        key).hex()  # type: ignore[arg-type]


def _elsewhere(count: int) -> str:
    return f"lists {'1 image' if count == 1 else f'{count} images'} indexed under another hash"


def bucket_problem(value: object) -> tuple[list[str] | None, str | None]:
    """The paths a stored value holds, or why it holds none (a shelve user can write anything)."""
    if not isinstance(value, (bytes, memoryview)):
        return None, f"a {type(value).__name__} value, not a pickled list of paths"
    try:
        paths = safe_loads(bytes(value))
    except Exception as error:  # noqa: BLE001 - any malformed pickle is one reason, never a crash
        return None, f"unreadable or unsafe value ({error})"
    if not isinstance(paths, list):
        return None, f"expected a list of paths, found {type(paths).__name__}"
    strays = sorted({type(item).__name__ for item in paths if not isinstance(item, str)})
    if strays:
        return None, f"expected a list of paths, found a list holding {', '.join(strays)}"
    return paths, None


def key_problem(key: object, bits: int) -> tuple[str | None, str | None]:
    """The hash hex a Dict key holds, or why it is not one of this store's hashes."""
    raw = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
    if not isinstance(raw, (bytes, memoryview)):
        return None, f"a {type(key).__name__} key"
    raw = bytes(raw)
    if len(raw) != (bits + 3) // 4 or raw.strip(b"0123456789abcdef"):
        return None, f"not a {bits}-bit hash in lowercase hex"
    return raw.decode("ascii"), None


def describe_key(key: object) -> str:
    if isinstance(key, (bytes, memoryview)):
        raw = bytes(key)
        try:
            return raw.decode("ascii") if raw.isascii() and raw.isalnum() else repr(raw)
        except UnicodeDecodeError:
            return repr(raw)
    return repr(key)


class SqliteDict(MutableMapping[bytes, bytes]):
    """A dbm-style bytes -> bytes mapping over the `Dict` table of an open store.

    It does not commit: the Store wraps each batch of writes in one transaction.
    """

    def __init__(self, db: Db) -> None:
        self._db = db

    def __getitem__(self, key: bytes) -> bytes:
        row = self._db.one("SELECT value FROM Dict WHERE key = ?", (bytes(key),))
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._db.run("INSERT INTO Dict (key, value) VALUES (?, ?)"
                     " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                     (bytes(key), bytes(value)))

    def __delitem__(self, key: bytes) -> None:
        if self._db.run("DELETE FROM Dict WHERE key = ?", (bytes(key),)).rowcount == 0:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (bytes, bytearray)):
            return False
        return self._db.one("SELECT 1 FROM Dict WHERE key = ?", (bytes(key),)) is not None

    def __iter__(self) -> Iterator[bytes]:
        for (key,) in self._db.all("SELECT key FROM Dict"):
            yield key.encode("utf-8", "surrogateescape") if isinstance(key, str) else bytes(key)

    def __len__(self) -> int:
        return int(self._db.one("SELECT COUNT(*) FROM Dict")[0])

    def close(self) -> None:
        """Shelf.close() calls this; the Store owns and closes the connection."""


class SafeShelf(shelve.Shelf):
    """A shelve whose values can only be plain lists of strings (paths)."""

    def __getitem__(self, key: str) -> list[str]:
        raw = self.dict[key.encode(self.keyencoding)]  # KeyError: no such bucket
        paths, problem = bucket_problem(raw)
        if paths is None:
            raise StoreError(f"bucket {key}: {problem}")
        return paths


@dataclass(frozen=True, slots=True)
class IndexedFile:
    """One hashed file, as the indexer hands it to the store (ctime_ns RACY: hash it again)."""

    relpath: str
    size: int
    mtime_ns: int
    hash_hex: str
    inode: int = 0
    ctime_ns: int = 0
    features: bytes | None = None  # local features (stores with features only; see below)


@dataclass(frozen=True, slots=True)
class FileState:
    size: int
    mtime_ns: int
    inode: int = 0
    ctime_ns: int = 0
    hash_hex: str = ""

    def same_file(self, size: int, mtime_ns: int, inode: int) -> bool:
        """Whether a file with this size, mtime and inode (0: unknown) is still the one indexed.
        Not ctime: a chmod moves it, and so does a hard link made to the file (gather.py's). A
        file replaced by another, renamed over it (a new inode), is not, even with its size and
        mtime."""
        return (self.size, self.mtime_ns) == (size, mtime_ns) and (
            not self.inode or not inode or self.inode == inode)

    def still_indexed(self, path: str, now: os.stat_result, recipe: Recipe,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
        """Whether the file at `path` (`now`: its stat) is still what was indexed: the same file
        as same_file weighs it and, where its ctime moved since (a chmod or a hard link, or a
        file rewritten in place with its size and mtime put back, `touch -r`: a review found
        such a file grouped by its old hash without a word), the same hash once read again, as
        index.py reads such a file again. A file refused now for a limit (more pixels than
        `max_pixels`, where index.py was given more: a second review) cannot be read again to
        tell, and counts as still indexed; a damaged one does not."""
        if not self.same_file(now.st_size, now.st_mtime_ns, now.st_ino):
            return False
        if not self.ctime_ns or not self.hash_hex or now.st_ctime_ns == self.ctime_ns:
            return True
        try:
            return hash_file(path, recipe, max_pixels).hex() == self.hash_hex
        except ImageError as error:
            return error.reason.startswith("refused")  # ("refused: ...": what every limit says)


Report = Callable[[str], None]


class Store:
    """An open index. Use `Store.open_for_writing` or `Store.open_for_reading`, then close it."""

    def __init__(self, path: str, db: Db, lock: WriterLock | None, *,
                 report: Report | None = None, immutable: bool = False) -> None:
        self.path = path
        self._db = db
        self._lock = lock
        self.immutable = immutable  # read-only media: nothing can change it while we read
        self.created = False  # set by open_for_writing: this run made the file
        self.report: Report = report or (lambda line: None)
        self.shelf = SafeShelf(SqliteDict(db), protocol=PICKLE_PROTOCOL)
        self._reported: set[object] = set()
        self._problems_said = 0  # by _report_once
        meta = self._read_meta()
        try:
            self.recipe = stored_recipe(path, meta["recipe"])
            self.dataset_root = meta["dataset_root"]
            if not self.dataset_root:  # emptied by another program: no folder to answer in
                raise KeyError("dataset_root")
            self.store_id = meta["store_id"]
        except (KeyError, TypeError, ValueError) as error:
            detail = (f"no {error.args[0]}" if isinstance(error, KeyError)
                      else f"{type(error).__name__}: {error}")
            raise StoreError(f"{path}: its neardup_meta table is incomplete or not understood"
                             f" ({detail})") from error
        self.meta = meta
        self.format = meta.get("format_version", "1")
        self.tracking = self._has_tracking()
        self._tracking_schema = self.schema_version()
        self._meta_seen_at = self.data_version()
        self._meta_stale = False
        self._dataset_seen: tuple[int, int, int] | None = None  # dataset_gone's last look
        self._dataset_empty = False

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open_for_writing(
        cls, path: str, recipe: Recipe, dataset_root: str, versions: dict[str, str], *,
        report: Report | None = None, moved_from: str | None = None,
    ) -> Store:
        """Open (creating if needed) for one writer. A second writer is refused, not interleaved.

        Before anything is written: the path must be a regular file (or nothing, in a folder that
        exists), an SQLite file holding a neardup store (or nothing at all), and undamaged.
        `moved_from`: a store indexing that folder is opened too, still naming it (the writer
        calls move_dataset()).
        """
        exists = check_store_path(path, writing=True)
        if exists:
            probe_for_writing(path)  # reads only: refuses a foreign or damaged file untouched
        lock = WriterLock.take(path)
        try:
            db = Db(path, *connect_writer(path))
            try:
                created = _initialise_or_check(db, path, recipe, dataset_root, versions,
                                               moved_from)
                store = cls(path, db, lock, report=report)
                store.created = created and not exists  # never delete a file found there
                return store
            except BaseException:
                db.close()
                raise
        except BaseException:
            if not exists:  # nothing is left behind by a store that could not be created
                for suffix in ("", "-wal", "-shm", "-journal"):
                    try:
                        os.remove(os.path.realpath(path) + suffix)  # not a symlink to it
                    except OSError:
                        pass
            lock.release(remove=not exists)
            raise

    @classmethod
    def open_for_reading(
        cls, path: str, *, shared_between_threads: bool = False, report: Report | None = None,
        quick_check: bool = True, for_queries: bool = True,
    ) -> Store:
        """Open read-only; nothing is ever written to the file.

        shared_between_threads: the caller serialises access with a lock. quick_check: check a small
        store whole now (larger ones are checked page by page as they are read). for_queries: refuse
        a store whose recipe this neardup would not reproduce (recipe_problem).
        """
        check_store_path(path, writing=False)
        if file_size(path) == 0:
            raise StoreError(f"{path}: not a neardup store (an empty file)")
        connection, shared_memory = connect_reader(path, same_thread=not shared_between_threads)
        immutable = shared_memory is None
        db = Db(path, connection, shared_memory)
        try:
            _check_is_neardup_store(db, path)
            store = cls(path, db, None, report=report, immutable=immutable)
            problem = recipe_problem(store.recipe) if for_queries else None
            if problem:
                raise StoreError(f"{path}: {problem}")
            if quick_check:
                size = store.file_bytes()
                if size <= READER_INTEGRITY_MAX_BYTES:
                    store.check(whole=True)
                elif size <= READER_QUICK_CHECK_MAX_BYTES:
                    store.check(whole=False)
            return store
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def shared_memory_lost(self) -> bool:
        """Whether this process lost SQLite's lock on the store's -shm since this store was opened
        and could not take it again (core.sharedmemory): a reader following its file then closes
        it before reading again, and opens the store anew."""
        return self._db.shared_memory_lost

    def checkpoint(self) -> tuple[str, str] | None:
        """The writer's last step: copy every commit from the `-wal` into the file and empty the
        `-wal`. None when done; else why not, as (CHECKPOINT_HELD, "") when a reader held an
        older snapshot for CHECKPOINT_WAIT_MS, (CHECKPOINT_FULL | CHECKPOINT_IO |
        CHECKPOINT_FAILED, SQLite's message) when writing the file failed: the commits are safe
        in the `-wal` either way. A full disk was told as a search holding an older view (a
        review), and running index.py again "once searches are done" did not help.

        The last connection to close does that by itself, but a reader (a checker) still open,
        read-only, cannot: it left a `-wal` full of commits, so that a copy of the file alone (a
        backup) missed them, a backup copied back over the file was undone by them, and a
        rebuilt store moved into place was damaged by them."""
        try:
            self._db.raw.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
            row = self._db.raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as error:
            # The primary result code: extended ones (SQLITE_IOERR_WRITE) carry it in the low byte.
            code = getattr(error, "sqlite_errorcode", None)
            primary = None if code is None else code & 0xFF
            if primary == SQLITE_BUSY or primary == SQLITE_LOCKED:
                return CHECKPOINT_HELD, ""
            kind = {SQLITE_FULL: CHECKPOINT_FULL, SQLITE_IOERR: CHECKPOINT_IO}.get(
                primary or 0, CHECKPOINT_FAILED)
            return kind, str(error)
        return None if row is not None and row[0] == 0 else (CHECKPOINT_HELD, "")

    def discard(self) -> None:
        """Close and delete a store this writer created and left empty, with its lock and cache."""
        self._db.close()
        remove_store_files(self.path)
        if self._lock is not None:
            self._lock.release(remove=True)
            self._lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------------

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return total

    def check(self, *, whole: bool) -> None:
        """Read every page and check it (whole: also every index against its table); StoreDamaged
        if anything is wrong. See READER_INTEGRITY_MAX_BYTES for what each costs."""
        check_pages(self._db, self.path, whole=whole)

    def quick_check(self) -> None:
        self.check(whole=False)

    def dataset_gone(self) -> str | None:
        """One line when the folder the store indexes no longer exists (moved with its store,
        or deleted): every path it answers is then not on disk (None while it exists)."""
        root = self.dataset_root
        try:
            folder = os.stat(root)
        except OSError:
            folder = None
        if folder is not None and stat.S_ISDIR(folder.st_mode):
            # An empty folder in its place: the mount point of a disk not mounted, most often
            # (a review: not said). Looked into again only when the folder itself changed.
            seen = (folder.st_dev, folder.st_ino, folder.st_mtime_ns)
            if seen != self._dataset_seen:
                self._dataset_seen = seen
                try:
                    with os.scandir(root) as entries:
                        self._dataset_empty = next(entries, None) is None
                except OSError:
                    self._dataset_empty = False
            if not self._dataset_empty or self.is_empty():
                return None
            return (f"{self.path}: its dataset folder {root} is empty (a disk not mounted?): the"
                    " paths it answers are not on disk")
        return (f"{self.path}: its dataset folder {root} no longer exists (moved or deleted?): the"
                f" paths it answers are not on disk; if the folder was moved, run"
                f" {command('index.py')} -d NEW_FOLDER -s {self.path} --moved-from {root} (or"
                " move it back), else index it again into a new store")

    def move_dataset(self, root: str) -> None:
        """Record that the store now indexes `root` (its folder moved or copied there): the
        stored paths are relative to it, and the writer then checks every file's stat as usual."""
        with self.transaction():
            self._set_meta("dataset_root", root)
        self.dataset_root = self.meta["dataset_root"] = root

    def file_states(self) -> dict[str, FileState]:
        """Every indexed path with what stat said when it was hashed, and its hash."""
        stat_columns = "inode, ctime_ns" if self.format != "1" else "0, 0"  # format 1: not kept
        rows = self._db.all(f"SELECT {_PATH}, size, mtime_ns, {stat_columns}, {_HASH}"
                            " FROM neardup_files")
        return {os.fsdecode(bytes(path)): FileState(size, mtime, inode, ctime, bytes(hash_).hex())
                for path, size, mtime, inode, ctime, hash_ in rows}

    def counts(self) -> tuple[int, int]:
        """(rows of Dict, images): O(1) from the counters the triggers keep."""
        if self.tracking:
            found = dict(self._db.all("SELECT name, n FROM neardup_counts"))
            if "hashes" in found and "images" in found:
                try:
                    return int(found["hashes"]), int(found["images"])
                except (TypeError, ValueError):
                    raise StoreError(f"{self.path}: its neardup_counts table is not understood"
                                     f" ({found['hashes']!r:.40} hashes, {found['images']!r:.40}"
                                     " images)") from None
        return (int(self._db.one("SELECT COUNT(*) FROM Dict")[0]),
                int(self._db.one("SELECT COUNT(*) FROM neardup_files")[0]))

    def is_empty(self) -> bool:
        """No hash stored, read from the table itself (the counters are kept by triggers, and a
        hand edit can make them say anything)."""
        return self._db.one("SELECT 1 FROM Dict LIMIT 1") is None

    def image_count(self) -> int:
        return self.counts()[1]

    def hash_count(self) -> int:
        return self.counts()[0]

    def generation(self) -> int:
        """The store's change sequence: moves with every change of Dict, by any program.

        Whether the log is kept is looked at again first (one PRAGMA read): with its table
        dropped by another program, a running checker read it and failed every answer (a
        review)."""
        if not self.refresh_tracking():
            return self._meta_number("generation")
        return _logged_generation(self._db, self.path)

    def changes_since(self) -> int:
        """The change log holds every change after this generation (index.py prunes the rest)."""
        return self._meta_number("changes_since")

    def _meta_number(self, name: str) -> int:
        """A whole number neardup_meta keeps (0 when absent); one that is not is a StoreError, in
        one line (another program wrote it: a review's "abc" ended index.py in a traceback)."""
        row = self._db.one("SELECT value FROM neardup_meta WHERE name = ?", (name,))
        if row is None:
            return 0
        try:
            return int(row[0])
        except (TypeError, ValueError):
            raise StoreError(f"{self.path}: its neardup_meta table is not understood ({name} is"
                             f" {str(row[0])[:40]!r}, not a whole number)") from None

    def logged_key(self, generation: int) -> str | None:
        """The key whose change made this generation, while the change log still holds it (after
        changes_since); None otherwise. A cache entry records it: a copy of the store restored
        and changed apart reaches the same generation by another change."""
        if not self.tracking or generation <= self.changes_since():
            return None
        row = self._db.one("SELECT key FROM neardup_changes WHERE seq = ?", (generation,))
        return None if row is None else _raw_hex(row[0])

    def log_window(self, upto: int, limit: int) -> list[tuple[int, str]]:
        """The last `limit` changes the log holds up to generation `upto`: (sequence number, the
        changed key as stored, in hex). A cache entry records them (cache.save)."""
        if not self.tracking:
            return []
        rows = self._db.all("SELECT seq, key FROM neardup_changes WHERE seq > ? AND seq <= ?"
                            " ORDER BY seq DESC LIMIT ?", (self.changes_since(), upto, limit))
        return [(int(seq), _raw_hex(key)) for seq, key in rows]

    def schema_version(self) -> int:
        """SQLite's schema cookie: moves when a table or trigger is created, dropped or altered."""
        return int(self._db.one("PRAGMA schema_version")[0])

    def data_version(self) -> int:
        """Moves when another connection commits (any table); per connection."""
        return int(self._db.one("PRAGMA data_version")[0])

    def changed_keys(self, after: int) -> dict[str, bool]:
        """Hash hex -> whether its bucket exists now, for every valid key changed after `after`."""
        rows = self._db.all(
            "SELECT c.key, EXISTS (SELECT 1 FROM Dict AS d WHERE d.key = c.key)"
            " FROM (SELECT DISTINCT key FROM neardup_changes WHERE seq > ?) AS c", (after,))
        found: dict[str, bool] = {}
        for key, exists in rows:
            hash_hex, problem = key_problem(key, self.recipe.bits)
            if hash_hex is None:
                if exists:
                    self._report_once(("key", key), f"store entry {describe_key(key)}: {problem};"
                                      " skipped")
                continue
            found[hash_hex] = found.get(hash_hex, False) or bool(exists)
        return found

    def bucket(self, hash_hex: str) -> list[str]:
        """The paths stored under one hash: a single indexed lookup. A value that is not a list
        of paths is skipped, with a line (once), as is a key written as text instead of bytes,
        and so is a path the table of files records under another hash (_listed_elsewhere)."""
        rows = self._db.all("SELECT value FROM Dict WHERE key IN (?, ?)",
                            (hash_hex.encode("ascii"), hash_hex))
        paths = self._bucket_paths(hash_hex, [value for (value,) in rows])
        return self._listed_elsewhere(hash_hex, paths, self._indexed_as(paths)) if paths else paths

    def all_buckets(self) -> dict[str, list[str]]:
        """Every hash's paths, as bucket() reads them, in one pass over each table."""
        values: dict[str, list[object]] = {}
        for key, value in self._db.all("SELECT key, value FROM Dict"):
            hash_hex = key if isinstance(key, str) else bytes(key).decode("ascii", "replace")
            values.setdefault(hash_hex, []).append(value)
        indexed = {os.fsdecode(bytes(path)): bytes(blob).hex()
                   for path, blob in self._db.all(f"SELECT {_PATH}, {_HASH} FROM neardup_files")}
        return {hash_hex: self._listed_elsewhere(hash_hex, self._bucket_paths(hash_hex, stored),
                                                 indexed.get)
                for hash_hex, stored in values.items()}

    def _indexed_as(self, paths: list[str]) -> Callable[[str], str | None]:
        """The hash the table of files records for each of these paths (None: not indexed)."""
        indexed = self._stored_hashes([os.fsencode(path) for path in paths])
        return lambda path: indexed.get(os.fsencode(path))

    def _listed_elsewhere(self, hash_hex: str, paths: list[str],
                          indexed_as: Callable[[str], str | None]) -> list[str]:
        """The paths of a bucket but those the table of files records under another hash,
        skipped with a line (once). The two disagree only where something wrote the store
        behind index.py (a review swapped two buckets' values by hand, and a search answered
        each image for the other at distance 0); index.py mends them at its next run. A path
        the table does not hold (another program's) is kept."""
        kept = [path for path in paths if indexed_as(path) in (None, hash_hex)]
        if elsewhere := len(paths) - len(kept):
            self._report_once(("elsewhere", hash_hex),
                              f"bucket {hash_hex}: {_elsewhere(elsewhere)}; skipped (run"
                              f" {command('index.py')} to mend it)")
        return kept

    def _bucket_paths(self, hash_hex: str, values: list[object]) -> list[str]:
        """The paths of one hash's stored values (its bytes key's, and a text key's if someone
        wrote one): a value that is not a list of paths is skipped with a line (once)."""
        paths: list[str] = []
        for value in values:
            found, problem = bucket_problem(value)
            if found is None:
                self._report_once(("bucket", hash_hex), f"bucket {hash_hex}: {problem}; skipped")
                continue
            paths.extend(found)
        return sorted(set(paths)) if len(values) > 1 else paths

    def has_key(self, hash_hex: str) -> bool:
        return self._db.one("SELECT 1 FROM Dict WHERE key IN (?, ?)",
                            (hash_hex.encode("ascii"), hash_hex)) is not None

    def hash_matrix(self) -> np.ndarray:
        """All distinct valid hashes in ascending order, as a (count, words) uint64 array."""
        return self.read_hash_keys()[0]

    def read_hash_keys(self) -> tuple[np.ndarray, int]:
        """Every valid hash of Dict, sorted and distinct, as a (count, words) uint64 array, and how
        many rows were skipped (each reported once) because their key is not such a hash.

        Fast path: SQLite concatenates the keys (one C call, 0.14 s at 10^6) and numpy checks that
        they are all exactly `width` lowercase hex digits; anything else takes the careful path.
        """
        bits = self.recipe.bits
        width = (bits + 3) // 4
        self._db.raw.text_factory = bytes
        try:
            rows, joined = self._db.one("SELECT COUNT(*), group_concat(key, ',') FROM Dict")
        finally:
            self._db.raw.text_factory = str
        if rows == 0:
            return np.zeros((0, (bits + 63) // 64), dtype=np.uint64), 0
        matrix = decode_joined_keys(bytes(joined), rows, width, bits)
        if matrix is not None:
            return matrix, 0
        return self._read_hash_keys_carefully()

    def _read_hash_keys_carefully(self) -> tuple[np.ndarray, int]:
        bits = self.recipe.bits
        good: list[bytes] = []
        skipped = 0
        for (key,) in self._db.all("SELECT key FROM Dict"):
            hash_hex, problem = key_problem(key, bits)
            if hash_hex is None:
                skipped += 1
                self._report_once(("key", key), f"store entry {describe_key(key)}: {problem};"
                                  " skipped")
            else:
                good.append(hash_hex.encode("ascii"))
        return sort_distinct(hex_keys_to_words(good, bits)), skipped

    def bucket_problem_now(self, hash_hex: str) -> str | None:
        """What is wrong with the bucket of this hash (hex) now, or None where it is gone or
        holds a list of paths none of which the table of files records under another hash (one
        reported bad, rewritten since by whoever damaged it: then forgotten as reported, so that
        a new problem with it is reported again). Call inside a snapshot."""
        row = self._db.one("SELECT value FROM Dict WHERE key = ?", (hash_hex.encode("ascii"),))
        paths, problem = (None, None) if row is None else bucket_problem(row[0])
        if problem is None:
            self._reported.discard(("bucket", hash_hex))
        if paths:
            indexed_as = self._indexed_as(paths)
            if elsewhere := sum(indexed_as(path) not in (None, hash_hex) for path in paths):
                return _elsewhere(elsewhere)
            self._reported.discard(("elsewhere", hash_hex))
        return problem

    def report_damaged_features(self, relpath: str, problem: str) -> None:
        """A feature record that cannot be read: said once (like a damaged bucket), and the
        caller goes on without it."""
        self._report_once(("features", relpath), f"features of {relpath}: {problem}; skipped")

    def _report_once(self, what: object, line: str) -> None:
        """Say a problem once; after MAX_PROBLEMS_SAID, one line more and then nothing (a recipe
        edited to disagree with every stored key said 985 lines, one per entry: a review)."""
        if what in self._reported:
            return
        self._reported.add(what)
        self._problems_said += 1
        if self._problems_said <= MAX_PROBLEMS_SAID:
            self.report(f"{self.path}: {line}")
        elif self._problems_said == MAX_PROBLEMS_SAID + 1:
            self.report(f"{self.path}: more problems like these, not listed")

    # -- checking what other programs wrote (index.py) -----------------------------------------

    def check_entries(self, keys: Iterable[object] | None = None) -> dict[object, str]:
        """Entries that are not (hash key, list of paths): raw key -> why. `keys`: the raw keys
        to look at (bytes or text, as the change log holds them); None: every row."""
        bits = self.recipe.bits
        if keys is None:
            rows = self._db.all("SELECT key, value FROM Dict")
        else:
            rows = []
            for key in keys:
                rows.extend(self._db.all("SELECT key, value FROM Dict WHERE key = ?", (key,)))
        problems: dict[object, str] = {}
        for key, value in rows:
            _hash_hex, problem = key_problem(key, bits)
            if problem is None:
                _paths, problem = bucket_problem(value)
            if problem:
                problems[key if isinstance(key, str) else bytes(key)] = problem
        return problems

    def changed_raw_keys(self, after: int, upto: int | None = None) -> list[object]:
        """The keys (as stored: bytes, or text) the change log holds after `after`."""
        if upto is None:
            rows = self._db.all("SELECT DISTINCT key FROM neardup_changes WHERE seq > ?", (after,))
        else:
            rows = self._db.all("SELECT DISTINCT key FROM neardup_changes WHERE seq > ?"
                                " AND seq <= ?", (after, upto))
        return [key if isinstance(key, str) else bytes(key) for (key,) in rows]

    def known_bad_entries(self) -> list[object]:
        """The entries index.py last found wrong (it looks at them again each run)."""
        row = self._db.one("SELECT value FROM neardup_meta WHERE name = 'bad_entries'")
        try:
            listed = json.loads(row[0]) if row else []
            return [bytes.fromhex(value) if kind == "b" else str(value) for kind, value in listed]
        except (ValueError, TypeError):
            return []

    def entries_checked(self) -> bool:
        """False for a store upgraded from format 1: nobody has looked at every entry yet."""
        return self._db.one("SELECT 1 FROM neardup_meta WHERE name = 'entries_checked'") is not None

    def record_bad_entries(self, keys: Iterable[object]) -> None:
        listed = sorted(["t", key] if isinstance(key, str) else ["b", bytes(key).hex()]
                        for key in keys)
        with self.transaction():
            self._set_meta("bad_entries", json.dumps(listed[:1000]))
            self._set_meta("entries_checked", "1")

    # -- writing -------------------------------------------------------------------------------

    def apply(self, indexed: Iterable[IndexedFile], removed: Iterable[str], *,
              keep_features: bool = False) -> None:
        """Record hashed files and forget removed ones, all in one transaction. `keep_features`:
        the files are unchanged (only their stat is recorded again), their features stand.

        Idempotent: a path already stored under the same hash is not listed again, and a path whose
        hash changed leaves its old bucket, so no path is ever listed twice.
        """
        additions: dict[str, set[str]] = {}
        removals: dict[str, set[str]] = {}
        indexed, removed = list(indexed), list(removed)
        with self.transaction():
            self._apply_features([] if keep_features else indexed, removed)
            # What is stored now, read for the whole batch at once: a statement per file cost
            # index.py more than a fifth of its time on small photos.
            keys = [os.fsencode(item.relpath) for item in indexed]
            gone = [os.fsencode(relpath) for relpath in removed]
            stored = self._stored_hashes(keys + gone)
            rows = []
            for item, key in zip(indexed, keys, strict=True):
                old = stored.get(key)
                if old is not None and old != item.hash_hex:
                    removals.setdefault(old, set()).add(item.relpath)
                if old != item.hash_hex:
                    additions.setdefault(item.hash_hex, set()).add(item.relpath)
                rows.append((key, item.size, item.mtime_ns, bytes.fromhex(item.hash_hex),
                             item.inode, item.ctime_ns))
            self._db.many(
                "INSERT INTO neardup_files (path, size, mtime_ns, hash, inode, ctime_ns)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET"
                " size = excluded.size, mtime_ns = excluded.mtime_ns, hash = excluded.hash,"
                " inode = excluded.inode, ctime_ns = excluded.ctime_ns",
                rows,
            )
            for relpath, key in zip(removed, gone, strict=True):
                old = stored.get(key)
                if old is not None:
                    removals.setdefault(old, set()).add(relpath)
            self._db.many("DELETE FROM neardup_files WHERE path = ?",
                          [(key,) for key in gone if key in stored])
            changed = sorted(additions.keys() | removals.keys())
            buckets = self._stored_buckets(changed)
            self._write_buckets({hash_hex: self._bucket_after(hash_hex,
                                                              buckets.get(hash_hex, []),
                                                              additions.get(hash_hex, set()),
                                                              removals.get(hash_hex, set()))
                                 for hash_hex in changed})

    def _write_buckets(self, buckets: dict[str, list[str]]) -> None:
        """Write each hash's bucket as shelve writes it (the hex key as bytes, a pickled list),
        one statement for them all; an empty one is deleted."""
        written = [(hash_hex.encode("ascii"), pickle.dumps(paths, PICKLE_PROTOCOL))
                   for hash_hex, paths in buckets.items() if paths]
        emptied = [(hash_hex.encode("ascii"),) for hash_hex, paths in buckets.items() if not paths]
        self._db.many("INSERT INTO Dict (key, value) VALUES (?, ?)"
                      " ON CONFLICT (key) DO UPDATE SET value = excluded.value", written)
        self._db.many("DELETE FROM Dict WHERE key = ?", emptied)

    def buckets_out_of_step(self, stored: Mapping[str, FileState]
                            ) -> tuple[list[object], set[str]]:
        """The raw keys (as stored) of buckets that disagree with the table of files (`stored`,
        file_states()): a bucket that lacks an image indexed under its hash, or lists one indexed
        under another, or is missing, or whose value is not a list of paths; and the images so
        concerned. Neither the change log nor SQLite sees a byte changed in the file itself (a
        path in a bucket turned into another indexed path, or two hashes of the table swapped:
        reviews), and a search then answers the wrong image; index.py looks here before it
        writes. Paths the table does not hold (added by other programs) are no disagreement.

        A bucket written by index.py is the pickle of its sorted paths, so most compare as bytes:
        4.3 s and 113 MB per 10^6 synthetic images (a merge of both tables sorted by SQLite took
        about twice as long, in a scratch measurement)."""
        by_hash: dict[str, list[str]] = {}
        for relpath, state in stored.items():
            by_hash.setdefault(state.hash_hex, []).append(relpath)
        out: list[object] = []
        concerned: set[str] = set()
        for key, value in self._db.all("SELECT key, value FROM Dict"):
            raw = key if isinstance(key, str) else bytes(key)
            hash_hex = key_text(raw)
            indexed = by_hash.pop(hash_hex, [])
            if isinstance(value, bytes) and pickle.dumps(sorted(indexed), PICKLE_PROTOCOL) == value:
                continue
            listed, problem = bucket_problem(value)
            if problem is not None or listed is None:
                out.append(raw)  # emptied or junk: rewritten from the table (relist_indexed)
                concerned.update(indexed)  # after hashing its images again, as the file is in doubt
                continue
            misplaced = {path for path in listed
                         if path in stored and stored[path].hash_hex != hash_hex}
            lost = set(indexed) - set(listed)
            if misplaced or lost:
                out.append(raw)
                concerned |= misplaced | lost
        for hash_hex, indexed in by_hash.items():  # indexed under a hash no bucket holds
            out.append(hash_hex.encode("ascii"))
            concerned.update(indexed)
        return out, concerned

    def normalise_rows(self) -> tuple[int, int]:
        """Rows other programs wrote in another form, put right in one transaction: a path stored
        as text (or a number) is written back as its bytes, in the table of files and of
        features, so that index.py's lookups by path find it (else the file was listed twice
        once changed, and never removed once deleted); a file whose hash is not this recipe's
        bytes is forgotten, and so hashed again as new. Returns (paths rewritten, files
        forgotten). A read of both tables by SQLite: 0.3 s per 10^6 synthetic images (reading the
        table of files into Python, which index.py does next, 5.6 s)."""
        size = (self.recipe.bits + 7) // 8
        with self.transaction():
            paths = int(self._db.run("UPDATE OR REPLACE neardup_files SET path = CAST(path AS BLOB)"
                                     " WHERE typeof(path) != 'blob'").rowcount)
            if self.has_features():
                paths += int(self._db.run("UPDATE OR REPLACE neardup_features SET path ="
                                          " CAST(path AS BLOB) WHERE typeof(path) != 'blob'"
                                          ).rowcount)
            forgotten = int(self._db.run("DELETE FROM neardup_files WHERE typeof(hash) != 'blob'"
                                         " OR length(hash) != ?", (size,)).rowcount)
        return paths, forgotten

    def recount(self) -> tuple[int, int] | None:
        """The counters the triggers keep (hashes, images), counted again and set where another
        program changed them (a review set them to 0: index.py then said "0 images in the store"
        and exited 1 as if nothing could be indexed). Returns what they said, or None if right.
        Two counts by SQLite: 0.03 s per 10^6 synthetic images."""
        if not self.tracking:
            return None
        found = dict(self._db.all("SELECT name, n FROM neardup_counts"))
        hashes = int(self._db.one("SELECT COUNT(*) FROM Dict")[0])
        images = int(self._db.one("SELECT COUNT(*) FROM neardup_files")[0])
        if found.get("hashes") == hashes and found.get("images") == images:
            return None
        with self.transaction():
            for name, count in (("hashes", hashes), ("images", images)):
                self._db.run("INSERT INTO neardup_counts (name, n) VALUES (?, ?)"
                             " ON CONFLICT (name) DO UPDATE SET n = excluded.n", (name, count))
        return found.get("hashes"), found.get("images")

    def relist_indexed(self, hashes: Iterable[str]) -> dict[str, tuple[int, int]]:
        """Bring the buckets of these hashes (those others changed) back to what index.py stored
        there, in one transaction: an image it indexed under a hash that no bucket lists any more
        (another program deleted the bucket, or rewrote it without it: the files table still
        records its hash, and an unchanged file is never hashed again) is listed again; an image
        it indexed under another hash, which another program moved into one of these buckets,
        goes back to its own (else it would be listed twice, and stay listed there once its file
        is deleted). Paths index.py never indexed stay where others put them. A bucket whose
        value is not a list of paths (emptied, junk) is rewritten with the images index.py
        indexed under its hash, and said so, as when index.py adds to one (else those images
        stayed out of every answer, run after run: a review); one with none is left as it is
        (reported until someone fixes it). One pass over the files table, whatever the number of
        hashes. Returns hash -> (paths listed again, paths taken out)."""
        wanted = {hash_hex for hash_hex in hashes if _is_hex(hash_hex)}
        if not wanted:
            return {}
        changed: dict[str, tuple[int, int]] = {}
        with self.transaction():
            buckets = self._stored_buckets(sorted(wanted))
            listed: dict[str, set[str]] = {}  # valid buckets only
            unreadable: set[str] = set()
            for hash_hex in wanted:
                paths: set[str] | None = set()
                for _key, value in buckets.get(hash_hex, []):
                    found, _problem = bucket_problem(value)
                    if found is None:
                        paths = None
                        break
                    paths |= set(found)
                if paths is None:
                    unreadable.add(hash_hex)
                else:
                    listed[hash_hex] = paths
            every_listed = set().union(*listed.values())
            known: dict[str, set[str]] = {}  # hash -> the paths index.py indexed under it
            indexed_as: dict[str, str] = {}  # listed path -> the hash index.py indexed it under
            for path_key, blob in self._db.all(f"SELECT {_PATH}, {_HASH} FROM neardup_files"):
                hash_hex = bytes(blob).hex()
                path = os.fsdecode(bytes(path_key))
                if hash_hex in wanted:
                    known.setdefault(hash_hex, set()).add(path)
                if path in every_listed:
                    indexed_as[path] = hash_hex
            misplaced = {hash_hex: {path for path in paths
                                    if indexed_as.get(path, hash_hex) != hash_hex}
                         for hash_hex, paths in listed.items()}
            anywhere = set().union(*(paths - misplaced[hash_hex]
                                     for hash_hex, paths in listed.items()))
            rewritten: dict[str, list[str]] = {}
            for hash_hex in sorted(listed):
                missing = known.get(hash_hex, set()) - listed[hash_hex] - anywhere
                if not missing and not misplaced[hash_hex]:
                    continue
                rewritten[hash_hex] = self._bucket_after(hash_hex, buckets.get(hash_hex, []),
                                                         missing, misplaced[hash_hex])
                changed[hash_hex] = (len(missing), len(misplaced[hash_hex]))
            for hash_hex in sorted(unreadable & set(known)):
                # _bucket_after rebuilds it from the files table and reports what it held.
                rewritten[hash_hex] = self._bucket_after(hash_hex, buckets[hash_hex], set(), set())
                changed[hash_hex] = (0, 0)
            self._write_buckets(rewritten)
        return changed

    def _stored_hashes(self, path_keys: list[bytes]) -> dict[bytes, str]:
        """The stored hash of each of these paths that has one."""
        found: dict[bytes, str] = {}
        for start in range(0, len(path_keys), SQL_BATCH):
            chunk = path_keys[start : start + SQL_BATCH]
            marks = ", ".join("?" * len(chunk))
            for path, hash_blob in self._db.all(
                    f"SELECT {_PATH}, {_HASH} FROM neardup_files WHERE path IN ({marks})", chunk):
                found[bytes(path)] = bytes(hash_blob).hex()
        return found

    def _stored_buckets(self, hashes: list[str]) -> dict[str, list[tuple[Any, Any]]]:
        """The Dict rows (key, value) of each of these hashes: its bytes key, and a text key
        written by hand, if any."""
        found: dict[str, list[tuple[Any, Any]]] = {}
        for start in range(0, len(hashes), SQL_BATCH // 2):
            chunk = hashes[start : start + SQL_BATCH // 2]
            params = [hash_hex.encode("ascii") for hash_hex in chunk] + chunk
            marks = ", ".join("?" * len(params))
            for key, value in self._db.all(f"SELECT key, value FROM Dict WHERE key IN ({marks})",
                                           params):
                name = key.decode("ascii", "replace") if isinstance(key, bytes) else key
                found.setdefault(name, []).append((key, value))
        return found

    def _bucket_after(self, hash_hex: str, rows: list[tuple[Any, Any]], added: set[str],
                      removed: set[str]) -> list[str]:
        """A hash's bucket as it must be written: its stored `rows` (_stored_buckets) plus and
        minus the paths this transaction added to and removed from it (empty: to be deleted)."""
        paths: set[str] = set()
        for key, value in rows:
            found, problem = bucket_problem(value)
            if found is None:
                # Someone else's value: rebuilt from what neardup indexed under this hash (the
                # files table, already updated in this transaction), and said so.
                known = {os.fsdecode(bytes(path)) for (path,) in self._db.all(
                    f"SELECT {_PATH} FROM neardup_files WHERE hash = ?", (bytes.fromhex(hash_hex),))}
                self.report(f"{self.path}: bucket {hash_hex}: {problem}; rewritten with the"
                            f" {len(known)} indexed image{'' if len(known) == 1 else 's'} of that hash")
                paths |= known
            else:
                paths |= set(found)
            if isinstance(key, str):  # a text key written by hand: replaced by the bytes key
                self._db.run("DELETE FROM Dict WHERE key = ?", (key,))
        return sorted((paths | added) - removed)

    def _stored_hash(self, path_key: bytes) -> str | None:
        found = self._db.one(f"SELECT {_HASH} FROM neardup_files WHERE path = ?", (path_key,))
        return None if found is None else bytes(found[0]).hex()

    def _set_meta(self, name: str, value: str) -> None:
        self._db.run("INSERT INTO neardup_meta (name, value) VALUES (?, ?)"
                     " ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: everything in it is committed together, or nothing is."""
        try:
            self._db.raw.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise sqlite_failure(self.path, error, "start a write to") from error
        try:
            before = self.generation() if self.tracking else 0
            yield
            if self.tracking:
                self._note_own_changes(before)
            self._db.raw.execute("COMMIT")
        except (sqlite3.Error, SqliteFailure) as failure:  # disk full, read-only, I/O error, damage
            self._rollback()
            error = failure if isinstance(failure, sqlite3.Error) else failure.__cause__
            if isinstance(failure, StoreDamaged):
                raise
            if isinstance(error, sqlite3.Error):
                damaged = sqlite_failure(self.path, error)
                if isinstance(damaged, StoreDamaged):
                    raise damaged from error
            raise StoreError(f"{self.path}: cannot write ({error}); the store keeps its last"
                             " committed state") from failure
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        try:
            self._db.raw.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite may already have rolled back on its own (e.g. after SQLITE_FULL)

    def prune_changes(self, upto: int) -> None:
        """Forget the logged changes up to this generation (index.py, once a cache covers them)."""
        with self.transaction():
            self._db.run("DELETE FROM neardup_changes WHERE seq <= ?", (upto,))
            if upto > self.changes_since():
                self._set_meta("changes_since", str(upto))
            self._set_meta("own_changes", json.dumps(
                [[max(first, upto), last] for first, last in self._own_spans() if last > upto]))

    def _own_spans(self) -> list[list[int]]:
        """The spans (after, upto] of the change log written by neardup's own transactions; none
        if the record is not understood (then every logged change counts as another's)."""
        row = self._db.one("SELECT value FROM neardup_meta WHERE name = 'own_changes'")
        try:
            spans = json.loads(row[0]) if row else []
            # Whole numbers (not booleans) within the log as it is: a span another program wrote
            # past the last change, or beyond SQLite's integers, hid its edits or ended index.py
            # in an OverflowError (a review).
            newest = self.generation() if spans else 0
            if all(type(first) is int and type(last) is int and 0 <= first < last <= newest
                   for first, last in spans):
                return [[first, last] for first, last in spans]
        except (ValueError, TypeError):
            pass
        return []

    def _note_own_changes(self, before: int) -> None:
        """Inside a transaction: the changes logged since `before` are this transaction's own
        (SQLite lets one writer at a time), added to the spans kept in neardup_meta."""
        after = self.generation()
        if after <= before:
            return
        spans = self._own_spans()
        if spans and spans[-1][1] == before:
            spans[-1][1] = after
        else:
            spans.append([before, after])
        while len(spans) > OWN_SPANS_KEPT:
            gaps = [spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)]
            nearest = gaps.index(min(gaps))
            spans[nearest:nearest + 2] = [[spans[nearest][0], spans[nearest + 1][1]]]
        self._set_meta("own_changes", json.dumps(spans))

    def others_changed_keys(self) -> list[object]:
        """The keys (as stored) the change log holds since the last index.py run that other
        programs wrote: neardup's own writes (a run that was killed, say) left out."""
        spans = self._own_spans()
        rows = self._db.all("SELECT DISTINCT key FROM neardup_changes WHERE seq > ?"
                            + " AND NOT (seq > ? AND seq <= ?)" * len(spans),
                            (self.changes_since(), *(bound for span in spans for bound in span)))
        return [key if isinstance(key, str) else bytes(key) for (key,) in rows]

    def compact(self) -> None:
        """Rewrite the file with full pages. Hashes arrive in random order, so after a large
        import SQLite's pages are only about 70% full; this saves about 6% (10 bytes an image)."""
        try:
            self._db.raw.execute("VACUUM")
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: cannot compact ({error}); the store is unchanged") from error

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read a consistent view: an index.py committing meanwhile is not seen half-way."""
        self._db.run("BEGIN")
        try:
            yield
        finally:
            try:
                self._db.raw.execute("COMMIT")
            except sqlite3.Error:
                pass

    def _read_meta(self) -> dict[str, str]:
        return {str(name): str(value) for name, value in
                self._db.all("SELECT name, value FROM neardup_meta")}

    def meta_changed(self) -> bool:
        """Whether another program changed what this store was opened as since (its recipe,
        dataset folder, id, format or feature recipe in neardup_meta): read again only once
        another connection has committed since the last look (PRAGMA data_version). A running
        checker and an open API store answered with the recipe and folder read at open (a
        review); they open the store again when this says so."""
        if self._meta_stale:
            return True
        try:
            version = self.data_version()
            if version == self._meta_seen_at:
                return False
            meta = self._read_meta()
        except StoreError:
            return True  # opened again, which says what is wrong
        if any(meta.get(name) != self.meta.get(name) for name in OPENED_AS):
            # Said until the store is opened again: asked first by a reader inside its snapshot
            # (index.py --rebuild's commit can land between its look at the file and its read:
            # a review's query hashed with the old recipe was answered from the new contents),
            # then by the code that reopens.
            self._meta_stale = True
            return True
        self._meta_seen_at = version
        return False

    def refresh_tracking(self) -> bool:
        """Whether the change log is kept now: looked at again when the schema changed since
        (a PRAGMA read). A long-lived reader decided it once, at open: another program that
        dropped a trigger then wrote without moving the generation, and a running checker never
        saw those writes (a review); without the log it follows every commit instead."""
        version = self.schema_version()
        if version != self._tracking_schema:
            self.tracking = self._has_tracking()
            self._tracking_schema = version
        return self.tracking

    def _has_tracking(self) -> bool:
        names = {row[0] for row in self._db.all(
            "SELECT name FROM sqlite_master WHERE type IN ('trigger', 'table')")}
        return (self.format != "1" and "neardup_changes" in names and "neardup_counts" in names
                and set(_TRIGGERS) <= names)


# -- keys as numbers ------------------------------------------------------------------------------

    # -- local features (neardup.features) -----------------------------------------------------
    # One table of its own, created by enable_features and written by _apply_features inside
    # apply()'s transaction, so a file's hash and its features are committed together or not at
    # all. The integer id is stable while the path stays: the feature index names images by it.

    def has_features(self) -> bool:
        """Whether the store keeps local features (index.py --features)."""
        return self.feature_recipe() is not None

    def feature_recipe(self) -> dict[str, Any] | None:
        """The recorded feature recipe, or None for a hash-only store."""
        found = self._db.one("SELECT value FROM neardup_meta WHERE name = 'feature_recipe'")
        if found is None:
            # Deleted behind an open store (opening checks it too): not a hash-only store.
            if self._db.one("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                            " AND name = 'neardup_features'") is not None:
                raise _features_without_recipe(self.path)
            return None
        try:
            recipe = json.loads(found[0])
        except (TypeError, ValueError):
            recipe = None
        if not isinstance(recipe, dict):
            raise StoreError(f"{self.path}: its neardup_meta table is not understood"
                             f" (feature_recipe is {str(found[0])[:40]!r}, not a recipe)")
        return recipe

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
        with self.transaction():
            self._db.run(_FEATURE_TABLE)
            self._set_meta("feature_recipe", json.dumps(recipe, sort_keys=True))
            self._set_meta("feature_generation", "0")

    def paths_without_features(self) -> set[str]:
        """Indexed files whose features are not stored (indexed before features were enabled)."""
        rows = self._db.all(f"SELECT {_PATH} FROM neardup_files WHERE path NOT IN"
                            " (SELECT path FROM neardup_features)")
        return {os.fsdecode(bytes(path)) for (path,) in rows}

    def feature_records_unlike(self, version: int, fixed: int, per_point: int) -> dict[str, bytes]:
        """The feature records (by path) that cannot be well formed: stored as other than bytes,
        not of this one-byte version, a frame side of 0, or a length other than `fixed` +
        `per_point` x the keypoint count its header gives (bytes 6 and 7, little-endian, as hex
        against the count the length implies). Filtered by SQLite as it reads the table (0.55 s
        for 300,000 records, warm, where fetching each record's head into Python took 1.2 to
        1.5 s)."""
        rows = self._db.all(
            # ?1 the fixed bytes, ?2 those per keypoint, ?3 the version byte.
            f"SELECT {_PATH}, {_AS_BYTES} FROM neardup_features WHERE typeof(data) != 'blob'"
            " OR length(data) < ?1 OR (length(data) - ?1) % ?2 != 0"
            " OR substr(data, 1, 1) != ?3"
            " OR substr(data, 2, 2) = x'0000' OR substr(data, 4, 2) = x'0000'"
            " OR hex(substr(data, 6, 2)) != printf('%02X%02X',"
            " (length(data) - ?1) / ?2 % 256, (length(data) - ?1) / ?2 / 256)",
            (fixed, per_point, bytes([version])))
        return {os.fsdecode(bytes(path)): bytes(data) for path, data in rows}

    def drop_orphan_features(self) -> int:
        """Delete the feature records of no indexed file (written by hand: index.py writes a
        file's record with its entry, in one transaction); how many there were."""
        with self.transaction():
            dropped = int(self._db.run("DELETE FROM neardup_features WHERE path NOT IN"
                                       " (SELECT path FROM neardup_files)").rowcount)
            if dropped:
                self._features_changed()
        return dropped

    def images_without_features(self) -> int:
        """How many stored images have no features on a store that keeps them: an index.py
        --features run on a hash-only store that did not finish (the recipe is recorded before
        the first batch). 0 on a hash-only store. Counted, not listed: the image count is kept
        by the triggers, and every feature row belongs to a stored file (one transaction)."""
        if not self.has_features():
            return 0
        return max(0, self.image_count() - self.feature_count())

    def feature_count(self) -> int:
        if not self.has_features():
            return 0
        return int(self._db.one("SELECT COUNT(*) FROM neardup_features")[0])

    def feature_generation(self) -> int:
        """Moves with every change of the features (which need not change any hash)."""
        return self._meta_number("feature_generation")

    def feature_token(self) -> str:
        """A random word drawn anew with every change of the features: two copies of a store
        restored and changed apart reach the same generations with other features, never the
        same token ("0" before the first change, and in stores from before it was kept)."""
        found = self._db.one("SELECT value FROM neardup_meta WHERE name = 'feature_token'")
        return str(found[0]) if found else "0"

    def feature_rows(self) -> Iterator[tuple[int, str, bytes]]:
        """(id, path, features) of every stored image, by id (the order they were stored in)."""
        for image_id, path, data in self._db.run(
                f"SELECT id, {_PATH}, {_AS_BYTES} FROM neardup_features ORDER BY id"):
            yield int(image_id), os.fsdecode(bytes(path)), bytes(data)

    def features_by_id(self, ids: Iterable[int]) -> dict[int, tuple[str, bytes]]:
        wanted = sorted(set(ids))
        found: dict[int, tuple[str, bytes]] = {}
        for start in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for image_id, path, data in self._db.all(
                    f"SELECT id, {_PATH}, {_AS_BYTES} FROM neardup_features WHERE id IN ({marks})",
                    chunk):
                found[int(image_id)] = (os.fsdecode(bytes(path)), bytes(data))
        return found

    def features_of_path(self, relpath: str) -> tuple[int, bytes] | None:
        row = self._db.one(f"SELECT id, {_AS_BYTES} FROM neardup_features WHERE path = ?",
                           (os.fsencode(relpath),))
        return None if row is None else (int(row[0]), bytes(row[1]))

    def hash_of_path(self, relpath: str) -> str | None:
        """The stored hash (hex) of one indexed file."""
        return self._stored_hash(os.fsencode(relpath))

    def hashes_of_paths(self, relpaths: Iterable[str]) -> dict[str, str]:
        """The stored hash (hex) of each of these indexed files that has one."""
        found = self._stored_hashes([os.fsencode(relpath) for relpath in relpaths])
        return {os.fsdecode(key): hash_hex for key, hash_hex in found.items()}

    def _apply_features(self, indexed: list[IndexedFile], removed: list[str]) -> None:
        """apply()'s part for features: in its transaction, before its own writes."""
        if not self.has_features():  # a hash-only store: one lookup per batch, nothing else
            return
        changed = 0  # records written or deleted; one rewritten as it was does not count
        for item in indexed:
            key = os.fsencode(item.relpath)
            if item.features is None:  # features of an older version of the file are stale
                changed += self._db.run("DELETE FROM neardup_features WHERE path = ?",
                                        (key,)).rowcount
            else:
                changed += self._db.run(
                    "INSERT INTO neardup_features (path, data) VALUES (?, ?)"
                    " ON CONFLICT (path) DO UPDATE SET data = excluded.data"
                    " WHERE data IS NOT excluded.data", (key, item.features)).rowcount
        for relpath in removed:
            changed += self._db.run("DELETE FROM neardup_features WHERE path = ?",
                                    (os.fsencode(relpath),)).rowcount
        if changed:
            # A file read again only because its ctime moved (a hard link made to it) gives the
            # same record, and the cached index of 10^5 images (40 s to build) stays valid.
            self._features_changed()

    def _features_changed(self) -> None:
        """Move the feature generation and draw a new token, in the transaction that changed
        them: the feature index cache is named by these (features can change without a hash)."""
        self._db.run("UPDATE neardup_meta SET value = CAST(value AS INTEGER) + 1"
                     " WHERE name = 'feature_generation'")
        self._set_meta("feature_token", uuid.uuid4().hex[:16])


# A feature record as bytes, whatever type a hand edit stored it as (text failed with a TypeError
# traceback, text that is not UTF-8 with sqlite3's "Could not decode" before any of our code).
_AS_BYTES = "CAST(data AS BLOB)"
# Paths and hashes read as bytes whatever another program wrote there (a review: a path written
# with Python's sqlite3 as a str, or by the sqlite3 shell without CAST, is TEXT, and every
# command that read it ended in a TypeError); index.py then writes them back as bytes
# (Store.normalise_rows).
_PATH = "CAST(path AS BLOB)"
_HASH = "CAST(hash AS BLOB)"
# Rowid table (not WITHOUT ROWID): records of about 4 KB, and ids the feature index can keep.
_FEATURE_TABLE = ("CREATE TABLE IF NOT EXISTS neardup_features (id INTEGER PRIMARY KEY,"
                  " path BLOB UNIQUE NOT NULL, data BLOB NOT NULL)")


# What a reader holds a store as (Store.meta_changed); the counters index.py moves are not.
OPENED_AS = ("recipe", "dataset_root", "store_id", "format_version", "feature_recipe")


def _logged_generation(db: Db, path: str) -> int:
    """The change log's generation: its sequence, or its newest entry where that is later, as
    it is for SQLite's next number (a sequence set back by hand behind the log revived a search
    cache built at that number: a review)."""
    sequence, newest = db.one(
        "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'neardup_changes'),"
        " (SELECT MAX(seq) FROM neardup_changes)")
    number = _sequence_number(path, None if sequence is None else (sequence,))
    return max(number, newest) if isinstance(newest, int) else number


def _sequence_number(path: str, row: tuple[Any, ...] | None) -> int:
    """The change log's sequence (sqlite_sequence), which another program can set to anything:
    a value that is not a whole number is a StoreError in one line (a review's 'x' ended every
    command in a ValueError)."""
    if row is None:
        return 0
    if isinstance(row[0], int):
        return row[0]
    raise StoreError(f"{path}: its sqlite_sequence table is not understood (neardup_changes is"
                     f" {str(row[0])[:40]!r}, not a whole number); build a new store (README:"
                     " Checking and repairing a store)")


def stored_recipe(path: str, text: str) -> Recipe:
    """The recipe a store records, or a StoreError naming the store (one from a newer neardup)."""
    try:
        data = json.loads(text)
    except ValueError:
        # JSON's own words ("Expecting value: line 1 column 1") went to clients (a review).
        raise StoreError(f"{path}: its neardup_meta table is not understood (recipe is"
                         f" {text[:40]!r}, not a recipe)") from None
    try:
        if not isinstance(data, dict):
            raise ValueError(f"{text[:40]!r} is not a recipe")
        recipe = Recipe.from_dict(data)
    except (ValueError, KeyError, TypeError) as error:
        raise StoreError(f"{path}: its recipe cannot be used here: {error}") from error
    if recipe.bits % 8:  # as index.py refuses to make (--hash-size, a multiple of 4)
        raise StoreError(f"{path}: its recipe cannot be used here: {recipe.describe()} is not"
                         " whole bytes, as a store keeps each hash")
    return recipe


# -- helpers for opening -----------------------------------------------------------------------


# The tables index.py writes: a trigger on one of them that is not neardup's changes what it writes.
_WRITTEN_TABLES = {"dict", "neardup_meta", "neardup_files", "neardup_changes", "neardup_counts",
                   "neardup_features"}


def _refuse_foreign_triggers(db: Db, path: str) -> None:
    """A trigger another program put on a table index.py writes (one deleting every new bucket,
    in a review) silently undid its writes, run after run, while it said it had listed them."""
    foreign = [(str(name), str(table)) for name, table in db.all(
        "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'")
        if name not in _TRIGGERS and str(table).lower() in _WRITTEN_TABLES]
    if foreign:
        name, table = foreign[0]
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise StoreError(f"{path}: holds a trigger neardup did not make ({name[:40]!r} on"
                         f" {table[:40]}{more}), which would change what index.py writes; drop it"
                         f" (DROP TRIGGER in sqlite3) or build a new store (README: Checking and"
                         " repairing a store)")


# SQLite's largest AUTOINCREMENT number; past it an insert fails with "database or disk is full".
_LAST_SEQUENCE = 2**63 - 1
# Left for one run at least: a run logs one change per bucket it writes.
_SEQUENCE_MARGIN = 2**32


def _refuse_exhausted_log(db: Db, path: str) -> None:
    """A review set the change log's sequence near its end by hand: index.py then failed with
    SQLite's "database or disk is full", which sent the user looking at the disk."""
    if "neardup_changes" not in {row[0] for row in db.all(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}:
        return
    if _logged_generation(db, path) > _LAST_SEQUENCE - _SEQUENCE_MARGIN:
        raise StoreError(f"{path}: its change log's sequence (sqlite_sequence) is at the end of"
                         " what SQLite can count, set there by another program; rebuild it with"
                         f" {command('index.py')} --rebuild (README: Checking and repairing a"
                         " store)")


def _features_without_recipe(path: str) -> StoreError:
    return StoreError(f"{path}: its neardup_meta table is incomplete or not understood (no"
                      " feature_recipe beside its neardup_features table); build a new store"
                      " (README: Checking and repairing a store)")


def _check_is_neardup_store(db: Db, path: str) -> None:
    tables = {row[0] for row in db.all("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        # What a copy of a store taken while index.py first wrote it holds: every commit was
        # still in its -wal (a review read "no neardup_meta table" and was none the wiser).
        raise StoreError(f"{path}: not a neardup store (an SQLite database with no tables; a"
                         f" copy of a store {command('index.py')} was writing holds its commits"
                         f" in {path}-wal: copy both files, or copy it once it is done)")
    if "neardup_meta" not in tables or "Dict" not in tables:
        missing = "neardup_meta" if "neardup_meta" not in tables else "Dict"
        raise StoreError(f"{path}: not a neardup store (no {missing} table)")
    if "neardup_features" not in tables and db.one(
            "SELECT 1 FROM neardup_meta WHERE name = 'feature_recipe'") is not None:
        # Written by hand or by another program: every read of the features failed "no such
        # table" (a review).
        raise StoreError(f"{path}: its neardup_features table is missing, though neardup_meta"
                         " records local features (README: Checking and repairing a store)")
    if "neardup_features" in tables and db.one(
            "SELECT 1 FROM neardup_meta WHERE name = 'feature_recipe'") is None:
        # The recipe deleted by hand: every search answered by the hash alone without a word,
        # and index.py --features would have taken records made by an unknown recipe (a review).
        raise _features_without_recipe(path)
    version = db.one("SELECT value FROM neardup_meta WHERE name = 'format_version'")
    if version is None or str(version[0]) not in READABLE_FORMATS:
        found = "none" if version is None else version[0]
        raise StoreError(
            f"{path}: store format version {found}, this neardup reads versions"
            f" {', '.join(READABLE_FORMATS)}"
        )


# What to do about a --moved-from the store does not need.
_REDUNDANT_MOVED_FROM = "drop --moved-from, or name the store that indexed that folder"


def _initialise_or_check(
    db: Db,
    path: str,
    recipe: Recipe,
    dataset_root: str,
    versions: dict[str, str],
    moved_from: str | None = None,
) -> bool:
    """Create a new store, or check and upgrade an existing one. True if it was created."""
    tables = {row[0] for row in db.all("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and "neardup_meta" not in tables:
        raise StoreError(f"{path}: exists and is not a neardup store; choose another --shelve")
    # A --moved-from the store does not index is a mistake (a mistyped -s, another store): refused
    # before anything is written, as docs/usage.md says, not taken as a plain run.
    if not tables and moved_from is not None:
        raise StoreError(f"{path}: a new store, indexing no folder yet, not --moved-from"
                         f" {moved_from}: {_REDUNDANT_MOVED_FROM}")
    if not tables:
        with write_transaction(db, path):
            _create_schema(db)
            meta = {
                "format_version": str(FORMAT_VERSION),
                "store_id": uuid.uuid4().hex,
                "recipe": json.dumps(recipe.to_dict(), sort_keys=True),
                "dataset_root": dataset_root,
                "versions": json.dumps(versions, sort_keys=True),
                "changes_since": "0",
                "entries_checked": "1",
            }
            db.many("INSERT INTO neardup_meta (name, value) VALUES (?, ?)", meta.items())
            db.many("INSERT INTO neardup_counts (name, n) VALUES (?, 0)", [("hashes",), ("images",)])
        return True
    # An existing store: checked before anything is written to it.
    try:
        size = os.path.getsize(path) + (os.path.getsize(path + "-wal")
                                        if os.path.exists(path + "-wal") else 0)
    except OSError:
        size = 0
    check_pages(db, path, whole=size <= WRITER_INTEGRITY_MAX_BYTES)
    _check_is_neardup_store(db, path)
    _refuse_foreign_triggers(db, path)
    _refuse_exhausted_log(db, path)
    meta = {str(name): str(value) for name, value in
            db.all("SELECT name, value FROM neardup_meta")}
    if "recipe" not in meta or not meta.get("dataset_root"):
        # Deleted or emptied by another program: said as such, not as a JSON parse error or as
        # "indexes , not ..." (a review).
        missing = "recipe" if "recipe" not in meta else "dataset_root"
        raise StoreError(f"{path}: its neardup_meta table is incomplete or not understood (no"
                         f" {missing}); build a new store (README: Checking and repairing a"
                         " store)")
    check_recipe_and_folder(path, stored_recipe(path, meta["recipe"]), meta["dataset_root"],
                            recipe, dataset_root, moved_from)
    _upgrade(db, path, meta)
    return False


def check_recipe_and_folder(path: str, stored: Recipe, recorded: str, recipe: Recipe,
                            dataset_root: str, moved_from: str | None = None) -> None:
    """Refuse to index `dataset_root` with `recipe` into a store built with `stored` for the
    folder `recorded`, unless it keeps its recipe and indexes that folder (or is re-pointed from
    it: `moved_from`)."""
    if stored != recipe and not keeps_its_recipe(stored, recipe):
        raise StoreError(
            f"{path}: built with {stored.describe()}, this run asks for {recipe.describe()};"
            " use the same options or another --shelve"
        )
    if recorded != dataset_root and recorded != moved_from:  # moved_from: the writer re-points it
        if moved_from is not None:
            # Told to add --moved-from, a user who had given one but mistyped it was none the
            # wiser (a review).
            raise StoreError(f"{path}: indexes {recorded}, not --moved-from {moved_from}: give"
                             f" --moved-from {recorded}, or name the store that indexed"
                             f" {moved_from}")
        if recorded and not os.path.isdir(recorded):
            # Moved with its store: "use another --shelve" alone left a full rebuild as the only
            # way out (a review); the stored paths are relative to the folder.
            raise StoreError(f"{path}: indexes {recorded}, which no longer exists (moved?): if"
                             f" {dataset_root} is that folder moved, add --moved-from {recorded}"
                             f" to re-point the store, else index {dataset_root} into another"
                             " --shelve")
        raise StoreError(f"{path}: indexes {recorded}, not {dataset_root}; use another --shelve")
    if moved_from is not None and recorded != moved_from:  # it indexes dataset_root already
        raise StoreError(f"{path}: indexes {recorded} already, not --moved-from {moved_from}:"
                         f" {_REDUNDANT_MOVED_FROM}")


def _create_schema(db: Db) -> None:
    for statement in _TABLES:
        db.run(statement)
    for statement in _TRIGGERS.values():
        db.run(statement)


def _upgrade(db: Db, path: str, meta: dict[str, str]) -> None:
    """Bring an older (or tampered) store to the current schema, in one transaction."""
    names = {row[0] for row in db.all("SELECT name FROM sqlite_master")}
    columns = {row[1] for row in db.all("PRAGMA table_info(neardup_files)")}
    complete = (meta.get("format_version") == str(FORMAT_VERSION) and set(_TRIGGERS) <= names
                and {"neardup_changes", "neardup_counts"} <= names
                and {"inode", "ctime_ns"} <= columns)
    if complete:
        return
    with write_transaction(db, path):
        for column in ("inode", "ctime_ns"):
            if column not in columns:
                db.run(f"ALTER TABLE neardup_files ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
        _create_schema(db)
        # Counted now, whatever the triggers missed before they existed (or while dropped).
        db.run("INSERT INTO neardup_counts (name, n) VALUES ('hashes', (SELECT COUNT(*) FROM Dict))"
               " ON CONFLICT (name) DO UPDATE SET n = excluded.n")
        db.run("INSERT INTO neardup_counts (name, n) VALUES"
               " ('images', (SELECT COUNT(*) FROM neardup_files))"
               " ON CONFLICT (name) DO UPDATE SET n = excluded.n")
        # Changes made while nothing logged them are unknown: no delta may span them. (Caches
        # built before are refused anyway: creating the triggers moved the schema cookie.)
        since = str(_logged_generation(db, path))
        upgrades = {"format_version": str(FORMAT_VERSION), "changes_since": since}
        for name, value in upgrades.items():
            db.run("INSERT INTO neardup_meta (name, value) VALUES (?, ?)"
                   " ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))
        if meta.get("format_version") == "1":
            db.run("DELETE FROM neardup_meta WHERE name IN ('generation', 'entries_checked')")




def copy_store_into(source: str, destination: str, report: Report | None = None) -> None:
    """Give the store at `destination` the contents of the store at `source` (index.py
    --rebuild), in one commit made through SQLite, while programs read it.

    Moving a rebuilt file over a store that another program has open is not safe with SQLite:
    the `-shm` beside it still describes the old file while anyone keeps that open, and was
    trusted for the new one (a review: after `mv new.shelve db.shelve` with a checker running,
    index.py and a new reader called the moved-in store damaged, its pages counted as the old
    file's). SQLite's backup copies the pages as a writer does: a reader answers from the old
    contents until the commit and from the new ones after it; the one writer at a time is kept
    by the store's lock. `source` is read only."""
    check_store_path(destination, writing=True)
    probe_for_writing(destination)  # refuses a foreign or damaged file untouched
    with Store.open_for_reading(source, for_queries=False) as rebuilt:
        lock = WriterLock.take(destination)
        try:
            connection, shared_memory = connect_writer(destination)
            db = Db(destination, connection, shared_memory)
            try:
                rebuilt._db.raw.backup(connection)
                copied = Store(destination, db, lock, report=report)
            except sqlite3.Error as error:
                db.close()
                raise sqlite_failure(destination, error, "write") from error
            except BaseException:
                db.close()
                raise
        except BaseException:
            lock.release()
            raise
    with copied:
        if (left := copied.checkpoint()) is not None:
            from .indexing import checkpoint_line  # the line index.py says for the same

            (report or (lambda line: None))(checkpoint_line(destination, *left))


def remove_store_files(path: str, *, cache_moved_to: str | None = None) -> None:
    """Delete a store's file with its -wal, -shm and cache folder (not its lock file): one this
    writer created and left empty, or the store index.py --rebuild built and copied. The cache's
    entries are named by the store's id, so `cache_moved_to` (the cache folder of the store that
    was given these contents) can take them as they are."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.remove(path + suffix)
        except OSError:
            pass
    cache_folder = path + ".cache"
    if not os.path.isdir(cache_folder):
        return
    if cache_moved_to is not None:
        try:
            os.makedirs(cache_moved_to, exist_ok=True)
        except OSError:
            cache_moved_to = None  # built again by whoever needs it
    for name in os.listdir(cache_folder):
        try:
            if cache_moved_to is not None:
                os.replace(os.path.join(cache_folder, name), os.path.join(cache_moved_to, name))
            else:
                os.remove(os.path.join(cache_folder, name))
        except OSError:
            pass
    try:
        os.rmdir(cache_folder)
    except OSError:
        pass
