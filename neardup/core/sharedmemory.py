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

So every connection says here which file it opened. When the last connection of one file
closes while connections of another file on the same `-shm` path stay open, the lock is taken
again at once, through a descriptor of the `-shm` kept here for as long as any connection uses
that path: POSIX locks belong to the process, so it stands for SQLite's own (the read lock on
the `-shm`'s "DMS" byte, the only one a connection holds between reads). The first fix made such
connections open the store again instead, and two API stores of one store in one process then
took turns reopening at every search, neither ever holding the lock (a review). Where the lock
cannot be taken again, the other files' connections are marked lost
(Store.shared_memory_lost), and their owners close them before reading and open the store anew.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import threading

# (the -shm path, the database file's (st_dev, st_ino) or a number of its own) -> open connections
_users: dict[tuple[str, object], int] = {}
_lost: set[tuple[str, object]] = set()
_guards: dict[str, int] = {}  # -shm path -> a descriptor this module holds the lock through
_lock = threading.Lock()
_unknown = itertools.count()
# SQLite's unix VFS: the byte of the -shm whose read lock says "in use" (UNIX_SHM_DMS).
_IN_USE_BYTE = 128


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
            # SQLite closed this file's node, and with it a descriptor of the -shm: the
            # process's locks on it are gone, those of other files' connections with them.
            del _users[self._key]
            _lost.discard(self._key)
            shm_path = self._key[0]
            others = [key for key in _users if key[0] == shm_path]
            if not others:
                guard = _guards.pop(shm_path, None)
                if guard is not None:
                    os.close(guard)  # nothing of the process maps the -shm any more
                return
            if not _lock_again(shm_path):
                _lost.update(others)


def _lock_again(shm_path: str) -> bool:
    """Take the "in use" read lock on `shm_path` again for this process (called holding _lock)."""
    try:
        guard = _guards.get(shm_path)
        if guard is None:
            guard = _guards[shm_path] = os.open(shm_path, os.O_RDWR | os.O_CLOEXEC)
        # Waits while another program holds it for writing: that is one setting the -shm up,
        # for a moment, having found it unused in the instant it was.
        fcntl.lockf(guard, fcntl.LOCK_SH, 1, _IN_USE_BYTE, os.SEEK_SET)
        return True
    except OSError:
        return False


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
