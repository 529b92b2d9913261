"""Which of this process's connections share a store's `-shm` file, and whether they still hold
SQLite's lock on it.

SQLite keeps, per process, one shared-memory node for each database file (each inode) it has
open, and each node opens the path's `-shm` file and holds a POSIX read lock on it: the sign to
other processes that the `-shm` is in use and must not be reset. POSIX locks belong to the process
and the file, not to a descriptor, so closing any descriptor of the `-shm` drops every lock the
process holds on it. When a store file is replaced under a reader that follows it (`index.py -s
new.shelve && mv new.shelve db.shelve`), the process can briefly hold connections to the old file
and the new one, both using the one `-shm` path; closing the old one then drops the new one's
lock. Another program opening the store found the `-shm` unused, cut it short and set it up again
under the reader's map, and the reader's next read died of SIGBUS (a review: `--serve` killed three
times in a minute of swaps and index.py runs).

SQLite gives no way to take the lock again on a node that lost it; only a node made anew takes
it, and a node is made anew only once every connection of the process to that file is closed.
So every connection says here which file it opened; closing the last one of a file marks every
other file's node on the same `-shm` path as lost, and whoever holds such a connection closes it
before anything else reads through it, then opens the store again (Store.shared_memory_lost).
"""

from __future__ import annotations

import itertools
import os
import threading

# (the -shm path, the database file's (st_dev, st_ino) or a number of its own) -> open connections
_users: dict[tuple[str, object], int] = {}
_lost: set[tuple[str, object]] = set()
_lock = threading.Lock()
_unknown = itertools.count()


class SharedMemoryUse:
    """One connection's use of a store's `-shm`: made before the connection's first read, left
    when it closes (once)."""

    def __init__(self, path: str, file_id: object) -> None:
        self._key = (os.path.realpath(path) + "-shm", file_id)
        self._open = True
        with _lock:
            _users[self._key] = _users.get(self._key, 0) + 1

    @property
    def lost(self) -> bool:
        """Whether this connection reads a `-shm` on which this process no longer holds SQLite's
        lock (another file's last connection on the same path closed since it was opened)."""
        with _lock:
            return self._key in _lost

    def leave(self) -> None:
        with _lock:
            if not self._open:
                return
            self._open = False
            left = _users[self._key] - 1
            if left:
                _users[self._key] = left
                return
            # SQLite closes this file's node, and with it a descriptor of the -shm.
            del _users[self._key]
            _lost.discard(self._key)
            shm_path = self._key[0]
            _lost.update(key for key in _users if key[0] == shm_path)


def file_id_between(before: os.stat_result | None, after: os.stat_result | None) -> object:
    """The identity of the file a connection opened between two stats of its path; when the path
    changed in between (or could not be read), a number no other connection shares, so that any
    other file's close marks it lost and its own close marks every other lost: a needless
    reopening at worst, never a missed one."""
    if before is not None and after is not None and (
            (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)):
        return before.st_dev, before.st_ino
    return ("unknown", next(_unknown))


def stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None
