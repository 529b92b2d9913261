"""A reader that follows its store file keeps SQLite's lock on the -shm (core.sharedmemory).

A hostile review: after `index.py -s new.shelve && mv new.shelve db.shelve`, a checker that had
reopened the store held no lock on db.shelve-shm any more (closing the old file's connection
dropped the process's locks on that path); the next program to open the store reset the -shm
under the checker's map, and --serve died of SIGBUS. These tests read the locks the kernel
holds (/proc/locks), not neardup's own idea of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import neardup
from neardup.core.store import Store
from neardup.service.checker import Checker

from .imagegen import make_tree

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/locks"),
                                reason="reads the kernel's table of POSIX locks (/proc/locks)")

# SQLite's "DMS" byte of the -shm: a read lock on it says the -shm is in use.
DMS_BYTE = "128"


def shm_read_locks(store: Path) -> int:
    """This process's POSIX read locks on the DMS byte of `store`-shm."""
    inode = os.stat(f"{store}-shm").st_ino
    count = 0
    with open("/proc/locks") as table:
        for line in table:
            fields = line.split()
            if (fields[1] == "POSIX" and fields[3] == "READ" and fields[4] == str(os.getpid())
                    and fields[5].endswith(f":{inode}") and fields[6] == DMS_BYTE):
                count += 1
    return count


@pytest.fixture()
def two_stores(in_tmp: Path) -> Path:
    """db.shelve (six photos) and rebuilt.shelve (four), both indexed from photos/."""
    make_tree("photos", 6)
    neardup.index_folder(in_tmp / "photos", in_tmp / "db.shelve", jobs=1)
    (in_tmp / "photos" / "cat0" / "image_0000.jpg").unlink()
    (in_tmp / "photos" / "cat1" / "image_0001.jpg").unlink()
    neardup.index_folder(in_tmp / "photos", in_tmp / "rebuilt.shelve", jobs=1)
    return in_tmp


def test_closing_another_files_connection_drops_the_lock_and_says_so(two_stores: Path) -> None:
    """What SQLite does, pinned: the model sharedmemory keeps must match the kernel's table."""
    old = Store.open_for_reading("db.shelve")
    old.image_count()
    assert shm_read_locks(two_stores / "db.shelve") == 1
    os.replace("rebuilt.shelve", "db.shelve")
    new = Store.open_for_reading("db.shelve")
    new.image_count()
    assert not new.shared_memory_lost
    old.close()
    assert shm_read_locks(two_stores / "db.shelve") == 0  # the kernel dropped it with old's -shm
    assert new.shared_memory_lost
    new.close()
    again = Store.open_for_reading("db.shelve")
    assert again.image_count() == 4
    assert shm_read_locks(two_stores / "db.shelve") == 1
    assert not again.shared_memory_lost
    again.close()


def test_two_connections_to_one_file_keep_the_lock(two_stores: Path) -> None:
    first = Store.open_for_reading("db.shelve")
    second = Store.open_for_reading("db.shelve")
    first.image_count(), second.image_count()
    first.close()
    assert shm_read_locks(two_stores / "db.shelve") == 1
    assert not second.shared_memory_lost
    second.close()


def test_an_api_store_following_a_rebuild_keeps_the_lock(two_stores: Path) -> None:
    with neardup.open_store("db.shelve") as store:
        assert len(store) == 6
        os.replace("rebuilt.shelve", "db.shelve")
        assert len(store) == 4
        assert shm_read_locks(two_stores / "db.shelve") == 1


def test_a_checker_following_a_rebuild_keeps_the_lock(two_stores: Path) -> None:
    query = str(two_stores / "photos" / "cat0" / "image_0002.jpg")
    with Checker("db.shelve") as checker:
        assert checker.check_file(query)["matches"]
        os.replace("rebuilt.shelve", "db.shelve")
        assert checker.check_file(query)["matches"]
        assert shm_read_locks(two_stores / "db.shelve") == 1


def test_a_checker_takes_the_lock_again_once_a_slower_connection_lets_go(
        two_stores: Path) -> None:
    """A connection to the old file outlives the swap (as the checker's background index
    builders can): its close drops the lock of the checker's new connection, which is then
    opened again before its next read."""
    query = str(two_stores / "photos" / "cat0" / "image_0002.jpg")
    with Checker("db.shelve") as checker:
        builder = Store.open_for_reading("db.shelve", quick_check=False)
        builder.image_count()
        os.replace("rebuilt.shelve", "db.shelve")
        assert checker.check_file(query)["matches"]
        builder.close()
        assert shm_read_locks(two_stores / "db.shelve") == 0
        assert checker.check_file(query)["matches"]
        assert shm_read_locks(two_stores / "db.shelve") == 1
