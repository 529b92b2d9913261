"""The store under failures: damage, read-only media, locks, foreign files, failed mounts,
files that change without saying so, odd names, killed indexers, and inputs that are only read."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

import neardup.core.discovery as discovery_module
import neardup.core.storefile as storefile_module
from neardup.cli import index as index_cli
from neardup.core import indexing
from neardup.core.hashing import Recipe, hash_file
from neardup.core.store import RACY, Store
from neardup.errors import StoreError

from .conftest import PROJECT_ROOT
from .imagegen import make_tree, save, textured
from .test_index import buckets, committed_count, make_large_tree

INDEX = [sys.executable, str(PROJECT_ROOT / "index.py")]
SEARCH = [sys.executable, str(PROJECT_ROOT / "search.py")]


def run(command: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, input=stdin, timeout=120,
                          errors="surrogateescape")


def index(*extra: str) -> int:
    return index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", *extra])


def dump(path: str) -> list[str]:
    """A store's content as SQL, whatever pages it sits in (a reader may move the WAL in)."""
    with closing(sqlite3.connect(path)) as database:
        return list(database.iterdump())


def relpaths() -> set[str]:
    return {path for paths in buckets().values() for path in paths}


# -- values another program wrote ---------------------------------------------------------------

RECIPE = '{"algorithm": "dhash", "hash_size": %s, "exact": %s, "preprocess_version": 6}'


@pytest.mark.parametrize(("name", "value", "said"), [
    ("recipe", RECIPE % ("1e999", "false"), "its recipe cannot be used here: its fields are not"),
    ("recipe", RECIPE % ("7", "false"), "its recipe cannot be used here: dhash-7 (49 bits,"
     " normalised v6) is not whole bytes"),
    ("recipe", RECIPE % ("8", '"yes"'), "its recipe cannot be used here: its fields are not"),
    ("recipe", RECIPE % ("true", "false"), "its recipe cannot be used here: its fields are not"),
    ("recipe", "[1]", "its recipe cannot be used here: '[1]' is not a recipe"),
    ("recipe", "notjson", "its neardup_meta table is not understood (recipe is 'notjson', not a"
     " recipe)"),
    ("feature_recipe", "notjson", "its neardup_meta table is not understood (feature_recipe is"
     " 'notjson', not a recipe)"),
    ("feature_recipe", "[1, 2]", "its neardup_meta table is not understood (feature_recipe is"),
    ("feature_recipe", '{"extractor": "orb"}', "its neardup_features table is missing, though"
     " neardup_meta records local features (README: Checking and repairing a store)"),
    ("changes_since", "abc", "its neardup_meta table is not understood (changes_since is 'abc',"
     " not a whole number)"),
], ids=["huge size", "size 7", "exact a word", "size true", "a list", "not JSON", "features not JSON",
        "features a list", "features without their table", "a log position not a number"])
def test_a_meta_value_written_by_another_program_is_one_line(
        in_tmp: Path, capsys: pytest.CaptureFixture[str], name: str, value: str, said: str) -> None:
    """A review: such values ended search.py or index.py in a JSONDecodeError, TypeError,
    ValueError or OverflowError traceback, and a recipe of 7 x 7 bits or `"exact": "yes"` was
    taken (one "not a 49-bit hash" line for every entry)."""
    features = name == "feature_recipe" and value[0] != "{"  # a store that keeps them
    if features:
        pytest.importorskip("cv2", reason="local features need the features extra (OpenCV)")
    make_tree("images", 3)
    assert index(*(["--features"] if features else [])) == 0
    with closing(sqlite3.connect("db.shelve")) as database, database:
        database.execute("INSERT OR REPLACE INTO neardup_meta VALUES (?, ?)", (name, value))
    capsys.readouterr()
    from neardup.cli import search as search_cli

    query = str(next(Path("images").rglob("*.jpg")))
    # changes_since is read by index.py only (search.py never needs the log's start).
    commands = [index] + ([] if name == "changes_since" else [
        lambda: search_cli.main(["-s", "db.shelve", "-q", query])])
    for command in commands:
        assert command() == 2
        err = capsys.readouterr().err
        assert err.split(": error: db.shelve: ")[1].startswith(said), err
        assert len(err.splitlines()) == 1, err
    assert Path("db.shelve").exists()


def test_a_feature_recipe_deleted_by_another_program_is_one_line_not_a_silent_hash_search(
        in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A review: with the recipe deleted and the records left, searches answered by the hash
    alone without a word (a crop went unfound), and index.py --features would have kept records
    of a recipe no one knows."""
    pytest.importorskip("cv2", reason="local features need the features extra (OpenCV)")
    from neardup.api import open_store
    from neardup.cli import search as search_cli

    make_tree("images", 3)
    assert index("--features") == 0
    query = str(next(Path("images").rglob("*.jpg")))
    opened = open_store("db.shelve")  # open before: told at its next call
    assert opened.search(query)[0].verified
    with closing(sqlite3.connect("db.shelve")) as database, database:
        database.execute("DELETE FROM neardup_meta WHERE name = 'feature_recipe'")
    with pytest.raises(StoreError, match=r"\(no feature_recipe beside its neardup_features"):
        opened.search(query)
    opened.close()
    before = dump("db.shelve")
    capsys.readouterr()
    for command in (lambda: index("--features"), index,
                    lambda: search_cli.main(["-s", "db.shelve", "-q", query])):
        assert command() == 2
        err = capsys.readouterr().err
        assert err.split(": error: db.shelve: ")[1] == (
            "its neardup_meta table is incomplete or not understood (no feature_recipe beside"
            " its neardup_features table); build a new store (README: Checking and repairing"
            " a store)\n"), err
    assert dump("db.shelve") == before


def test_entries_that_all_disagree_with_the_recipe_are_said_in_a_few_lines(
        in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A recipe edited to 16 x 16 bits on a store of 64-bit keys: every entry was said, one line
    each (985 lines in a review). Twenty are, then one line says there are more."""
    from neardup.cli import search as search_cli
    from neardup.core.store import MAX_PROBLEMS_SAID

    with Store.open_for_writing("db.shelve", Recipe(), str(in_tmp), {}) as store:
        store.shelf.update({f"{number:016x}": [f"{number}.jpg"] for number in range(30)})
    with closing(sqlite3.connect("db.shelve")) as database, database:
        database.execute("UPDATE neardup_meta SET value = ? WHERE name = 'recipe'",
                         (RECIPE.replace('"hash_size": %s', '"hash_size": 16') % "false",))
    save(textured(1), "query.jpg", quality=90)
    capsys.readouterr()
    assert search_cli.main(["-s", "db.shelve", "-q", "query.jpg"]) == 1
    said = capsys.readouterr().err.splitlines()
    assert len(said) == MAX_PROBLEMS_SAID + 1, said
    assert said[0].endswith(": not a 256-bit hash in lowercase hex; skipped")
    assert said[-1] == "search.py: db.shelve: more problems like these, not listed"


def test_searching_a_store_that_holds_no_images_says_so(
        in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What an index.py stopped before its first batch leaves: searched, it answered nothing and
    exit 1 without a word, as if there were no match (a review)."""
    from neardup.cli import search as search_cli

    Path("images").mkdir()
    with Store.open_for_writing("db.shelve", Recipe(), str(in_tmp / "images"), {}):
        pass
    save(textured(77), "query.jpg", quality=90)  # like no image of make_tree's below
    assert search_cli.main(["-s", "db.shelve", "-q", "query.jpg"]) == 1
    assert capsys.readouterr().err == (
        "search.py: db.shelve: holds no images yet (did index.py stop before its first"
        " batch?); index.py fills it\n")
    # Told by the table itself, not by the counters a hand edit can change (a review).
    make_tree("images", 2)
    assert index() == 0
    for count, said in (("0", ""), ("'abc'", "search.py: error: db.shelve: its neardup_counts"
                                               " table is not understood ('abc' hashes, ")):
        with closing(sqlite3.connect("db.shelve")) as database, database:
            database.execute(f"UPDATE neardup_counts SET n = {count} WHERE name = 'hashes'")
        capsys.readouterr()
        assert search_cli.main(["-s", "db.shelve", "-q", "query.jpg"]) == (2 if said else 1)
        err = capsys.readouterr().err
        assert err.startswith(said) and len(err.splitlines()) == (1 if said else 0), err


# -- damage -------------------------------------------------------------------------------------


def damage(path: str, how: str) -> None:
    """Flip bytes in the middle of the store: the header of its middle page (its structure), or
    one stored key inside the table's page (a value that no longer matches its index)."""
    data = bytearray(Path(path).read_bytes())
    if how == "page":
        middle = (len(data) // 4096 // 2) * 4096
        for position in range(middle, middle + 48):
            data[position] ^= 0xA5
    elif how == "zeros":  # a review's: SQLite then lists dozens of problems in one row
        data[4096 + 100:4096 * 2] = bytes(4096 - 100)
    else:
        with Store.open_for_reading(path) as store:
            key = next(iter(store.shelf.keys())).encode()
        first = data.index(key)  # in the Dict table's page; the index holds another copy
        data[first:first + 4] = b"zzzz"
    Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["page", "key", "zeros"])
def test_a_damaged_store_is_one_line_and_exit_2_in_every_command(indexed: Path, how: str) -> None:
    Path("manifest.csv").write_text("file,role,group,source,edit\n")
    damage("db.shelve", how)
    damaged = Path("db.shelve").read_bytes()
    commands = {
        "index": (INDEX + ["-d", "images", "-s", "db.shelve", "-q", "-j", "1"], None),
        "search -q": (SEARCH + ["-s", "db.shelve", "-q", "images/copy.jpg"], None),
        "search -m 0": (SEARCH + ["-s", "db.shelve", "-q", "images/copy.jpg", "-m", "0"], None),
        "--groups": (SEARCH + ["-s", "db.shelve", "--groups"], None),
        "--evaluate": (SEARCH + ["-s", "db.shelve", "--evaluate", "manifest.csv"], None),
        "--stdin": (SEARCH + ["-s", "db.shelve", "--stdin"], "images/copy.jpg\n"),
    }
    for name, (command, stdin) in commands.items():
        result = run(command, stdin)
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert len(result.stderr.splitlines()) == 1, (name, result.stderr)
        assert "the store is damaged" in result.stderr and "integrity_check" in result.stderr, name
        assert len(result.stderr) < 400 and "\\n" not in result.stderr, (name, result.stderr)
        assert result.stdout == "", name
    assert Path("db.shelve").read_bytes() == damaged, "nothing was written to the damaged store"


# -- read-only media, and locks ---------------------------------------------------------------


def leave_wal(store: str, dataset: str, count: int) -> None:
    """Commit `count` more images and die without closing: they stay in the -wal file."""
    code = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(PROJECT_ROOT)!r})\n"
        "from neardup.core.store import Store, IndexedFile\n"
        "from neardup.core.hashing import Recipe\n"
        f"store = Store.open_for_writing({store!r}, Recipe(), {dataset!r}, {{}})\n"
        "store._db.raw.execute('PRAGMA wal_autocheckpoint = 0')\n"
        f"store.apply([IndexedFile(f'wal/{{n}}.jpg', 1, 1, format(n * 7919 + 12345, '016x'))"
        f" for n in range({count})], [])\n"
        "os._exit(0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def read_only_view(source: Path, command: str) -> subprocess.CompletedProcess[str]:
    """Run `command` where `source` is mounted read-only at /tmp/<...>/ro (a private mount)."""
    view = source.parent / "ro-view"
    view.mkdir(exist_ok=True)
    script = (f"mount --bind {source} {view} && mount -o remount,bind,ro {view} && cd {view}"
              f" && {command}")
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture()
def mountable(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    result = read_only_view(probe, "touch x")
    if "Read-only file system" not in result.stderr:
        pytest.skip("a read-only bind mount needs root and `unshare -m` (" +
                    (result.stderr.strip().splitlines() or ["not available"])[-1] + ")")


@pytest.mark.usefixtures("mountable")
class TestReadOnlyMedia:
    """A real read-only bind mount (unshare -m, mount --bind -o ro), as root."""

    def stored_images(self, result: subprocess.CompletedProcess[str]) -> int:
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["images"]

    def health_command(self) -> str:
        probe = (f"import sys, json; sys.path.insert(0, {str(PROJECT_ROOT)!r});"
                 " from neardup.service.checker import Checker;"
                 " c = Checker('db.shelve'); print(json.dumps(c.health()))")
        return f"{sys.executable} -c \"{probe}\""

    def test_commits_still_in_the_wal_are_read(self, indexed: Path) -> None:
        leave_wal("db.shelve", str(indexed / "images"), 50)
        assert os.path.getsize("db.shelve-wal") > 0 and os.path.exists("db.shelve-shm")
        before = Path("db.shelve").read_bytes()
        assert self.stored_images(read_only_view(indexed, self.health_command())) == 57
        searched = read_only_view(indexed, " ".join(SEARCH + ["-s", "db.shelve", "-q",
                                                               "images/copy.jpg"]))
        assert searched.returncode == 0 and "images/copy.jpg" in searched.stdout
        assert Path("db.shelve").read_bytes() == before

    def test_a_wal_without_its_shm_is_refused_not_answered_from_the_main_file(
        self, indexed: Path
    ) -> None:
        leave_wal("db.shelve", str(indexed / "images"), 50)
        os.remove("db.shelve-shm")
        result = read_only_view(indexed, " ".join(SEARCH + ["-s", "db.shelve", "-q",
                                                             "images/copy.jpg"]))
        assert result.returncode == 2 and result.stdout == ""
        assert len(result.stderr.splitlines()) == 1
        assert "its latest commits are in db.shelve-wal" in result.stderr

    def test_a_store_without_a_wal_is_read_on_read_only_media(self, indexed: Path) -> None:
        for leftover in ("db.shelve-wal", "db.shelve-shm"):
            if os.path.exists(leftover):
                os.remove(leftover)
        assert self.stored_images(read_only_view(indexed, self.health_command())) == 7


def test_a_locked_store_is_waited_for_then_refused_never_read_stale(
    indexed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exclusive lock held past the busy timeout is an error, never an immutable open."""
    monkeypatch.setattr(storefile_module, "BUSY_SECONDS", 0.5)
    holder = sqlite3.connect("db.shelve", isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE neardup_meta SET value = value WHERE name = 'x'")  # takes the lock
    try:
        with pytest.raises(StoreError, match="locked"):
            Store.open_for_reading("db.shelve")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Store.open_for_reading("db.shelve") as store:
        assert store.image_count() == 7 and not store.immutable


# -- what is at the store path ------------------------------------------------------------------


def test_a_foreign_sqlite_file_is_left_byte_for_byte_untouched(
    in_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    make_tree("images", 2)
    with closing(sqlite3.connect("db.shelve")) as connection, connection:
        connection.execute("CREATE TABLE people (name TEXT)")
        connection.execute("INSERT INTO people VALUES ('Ada')")
    before = Path("db.shelve").read_bytes()
    assert before[18:20] == b"\x01\x01"  # rollback journal, not WAL
    assert index() == 2
    assert "exists and is not a neardup store" in capsys.readouterr().err
    assert Path("db.shelve").read_bytes() == before
    assert sorted(os.listdir(".")) == ["db.shelve", "images"]  # no -wal, -shm or lock either


@pytest.mark.parametrize("special", ["/dev/null", "fifo"])
def test_a_special_file_as_the_store_is_refused_before_anything_is_written(
    in_tmp: Path, special: str, capsys: pytest.CaptureFixture
) -> None:
    make_tree("images", 2)
    if special == "fifo":
        os.mkfifo("fifo")
    journal_before = os.path.exists(special + "-journal")
    assert index_cli.main(["-d", "images", "-s", special, "-q", "-j", "1"]) == 2
    err = capsys.readouterr().err
    assert "is not a regular file" in err and len(err.splitlines()) == 1
    assert os.path.exists(special + "-journal") == journal_before
    assert not os.path.exists(special + ".lock") or special == "/dev/null"
    result = run(SEARCH + ["-s", special, "-q", "images/cat0/image_0000.jpg"])
    assert result.returncode == 2 and "is not a regular file" in result.stderr


def test_a_store_in_a_missing_folder_says_so(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    make_tree("images", 2)
    assert index_cli.main(["-d", "images", "-s", "nowhere/db.shelve", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"the folder {in_tmp / 'nowhere'} does not exist" in err
    assert "lock" not in err


def test_an_empty_dataset_leaves_no_store_and_no_lock(in_tmp: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    os.makedirs("empty")
    assert index_cli.main(["-d", "empty", "-s", "db.shelve", "-q"]) == 1
    assert sorted(os.listdir(".")) == ["empty"]
    os.makedirs("junk")
    Path("junk/text.jpg").write_text("not a picture")
    assert index_cli.main(["-d", "junk", "-s", "db.shelve", "-q", "-j", "1"]) == 1
    assert sorted(os.listdir(".")) == ["empty", "junk"]


# -- a failed mount, an unreadable folder --------------------------------------------------------


def test_an_empty_dataset_folder_never_empties_a_store(in_tmp: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    make_tree("images", 6)
    assert index() == 0
    before = buckets()
    shutil.rmtree("images")
    os.makedirs("images")  # a mount point whose disk did not mount
    capsys.readouterr()
    for extra in ([], ["--allow-mass-removal"]):
        assert index(*extra) == 2
        out = capsys.readouterr().out
        assert out.startswith("db.shelve: nothing written: images holds no images at all")
        assert "6 images in the store" in out
        assert buckets() == before


def test_removing_more_than_half_needs_the_option(in_tmp: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    relpaths_made = make_tree("images", 6)
    assert index() == 0
    for relpath in relpaths_made[:3]:  # half: allowed
        os.remove(f"images/{relpath}")
    capsys.readouterr()
    assert index() == 0
    assert "removed 3" in capsys.readouterr().out
    os.remove(f"images/{relpaths_made[3]}")
    os.remove(f"images/{relpaths_made[4]}")  # 2 of the 3 left: more than half
    assert index() == 2
    out = capsys.readouterr().out
    assert "nothing written: this run would remove 2 of the store's 3 images" in out
    assert "--allow-mass-removal" in out
    assert len(relpaths()) == 3
    assert index("--allow-mass-removal") == 0
    assert "removed 2" in capsys.readouterr().out
    assert relpaths() == {relpaths_made[5]}


def test_a_folder_that_cannot_be_listed_keeps_its_entries(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    make_tree("images", 10, folders=2)
    assert index() == 0
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if str(path).endswith("cat1"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(discovery_module.os, "scandir", scandir)
    capsys.readouterr()
    assert index() == 0
    captured = capsys.readouterr()
    assert "cat1: cannot list folder (Permission denied)" in captured.err
    assert "removed 0" in captured.out and "skipped 1" in captured.out
    assert len(relpaths()) == 10
    monkeypatch.setattr(discovery_module.os, "scandir", real_scandir)
    assert index() == 0
    assert "indexed 0, unchanged 10" in capsys.readouterr().out  # nothing hashed again


def test_a_dataset_folder_that_cannot_be_listed_is_one_line_and_a_failure(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A review: the dataset folder itself unreadable said "cannot list folder", "skipped 1" and
    exited 0, though the run could do none of its job."""
    make_tree("images", 4, folders=1)
    assert index() == 0
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if os.path.abspath(path) == os.path.abspath("images"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(discovery_module.os, "scandir", scandir)
    capsys.readouterr()
    assert index() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (
        "images: cannot list folder (Permission denied); the store is as it was") in err, err
    assert len(relpaths()) == 4


# -- files that change without saying so ---------------------------------------------------------


def same_size_pictures(path_a: str, path_b: str) -> None:
    """Two different pictures in files of exactly the same size (uncompressed BMP)."""
    textured(1).save(path_a, format="BMP")
    textured(2).save(path_b, format="BMP")
    assert os.path.getsize(path_a) == os.path.getsize(path_b)


@pytest.mark.parametrize("how", ["replaced", "rewritten"])
def test_a_changed_file_that_keeps_its_size_and_mtime_is_hashed_again(
    in_tmp: Path, how: str, capsys: pytest.CaptureFixture
) -> None:
    os.makedirs("images")
    same_size_pictures("images/photo.bmp", "other.bmp")
    old_time = time.time_ns() - 3600 * 10**9
    os.utime("images/photo.bmp", ns=(old_time, old_time))
    time.sleep(0.01)
    assert index() == 0
    new_hash = hash_file("other.bmp", Recipe()).hex()
    if how == "replaced":  # mv over it, then touch -r: another inode, the same size and mtime
        shutil.copyfile("other.bmp", "images/.photo.tmp")
        os.utime("images/.photo.tmp", ns=(old_time, old_time))
        os.replace("images/.photo.tmp", "images/photo.bmp")
    else:  # rewritten in place within the same mtime tick: only ctime moves
        Path("images/photo.bmp").write_bytes(Path("other.bmp").read_bytes())
        os.utime("images/photo.bmp", ns=(old_time, old_time))
    capsys.readouterr()
    assert index() == 0
    assert "indexed 1, unchanged 0" in capsys.readouterr().out
    assert buckets() == {new_hash: ["photo.bmp"]}
    result = run(SEARCH + ["-s", "db.shelve", "-q", "other.bmp", "-m", "0"])
    assert result.returncode == 0 and "images/photo.bmp" in result.stdout


def test_files_recorded_right_after_they_changed_are_checked_again_next_run(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(indexing, "RACY_NS", 300_000_000)  # 0.3 s instead of 2, to keep it short
    make_tree("images", 3)
    time.sleep(0.5)
    save(textured(99), "images/cat0/image_0000.jpg", quality=92)  # changed just before the run
    assert index() == 0
    with Store.open_for_reading("db.shelve") as store:
        states = store.file_states()
    assert states["cat0/image_0000.jpg"].ctime_ns == RACY
    assert states["cat1/image_0001.jpg"].ctime_ns not in (RACY, 0)
    hashed: list[str] = []
    real_hash_file = indexing.hash_file

    def counting(path: str, *args: object) -> object:
        hashed.append(os.path.relpath(path, "images"))
        return real_hash_file(path, *args)

    monkeypatch.setattr(indexing, "hash_file", counting)
    time.sleep(0.5)
    capsys.readouterr()
    assert index() == 0
    assert "indexed 0, unchanged 3" in capsys.readouterr().out
    assert hashed == ["cat0/image_0000.jpg"]  # only the racily recorded one, hashed again
    with Store.open_for_reading("db.shelve") as store:
        assert store.file_states()["cat0/image_0000.jpg"].ctime_ns != RACY
    hashed.clear()
    assert index() == 0
    assert hashed == []


def test_a_bug_while_hashing_is_a_bug_not_a_bad_image(
    indexed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = buckets()
    os.utime("images/copy.jpg", ns=(1, 1))  # so that it is hashed again

    def broken(*args: object) -> object:
        raise TypeError("a bug in our code")

    monkeypatch.setattr(indexing, "hash_file", broken)
    with pytest.raises(TypeError, match="a bug in our code"):
        index()
    assert buckets() == before  # its entry was not dropped as if the image were bad


# -- names --------------------------------------------------------------------------------------


# A backslash and an n, and a newline: printed differently (\\n and \n) in plain output.
ODD_NAMES = ["back\\slash.jpg", "new\nline.jpg", os.fsdecode(b"caf\xe9.jpg"), "tab\there.jpg",
             "new\\nline.jpg"]


def exact(record: dict, key: str) -> object:
    """A name as JSON gives it back: from `key`_base64 (its bytes) where it is not UTF-8."""
    import base64

    encoded = record.get(f"{key}_base64")
    if encoded is None:
        return record[key]
    if isinstance(encoded, list):
        return [os.fsdecode(base64.b64decode(item)) if item is not None else plain
                for item, plain in zip(encoded, record[key], strict=True)]
    return os.fsdecode(base64.b64decode(encoded))


def test_paths_round_trip_whatever_bytes_they_hold(in_tmp: Path) -> None:
    for number, name in enumerate(ODD_NAMES):
        save(textured(40 + number), os.path.join("images", "odd", name), quality=92)
        save(textured(40 + number), f"query{number}.jpg", quality=92)  # the same picture
    assert index() == 0
    assert relpaths() == {f"odd/{name}" for name in ODD_NAMES}
    queries = [argument for number in range(len(ODD_NAMES))
               for argument in ("-q", f"query{number}.jpg")]
    for distance in ("0", "4"):
        result = run(SEARCH + ["-s", "db.shelve", *queries, "-m", distance, "--json"])
        assert result.returncode == 0, result.stderr
        records = json.loads(result.stdout)
        assert [record["query"] for record in records] == queries[1::2]
        for record, name in zip(records, ODD_NAMES, strict=True):
            assert [exact(m, "relpath") for m in record["matches"]] == [f"odd/{name}"]
            assert exact(record["matches"][0], "path") == os.path.join("images", "odd", name)
    for name in ODD_NAMES:
        plain = run(SEARCH + ["-s", "db.shelve", "-q", os.path.join("images", "odd", name),
                              "-m", "0"])
        assert plain.returncode == 0 and len(plain.stdout.splitlines()) == 1, plain.stderr
        shown = name.translate({ord("\\"): "\\\\", ord("\n"): "\\n", ord("\t"): "\\t"})
        assert plain.stdout == f"0\timages/odd/{shown}\n"
        assert "outside the dataset" not in plain.stderr
    stdin = "".join(f"query{number}.jpg\n" for number in range(len(ODD_NAMES)))
    served = run(SEARCH + ["-s", "db.shelve", "--stdin", "-m", "0"], stdin)
    assert served.returncode == 0, served.stderr
    assert [exact(json.loads(line)["matches"][0], "relpath")
            for line in served.stdout.splitlines()] == [f"odd/{name}" for name in ODD_NAMES]
    # The stored files themselves as queries on standard input (one per line: not the newline one).
    plain_names = [name for name in ODD_NAMES if "\n" not in name]
    served = run(SEARCH + ["-s", "db.shelve", "--stdin", "-m", "0"],
                 "".join(f"images/odd/{name}\n" for name in plain_names))
    assert served.returncode == 0, served.stderr
    answers = [json.loads(line) for line in served.stdout.splitlines()]
    assert [exact(answer, "query") for answer in answers] == [
        f"images/odd/{n}" for n in plain_names]
    assert [exact(answer["matches"][0], "relpath") for answer in answers] == [
        f"odd/{name}" for name in plain_names]
    for number in range(len(ODD_NAMES)):  # a second copy of each, so that --groups has groups
        save(textured(40 + number), f"images/copies/{number}.jpg", quality=92)
    assert index() == 0
    grouped = run(SEARCH + ["-s", "db.shelve", "--groups", "-m", "0", "--json"])
    assert grouped.returncode == 0 and "outside the dataset" not in grouped.stderr
    assert sorted(sorted(exact(group, "relpaths")) for group in json.loads(grouped.stdout)) == sorted(
        sorted([f"copies/{number}.jpg", f"odd/{name}"]) for number, name in enumerate(ODD_NAMES))


# -- a killed indexer ---------------------------------------------------------------------------


def test_workers_of_a_killed_indexer_exit_without_a_word(in_tmp: Path) -> None:
    make_large_tree(in_tmp / "images", 600)
    command = INDEX + ["-d", "images", "-s", "db.shelve", "-q", "-j", "2", "--batch-size", "10"]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as process:
        deadline = time.monotonic() + 60
        while committed_count(in_tmp / "db.shelve") < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        # The workers (and the resource tracker) still hold the pipe: read until they are gone.
        _out, err = process.communicate(timeout=60)
    if committed_count(in_tmp / "db.shelve") == 600:
        pytest.skip("the indexer finished before it could be killed")
    assert "Traceback" not in err and "BrokenPipe" not in err and "leaked" not in err, err
    assert err == ""


# -- inputs are only read -----------------------------------------------------------------------


def test_a_source_folder_holding_an_archive_is_not_written_to(in_tmp: Path) -> None:
    import tarfile

    make_tree("pictures", 4)
    os.makedirs("source")
    with tarfile.open("source/photos.tar.gz", "w:gz") as bundle:
        bundle.add("pictures", arcname="pictures")
    os.chmod("source", 0o755)
    before = {name: os.stat(os.path.join("source", name)).st_mtime_ns
              for name in os.listdir("source")}
    folder_time = os.stat("source").st_mtime_ns
    from neardup.cli import gather as gather_cli

    assert gather_cli.main(["--source", "source", "--output", "out", "--samples", "1", "-q",
                            "--cache-dir", "cache", "--seed", "1"]) == 0
    assert {name: os.stat(os.path.join("source", name)).st_mtime_ns
            for name in os.listdir("source")} == before
    assert os.stat("source").st_mtime_ns == folder_time
    assert os.listdir("cache/unpacked")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_output_and_unpacked_folders_have_the_usual_mode(in_tmp: Path, umask: int) -> None:
    import tarfile

    make_tree("pictures", 4)
    with tarfile.open("photos.tar.gz", "w:gz") as bundle:
        bundle.add("pictures", arcname="pictures")
    from neardup.cli import gather as gather_cli

    previous = os.umask(umask)
    try:
        assert gather_cli.main(["--source", "photos.tar.gz", "--output", "out", "--samples", "1",
                                "-q", "--cache-dir", "cache", "--seed", "1"]) == 0
    finally:
        os.umask(previous)
    wanted = 0o777 & ~umask
    assert stat.S_IMODE(os.stat("out").st_mode) == wanted
    (unpacked,) = os.listdir("cache/unpacked")
    assert stat.S_IMODE(os.stat(os.path.join("cache/unpacked", unpacked)).st_mode) == wanted


# -- the last checkpoint on a full disk ----------------------------------------------------------


def index_failing_at_checkpoint(store: str, fault: str) -> subprocess.CompletedProcess[str]:
    """index.py of images/ into `store`, its last checkpoint meeting a real fault: "full" fills
    the store's file system first (ENOSPC: SQLITE_FULL), "io" lowers the process's file size
    limit to the store's size (EFBIG: a disk I/O error)."""
    code = (
        "import os, resource, signal, sys\n"
        f"sys.path.insert(0, {str(PROJECT_ROOT)!r})\n"
        "from neardup.core.store import Store\n"
        "from neardup.cli import index\n"
        "original = Store.checkpoint\n"
        "def failing(self):\n"
        f"    if {fault!r} == 'full':\n"
        "        filler = os.open(os.path.join(os.path.dirname(os.path.abspath(self.path)),"
        " 'filler'), os.O_WRONLY | os.O_CREAT)\n"
        "        try:\n"
        "            while True:\n"
        "                os.write(filler, bytes(65536))\n"
        "        except OSError:\n"
        "            os.close(filler)\n"
        "    else:\n"
        "        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "        size = os.path.getsize(self.path)\n"
        "        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))\n"
        "    return original(self)\n"
        "Store.checkpoint = failing\n"
        f"sys.exit(index.main(['-d', 'images', '-s', {store!r}, '-q', '-j', '1']))\n")
    command = [sys.executable, "-c", code]
    if fault == "full":  # a small file system of its own, in a private mount namespace
        os.makedirs("small", exist_ok=True)
        command = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=2m tmpfs small && exec'
                   ' "$@"', "sh", *command]
    return run(command)


def test_a_checkpoint_on_a_full_disk_names_the_full_disk(in_tmp: Path) -> None:
    """A review: on a full disk the last checkpoint failed (SQLITE_FULL) and index.py said a
    search had held an older view of the store, and to run it again once searches were done:
    no search ran, and the cause was never named."""
    make_tree("images", 5)
    done = index_failing_at_checkpoint("small/db.shelve", "full")
    if "Operation not permitted" in done.stderr or "unshare" in done.stderr:
        pytest.skip(f"a tmpfs of its own needs root and `unshare -m` ({done.stderr.strip()})")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "index.py: small/db.shelve-wal still holds this run's last commits: the disk is full, so"
        " they could not be moved into small/db.shelve (SQLite: database or disk is full); they"
        " are safe in the -wal: free some space and run index.py again (until then copy"
        " small/db.shelve only with its -wal)"]


def test_a_checkpoint_meeting_a_disk_io_error_names_it(in_tmp: Path) -> None:
    make_tree("images", 5)
    done = index_failing_at_checkpoint("db.shelve", "io")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "index.py: db.shelve-wal still holds this run's last commits: a disk I/O error stopped"
        " moving them into db.shelve (SQLite: disk I/O error); they are safe in the -wal: check"
        " the disk (is it full?) and run index.py again (until then copy db.shelve only with its"
        " -wal)"]
    assert index() == 0  # the next run moves them, and every image is there
    assert not os.path.exists("db.shelve-wal") or os.path.getsize("db.shelve-wal") == 0
    assert len(relpaths()) == 5


def test_a_trigger_another_program_put_on_the_store_is_refused_before_writing(
        in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A hostile review: a trigger deleting every new bucket made index.py say it had indexed
    new images that no search found, and list them again at every run."""
    make_tree("images", 3)
    assert index() == 0
    with closing(sqlite3.connect("db.shelve")) as database, database:
        database.execute("CREATE TRIGGER evil AFTER INSERT ON Dict BEGIN DELETE FROM Dict WHERE"
                         " key = NEW.key; END")
    before = dump("db.shelve")
    make_tree("images", 6)
    capsys.readouterr()
    assert index() == 2
    err = capsys.readouterr().err
    assert err.split(": error: ")[1] == (
        "db.shelve: holds a trigger neardup did not make ('evil' on Dict), which would change"
        " what index.py writes; drop it (DROP TRIGGER in sqlite3) or build a new store (README:"
        " Checking and repairing a store)\n"), err
    assert dump("db.shelve") == before
    with closing(sqlite3.connect("db.shelve")) as database, database:
        database.execute("DROP TRIGGER evil")
    assert index() == 0
    with Store.open_for_reading("db.shelve") as store:
        assert store.image_count() == 6
