"""Which file a long-lived reader holds open, and whether the one at its path is still it.

A reader that stays open (the checker behind --stdin and --serve, a script holding the Python
API's ImageStore) must notice a rebuild moved over its store (`index.py -s new.shelve && mv
new.shelve db.shelve`), the file deleted, or a backup copied over it: SQLite follows another
connection's commits through the WAL, never a file replaced or rewritten under it, and a review
found such readers answering from the old file for good. The file's identity (device and inode)
says whether it was replaced; its state (size, mtime, ctime) whether it was written.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import StoreError
from .store import Store

# Times a long-lived reader answers a query again when the store at its path changed under it
# (replaced by a store of another recipe, or one that gained or lost local features: the query
# is hashed or decoded again its way) before it gives up on that query.
RECIPE_RETRIES = 4


def file_identity(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def file_state(status: os.stat_result) -> tuple[int, int, int]:
    """What moves when the file's contents are written: its size, mtime and ctime."""
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns


def identity_and_state(path: str) -> tuple[tuple[int, int] | None, tuple[int, int, int] | None]:
    """The file at `path` now: (identity, state), or (None, None) when there is none to stat."""
    try:
        status = os.stat(path)
    except OSError:
        return None, None
    return (status.st_dev, status.st_ino), file_state(status)


def open_with_identity(
    path: str, warn: Callable[[str], None] = lambda line: None, *,
    shared_between_threads: bool = True,
) -> tuple[Store, tuple[int, int]]:
    """The store at `path` opened for reading, with the identity of the file that was opened.

    The path is looked at before and after opening; if it changed in between (a rebuild swapped
    it), the open is tried again, so the identity is the opened file's.
    """
    for _ in range(3):
        try:
            before = file_identity(path)
        except OSError:
            before = None
        store = Store.open_for_reading(path, shared_between_threads=shared_between_threads,
                                       report=warn)
        try:
            after = file_identity(path)
        except OSError:
            after = None
        if before is not None and before == after:
            return store, before
        store.close()
    raise StoreError(f"{path}: keeps changing while being opened")
