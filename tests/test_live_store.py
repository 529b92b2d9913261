"""The store written behind neardup's back: Python 3.13's `shelve` and sqlite3 directly.

Every search mode, and a checker that is already running, answers from the new contents at once;
cached arrays are never trusted as found; readers never delete a cache; values a shelve user can
write are skipped with a line, never a reason to refuse the store; recipes we would not reproduce
are refused.
"""

from __future__ import annotations

import json
import os
import pickle
import select
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import neardup.core.cache as cache_module
import neardup.core.indexing as indexing
import neardup.core.search as search_module
from neardup.cli import index as index_cli
from neardup.cli import search as search_cli
from neardup.core.hashing import Recipe, hash_file
from neardup.core.search import HashIndex
from neardup.core.store import IndexedFile, Store, key_text
from neardup.service.checker import Checker

from .conftest import PROJECT_ROOT
from .imagegen import make_tree, save, textured

PY313 = (sys.executable if sys.version_info >= (3, 13)
         else "/root/.pyenv/versions/3.13.0/bin/python3.13")
needs_313 = pytest.mark.skipif(
    not os.path.exists(PY313),
    reason=f"Python 3.13 (for its dbm.sqlite3 shelve) not found at {PY313}")
SEARCH = [sys.executable, str(PROJECT_ROOT / "search.py")]


def shelve_313(path: str, code: str) -> None:
    """Run `code` in real Python 3.13 with `db = shelve.open(path, "w")`, as a user would."""
    script = f"import shelve\nwith shelve.open({path!r}, 'w') as db:\n" + "".join(
        f"    {line}\n" for line in code.splitlines())
    done = subprocess.run([PY313, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def sqlite_write(path: str, sql: str, *params: object) -> None:
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute(sql, params)


def search(*args: str) -> tuple[int, str, str]:
    """search.py in this process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = search_cli.main(["-s", "db.shelve", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture()
def cached(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """60 images indexed, with the thresholds lowered so that the cache and multi-index are used."""
    monkeypatch.setattr(cache_module, "CACHE_MIN_HASHES", 20)
    monkeypatch.setattr(search_module, "MULTI_INDEX_MIN_HASHES", 20)
    make_tree("images", 60, folders=3)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert len(entries()) == 1, "index.py caches the arrays of the state it leaves"
    return in_tmp


def entries() -> list[str]:
    return sorted(name for name in os.listdir("db.shelve.cache") if name.endswith(".json"))


def foreign_picture() -> tuple[str, str]:
    """A new picture in the dataset folder that index.py has not seen: (its path, its hash)."""
    path = save(textured(500), "images/extra/foreign.jpg", quality=92)
    return path, hash_file(path, Recipe()).hex()


def answers(path: str, *extra: str) -> set[str]:
    code, out, _err = search("-q", path, "--json", *extra)
    assert code in (0, 1)
    (record,) = json.loads(out)
    return {match["relpath"] for match in record["matches"]}


class TestWritesBehindNeardupsBack:
    @needs_313
    def test_a_313_shelve_write_is_found_by_every_search_mode_and_a_running_checker(
        self, cached: Path
    ) -> None:
        path, key = foreign_picture()
        checker = Checker("db.shelve")
        assert checker.check_file(path)["matches"] == []
        shelve_313("db.shelve", f"db[{key!r}] = ['extra/foreign.jpg', 'extra/foreign-copy.jpg']")

        for distance in range(0, 9):  # the exact bucket and every other radius alike
            assert answers(path, "-m", str(distance)) >= {"extra/foreign.jpg"}, distance
        near = save(textured(500).resize((101, 67)), "near.jpg", quality=90)
        assert "extra/foreign.jpg" in answers(near, "-m", "8")
        code, out, _ = search("--groups", "--json", "-m", "0")
        assert code == 0 and ["extra/foreign-copy.jpg", "extra/foreign.jpg"] in [
            group["relpaths"] for group in json.loads(out)]
        # The checker opened before the write sees it in its very next answer.
        assert {m["relpath"] for m in checker.check_file(path)["matches"]} >= {"extra/foreign.jpg"}
        assert checker.health()["hashes"] == 61
        checker.close()

        # And after index.py runs again, and after it re-indexes a touched file.
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        assert "extra/foreign.jpg" in answers(path, "-m", "4")
        os.utime("images/cat0/image_0000.jpg", ns=(1, 1))
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        assert "extra/foreign.jpg" in answers(path, "-m", "4")
        assert "cat0/image_0000.jpg" in answers("images/cat0/image_0000.jpg", "-m", "4")

    def test_sqlite_writes_insert_update_replace_and_delete_are_all_followed(
        self, cached: Path
    ) -> None:
        path, key = foreign_picture()
        checker = Checker("db.shelve")
        sqlite_write("db.shelve", "INSERT INTO Dict (key, value) VALUES (?, ?)", key.encode(),
                     pickle.dumps(["extra/a.jpg"]))
        assert answers(path, "-m", "4") == {"extra/a.jpg"}
        assert {m["relpath"] for m in checker.check_file(path)["matches"]} == {"extra/a.jpg"}
        sqlite_write("db.shelve", "UPDATE Dict SET value = ? WHERE key = ?",
                     pickle.dumps(["extra/b.jpg"]), key.encode())
        assert answers(path, "-m", "4") == {"extra/b.jpg"}
        sqlite_write("db.shelve", "REPLACE INTO Dict (key, value) VALUES (?, ?)", key.encode(),
                     pickle.dumps(["extra/c.jpg"]))
        assert answers(path, "-m", "4") == {"extra/c.jpg"}
        assert {m["relpath"] for m in checker.check_file(path)["matches"]} == {"extra/c.jpg"}
        sqlite_write("db.shelve", "DELETE FROM Dict WHERE key = ?", key.encode())
        assert answers(path, "-m", "4") == set()
        assert checker.check_file(path)["matches"] == []
        # A key written as text (not bytes) by hand is found too.
        sqlite_write("db.shelve", "INSERT INTO Dict (key, value) VALUES (?, ?)", key,
                     pickle.dumps(["extra/text.jpg"]))
        assert answers(path, "-m", "0") == {"extra/text.jpg"}
        assert answers(path, "-m", "4") == {"extra/text.jpg"}
        checker.close()

    def test_counts_stay_exact_whatever_writes(self, cached: Path) -> None:
        _path, key = foreign_picture()
        sqlite_write("db.shelve", "REPLACE INTO Dict (key, value) VALUES (?, ?)", key.encode(),
                     pickle.dumps(["x.jpg"]))
        sqlite_write("db.shelve", "REPLACE INTO Dict (key, value) VALUES (?, ?)", key.encode(),
                     pickle.dumps(["y.jpg"]))
        sqlite_write("db.shelve", "INSERT OR IGNORE INTO Dict (key, value) VALUES (?, ?)",
                     key.encode(), pickle.dumps(["z.jpg"]))
        with Store.open_for_reading("db.shelve") as store:
            rows = int(store._db.one("SELECT COUNT(*) FROM Dict")[0])
            assert store.counts() == (rows, 60) and rows == 61
        sqlite_write("db.shelve", "DELETE FROM Dict WHERE key = ?", key.encode())
        with Store.open_for_reading("db.shelve") as store:
            assert store.counts() == (60, 60)


class TestCachesAreNeverTrustedAsFound:
    @pytest.mark.parametrize("planted", ["shape", "float", "bytes", "manifest", "empty array",
                                         "cut short", "FIFO manifest", "FIFO array"])
    def test_a_planted_or_damaged_cache_is_rebuilt(self, cached: Path, planted: str) -> None:
        expected = answers("images/cat1/image_0001.jpg", "-m", "8")
        stem = entries()[0].removesuffix(".json")
        hashes = f"db.shelve.cache/{stem}.hashes.npy"
        if planted == "shape":
            np.save(hashes, np.arange(20, dtype=np.uint64).reshape(10, 2))
        elif planted == "float":
            count = np.load(hashes).shape[0]
            np.save(hashes, np.ones((count, 1), dtype=np.float64))
        elif planted == "bytes":  # same shape and dtype, one hash changed: the CRC says so
            array = np.load(hashes)
            array[5, 0] ^= np.uint64(1)
            np.save(hashes, array)
        elif planted == "empty array":  # numpy raises EOFError, which no one caught
            Path(hashes).write_bytes(b"")
        elif planted == "cut short":
            Path(hashes).write_bytes(Path(hashes).read_bytes()[:100])
        elif planted.startswith("FIFO"):  # opening one to read would wait for a writer forever
            planted_path = f"db.shelve.cache/{stem}.json" if "manifest" in planted else hashes
            os.remove(planted_path)
            os.mkfifo(planted_path)
        else:
            Path(f"db.shelve.cache/{stem}.json").write_text('{"version": 1, "rows": "many"}')
        assert answers("images/cat1/image_0001.jpg", "-m", "8") == expected
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        with Store.open_for_reading("db.shelve") as store, store.snapshot():
            assert cache_module.load(store, newest=store.generation(), oldest=0) is not None

    def test_a_store_restored_from_a_copy_never_reads_the_other_historys_entries(
        self, cached: Path
    ) -> None:
        """Restored from a copy, then changed as much again, a store reaches the abandoned
        history's generation and row count again; an entry cached for that history (its first
        and last hash the same) was used, and a search missed the new image."""
        with Store.open_for_reading("db.shelve") as store:
            keys = sorted(store.all_buckets())
        inside = []  # pictures whose hashes fall strictly between the stored ones
        for seed in range(600, 700):
            picture = textured(seed)
            key = hash_file(save(picture, f"probe/{seed}.jpg", quality=92), Recipe()).hex()
            if keys[0] < key < keys[-1] and key not in keys:
                inside.append(picture)
            if len(inside) == 2:
                break
        shutil.copy("db.shelve", "backup.shelve")
        save(inside[0], "images/extra/a.jpg", quality=92)
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        for suffix in ("", "-wal", "-shm"):
            Path(f"db.shelve{suffix}").unlink(missing_ok=True)
        shutil.copy("backup.shelve", "db.shelve")  # restored; its cache folder left as it was
        Path("images/extra/a.jpg").unlink()
        save(inside[1], "images/extra/b.jpg", quality=92)
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        assert "extra/b.jpg" in answers("images/extra/b.jpg", "-m", "4")

    def test_an_entry_of_another_history_is_not_followed_by_this_ones_log(
        self, cached: Path
    ) -> None:
        """A copy kept after writes that index.py did not make (its log not pruned), the store
        restored to before them and indexed: the entry cached for that generation holds another
        change than the kept copy's log says made it, and a search of the kept copy followed its
        log from there and missed the image written first."""
        def copy_store(source: str, target: str) -> None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{target}{suffix}").unlink(missing_ok=True)
            shutil.copy(source, target)

        copy_store("db.shelve", "before.shelve")
        path, key = foreign_picture()
        sqlite_write("db.shelve", "INSERT INTO Dict (key, value) VALUES (?, ?)", key.encode(),
                     pickle.dumps(["extra/foreign.jpg"]))
        for number in range(5):  # more writes, as a shelve or the sqlite3 shell might make
            sqlite_write("db.shelve", "INSERT INTO Dict (key, value) VALUES (?, ?)",
                         f"{number:016x}".encode(), pickle.dumps([f"extra/{number}.jpg"]))
        copy_store("db.shelve", "kept.shelve")
        copy_store("before.shelve", "db.shelve")
        Path(path).rename("elsewhere.jpg")
        save(textured(777), "images/extra/other.jpg", quality=92)
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        Path("elsewhere.jpg").rename(path)
        copy_store("kept.shelve", "db.shelve")
        assert "extra/foreign.jpg" in answers(path, "-m", "4")

    def test_a_restored_copy_changed_by_the_same_key_is_not_answered_from_the_other_history(
        self, cached: Path
    ) -> None:
        """A review: index.py removed an image (its bucket deleted: generation g, cached); the
        store was restored from a backup, and another program then rewrote that very bucket
        (adding a path: generation g again, by the same key) and one more. The entry of the
        abandoned history passed every check and a search missed both paths of the bucket."""
        query = "images/cat0/image_0000.jpg"
        shutil.copy(query, "query.jpg")
        key = hash_file("query.jpg", Recipe()).hex()
        shutil.copy("db.shelve", "backup.shelve")
        Path(query).unlink()
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        for suffix in ("", "-wal", "-shm"):
            Path(f"db.shelve{suffix}").unlink(missing_ok=True)
        shutil.copy("backup.shelve", "db.shelve")  # restored; its cache folder left as it was
        shutil.copy("query.jpg", query)
        sqlite_write("db.shelve", "UPDATE Dict SET value = ? WHERE key = ?",
                     pickle.dumps(["cat0/image_0000.jpg", "uploads/new.jpg"]), key.encode())
        sqlite_write("db.shelve", "INSERT INTO Dict (key, value) VALUES (?, ?)",
                     b"0123456789abcdef", pickle.dumps(["x/y.jpg"]))
        assert answers("query.jpg") == {"cat0/image_0000.jpg", "uploads/new.jpg"}

    def test_a_reader_on_an_older_snapshot_never_deletes_a_newer_entry(
        self, cached: Path
    ) -> None:
        old = Store.open_for_reading("db.shelve")
        with old.snapshot():
            before = old.generation()
            save(textured(600), "images/new/one.jpg", quality=92)
            assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
            newer = entries()
            assert newer != [] and all(f"-{before}." not in name for name in newer)
            # The old snapshot's index: built for its own state (the entry index.py kept is
            # newer, so it is not used), saved beside it, and nothing deleted.
            index = HashIndex.from_store(old)
            assert index.generation == before
        old.close()
        assert set(newer) <= set(entries())
        assert len(entries()) == 2
        # Only index.py prunes, and only what is older than the state it has just cached.
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        assert entries() == newer

    def test_an_index_run_leaves_one_entry_and_an_empty_change_log(self, cached: Path) -> None:
        save(textured(601), "images/new/two.jpg", quality=92)
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        assert len(entries()) == 1
        with Store.open_for_reading("db.shelve") as store:
            assert store.changed_raw_keys(0) == []
            assert store.changes_since() == store.generation()


class TestWhatAShelveUserCanWrite:
    @needs_313
    def test_a_str_value_is_reported_by_index_and_skipped_by_every_search_mode(
        self, indexed: Path, capsys: pytest.CaptureFixture
    ) -> None:
        key = hash_file("images/cat1/image_0001.jpg", Recipe()).hex()
        shelve_313("db.shelve", f"db[{key!r}] = 'cat1/image_0001.jpg'")
        code, out, err = search("-q", "images/cat1/image_0001.jpg", "-m", "4")
        assert code == 1  # its only match is in the bad bucket, which alone is skipped
        assert "cat1/image_0001.jpg" not in out
        assert f"bucket {key}: expected a list of paths, found str; skipped" in err
        code, out, err = search("-q", "images/copy.jpg", "-m", "4")
        assert code == 0 and "copy.jpg" in out  # the rest of the store answers as before
        code, out, err = search("--groups", "--json")
        assert code in (0, 1) and "skipped" in err and "Traceback" not in err
        checker = Checker("db.shelve", warn=print)
        answer = checker.check_file("images/cat1/image_0001.jpg")
        assert "cat1/image_0001.jpg" not in {m["relpath"] for m in answer["matches"]}
        checker.close()
        # index.py rewrites the bucket with the image it indexed under that hash, and says so
        # (the image stayed out of every answer for good before: a review).
        capsys.readouterr()
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        captured = capsys.readouterr()
        assert (f"bucket {key}: expected a list of paths, found str; rewritten with the 1 indexed"
                " image of that hash") in captured.err
        assert "bad store entries" not in captured.out
        assert answers("images/cat1/image_0001.jpg") == {"cat1/image_0001.jpg"}

    def test_keys_that_are_not_hashes_are_skipped_with_a_line(self, indexed: Path) -> None:
        sqlite_write("db.shelve", "INSERT INTO Dict (key, value) VALUES (?, ?)", b"hello",
                     pickle.dumps(["x.jpg"]))
        code, out, err = search("-q", "images/copy.jpg", "-m", "4")
        assert code == 0 and "copy.jpg" in out
        assert "store entry hello: not a 64-bit hash in lowercase hex; skipped" in err


def test_a_store_whose_recipe_this_neardup_would_not_reproduce_is_refused(
    indexed: Path, capsys: pytest.CaptureFixture
) -> None:
    with closing(sqlite3.connect("db.shelve")) as connection, connection:
        (recipe,) = connection.execute(
            "SELECT value FROM neardup_meta WHERE name = 'recipe'").fetchone()
        edited = json.loads(recipe) | {"preprocess_version": 99}
        connection.execute("UPDATE neardup_meta SET value = ? WHERE name = 'recipe'",
                           (json.dumps(edited),))
    for mode in (["-q", "images/copy.jpg"], ["--groups"], ["--stdin"]):
        assert search_cli.main(["-s", "db.shelve", *mode]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1
        assert "preprocessing v99 is not known to this neardup" in err


# -- a checker running in its own process, on a store large enough for caches ------------------


def fill(path: str, count: int, dataset: str) -> None:
    """A store of `count` random hashes (paths that need not exist), written as index.py writes."""
    rng = np.random.default_rng(3)
    values = rng.integers(0, 2**64, size=count, dtype=np.uint64)
    with Store.open_for_writing(path, Recipe(), dataset, {}) as store:
        store.apply([IndexedFile(f"filler/{n}.jpg", 1, 1, format(int(v), "016x"))
                     for n, v in enumerate(values)], [])


def read_line(stream, timeout: float = 60) -> str:  # type: ignore[no-untyped-def]
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no answer within the time limit"
    return stream.readline()


@pytest.fixture()
def running_checker(in_tmp: Path) -> Iterator[subprocess.Popen]:
    fill("db.shelve", 25_000, str(in_tmp / "images"))
    with subprocess.Popen(SEARCH + ["-s", "db.shelve", "--stdin"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        yield process
        if process.poll() is None:
            process.kill()


def ask(process: subprocess.Popen, path: str) -> set[str]:
    assert process.stdin and process.stdout
    process.stdin.write(path + "\n")
    process.stdin.flush()
    return {match["relpath"] for match in json.loads(read_line(process.stdout))["matches"]}


@needs_313
def test_a_running_stdin_checker_sees_a_313_shelve_write_in_its_next_answer(
    running_checker: subprocess.Popen,
) -> None:
    path, key = foreign_picture()
    assert ask(running_checker, path) == set()
    assert os.listdir("db.shelve.cache"), "25,000 hashes are cached"
    shelve_313("db.shelve", f"db[{key!r}] = ['extra/foreign.jpg']")
    assert ask(running_checker, path) == {"extra/foreign.jpg"}
    for distance in ("0", "4", "8"):  # and a search.py of its own, with the real thresholds
        done = subprocess.run(SEARCH + ["-s", "db.shelve", "-q", path, "-m", distance, "--json"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert [m["relpath"] for m in json.loads(done.stdout)[0]["matches"]] == [
            "extra/foreign.jpg"]
    near = save(textured(500).resize((101, 67)), "near.jpg", quality=90)
    assert ask(running_checker, near) == {"extra/foreign.jpg"}
    shelve_313("db.shelve", f"del db[{key!r}]")
    assert ask(running_checker, path) == set()
    assert running_checker.stdin
    running_checker.stdin.close()
    assert running_checker.wait(timeout=60) == 0
    assert running_checker.stderr and running_checker.stderr.read() == ""


def test_a_running_checker_follows_many_commits_and_rebuilds_beside_them(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More keys than DELTA_MAX arrive while it answers: the index is rebuilt in a thread and
    every answer stays right."""
    monkeypatch.setattr(search_module, "DELTA_MAX", 50)
    monkeypatch.setattr("neardup.service.checker.DELTA_MAX", 50)
    fill("db.shelve", 21_000, str(in_tmp / "images"))
    path, key = foreign_picture()
    with Checker("db.shelve") as checker:
        rng = np.random.default_rng(9)
        for batch in range(6):
            with Store.open_for_writing("db.shelve", Recipe(), str(in_tmp / "images"), {}) as store:
                store.apply([IndexedFile(f"more/{batch}-{n}.jpg", 1, 1, format(int(v), "016x"))
                             for n, v in enumerate(rng.integers(0, 2**64, size=40,
                                                                dtype=np.uint64))], [])
            assert checker.check_file(path)["matches"] == []
        sqlite_write("db.shelve", "INSERT INTO Dict (key, value) VALUES (?, ?)", key.encode(),
                     pickle.dumps(["extra/foreign.jpg"]))
        assert [m["relpath"] for m in checker.check_file(path)["matches"]] == ["extra/foreign.jpg"]
        if checker._rebuilding is not None:
            checker._rebuilding.join(timeout=60)
        assert [m["relpath"] for m in checker.check_file(path)["matches"]] == ["extra/foreign.jpg"]
        health = checker.health()
        assert health["hashes"] == 21_000 + 240 + 1 and health["images"] == 21_240


def format_1_store(path: str, dataset: str, files: dict[str, str]) -> None:
    """A store as neardup wrote it before change tracking (format 1): relpath -> hash hex."""
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("CREATE TABLE Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)")
        connection.execute("CREATE TABLE neardup_meta (name TEXT PRIMARY KEY,"
                           " value TEXT NOT NULL) WITHOUT ROWID")
        connection.execute("CREATE TABLE neardup_files (path BLOB PRIMARY KEY, size INTEGER NOT"
                           " NULL, mtime_ns INTEGER NOT NULL, hash BLOB NOT NULL) WITHOUT ROWID")
        meta = {"format_version": "1", "store_id": "0" * 32, "generation": "1",
                "recipe": json.dumps(Recipe().to_dict(), sort_keys=True),
                "dataset_root": dataset, "versions": "{}"}
        connection.executemany("INSERT INTO neardup_meta VALUES (?, ?)", meta.items())
        buckets: dict[str, list[str]] = {}
        for relpath, key in files.items():
            info = os.stat(os.path.join(dataset, relpath))
            connection.execute("INSERT INTO neardup_files VALUES (?, ?, ?, ?)",
                               (relpath.encode(), info.st_size, info.st_mtime_ns,
                                bytes.fromhex(key)))
            buckets.setdefault(key, []).append(relpath)
        connection.executemany("INSERT INTO Dict VALUES (?, ?)",
                               [(key.encode(), pickle.dumps(sorted(paths), protocol=2))
                                for key, paths in buckets.items()])


def test_a_format_1_store_is_read_as_it_is_then_upgraded_by_index(
    in_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    made = make_tree("images", 4)
    files = {relpath: hash_file(f"images/{relpath}", Recipe()).hex() for relpath in made}
    format_1_store("db.shelve", str(in_tmp / "images"), files)
    code, out, err = search("-q", f"images/{made[0]}", "-m", "4")
    assert code == 0 and f"images/{made[0]}" in out and err == ""
    with Checker("db.shelve") as checker:
        extra = foreign_picture()
        sqlite_write("db.shelve", "INSERT INTO Dict VALUES (?, ?)", extra[1].encode(),
                     pickle.dumps(["extra/foreign.jpg"]))
        assert [m["relpath"] for m in checker.check_file(extra[0])["matches"]] == [
            "extra/foreign.jpg"]  # no change log yet: any commit means a rebuild
        assert checker.health()["images"] == 4
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    out = capsys.readouterr().out
    # Size and mtime were all format 1 had: unchanged files are trusted once and their inode and
    # ctime recorded; the file the foreign entry names is indexed (its bucket already lists it).
    assert "indexed 1, unchanged 4, removed 0" in out
    with Store.open_for_reading("db.shelve") as store:
        assert store.format == "2" and store.tracking
        assert store.counts() == (5, 5)
        assert all(state.inode for state in store.file_states().values())


def test_opening_and_closing_another_store_keeps_this_one_locked(indexed: Path) -> None:
    """POSIX locks are per process: a plain open() and close() of the file by a second reader
    would drop the first reader's SQLite locks, and a writer closing in another process would then
    delete the WAL under it (a stale or torn view from then on)."""
    first = Store.open_for_reading("db.shelve")
    with first.snapshot():
        before = first.generation()
    Store.open_for_reading("db.shelve").close()
    with Checker("db.shelve") as checker:  # opens (and keeps) two connections of its own
        checker.health()
    key = hash_file("images/copy.jpg", Recipe()).hex()
    code = (f"import sqlite3, pickle; c = sqlite3.connect('db.shelve'); c.execute('DELETE FROM"
            f" Dict WHERE key = ?', ({key!r}.encode(),)); c.commit(); c.close()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert os.path.exists("db.shelve-wal"), "the writer believed it was the last connection"
    with first.snapshot():
        assert first.generation() == before + 1
        assert first.bucket(key) == []
    first.close()


def test_a_checker_left_running_leaves_the_commits_in_the_store_file(in_tmp: Path) -> None:
    """A review: a read-only checker open while index.py wrote was the last to close, and could
    not copy the commits from the -wal into the file. A copy of the file alone (a backup) then
    lacked them, a backup copied back over the file was undone by them, and a rebuilt store moved
    into place was damaged by them. index.py now empties the -wal as it finishes."""
    make_tree("images", 6)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    with subprocess.Popen(SEARCH + ["-s", "db.shelve", "--stdin"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as checker:
        probe = str(in_tmp / "images" / "cat0" / "image_0000.jpg")
        assert ask(checker, probe) == {"cat0/image_0000.jpg"}  # open, and reading
        make_tree("images/more", 12, start_seed=100)  # 12 more images
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        assert os.path.getsize("db.shelve-wal") == 0
        os.mkdir("backup")
        shutil.copyfile("db.shelve", "backup/db.shelve")  # the file alone
        assert ask(checker, probe) == {"cat0/image_0000.jpg"}
        assert checker.stdin
        checker.stdin.close()
        assert checker.wait(timeout=60) == 0
    with Store.open_for_reading("backup/db.shelve") as copy:
        assert copy.image_count() == 18


def index_again(capsys: pytest.CaptureFixture) -> pytest.CaptureResult[str]:
    """index.py run again on images/ into db.shelve (exit 0): what it printed, and only that."""
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    return capsys.readouterr()


def swap_hashes_and_buckets(one: str, other: str) -> None:
    """cat0/image_0000.jpg's and cat1/image_0001.jpg's hashes (`one`, `other`) swapped in the
    table of files and their buckets swapped in Dict, through SQLite, so the two tables agree."""
    sqlite_write("db.shelve", "UPDATE neardup_files SET hash = CASE path WHEN ? THEN ? ELSE ? END"
                 " WHERE path IN (?, ?)", b"cat0/image_0000.jpg", bytes.fromhex(other),
                 bytes.fromhex(one), b"cat0/image_0000.jpg", b"cat1/image_0001.jpg")
    with closing(sqlite3.connect("db.shelve")) as database, database:
        values = dict(database.execute("SELECT key, value FROM Dict WHERE key IN (?, ?)",
                                       (one.encode(), other.encode())).fetchall())
        for key, value in ((one, values[other.encode()]), (other, values[one.encode()])):
            database.execute("UPDATE Dict SET value = ? WHERE key = ?", (value, key.encode()))


def indexed_tree(count: int) -> tuple[str, str]:
    """`count` images indexed into db.shelve; the hashes of cat0/image_0000 and cat1/image_0001."""
    make_tree("images", count)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    return (hash_file("images/cat0/image_0000.jpg", Recipe()).hex(),
            hash_file("images/cat1/image_0001.jpg", Recipe()).hex())


def test_a_bucket_deleted_behind_index_py_is_listed_again(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: a bucket deleted by another program (`del db[hash]` in a 3.13 shelve, as the
    message about a bad entry invites) lost its image for good: the file was unchanged, so never
    hashed again, and every run counted it as stored. Paths others added to a bucket stay."""
    key, other = indexed_tree(6)
    sqlite_write("db.shelve", "DELETE FROM Dict WHERE key = ?", key.encode("ascii"))
    sqlite_write("db.shelve", "UPDATE Dict SET value = ? WHERE key = ?",
                 pickle.dumps(["uploads/added.jpg"]), other.encode("ascii"))
    assert answers("images/cat0/image_0000.jpg") == set()
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    err = capsys.readouterr().err
    assert f"bucket {key} had lost 1 image indexed under that hash" in err
    assert f"bucket {other} had lost 1 image" in err
    assert answers("images/cat0/image_0000.jpg") == {"cat0/image_0000.jpg"}
    assert answers("images/cat1/image_0001.jpg") == {"cat1/image_0001.jpg", "uploads/added.jpg"}


def test_many_buckets_mended_are_named_up_to_a_limit(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: each bucket mended is a line or two; a script that emptied thousands would bury
    the run's other messages. The first ten are named, one line counts the rest."""
    make_tree("images", 14, folders=1)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    sqlite_write("db.shelve", "DELETE FROM Dict")
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert sum("had lost 1 image indexed under that hash" in line for line in lines) == 10
    assert any(line.endswith("db.shelve: 4 more buckets mended likewise") for line in lines)
    with Store.open_for_reading("db.shelve") as store:
        assert store.image_count() == 14 and sum(map(len, store.all_buckets().values())) == 14


def test_a_path_another_program_moved_to_another_bucket_goes_back_to_its_own(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """Reviews of the relisting: another program moved a.jpg into b.jpg's bucket (deleting its
    own); it was listed again under its indexed hash too (search answered it twice), and, kept
    where it was moved, stayed listed there once its file was deleted."""
    moved, into = indexed_tree(4)
    sqlite_write("db.shelve", "DELETE FROM Dict WHERE key = ?", moved.encode("ascii"))
    sqlite_write("db.shelve", "UPDATE Dict SET value = ? WHERE key = ?",
                 pickle.dumps(["cat1/image_0001.jpg", "cat0/image_0000.jpg", "up/other.jpg"]),
                 into.encode("ascii"))
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert (f"bucket {into} listed 1 image indexed under another hash (moved there by another"
            " program, or the file damaged); it is listed under its own again"
            ) in capsys.readouterr().err
    with Store.open_for_reading("db.shelve") as store:
        assert store.bucket(moved) == ["cat0/image_0000.jpg"]
        assert store.bucket(into) == ["cat1/image_0001.jpg", "up/other.jpg"]
    os.remove("images/cat0/image_0000.jpg")
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    with Store.open_for_reading("db.shelve") as store:
        listed = [path for paths in store.all_buckets().values() for path in paths]
    assert "cat0/image_0000.jpg" not in listed and sorted(listed) == sorted(set(listed))


def test_a_path_changed_in_the_file_itself_is_mended_by_the_next_index_run(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: one byte changed in the store file, inside a bucket's pickled list, turned
    cat0/image_0000.jpg into cat0/image_0001.jpg there. SQLite indexes no value and the change
    log sees no write, so every later run left it, and a search answered the wrong image. The
    next run now compares every bucket with the table of files and mends it."""
    make_tree("images", 1)
    os.link("images/cat0/image_0000.jpg", "images/cat0/image_1000.jpg")  # one bucket, two paths
    Image.new("RGB", (64, 48), (200, 30, 30)).save("images/cat0/image_0001.jpg")
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    key = hash_file("images/cat0/image_0000.jpg", Recipe()).hex()
    other = hash_file("images/cat0/image_0001.jpg", Recipe()).hex()
    assert key != other
    with Store.open_for_reading("db.shelve") as store:
        assert store.bucket(key) == ["cat0/image_0000.jpg", "cat0/image_1000.jpg"]
    assert not os.path.exists("db.shelve-wal") or os.path.getsize("db.shelve-wal") == 0
    data = Path("db.shelve").read_bytes()
    listed = b"cat0/image_0000.jpg"
    at = data.index(b"X" + len(listed).to_bytes(4, "little") + listed)  # the pickle's, not the table's
    Path("db.shelve").write_bytes(data[:at + 5] + b"cat0/image_0001.jpg" + data[at + 5 + len(listed):])
    lines: list[str] = []
    with Store.open_for_reading("db.shelve", report=lines.append) as store:
        # Before index.py runs again, searches skip the path listed under the wrong hash.
        assert store.bucket(key) == ["cat0/image_1000.jpg"]
        assert store.all_buckets()[key] == ["cat0/image_1000.jpg"]
    assert lines == [f"db.shelve: bucket {key}: lists 1 image indexed under another hash; skipped"
                     " (run index.py to mend it)"]
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    err = capsys.readouterr().err
    assert "2 images listed under one hash and recorded under another" in err  # hashed again
    assert (f"bucket {key} had lost 1 image indexed under that hash and listed 1 image indexed"
            " under another (changed by another program, or the file damaged); each is listed"
            " under its own hash again") in err
    with Store.open_for_reading("db.shelve") as store:
        assert store.bucket(key) == ["cat0/image_0000.jpg", "cat0/image_1000.jpg"]
        assert store.bucket(other) == ["cat0/image_0001.jpg"]
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert "bucket" not in capsys.readouterr().err  # mended for good: nothing said again


def test_hashes_swapped_in_the_table_of_files_are_hashed_again_not_trusted(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: two images' hashes swapped in the table of files by hand (no write the change
    log sees). The run that compares every bucket with that table trusted the table and moved
    both images into each other's buckets, and every later run kept them there: a search for
    one answered the other at distance 0. Where the two tables disagree, the files decide."""
    one, other = indexed_tree(4)
    sqlite_write("db.shelve", "UPDATE neardup_files SET hash = CASE path WHEN ? THEN ? ELSE ? END"
                 " WHERE path IN (?, ?)", b"cat0/image_0000.jpg", bytes.fromhex(other),
                 bytes.fromhex(one), b"cat0/image_0000.jpg", b"cat1/image_0001.jpg")
    capsys.readouterr()
    for _ in range(2):
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert ("2 images listed under one hash and recorded under another, or not listed at all"
            ) in capsys.readouterr().err
    with Store.open_for_reading("db.shelve") as store:
        assert store.bucket(one) == ["cat0/image_0000.jpg"]
        assert store.bucket(other) == ["cat1/image_0001.jpg"]
        assert store.file_states()["cat0/image_0000.jpg"].hash_hex == one
    assert answers("images/cat0/image_0000.jpg") == {"cat0/image_0000.jpg"}


def test_buckets_swapped_behind_index_py_answer_no_wrong_image(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A hostile review: two buckets' values swapped by hand; the checker answered each image for
    the other at distance 0 until the next index.py run. A path the table of files records under
    another hash is now skipped by every search (and mended by index.py)."""
    one, other = indexed_tree(4)
    with closing(sqlite3.connect("db.shelve")) as database, database:
        values = dict(database.execute("SELECT key, value FROM Dict WHERE key IN (?, ?)",
                                       (one.encode(), other.encode())).fetchall())
        for key, value in ((one, values[other.encode()]), (other, values[one.encode()])):
            database.execute("UPDATE Dict SET value = ? WHERE key = ?", (value, key.encode()))
    assert answers("images/cat0/image_0000.jpg") == set()
    with Checker("db.shelve") as checker:
        assert checker.check_file("images/cat1/image_0001.jpg")["matches"] == []
        assert checker.health()["status"] == "degraded"
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert answers("images/cat0/image_0000.jpg") == {"cat0/image_0000.jpg"}
    assert answers("images/cat1/image_0001.jpg") == {"cat1/image_0001.jpg"}


@pytest.mark.parametrize("value", [b"", b"junk", pickle.dumps({"not": "a list"})],
                         ids=["emptied", "junk", "a dict"])
def test_a_bucket_emptied_behind_index_py_is_rewritten_from_what_it_indexed(
        in_tmp: Path, capsys: pytest.CaptureFixture, value: bytes) -> None:
    """A hostile review: a bucket's value emptied by hand (`X''`) left its image out of every
    search for good: each index.py run called it a bad entry, exited 0, and left it. The images
    index.py indexed under that hash are hashed again and the bucket rewritten with them."""
    key, _other = indexed_tree(4)
    sqlite_write("db.shelve", "UPDATE Dict SET value = ? WHERE key = ?", value, key.encode("ascii"))
    assert answers("images/cat0/image_0000.jpg") == set()
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    err = capsys.readouterr().err
    assert f"bucket {key}: " in err and "; rewritten with the 1 indexed image of that hash" in err
    assert "search skips it" not in err  # no longer a bad entry
    assert answers("images/cat0/image_0000.jpg") == {"cat0/image_0000.jpg"}
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert "bucket" not in capsys.readouterr().err  # mended for good


def test_hashes_and_buckets_swapped_together_behind_index_py_are_hashed_again(
        in_tmp: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile review: two images' hashes swapped in the table of files AND their buckets
    swapped in Dict, by hand: the two tables agree, so comparing them finds nothing, and each
    image was answered for the other at distance 0 for good. The change log saw the buckets
    change: the images indexed under hashes others changed are hashed again."""
    monkeypatch.setattr(indexing, "RACY_NS", 0)  # recorded as a run 2 s later would: not racy
    one, other = indexed_tree(4)
    swap_hashes_and_buckets(one, other)
    assert answers("images/cat0/image_0000.jpg") == {"cat1/image_0001.jpg"}  # the harm
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert ("2 images indexed under hashes other programs changed since the last run; hashed"
            " again") in capsys.readouterr().err
    assert answers("images/cat0/image_0000.jpg") == {"cat0/image_0000.jpg"}
    assert answers("images/cat1/image_0001.jpg") == {"cat1/image_0001.jpg"}
    with Store.open_for_reading("db.shelve") as store:
        assert store.file_states()["cat0/image_0000.jpg"].hash_hex == one
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert "hashed again" not in capsys.readouterr().err  # once, not every run


def test_only_other_programs_changes_are_hashed_again(
        in_tmp: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The images under buckets others changed are hashed again; what neardup itself wrote and
    a killed run left in the change log (no prune at its end) is not: a run killed after hashing
    10^6 images must not make the next one hash them all again."""
    monkeypatch.setattr(indexing, "RACY_NS", 0)
    one, other = indexed_tree(4)
    with Store.open_for_writing("db.shelve", Recipe(), str(in_tmp / "images"), {}) as store:
        before = store.changes_since()
        store.apply([IndexedFile("cat9/new.jpg", 1, 1, one)], [])  # as a killed run leaves it
    sqlite_write("db.shelve", "UPDATE Dict SET value = value WHERE key = ?", other.encode("ascii"))
    with Store.open_for_writing("db.shelve", Recipe(), str(in_tmp / "images"), {}) as store:
        assert store.changes_since() == before
        assert {key_text(key) for key in store.changed_raw_keys(before)} == {one, other}
        assert store.others_changed_keys() == [other.encode("ascii")]
        store.apply([IndexedFile("cat9/newer.jpg", 1, 1, other)], [])  # own spans join up
        assert store.others_changed_keys() == [other.encode("ascii")]
    captured = index_again(capsys)
    # cat1/image_0001.jpg and cat9/newer.jpg (its file is gone: removed), not cat0/image_0000.jpg
    assert "2 images indexed under hashes other programs changed since the last run" in captured.err
    assert "unchanged 4, removed 2" in captured.out
    with Store.open_for_reading("db.shelve") as store:
        assert store.others_changed_keys() == []


@pytest.mark.parametrize("edit", ["path as text", "hash as text", "hash cut short"])
def test_a_path_or_hash_written_as_text_is_no_traceback_and_index_py_puts_it_right(
        in_tmp: Path, capsys: pytest.CaptureFixture, edit: str) -> None:
    """A hostile review: a path of the table of files written back as TEXT (Python's sqlite3
    with a str, or the sqlite3 shell without CAST) ended --groups and index.py in a TypeError,
    a hash as TEXT every command too. Reads take them as bytes; index.py writes a path back as
    bytes (else its lookups by path miss the row: listed twice once changed, never removed) and
    hashes again an image whose hash is not the recipe's bytes."""
    key, _other = indexed_tree(4)
    path = b"cat0/image_0000.jpg"
    if edit == "path as text":
        sqlite_write("db.shelve", "UPDATE neardup_files SET path = ? WHERE path = ?",
                     path.decode(), path)
    else:
        sqlite_write("db.shelve", "UPDATE neardup_files SET hash = ? WHERE path = ?",
                     key if edit == "hash as text" else bytes.fromhex(key)[:3], path)
    for args in (["-q", "images/cat0/image_0000.jpg"], ["--groups"], ["--groups", "--json"]):
        code, _out, err = search(*args)
        assert code in (0, 1) and "Traceback" not in err, err
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    err = capsys.readouterr().err
    assert ("1 path stored as text by another program; written back as bytes" if edit ==
            "path as text" else "1 image recorded with a hash that is not a 64-bit one") in err
    with closing(sqlite3.connect("db.shelve")) as database:
        assert database.execute("SELECT typeof(path), hex(hash) FROM neardup_files WHERE"
                                " CAST(path AS BLOB) = ?", (path,)).fetchall() == [
                                    ("blob", key.upper())]
    assert answers("images/cat0/image_0000.jpg") == {"cat0/image_0000.jpg"}
    os.remove("images/cat0/image_0000.jpg")  # and removed when its file goes
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    with Store.open_for_reading("db.shelve") as store:
        assert "cat0/image_0000.jpg" not in store.file_states() and store.image_count() == 3


@pytest.mark.parametrize("counted", [0, -3, 9223372036854775807, "abc", None])
def test_counters_another_program_changed_are_counted_again(
        in_tmp: Path, capsys: pytest.CaptureFixture, counted: object) -> None:
    """A hostile review: neardup_counts set to 0 by hand made index.py say "0 images in the
    store" and exit 1 as if nothing could be indexed, run after run; -3 and 2^63 - 1 were
    printed as they were. index.py counts both tables again and sets the counters right."""
    indexed_tree(4)
    if counted is None:
        sqlite_write("db.shelve", "DELETE FROM neardup_counts")
    else:
        sqlite_write("db.shelve", "UPDATE neardup_counts SET n = ?", counted)
    captured = index_again(capsys)
    assert "; 4 images in the store" in captured.out
    assert "(changed by another program); counted again" in captured.err
    with Store.open_for_reading("db.shelve") as store:
        assert store.counts() == (4, 4)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert "counted again" not in capsys.readouterr().err


def test_a_change_sequence_that_is_not_a_number_is_one_line(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A hostile review: sqlite_sequence's row set to 'x' ended every command in a ValueError."""
    indexed_tree(2)
    sqlite_write("db.shelve", "UPDATE sqlite_sequence SET seq = 'x'")
    code, out, err = search("-q", "images/cat0/image_0000.jpg")
    assert code == 2 and err.count("\n") == 1
    assert "its sqlite_sequence table is not understood (neardup_changes is 'x'" in err
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 2
    assert "its sqlite_sequence table is not understood" in capsys.readouterr().err


def test_a_change_sequence_at_its_end_is_said_as_such(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: sqlite_sequence set to 2**63 - 1 made index.py say "database or disk is full"."""
    indexed_tree(2)
    sqlite_write("db.shelve", "UPDATE sqlite_sequence SET seq = ? WHERE name = 'neardup_changes'",
                 2**63 - 1)
    make_tree("images/more", 2, start_seed=50)
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "disk is full" not in err, err
    assert "change log's sequence (sqlite_sequence) is at the end of what SQLite can count" in err
    code, out, err = search("-q", "images/cat0/image_0000.jpg")  # read as it is
    assert code == 0, err
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild"]) == 0
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0


def test_bad_entries_are_named_up_to_a_limit(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A hostile review: a recipe edited to 256 bits by hand made every key a bad entry, and
    index.py printed one line for each of 200. Twenty are named; the summary counts them all."""
    indexed_tree(2)
    with closing(sqlite3.connect("db.shelve")) as database, database:
        database.executemany("INSERT INTO Dict (key, value) VALUES (?, ?)",
                             [(f"not a hash {n}".encode(), pickle.dumps([])) for n in range(25)])
    captured = index_again(capsys)
    assert captured.err.count("search skips it (fix it, or delete it)") == 20
    assert "db.shelve: 5 more bad store entries" in captured.err
    assert ", 25 bad store entries;" in captured.out


@pytest.mark.parametrize("edit", ["DELETE FROM neardup_meta WHERE name = 'recipe'",
                                  "UPDATE neardup_meta SET value = '' WHERE name = 'dataset_root'"])
def test_a_recipe_or_dataset_folder_deleted_by_hand_is_said_as_such(
        in_tmp: Path, capsys: pytest.CaptureFixture, edit: str) -> None:
    """A hostile review: with the recipe row deleted index.py said "Expecting value: line 1
    column 1 (char 0)"; with the dataset folder emptied, "indexes , not ...", and searches
    answered paths in no folder."""
    indexed_tree(2)
    sqlite_write("db.shelve", edit)
    missing = "recipe" if "recipe" in edit else "dataset_root"
    code, _out, err = search("-q", "images/cat0/image_0000.jpg")
    assert code == 2 and err.count("\n") == 1
    assert f"its neardup_meta table is incomplete or not understood (no {missing})" in err
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 2
    err = capsys.readouterr().err
    assert f"its neardup_meta table is incomplete or not understood (no {missing})" in err


def test_a_search_holding_an_old_view_is_told_of(
        in_tmp: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: while a long search held one snapshot (search.py over many queries), the -wal
    could not be emptied and index.py said nothing, though a copy of the file alone then lacked
    the new image."""
    import neardup.core.store as store_module

    monkeypatch.setattr(store_module, "CHECKPOINT_WAIT_MS", 100)
    make_tree("images", 3)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    make_tree("images/more", 2, start_seed=50)
    capsys.readouterr()
    with Store.open_for_reading("db.shelve") as reader, reader.snapshot():
        reader.image_count()  # the snapshot starts at the first read
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    err = capsys.readouterr().err
    assert "db.shelve-wal still holds this run's last commits (a search held an older view" in err
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert not os.path.exists("db.shelve-wal") or os.path.getsize("db.shelve-wal") == 0


@pytest.mark.parametrize("spans", ["[[0, 1000000000000000000000000000000]]",
                                   "[[0, 9223372036854775807]]", "[[true, 400]]", "junk"])
def test_spans_of_own_changes_written_by_hand_hide_nothing(
        in_tmp: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        spans: str) -> None:
    """A hostile review: neardup_meta's own_changes set by hand to a span beyond SQLite's
    integers ended every index.py run in an OverflowError; one covering the whole log (or with a
    boolean bound) hid another program's swap of two images' hashes and buckets for good. Spans
    not within the log as it is are not trusted: every logged change counts as another's."""
    monkeypatch.setattr(indexing, "RACY_NS", 0)
    one, other = indexed_tree(4)
    swap_hashes_and_buckets(one, other)
    with closing(sqlite3.connect("db.shelve")) as database, database:
        database.execute("INSERT INTO neardup_meta (name, value) VALUES ('own_changes', ?)"
                         " ON CONFLICT (name) DO UPDATE SET value = excluded.value", (spans,))
    captured = index_again(capsys)
    assert "Traceback" not in captured.err
    assert "indexed under hashes other programs changed since the last run" in captured.err
    assert answers("images/cat0/image_0000.jpg") == {"cat0/image_0000.jpg"}
    assert answers("images/cat1/image_0001.jpg") == {"cat1/image_0001.jpg"}


def test_a_change_sequence_set_back_behind_the_log_does_not_revive_a_cache(cached: Path) -> None:
    """A hostile review: a bucket written and another deleted by hand, then sqlite_sequence set
    back to the generation the search cache was built at, were answered from that cache (the
    new bucket unfound, the deleted one still found). The log's own newest entry counts too, as
    it does for SQLite's next number."""
    path, key = foreign_picture()
    gone = "images/cat0/image_0000.jpg"
    gone_key = hash_file(gone, Recipe()).hex()
    assert answers(path) == set() and "cat0/image_0000.jpg" in answers(gone)
    with Store.open_for_reading("db.shelve") as store:
        generation = store.generation()
    with closing(sqlite3.connect("db.shelve")) as database, database:
        database.execute("INSERT INTO Dict (key, value) VALUES (?, ?)",
                         (key.encode(), pickle.dumps(["extra/foreign.jpg"])))
        database.execute("DELETE FROM Dict WHERE key = ?", (gone_key.encode(),))
        database.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'neardup_changes'",
                         (generation,))
    with Store.open_for_reading("db.shelve") as store:
        assert store.generation() == generation + 2
    assert answers(path) == {"extra/foreign.jpg"}
    assert "cat0/image_0000.jpg" not in answers(gone)


def test_a_store_in_use_is_rebuilt_in_one_commit_that_readers_and_writers_take_whole(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: after the documented `index.py -s new.shelve && mv new.shelve db.shelve` with a
    checker running, index.py and a new reader called the moved-in store damaged: the -shm, kept
    by the checker, still counted the old file's pages. index.py --rebuild copies the new store
    in through SQLite instead: here with another hash, more images, and the checker's -shm last
    written by an index.py run it had not answered after."""
    make_tree("images", 6)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    probe = str(in_tmp / "images" / "cat0" / "image_0000.jpg")
    with subprocess.Popen(SEARCH + ["-s", "db.shelve", "--stdin"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as checker:
        assert ask(checker, probe) == {"cat0/image_0000.jpg"}
        shutil.move("images/cat1", "cat1")
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1",
                               "--allow-mass-removal"]) == 0
        shutil.move("cat1", "images/cat1")
        make_tree("images/more", 150, start_seed=100)
        capsys.readouterr()
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild",
                               "--algorithm", "phash"]) == 0
        out = capsys.readouterr().out
        assert "156 images in the store" in out and "rebuilt" in out
        assert not any(".rebuilding" in name for name in os.listdir("."))
        # Opened before the checker answers again (it would then reopen, and alone on the -shm,
        # set it up afresh).
        with Store.open_for_reading("db.shelve") as store:
            assert store.image_count() == 156 and store.recipe.algorithm == "phash"
        assert ask(checker, probe) == {"cat0/image_0000.jpg"}  # the new store: phash
        shutil.rmtree("images/more")
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1",
                               "--algorithm", "phash", "--allow-mass-removal"]) == 0
        assert "6 images in the store" in capsys.readouterr().out
        assert checker.stdin
        checker.stdin.close()
        assert checker.wait(timeout=60) == 0
        assert checker.stderr
        assert "rewritten with other contents (index.py --rebuild" in checker.stderr.read()


def test_a_rebuild_never_drops_what_it_could_not_read_again_nor_half_the_store_unasked(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    make_tree("images", 6)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    # Unreadable now, but unchanged as far as its stat goes (its size, mtime and inode): kept,
    # as a plain run keeps it (a read that failed this time, or damage that stat cannot see).
    damaged = Path("images/cat0/image_0002.jpg")
    before = damaged.stat()
    with open(damaged, "r+b") as stream:
        stream.write(b"\x00" * before.st_size)
    os.utime(damaged, ns=(before.st_atime_ns, before.st_mtime_ns))
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild"]) == 2
    out = capsys.readouterr().out
    assert "images/cat0/image_0002.jpg" not in out and "cat0/image_0002.jpg: held by the store" in out
    assert "6 images in the store" in out  # the store's, not the rebuilt one's
    assert "the store keeps its contents, and the rebuilt store is kept in" in out
    with Store.open_for_reading("db.shelve") as store:
        assert store.image_count() == 6
    os.remove("images/cat0/image_0002.jpg")  # gone for good: a rebuild may drop it
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild"]) == 0
    with Store.open_for_reading("db.shelve") as store:
        assert store.image_count() == 5
    shutil.rmtree("images/cat1")
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild"]) == 2
    assert "lacks 3 of the store's 5 images" in capsys.readouterr().out
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild",
                           "--allow-mass-removal"]) == 0
    with Store.open_for_reading("db.shelve") as store:
        assert store.image_count() == 2


def test_a_damaged_store_is_repaired_by_a_rebuild(in_tmp: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    make_tree("images", 6)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    with open("db.shelve", "r+b") as damaged:  # every page but the schema's
        size = damaged.seek(0, os.SEEK_END)
        damaged.seek(4096)
        damaged.write(b"\xde\xad" * ((size - 4096) // 2))
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild"]) == 0
    captured = capsys.readouterr()
    assert "the store is damaged" in captured.err and "rebuilt" in captured.out
    with closing(sqlite3.connect("db.shelve")) as database:
        assert database.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with Store.open_for_reading("db.shelve") as store:
        assert store.image_count() == 6


def test_a_rebuild_starts_again_what_a_stopped_one_left_that_it_cannot_resume(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: a leftover db.shelve.rebuilding of another hash (or damaged) blocked every
    rebuild, with advice to use another --shelve or to rebuild, which looped."""
    make_tree("images", 4)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert index_cli.main(["-d", "images", "-s", "db.shelve.rebuilding", "-q", "-j", "1",
                           "--algorithm", "phash"]) == 0
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild"]) == 0
    err = capsys.readouterr().err
    assert "db.shelve.rebuilding: left by a stopped --rebuild, made with phash" in err, err
    assert "started again" in err
    assert index_cli.main(["-d", "images", "-s", "db.shelve.rebuilding", "-q", "-j", "1"]) == 0
    with open("db.shelve.rebuilding", "r+b") as damaged:
        damaged.seek(4096)
        damaged.write(b"\xde\xad" * 4096)
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild"]) == 0
    assert "left by a stopped --rebuild, damaged" in capsys.readouterr().err
    Path("db.shelve.rebuilding").write_text("someone's notes\n")
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild"]) == 2
    err = capsys.readouterr().err
    assert "is the name --rebuild builds under: move that file away" in err, err
    assert Path("db.shelve.rebuilding").read_text() == "someone's notes\n"


def test_rebuild_through_a_symlink_builds_beside_the_store_and_keeps_to_its_folder(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    make_tree("images", 4)
    make_tree("others", 2, start_seed=30)
    os.mkdir("stores")
    assert index_cli.main(["-d", "images", "-s", "stores/db.shelve", "-q", "-j", "1"]) == 0
    os.symlink("stores/db.shelve", "link.shelve")
    os.mkdir("images/more")
    shutil.copy("images/cat0/image_0000.jpg", "images/more/copy.jpg")
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "link.shelve", "-q", "-j", "1", "--rebuild"]) == 0
    assert not os.path.exists("link.shelve.rebuilding")
    with Store.open_for_reading("stores/db.shelve") as store:
        assert store.image_count() == 5
    # Another folder: refused before any hashing, as a plain run refuses it.
    assert index_cli.main(["-d", "others", "-s", "link.shelve", "-q", "-j", "1", "--rebuild"]) == 2
    err = capsys.readouterr().err
    assert f"indexes {in_tmp / 'images'}, not others; --rebuild builds a store again" in err, err
    # A dangling link: a store made through it, as a plain run does.
    os.symlink("stores/new.shelve", "dangling.shelve")
    assert index_cli.main(["-d", "others", "-s", "dangling.shelve", "-q", "-j", "1",
                           "--rebuild"]) == 0
    assert os.path.isfile("stores/new.shelve")


def test_a_rebuild_refused_counts_the_store_and_drops_what_changed_and_cannot_be_read(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    make_tree("images", 6)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    os.mkdir("empty")
    capsys.readouterr()
    # An empty folder in its place (a disk not mounted): not an empty store.
    shutil.move("images", "away")
    os.mkdir("images")
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild"]) == 2
    out = capsys.readouterr().out
    assert "holds no image that could be indexed" in out and "6 images in the store" in out, out
    os.rmdir("images")
    shutil.move("away", "images")
    # A stored file rewritten since and unreadable now is dropped, as a plain run drops it.
    Path("images/cat0/image_0002.jpg").write_bytes(b"\xff\xd8 truncated")
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild"]) == 0
    with Store.open_for_reading("db.shelve") as store:
        assert store.image_count() == 5


def test_rebuild_refuses_what_it_cannot_do_before_hashing(in_tmp: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    make_tree("images", 4)
    Path("notes.txt").write_text("not a store\n")
    assert index_cli.main(["-d", "images", "-s", "notes.txt", "-q", "--rebuild"]) == 2
    assert "notes.txt: exists and is not a neardup store" in capsys.readouterr().err
    assert not os.path.exists("notes.txt.rebuilding")
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "--rebuild",
                           "--moved-from", "old"]) == 2
    assert "--moved-from does nothing with --rebuild" in capsys.readouterr().err
    # A store that does not exist yet is simply built.
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild"]) == 0
    assert "4 images in the store" in capsys.readouterr().out
    assert not any(name.startswith("db.shelve.rebuilding") for name in os.listdir("."))
    # Another writer on the store when the copy comes: the rebuilt store is kept, and the same
    # command then copies it in without hashing again.
    from neardup.core.storefile import WriterLock

    make_tree("images/more", 2, start_seed=40)
    writer = WriterLock.take("db.shelve")
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild"]) == 2
    err = capsys.readouterr().err
    assert "another index.py is writing to this store" in err
    assert "the rebuilt store is kept in db.shelve.rebuilding" in err
    writer.release()
    with Store.open_for_reading("db.shelve") as store:
        assert store.image_count() == 4
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", "--rebuild"]) == 0
    assert "indexed 0, unchanged 6" in capsys.readouterr().out
    with Store.open_for_reading("db.shelve") as store:
        assert store.image_count() == 6
    assert not any(name.startswith("db.shelve.rebuilding") for name in os.listdir("."))
