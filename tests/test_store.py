from __future__ import annotations

import os
import pickle
import random
import shelve
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from neardup.core.hashing import Hash, Recipe
from neardup.core.hashwords import hash_to_words, hex_keys_to_words
from neardup.core.store import IndexedFile, Store
from neardup.errors import StoreError

VERSIONS = {"test": "1"}


def open_store(tmp_path: Path, recipe: Recipe = Recipe(), root: str = "/data") -> Store:
    return Store.open_for_writing(str(tmp_path / "db.shelve"), recipe, root, VERSIONS)


def item(relpath: str, hash_hex: str, size: int = 10, mtime: int = 1) -> IndexedFile:
    return IndexedFile(relpath, size, mtime, hash_hex)


H1, H2 = "00000000000000ff", "ff00000000000000"


def consistent(store: Store) -> dict[str, list[str]]:
    """The buckets, after checking that they list exactly the files table, each path once."""
    buckets = {key: store.bucket(key) for key in store.shelf.keys()}
    listed = [path for paths in buckets.values() for path in paths]
    assert len(listed) == len(set(listed)), "a path is listed twice"
    assert set(listed) == set(store.file_states())
    assert all(paths == sorted(paths) and paths for paths in buckets.values())
    return buckets


class TestBuckets:
    def test_paths_sharing_a_hash_share_a_bucket(self, tmp_path: Path) -> None:
        with open_store(tmp_path) as store:
            store.apply([item("b.jpg", H1), item("a.jpg", H1), item("c.jpg", H2)], [])
            assert consistent(store) == {H1: ["a.jpg", "b.jpg"], H2: ["c.jpg"]}

    def test_applying_twice_lists_nothing_twice(self, tmp_path: Path) -> None:
        with open_store(tmp_path) as store:
            batch = [item("a.jpg", H1), item("b.jpg", H1)]
            store.apply(batch, [])
            store.apply(batch, [])
            assert consistent(store) == {H1: ["a.jpg", "b.jpg"]}

    def test_a_changed_file_leaves_its_old_bucket(self, tmp_path: Path) -> None:
        with open_store(tmp_path) as store:
            store.apply([item("a.jpg", H1), item("b.jpg", H1)], [])
            store.apply([item("a.jpg", H2, mtime=2)], [])
            assert consistent(store) == {H1: ["b.jpg"], H2: ["a.jpg"]}
            assert store.file_states()["a.jpg"].mtime_ns == 2

    def test_removing_the_last_path_removes_the_bucket(self, tmp_path: Path) -> None:
        with open_store(tmp_path) as store:
            store.apply([item("a.jpg", H1), item("b.jpg", H2)], [])
            store.apply([], ["a.jpg", "never-stored.jpg"])
            assert consistent(store) == {H2: ["b.jpg"]}
            assert store.bucket(H1) == []

    def test_compacting_keeps_every_bucket(self, tmp_path: Path) -> None:
        rng = random.Random(3)
        items = [item(f"{n}.jpg", Hash(rng.getrandbits(64), 64).hex()) for n in range(3000)]
        with open_store(tmp_path) as store:
            for start in range(0, len(items), 100):
                store.apply(items[start:start + 100], [])
            store.apply([], [f"{n}.jpg" for n in range(0, 3000, 2)])
            before = consistent(store)
        size = os.path.getsize(tmp_path / "db.shelve")  # closing wrote everything into the file
        with open_store(tmp_path) as store:
            store.compact()
            assert consistent(store) == before
        assert os.path.getsize(tmp_path / "db.shelve") < size

    def test_survives_reopening(self, tmp_path: Path) -> None:
        with open_store(tmp_path) as store:
            store.apply([item("a.jpg", H1)], [])
        with Store.open_for_reading(str(tmp_path / "db.shelve")) as store:
            assert store.bucket(H1) == ["a.jpg"]
            assert store.recipe == Recipe()
            assert store.dataset_root == "/data"

    def test_non_utf8_and_odd_names_round_trip(self, tmp_path: Path) -> None:
        odd = [os.fsdecode(b"caf\xe9.jpg"), "with space.jpg", "new\nline.jpg"]
        with open_store(tmp_path) as store:
            store.apply([item(name, H1) for name in odd], [])
            assert consistent(store) == {H1: sorted(odd)}

    def test_a_failed_batch_changes_nothing(self, tmp_path: Path) -> None:
        with open_store(tmp_path) as store:
            store.apply([item("a.jpg", H1)], [])

            def exploding():
                yield item("b.jpg", H2)
                raise RuntimeError("disk on fire")

            with pytest.raises(RuntimeError):
                store.apply(exploding(), [])
            assert consistent(store) == {H1: ["a.jpg"]}


class TestRefusals:
    def test_another_recipe_is_refused(self, tmp_path: Path) -> None:
        open_store(tmp_path).close()
        with pytest.raises(StoreError, match="built with dhash-8.*asks for dhash-16"):
            open_store(tmp_path, Recipe("dhash", 16))
        with pytest.raises(StoreError, match="exact"):
            open_store(tmp_path, Recipe(exact=True))

    def test_another_dataset_is_refused(self, tmp_path: Path) -> None:
        open_store(tmp_path, root=str(tmp_path)).close()
        with pytest.raises(StoreError, match=f"indexes {tmp_path}, not /elsewhere;"):
            open_store(tmp_path, root="/elsewhere")
        # The folder it indexes gone (moved?): said, with the way to re-point the store.
        (tmp_path / "gone").mkdir()
        Store.open_for_writing(str(tmp_path / "g.shelve"), Recipe(), str(tmp_path / "gone"),
                               VERSIONS).close()
        (tmp_path / "gone").rmdir()
        with pytest.raises(StoreError, match="gone, which no longer exists .* --moved-from"):
            Store.open_for_writing(str(tmp_path / "g.shelve"), Recipe(), "/elsewhere", VERSIONS)

    def test_a_second_writer_is_refused_with_a_clear_message(self, tmp_path: Path) -> None:
        with open_store(tmp_path):
            with pytest.raises(StoreError, match="another index.py is writing"):
                open_store(tmp_path)
        open_store(tmp_path).close()  # and the lock is released afterwards

    @pytest.mark.parametrize("existing", [True, False])
    def test_a_second_writer_through_another_name_is_refused(
            self, tmp_path: Path, existing: bool) -> None:
        # A review: index.py through a symlink to the store took a lock of its own beside the
        # symlink; two writers at once broke the store's creation ("UNIQUE constraint failed")
        # and the first, cleaning up, deleted the store the second had just written.
        if existing:
            open_store(tmp_path).close()
        (tmp_path / "alias.shelve").symlink_to("db.shelve")
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "up.shelve").symlink_to("../alias.shelve")
        with open_store(tmp_path):
            for other in ("alias.shelve", "sub/up.shelve", "sub/../db.shelve"):
                with pytest.raises(StoreError, match="another index.py is writing"):
                    Store.open_for_writing(str(tmp_path / other), Recipe(), "/data", VERSIONS)
        with Store.open_for_writing(str(tmp_path / "alias.shelve"), Recipe(), "/data", VERSIONS):
            with pytest.raises(StoreError, match="another index.py is writing"):
                open_store(tmp_path)
        assert (tmp_path / "alias.shelve").is_symlink()
        Store.open_for_reading(str(tmp_path / "db.shelve")).close()

    def test_a_file_that_is_not_a_store_is_left_untouched(self, tmp_path: Path) -> None:
        path = tmp_path / "db.shelve"
        content = b"precious data, not SQLite" * 100
        path.write_bytes(content)
        with pytest.raises(StoreError, match="not a neardup store"):
            open_store(tmp_path)
        with pytest.raises(StoreError, match="not a neardup store"):
            Store.open_for_reading(str(path))
        assert path.read_bytes() == content

    @pytest.mark.parametrize("content", [b"\n", b"7", b"SQLite format 3"])
    def test_a_file_shorter_than_an_sqlite_header_is_left_untouched(
            self, tmp_path: Path, content: bytes) -> None:
        """A review: SQLite reads a 1-byte file as an empty database, and it was filled."""
        path = tmp_path / "db.shelve"
        path.write_bytes(content)
        with pytest.raises(StoreError, match="not a neardup store"):
            open_store(tmp_path)
        assert path.read_bytes() == content

    def test_another_sqlite_database_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "db.shelve"
        with closing(sqlite3.connect(path)) as connection, connection:
            connection.execute("CREATE TABLE people (name TEXT)")
        with pytest.raises(StoreError, match="not a neardup store"):
            open_store(tmp_path)

    def test_a_copy_without_its_wal_names_the_wal(self, tmp_path: Path) -> None:
        """A review: a copy of db.shelve taken while index.py first wrote it (every commit still
        in db.shelve-wal) read "not a neardup store (no neardup_meta table)", and no more."""
        writer = Store.open_for_writing(str(tmp_path / "db.shelve"), Recipe(), str(tmp_path), {})
        try:
            writer.apply([IndexedFile("a.jpg", 1, 1, "00ff00ff00ff00ff")], [])
            copy = tmp_path / "copy.shelve"
            copy.write_bytes((tmp_path / "db.shelve").read_bytes())
        finally:
            writer.close()
        with pytest.raises(StoreError) as refused:
            Store.open_for_reading(str(copy))
        assert str(refused.value) == (
            f"{copy}: not a neardup store (an SQLite database with no tables; a copy of a store"
            f" index.py was writing holds its commits in {copy}-wal: copy both files, or copy it"
            " once it is done)")

    def test_missing_store_for_reading(self, tmp_path: Path) -> None:
        with pytest.raises(StoreError, match="no such store"):
            Store.open_for_reading(str(tmp_path / "nothing.shelve"))


class TestStandardLibraryLayout:
    def test_dict_table_is_laid_out_like_dbm_sqlite3(self, tmp_path: Path) -> None:
        with open_store(tmp_path) as store:
            store.apply([item("a.jpg", H1)], [])
        with closing(sqlite3.connect(tmp_path / "db.shelve")) as connection, connection:
            columns = connection.execute("PRAGMA table_info(Dict)").fetchall()
            assert [(c[1], c[2], c[3]) for c in columns] == [("key", "BLOB", 1), ("value", "BLOB", 1)]
            key, value = connection.execute("SELECT key, value FROM Dict").fetchone()
        assert isinstance(key, bytes) and key == H1.encode()
        assert pickle.loads(value) == ["a.jpg"]

    @pytest.mark.skipif(sys.version_info < (3, 13), reason="dbm.sqlite3 arrived in Python 3.13")
    def test_shelve_open_reads_it_on_313(self, tmp_path: Path) -> None:
        with open_store(tmp_path) as store:
            store.apply([item("a.jpg", H1), item("b.jpg", H1)], [])
        with shelve.open(str(tmp_path / "db.shelve"), "r") as shelf:
            assert shelf[H1] == ["a.jpg", "b.jpg"]


class TestHashMatrix:
    @pytest.mark.parametrize("bits", [64, 36, 256])
    def test_vector_decoding_agrees_with_int(self, bits: int) -> None:
        rng = random.Random(bits)
        values = [Hash(rng.getrandbits(bits), bits) for _ in range(200)] + [Hash(0, bits)]
        matrix = hex_keys_to_words([value.hex().encode() for value in values], bits)
        for value, row in zip(values, matrix, strict=True):
            assert np.array_equal(row, hash_to_words(value))
            assert int("".join(f"{int(word):016x}" for word in row), 16) == value.value

    def test_rejects_keys_that_are_not_hex(self) -> None:
        with pytest.raises(ValueError):
            hex_keys_to_words([b"zz00000000000000"], 64)
