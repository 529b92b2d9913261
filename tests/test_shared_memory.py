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


def test_closing_another_files_connection_keeps_the_lock(two_stores: Path) -> None:
    """What SQLite does (closing the old file's last connection drops the process's lock), and
    the lock taken again at once for the new file's connection."""
    old = Store.open_for_reading("db.shelve")
    old.image_count()
    assert shm_read_locks(two_stores / "db.shelve") == 1
    os.replace("rebuilt.shelve", "db.shelve")
    new = Store.open_for_reading("db.shelve")
    new.image_count()
    old.close()
    assert shm_read_locks(two_stores / "db.shelve") == 1
    assert not new.shared_memory_lost
    assert new.image_count() == 4
    new.close()
    again = Store.open_for_reading("db.shelve")
    assert again.image_count() == 4
    assert shm_read_locks(two_stores / "db.shelve") == 1
    again.close()


def test_two_api_stores_in_one_process_keep_the_lock_without_reopening(two_stores: Path) -> None:
    """A review: two ImageStores of one store, after a swap, marked each other lost and took
    turns reopening at every search (160 reopens in 40 searches), never holding the lock."""
    import neardup.api as api

    query = str(two_stores / "photos" / "cat0" / "image_0002.jpg")
    with neardup.open_store("db.shelve") as first, neardup.open_store("db.shelve") as second:
        first.search(query), second.search(query)
        os.replace("rebuilt.shelve", "db.shelve")
        first.search(query), second.search(query)
        assert shm_read_locks(two_stores / "db.shelve") == 1
        opened = []
        real = api.open_with_identity
        api.open_with_identity = lambda *args, **kwargs: opened.append(1) or real(*args, **kwargs)
        try:
            for _ in range(20):
                assert first.search(query) and second.search(query)
        finally:
            api.open_with_identity = real
        assert opened == []
        assert shm_read_locks(two_stores / "db.shelve") == 1


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


@pytest.mark.parametrize("lock_taken_again", [True, False],
                         ids=["taken again", "cannot be taken again"])
def test_a_checker_keeps_the_lock_when_a_slower_connection_lets_go(
        two_stores: Path, monkeypatch: pytest.MonkeyPatch, lock_taken_again: bool) -> None:
    """A connection to the old file outlives the swap (as the checker's background index
    builders can): its close drops the process's lock, taken again at once for the checker's
    new connection; where it cannot be, the checker opens the store again before reading."""
    import neardup.core.sharedmemory as sharedmemory

    if not lock_taken_again:
        monkeypatch.setattr(sharedmemory, "_lock_again", lambda shm_path: False)
    query = str(two_stores / "photos" / "cat0" / "image_0002.jpg")
    with Checker("db.shelve") as checker:
        builder = Store.open_for_reading("db.shelve", quick_check=False)
        builder.image_count()
        os.replace("rebuilt.shelve", "db.shelve")
        assert checker.check_file(query)["matches"]
        builder.close()
        assert shm_read_locks(two_stores / "db.shelve") == (1 if lock_taken_again else 0)
        assert checker.check_file(query)["matches"]
        assert shm_read_locks(two_stores / "db.shelve") == 1


def test_a_rebuild_committed_between_the_look_at_the_file_and_the_read_is_answered_its_way(
        two_stores: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: with index.py --rebuild changing the hash (dhash to phash) while checkers
    answered, a query hashed the old way was answered from the new contents, a wrong empty
    answer: the commit lands in the -wal (the file's stat does not move) between the reader's
    look at the store and its snapshot. Here the commit is made exactly there."""
    from neardup.core.store import copy_store_into

    query = str(two_stores / "photos" / "cat0" / "image_0002.jpg")
    expected = ["cat0/image_0002.jpg"]
    neardup.index_folder(two_stores / "photos", "phash.shelve", algorithm="phash", jobs=1)
    neardup.index_folder(two_stores / "photos", "dhash.shelve", jobs=1)
    real = Store.snapshot
    copy_next: list[str] = []  # the store to copy in at the next snapshot, once

    def commit_first(store: Store):  # type: ignore[no-untyped-def]
        if copy_next:
            copy_store_into(copy_next.pop(), "db.shelve")
        return real(store)

    monkeypatch.setattr(Store, "snapshot", commit_first)
    with Checker("db.shelve") as checker, neardup.open_store("db.shelve") as api:
        assert checker.check_file(query)["matches"] and api.search(query)
        copy_next.append("phash.shelve")
        assert [m["relpath"] for m in checker.check_file(query)["matches"]] == expected
        copy_next.append("dhash.shelve")  # the API store last read the dhash contents
        assert [found.relpath for found in api.search(query)] == expected
