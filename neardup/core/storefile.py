"""The SQLite file under a store: opening it without writing to what is not ours, every SQLite
error said in one line, one writer at a time.

Opening for writing reads before it writes: the path must be a regular file (or nothing, in a folder
that exists), hold an SQLite database with a neardup store in it (or nothing at all), and be
undamaged; only then is the journal mode set. The file itself is only ever opened by SQLite (see
file_size for why). Opening for reading uses SQLite's read-only mode,
which writes nothing to the file and still reads the commits in its WAL; where that is impossible
(read-only media without the -shm file) the store is opened immutable only if it has no WAL to
lose, and refused otherwise. A lock is never a reason to read differently: the busy timeout is set
before the first read, and a lock held past it is an error.
"""

from __future__ import annotations

import fcntl
import io
import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import StoreError, command, looks_unset
from .sharedmemory import SharedMemoryUse, file_id_between, stat_or_none

# How long a reader or writer waits for a lock held by another connection before saying so.
BUSY_SECONDS = 10.0
def damaged_hint(path: str) -> str:
    return (f"check it with `sqlite3 {path} 'PRAGMA integrity_check'` and rebuild it with"
            f" {command('index.py')} (README: Checking and repairing a store)")


class SqliteFailure(StoreError):
    """An SQLite error, said in one line with the store's path."""


class StoreDamaged(SqliteFailure):
    """The file is not what SQLite wrote: `PRAGMA integrity_check`, then rebuild."""


def sqlite_failure(path: str, error: sqlite3.Error, doing: str = "read") -> SqliteFailure:
    name = getattr(error, "sqlite_errorname", "") or ""
    text = str(error)
    if name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB" or "malformed" in text:
        return StoreDamaged(f"{path}: the store is damaged ({text}); "
                            + damaged_hint(path))
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return SqliteFailure(f"{path}: the store stayed locked by another program for"
                             f" {BUSY_SECONDS:.0f} s ({text}); try again")
    return SqliteFailure(f"{path}: cannot {doing} the store ({text})")


class Db:
    """A store's connection: every statement goes through here, so every SQLite error becomes one
    line (StoreError) and a damaged file is named as such wherever it is first noticed."""

    def __init__(self, path: str, connection: sqlite3.Connection,
                 shared_memory: SharedMemoryUse | None = None) -> None:
        self.path = path
        self.raw = connection
        self._shared_memory = shared_memory

    @property
    def shared_memory_lost(self) -> bool:
        """See sharedmemory: close this connection before the next read, then open it again."""
        return self._shared_memory is not None and self._shared_memory.lost

    def run(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.raw.execute(sql, tuple(params))
        except sqlite3.Error as error:
            raise sqlite_failure(self.path, error) from error

    def all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        try:
            return self.raw.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as error:
            raise sqlite_failure(self.path, error) from error

    def one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        try:
            return self.raw.execute(sql, tuple(params)).fetchone()
        except sqlite3.Error as error:
            raise sqlite_failure(self.path, error) from error

    def many(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        try:
            self.raw.executemany(sql, rows)
        except sqlite3.Error as error:
            raise sqlite_failure(self.path, error) from error

    def close(self) -> None:
        try:
            self.raw.close()
        except sqlite3.Error:
            pass
        if self._shared_memory is not None:
            self._shared_memory.leave()


def check_store_path(path: str, *, writing: bool) -> bool:
    """True if something is at `path`. Refuses, before anything opens it, what can never be a store:
    a folder, a device or FIFO (opening /dev/null would leave /dev/null-journal; a FIFO would
    block), a path in a folder that does not exist, an empty path (SQLite's temporary database)."""
    if looks_unset(path):
        raise StoreError("the store's path is empty (an unset shell variable?)")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if not writing:
            raise StoreError(f"{path}: no such store (build one with {command('index.py')})") from None
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise StoreError(f"{path}: the folder {folder} does not exist") from None
        return False
    except NotADirectoryError:
        raise StoreError(f"{path}: a part of this path is a file, not a folder") from None
    except OSError as error:
        raise StoreError(f"{path}: cannot use it as a store ({error.strerror})") from error
    if stat.S_ISDIR(info.st_mode):
        raise StoreError(f"{path}: is a folder, not a store")
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"{path}: is not a regular file (a device, FIFO or socket), so it cannot"
                         " be a store; choose another --shelve")
    return True


def file_size(path: str) -> int:
    """The store file's size, from stat.

    Never read a store file with Python's own open(): POSIX advisory locks belong to the process,
    and closing any descriptor of a file drops every lock the process holds on it, SQLite's
    included. A checker opening a second connection that way (its /health, a rebuild) would let
    a writer closing elsewhere believe it was the last connection and delete the WAL under it.
    SQLite shares one lock state between its own connections in a process, so every look at the
    file goes through SQLite.
    """
    try:
        return os.stat(path).st_size
    except OSError as error:
        raise StoreError(f"{path}: cannot read ({error.strerror})") from error


def wal_has_data(path: str) -> bool:
    try:
        return os.path.getsize(path + "-wal") > 0
    except OSError:
        return False


def probe_for_writing(path: str) -> bool:
    """Whether an existing file is a new store to fill (empty) rather than a neardup store;
    StoreError if it is anything else. Reads only: a WAL is read through SQLite's read-only mode,
    and without one the main file is opened immutable, which creates not even a -shm file."""
    if file_size(path) == 0 and not wal_has_data(path):
        return True  # a 0-byte file holds nothing to lose
    if not wal_has_data(path) and not _has_sqlite_header(path):
        # SQLite reads a file shorter than its header (a 1-byte file) as an empty database,
        # which would then be filled: refused like any other file that is not one.
        raise StoreError(f"{path}: exists and is not a neardup store (not an SQLite database);"
                         " choose another --shelve")
    uri = Path(os.path.abspath(path)).as_uri()
    shared_memory = None  # an immutable connection uses no -shm
    try:
        if wal_has_data(path):
            connection, shared_memory = _connect(path, uri + "?mode=ro", timeout=BUSY_SECONDS,
                                                 isolation_level=None)
        else:
            connection = sqlite3.connect(uri + "?immutable=1", uri=True, isolation_level=None)
    except sqlite3.Error as error:
        raise sqlite_failure(path, error, "open") from error
    try:
        tables = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as error:
        if getattr(error, "sqlite_errorname", "") == "SQLITE_NOTADB":
            raise StoreError(f"{path}: exists and is not a neardup store (not an SQLite"
                             " database); choose another --shelve") from error
        raise sqlite_failure(path, error, "open") from error
    finally:
        connection.close()
        if shared_memory is not None:
            shared_memory.leave()
    if not tables:
        return True
    if "neardup_meta" not in tables:
        raise StoreError(f"{path}: exists and is not a neardup store; choose another --shelve")
    return False


def _has_sqlite_header(path: str) -> bool:
    try:
        with open(path, "rb") as stream:
            return stream.read(16) == b"SQLite format 3\x00"
    except OSError:
        return True  # SQLite's own open then says what is wrong


def _connect(path: str, uri: str, **options: Any) -> tuple[sqlite3.Connection, SharedMemoryUse]:
    """sqlite3.connect, with the file it opened said to sharedmemory before anything is read
    (SQLite opens the file at once, and its -shm at the first read)."""
    before = stat_or_none(path)
    connection = sqlite3.connect(uri, uri=True, **options)
    return connection, SharedMemoryUse(path, file_id_between(before, stat_or_none(path)))


def _close(connection: sqlite3.Connection, shared_memory: SharedMemoryUse) -> None:
    connection.close()
    shared_memory.leave()


def connect_writer(path: str) -> tuple[sqlite3.Connection, SharedMemoryUse]:
    """The writer's connection (reading goes through connect_reader)."""
    try:
        # As a file: URI of the absolute path, as the readers open it. A bare name is SQLite's
        # own: ":memory:" (and "") is a database in memory, gone with the process, and
        # index.py said "2 images in the store" of it (a review).
        connection, shared_memory = _connect(path, Path(os.path.abspath(path)).as_uri(),
                                             timeout=BUSY_SECONDS, isolation_level=None)
    except sqlite3.Error as error:
        raise sqlite_failure(path, error, "open") from error
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed batch survives a power cut too, at one fsync per batch.
        connection.execute("PRAGMA synchronous = FULL")
    except sqlite3.Error as error:
        _close(connection, shared_memory)
        raise sqlite_failure(path, error, "open") from error
    return connection, shared_memory


def connect_reader(path: str, same_thread: bool,
                   ) -> tuple[sqlite3.Connection, SharedMemoryUse | None]:
    """A read-only connection that sees every committed transaction, WAL included.

    SQLite's read-only mode writes nothing to the store (a read-write connection would checkpoint
    the WAL into it on close). It needs the -shm file beside the store, and creates it when the
    folder allows. Where it cannot: on read-only media without a WAL, the main file holds every
    commit and nothing can change it, so it is opened immutable; with a WAL there, the store is
    refused rather than answered from the main file alone. A lock is never a reason to fall back:
    the busy timeout is set before the first read, and a lock held longer is an error.
    """
    uri = Path(os.path.abspath(path)).as_uri()
    opened = None
    try:
        opened = _connect(path, uri + "?mode=ro", timeout=BUSY_SECONDS, isolation_level=None,
                          check_same_thread=same_thread)
        opened[0].execute("SELECT name FROM sqlite_master").fetchall()
        return opened
    except sqlite3.Error as error:
        if opened is not None:
            _close(*opened)
        name = getattr(error, "sqlite_errorname", "") or ""
        if name == "SQLITE_NOTADB":
            raise StoreError(f"{path}: not a neardup store (not an SQLite database)") from error
        if not name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY")):
            # A lock (after the busy timeout), damage, an I/O error: said as it is.
            raise sqlite_failure(path, error, "open") from error
        opening_error = error
    folder = os.path.dirname(os.path.abspath(path))
    wal = path + "-wal"
    if wal_has_data(path):
        raise StoreError(
            f"{path}: cannot be read here: its latest commits are in {wal}, and SQLite cannot"
            f" create {path}-shm beside it ({opening_error}); copy the store with its -wal file"
            " to a writable folder, or open it once where it can be written") from opening_error
    if not read_only_file_system(folder):
        raise StoreError(
            f"{path}: cannot open it ({opening_error}); SQLite needs to create {path}-shm in"
            f" {folder}: make that folder writable for this user") from opening_error
    try:
        connection = sqlite3.connect(uri + "?immutable=1", uri=True, isolation_level=None,
                                     check_same_thread=same_thread)
        connection.execute("SELECT name FROM sqlite_master").fetchall()
        return connection, None  # immutable: SQLite uses no -shm for it
    except sqlite3.Error as error:
        raise sqlite_failure(path, error, "open") from error


def read_only_file_system(folder: str) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_pages(db: Db, path: str, *, whole: bool) -> None:
    rows = db.all("PRAGMA integrity_check" if whole else "PRAGMA quick_check")
    if rows != [("ok",)]:
        # SQLite may put many problems in one row, a line each, under a heading ("*** in
        # database main ***"): the first problem is named, the others counted (a review: one
        # row of 30 problems made a message of 1,900 characters).
        lines = (line.strip() for row in rows for line in str(row[0]).splitlines())
        problems = [line for line in lines if line and not line.startswith("***")]
        first = problems[0] if problems else "no answer"
        more = f" and {len(problems) - 1} more problems" if len(problems) > 1 else ""
        raise StoreDamaged(f"{path}: the store is damaged ({first}{more}); "
                           + damaged_hint(path))


@contextmanager
def write_transaction(db: Db, path: str) -> Iterator[None]:
    try:
        db.raw.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as error:
        raise sqlite_failure(path, error, "start a write to") from error
    try:
        yield
        db.raw.execute("COMMIT")
    except sqlite3.Error as error:
        try:
            db.raw.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise sqlite_failure(path, error, "write") from error
    except BaseException:
        try:
            db.raw.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise


class WriterLock:
    """One writer at a time, decided by an advisory lock beside the store, with a clear message."""

    def __init__(self, path: str, stream: io.BufferedWriter) -> None:
        self.path = path
        self._stream = stream

    @classmethod
    def take(cls, store_path: str) -> WriterLock:
        """The lock beside the store's file itself, whatever name the store is given (`store_path`
        names it in messages): taken beside a symlink to it, a second writer through another name
        got a lock of its own, and two writers at once broke the store's creation, the first then
        deleting what the second had written (a review)."""
        lock_path = os.path.realpath(store_path) + ".lock"
        for _attempt in range(5):
            try:
                stream = open(lock_path, "ab")
            except OSError as error:
                raise StoreError(f"{store_path}: cannot create lock file {lock_path}"
                                 f" ({error.strerror})") from error
            try:
                fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                stream.close()
                raise StoreError(f"{store_path}: another {command('index.py')} is writing to this store; try"
                                 " again when it has finished") from None
            # The file may have been removed (a writer discarding the store it created) between
            # our open and our lock: then the lock is on a file nobody else will open.
            try:
                same = os.stat(lock_path).st_ino == os.fstat(stream.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(lock_path, stream)
            stream.close()
        raise StoreError(f"{store_path}: its lock file keeps being replaced; try again")

    def release(self, remove: bool = False) -> None:
        if self._stream.closed:
            return
        if remove:
            try:
                os.remove(self.path)
            except OSError:
                pass
        self._stream.close()
