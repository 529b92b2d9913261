"""search.py --stdin driven for real through a pipe (--serve: test_server.py)."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from neardup.cli import index as index_cli

from .conftest import PROJECT_ROOT
from .imagegen import make_tree, save, textured

SEARCH = [sys.executable, str(PROJECT_ROOT / "search.py"), "-s", "db.shelve"]


def index_images() -> None:
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0


def read_line(stream, timeout: float = 30) -> str:  # type: ignore[no-untyped-def]
    """One line from a child's pipe, or fail instead of hanging if it never comes."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no answer within the time limit (not flushed?)"
    return stream.readline()


@pytest.fixture()
def store(in_tmp: Path) -> Path:
    make_tree("images", 6)
    index_images()
    return in_tmp


class TestStdin:
    def test_answers_each_line_at_once_and_sees_new_commits(self, store: Path) -> None:
        with subprocess.Popen(SEARCH + ["--stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as checker:
            assert checker.stdin and checker.stdout
            checker.stdin.write("images/cat0/image_0000.jpg\n")
            checker.stdin.flush()
            answer = json.loads(read_line(checker.stdout))
            assert answer["query"] == "images/cat0/image_0000.jpg"
            assert [m["relpath"] for m in answer["matches"]] == ["cat0/image_0000.jpg"]

            checker.stdin.write("images/missing.jpg\n")  # a bad path
            checker.stdin.flush()
            assert json.loads(read_line(checker.stdout)) == {
                "query": "images/missing.jpg", "error": "file not found (deleted or a broken link?)"}
            checker.stdin.write("\n")  # a blank line: answered too, so answers stay in step
            checker.stdin.flush()
            assert json.loads(read_line(checker.stdout)) == {
                "query": "", "error": "empty line: no file named"}

            # index.py commits new images while the checker runs; no restart needed.
            save(textured(77), "images/new/arrived.jpg", quality=92)
            index_images()
            checker.stdin.write("images/new/arrived.jpg\n")
            checker.stdin.flush()
            answer = json.loads(read_line(checker.stdout))
            assert answer["matches"][0]["relpath"] == "new/arrived.jpg"

            checker.stdin.close()
            assert checker.wait(timeout=30) == 2  # a query failed (the missing file)
            assert checker.stderr and checker.stderr.read() == ""
            assert answer["truncated"] is False

    def test_all_answered_exits_0(self, store: Path) -> None:
        result = run_stdin(b"images/cat0/image_0000.jpg\nimages/cat1/image_0001.jpg\n")
        assert result.returncode == 0
        assert [json.loads(line)["matches"][0]["relpath"] for line in result.stdout.splitlines()] \
            == ["cat0/image_0000.jpg", "cat1/image_0001.jpg"]

    def test_bytes_crlf_fifos_and_devices(self, store: Path) -> None:
        odd_name = os.fsdecode(b"images/caf\xe9.jpg")  # not UTF-8
        shutil.copy("images/cat0/image_0000.jpg", odd_name)
        os.mkfifo("pipe.jpg")
        lines = (b"images/cat0/image_0000.jpg\r\n" + b"images/caf\xe9.jpg\n" + b"pipe.jpg\n"
                 + b"/dev/zero\n" + b"images\n" + b"images/cat1/image_0001.jpg")  # no final \n
        result = run_stdin(lines, env={"PYTHONIOENCODING": "utf-8"})
        answers = [json.loads(line) for line in result.stdout.splitlines()]
        assert [a.get("error") for a in answers] == [
            None, None, "not a regular file (a FIFO, device or socket): not read",
            "not a regular file (a FIFO, device or socket): not read", "is a directory", None]
        # A review: written as \\udce9, which strict JSON parsers (serde_json) refuse. Now
        # U+FFFD, and the exact bytes beside it.
        assert answers[1]["query"] == "images/caf\ufffd.jpg"
        assert base64.b64decode(answers[1]["query_base64"]) == os.fsencode(odd_name)
        for answer in answers:
            json.dumps(answer, ensure_ascii=False).encode("utf-8")  # no lone surrogate left
        assert answers[1]["matches"][0]["relpath"] == "cat0/image_0000.jpg"
        assert answers[0]["query"] == "images/cat0/image_0000.jpg"
        assert result.returncode == 2 and result.stderr == b""

    def test_nul_bytes_and_empty_lines_are_answered_and_the_checker_goes_on(
        self, store: Path
    ) -> None:
        result = run_stdin(b"images/cat0/image_0000.jpg\nx\x00y\n\n\r\n"
                           b"images/cat1/image_0001.jpg\n")
        answers = [json.loads(line) for line in result.stdout.splitlines()]
        assert [a.get("error") for a in answers] == [
            None, "a file name cannot hold a NUL byte", "empty line: no file named",
            "empty line: no file named", None]
        assert result.returncode == 2 and b"Traceback" not in result.stderr

    def test_a_line_longer_than_any_path_is_answered_without_being_kept(
        self, store: Path
    ) -> None:
        """A 100 MB line took 732 MB and its answer held it twice."""
        long_line = b"x" * (3 * 64 * 1024) + b"\n"
        exact = b"y" * (64 * 1024) + b"\n"  # as long as a line may be: looked up
        result = run_stdin(long_line + exact + b"images/cat1/image_0001.jpg\n" + b"z" * 70_000)
        answers = [json.loads(line) for line in result.stdout.splitlines()]
        assert [a.get("error") for a in answers] == [
            "a line of more than 65,536 bytes: no file name is that long",
            "cannot read (file name too long)", None,
            "a line of more than 65,536 bytes: no file name is that long"]
        assert len(result.stdout) < 70_000 + 2_000  # the long lines are not echoed
        assert result.returncode == 2 and b"Traceback" not in result.stderr

    def test_a_damaged_bucket_is_skipped_with_one_line_and_the_rest_are_answered(
        self, store: Path
    ) -> None:
        first = run_stdin(b"images/cat0/image_0000.jpg\n")
        damaged_hash = json.loads(first.stdout)["hash"]
        with sqlite3.connect("db.shelve") as database:
            database.execute("UPDATE Dict SET value = ? WHERE key = ?",
                             (b"not a pickle", damaged_hash.encode()))
        result = run_stdin(b"images/cat0/image_0000.jpg\nimages/cat1/image_0001.jpg\n")
        answers = [json.loads(line) for line in result.stdout.splitlines()]
        assert damaged_hash not in {m["hash"] for m in answers[0]["matches"]}
        assert answers[1]["matches"][0]["relpath"] == "cat1/image_0001.jpg"
        assert result.stderr.count(f"bucket {damaged_hash}".encode()) == 1
        assert b"skipped" in result.stderr and b"Traceback" not in result.stderr

    def test_null_separated_paths_can_hold_line_breaks(self, store: Path) -> None:
        """--null: find -print0 | search.py --stdin --null; without it a name holding a line
        break could not be asked for."""
        shutil.copy("images/cat0/image_0000.jpg", "images/two\nlines.jpg")
        result = run_stdin(b"images/two\nlines.jpg\0images/cat1/image_0001.jpg\r\0\0"
                           + b"x" * 70_000 + b"\0images/cat1/image_0001.jpg", "--null")
        answers = [json.loads(line) for line in result.stdout.splitlines()]
        assert [a.get("error") for a in answers] == [
            None, "file not found (deleted or a broken link?)", "empty path: no file named",
            "a path of more than 65,536 bytes: no file name is that long", None]
        assert answers[0]["query"] == "images/two\nlines.jpg"  # a CR is part of a name here
        assert answers[0]["matches"][0]["relpath"] == "cat0/image_0000.jpg"
        assert answers[4]["matches"][0]["relpath"] == "cat1/image_0001.jpg"
        assert result.returncode == 2 and result.stderr == b""

    def test_null_answers_each_path_as_soon_as_its_nul_arrives(self, store: Path) -> None:
        with subprocess.Popen(SEARCH + ["--stdin", "--null"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as checker:
            assert checker.stdin and checker.stdout
            for name in ("cat0/image_0000.jpg", "cat1/image_0001.jpg"):
                checker.stdin.write(f"images/{name}".encode() + b"\0")
                checker.stdin.flush()  # the pipe stays open: the answer must not wait for more
                answer = json.loads(read_line(checker.stdout))
                assert answer["matches"][0]["relpath"] == name
            checker.stdin.close()
            assert checker.wait(timeout=30) == 0

    def test_mirror_is_applied(self, store: Path) -> None:
        save(ImageOps.mirror(Image.open("images/cat1/image_0001.jpg")), "flipped.jpg", quality=95)
        assert json.loads(run_stdin(b"flipped.jpg\n").stdout)["matches"] == []
        answer = json.loads(run_stdin(b"flipped.jpg\n", "--mirror").stdout)
        assert [m["relpath"] for m in answer["matches"]] == ["cat1/image_0001.jpg"]

    def test_a_cielab_tiff_is_answered_and_so_is_the_next_line(self, store: Path) -> None:
        """A review: a CIELab TIFF (Photoshop's) killed the checker with a traceback; the lines
        after it were never answered. Searched as its RGB picture; with --exact (plain
        ImageHash, which cannot read it), one error line."""
        textured(0).convert("LAB").save("lab.tif")
        lines = b"lab.tif\nimages/cat1/image_0001.jpg\n"
        result = run_stdin(lines)
        answers = [json.loads(line) for line in result.stdout.splitlines()]
        assert [m["relpath"] for m in answers[0]["matches"]] == ["cat0/image_0000.jpg"]
        assert answers[1]["matches"][0]["relpath"] == "cat1/image_0001.jpg"
        assert result.returncode == 0 and result.stderr == b""

        assert index_cli.main(["-d", "images", "-s", "exact.shelve", "-q", "-j", "1",
                               "--exact"]) == 0
        exact = subprocess.run([*SEARCH[:2], "-s", "exact.shelve", "--stdin"], input=lines,
                               capture_output=True, timeout=60)
        answers = [json.loads(line) for line in exact.stdout.splitlines()]
        assert answers[0] == {"query": "lab.tif", "error": "unsupported colour mode LAB with"
                              " --exact (plain ImageHash cannot read it)"}
        assert answers[1]["matches"][0]["relpath"] == "cat1/image_0001.jpg"
        assert exact.returncode == 2 and exact.stderr == b""


def run_stdin(lines: bytes, *options: str,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(SEARCH + ["--stdin", *options], input=lines, capture_output=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_options_that_do_not_apply_are_refused_in_one_line(store: Path) -> None:
    result = subprocess.run(SEARCH + ["--stdin", "--token-file", "token"], input="",
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr == ("search.py: error: --token-file does nothing with --stdin (it is for"
                             " --serve)\n")


def test_the_checker_hashes_as_index_py_does_on_reduced_decodes(in_tmp: Path) -> None:
    """A JPEG large enough to be decoded at reduced scale, and one turned by EXIF: the checker
    must take the recipe's own path (v3 reads its grid knowing what the decoder reduced), so its
    hash of the very file is the stored one, bit for bit."""
    import numpy as np

    from neardup.core.hashing import Recipe, hash_file

    # Low contrast: neighbouring cells within a gray level, where 8-bit rounding ties them.
    y, x = np.mgrid[0:1203, 0:1601]
    faint = 120 + 1.2 * np.sin(x / 150.0) * np.cos(y / 110.0) + x / 1600.0
    save(Image.fromarray(np.clip(faint, 0, 255).astype(np.uint8)), "images/big/large.jpg",
         quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    save(textured(32, (400, 300)), "images/turned/turned.jpg", quality=90, exif=exif)
    index_images()
    with subprocess.Popen(SEARCH + ["--stdin", "--max-distance", "0"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as checker:
        assert checker.stdin and checker.stdout
        for path in ("images/big/large.jpg", "images/turned/turned.jpg"):
            checker.stdin.write(path + "\n")
            checker.stdin.flush()
            answer = json.loads(read_line(checker.stdout))
            assert answer["hash"] == hash_file(path, Recipe()).hex()
            assert [m["relpath"] for m in answer["matches"]] == [path.removeprefix("images/")]
        checker.stdin.close()
        assert checker.wait(timeout=30) == 0


def test_a_fifo_query_is_refused_without_blocking(store: Path) -> None:
    """-q and the Python API open files the way --stdin does: a FIFO is never waited on."""
    import neardup

    os.mkfifo("pipe.jpg")
    result = subprocess.run(SEARCH + ["-q", "pipe.jpg"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert "pipe.jpg: not a regular file (a FIFO, device or socket): not read" in result.stderr
    with neardup.open_store("db.shelve") as opened, pytest.raises(neardup.ImageError):
        opened.search("pipe.jpg")


def test_closing_while_answering_is_never_taken_for_a_damaged_store(store: Path) -> None:
    """A review: SIGTERM while uploads were checked closed the store's connection under them;
    they failed with "Cannot operate on a closed database", logged as a damaged store."""
    import threading

    from neardup.service.checker import Checker

    warnings: list[str] = []
    answers: list[dict] = []
    checker = Checker("db.shelve", warn=warnings.append)
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            answers.append(checker.check_file("images/cat0/image_0000.jpg"))

    askers = [threading.Thread(target=ask) for _ in range(3)]
    for asker in askers:
        asker.start()
    time.sleep(0.3)
    checker.close()
    time.sleep(0.1)
    stop.set()
    for asker in askers:
        asker.join(10)
    errors = {answer.get("error") for answer in answers}
    assert errors <= {None, "the checker is stopping"}, errors
    assert "the checker is stopping" in errors and None in errors
    assert not [line for line in warnings if "damaged" in line], warnings
    assert checker.health() == {"status": "unavailable", "error": "the checker is stopping"}


def test_index_runs_while_answering_are_not_taken_for_a_store_copied_over(store: Path) -> None:
    """Every index.py run moves its commits into the store's file and prunes the change log; a
    checker that answered during the run took the file for another state copied over it (one
    misleading log line per run, and its search index thrown away)."""
    import subprocess

    from neardup.service.checker import Checker

    warnings: list[str] = []
    with Checker("db.shelve", warn=warnings.append) as checker:
        for round in range(2):
            for number in range(40):
                save(textured(300 + 50 * round + number), f"images/new{round}/{number}.jpg",
                     quality=90)
            with subprocess.Popen([sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images",
                                   "-s", "db.shelve", "-q", "-j", "1", "--batch-size", "5"]
                                  ) as indexing:
                while indexing.poll() is None:
                    assert "error" not in checker.check_file("images/cat0/image_0000.jpg")
                    time.sleep(0.005)
            answer = checker.check_file(f"images/new{round}/0.jpg")
            assert [match["relpath"] for match in answer["matches"]] == [f"new{round}/0.jpg"]
    assert warnings == []


def test_a_backup_restored_and_indexed_to_the_same_generation_is_answered_as_it_is(
    store: Path,
) -> None:
    """A review: a backup copied back over the store (in place), then indexed again to the very
    generation the checker had answered at, passed for the same state (index.py prunes the
    change log, so no logged change told them apart): images it holds went unanswered until the
    next commit."""
    import shutil
    import subprocess

    from neardup.service.checker import Checker

    def index() -> None:
        subprocess.run([sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s",
                        "db.shelve", "-q", "-j", "1"], check=True)

    shutil.copy("db.shelve", "backup.shelve")
    shutil.move("images/cat0/image_0000.jpg", "x.jpg")  # X removed, Z added: two changes
    save(textured(400), "images/new/z.jpg", quality=90)
    index()
    with Checker("db.shelve") as checker:
        assert checker.check_file("x.jpg")["matches"] == []
        generation = checker.health()["generation"]
        with open("db.shelve", "r+b") as stream:  # the backup copied over it, in place
            stream.write(Path("backup.shelve").read_bytes())
            stream.truncate()
        shutil.copy("x.jpg", "images/cat0/image_0000.jpg")  # X back
        os.remove("images/new/z.jpg")
        for number in (1, 2):  # W1, W2: the same number of changes as the other history
            save(textured(410 + number), f"images/new/w{number}.jpg", quality=90)
        index()
        assert checker.health()["generation"] == generation
        for name, found in (("x.jpg", "cat0/image_0000.jpg"), ("images/new/w1.jpg", "new/w1.jpg")):
            assert [m["relpath"] for m in checker.check_file(name)["matches"]] == [found], name


@pytest.mark.parametrize("recipe", [["--algorithm", "ahash"], ["--hash-size", "16"]])
def test_a_store_replaced_by_one_of_another_recipe_hashes_the_next_query_its_way(
    store: Path, recipe: list[str]
) -> None:
    """A review: the store moved aside for one built with another algorithm (the same size) or
    hash size. The next query had been hashed the old store's way before the replacement was
    seen: answered from the new store with a hash of the other algorithm (its own image not
    found, no error), or failed with a 64-bit query against 256-bit hashes (a 500 from
    --serve)."""
    from neardup.service.checker import Checker

    assert index_cli.main(["-d", "images", "-s", "other.shelve", "-q", "-j", "1", *recipe]) == 0
    with Checker("db.shelve") as checker:
        before = checker.check_file("images/cat0/image_0000.jpg")
        assert [m["relpath"] for m in before["matches"]][:1] == ["cat0/image_0000.jpg"]
        os.replace("other.shelve", "db.shelve")
        after = checker.check_file("images/cat0/image_0000.jpg")
        assert "error" not in after, after
        assert after["matches"][0]["relpath"] == "cat0/image_0000.jpg"
        assert after["matches"][0]["distance"] == 0
        assert after["hash"] != before["hash"]  # hashed the new store's way
        assert after == checker.check_file("images/cat0/image_0000.jpg")
        # And back, for an upload (--serve's way in)
        assert index_cli.main(["-d", "images", "-s", "third.shelve", "-q", "-j", "1"]) == 0
        os.replace("third.shelve", "db.shelve")
        upload = checker.check_upload(Path("images/cat0/image_0000.jpg").read_bytes())
        assert upload["hash"] == before["hash"] and upload["matches"][0]["distance"] == 0


def test_a_damaged_bucket_stays_a_problem_across_index_runs(store: Path) -> None:
    """A review: an index.py run while a bucket was damaged turned /health back to "ok" (the
    checker took the rewritten file for another store and forgot what it had seen). The
    damaged bucket here is another program's (a hash one bit from an indexed image's, under
    which index.py indexed nothing), so index.py leaves it; one of its own it rewrites, and
    /health then says "ok" again."""
    import sqlite3
    import subprocess

    from neardup.service.checker import Checker

    with Checker("db.shelve") as checker:
        indexed = checker.check_file("images/cat0/image_0000.jpg")["hash"]
        damaged = f"{int(indexed, 16) ^ 1:016x}"
        with sqlite3.connect("db.shelve") as database:
            database.execute("INSERT INTO Dict (key, value) VALUES (?, ?)",
                             (damaged.encode(), b"not a pickle"))
            database.execute("UPDATE Dict SET value = ? WHERE key = ?",
                             (b"not a pickle", indexed.encode()))
        checker.check_file("images/cat0/image_0000.jpg")
        assert checker.health()["status"] == "degraded"
        save(textured(420), "images/new/unrelated.jpg", quality=90)
        subprocess.run([sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s",
                        "db.shelve", "-q", "-j", "1"], capture_output=True)
        checker.check_file("images/new/unrelated.jpg")
        health = checker.health()
        assert health["status"] == "degraded" and len(health["problems"]) == 1
        assert damaged in health["problems"][0]
        assert "cat0/image_0000.jpg" in {match["relpath"] for match in
                                         checker.check_file("images/cat0/image_0000.jpg")["matches"]}


def test_stdin_with_its_input_or_output_closed_is_one_line(store: Path) -> None:
    """A review: `search.py --stdin >&-` and `<&-` printed an AttributeError traceback."""
    import subprocess

    for redirect in (">&-", "<&-"):
        result = subprocess.run(
            f"{sys.executable} {PROJECT_ROOT / 'search.py'} -s db.shelve --stdin {redirect}",
            shell=True, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (redirect, result.stderr)
        assert result.stderr.count("\n") == 1 and "is closed" in result.stderr, result.stderr


def test_writes_made_after_the_triggers_were_dropped_are_seen(store: Path) -> None:
    """A hostile review: another program deleted a bucket, dropped the insert triggers, and
    wrote the bucket back; a running checker (and an open API store) had decided once, at open,
    that the store keeps its change log, so the write, which moved no generation, was never
    seen. Where the triggers are gone every commit is followed instead."""
    import neardup
    from neardup.service.checker import Checker

    query = "images/cat0/image_0000.jpg"
    with Checker("db.shelve") as checker, neardup.open_store("db.shelve") as api:
        def found() -> tuple[bool, bool]:
            return ("cat0/image_0000.jpg" in {m["relpath"] for m in
                                              checker.check_file(query)["matches"]},
                    "cat0/image_0000.jpg" in {f.relpath for f in api.search(query)})

        assert found() == (True, True)
        key = checker.check_file(query)["hash"].encode()
        with closing(sqlite3.connect("db.shelve")) as database, database:
            (value,) = database.execute("SELECT value FROM Dict WHERE key = ?", (key,)).fetchone()
            database.execute("DELETE FROM Dict WHERE key = ?", (key,))
        assert found() == (False, False)
        with closing(sqlite3.connect("db.shelve")) as database, database:
            database.execute("DROP TRIGGER neardup_dict_inserted")
            database.execute("DROP TRIGGER neardup_dict_counted")
        assert found() == (False, False)
        assert checker.health()["generation"] is None  # no longer counted (it said 0)
        with closing(sqlite3.connect("db.shelve")) as database, database:
            database.execute("INSERT INTO Dict (key, value) VALUES (?, ?)", (key, value))
        assert found() == (True, True)


def test_a_change_log_dropped_by_another_program_is_not_read(store: Path) -> None:
    """A review: `DROP TABLE neardup_changes` made a running checker fail every answer (500),
    and /health say "cannot read the store" twice: the log was read before the checker looked
    whether it was still kept."""
    import neardup
    from neardup.service.checker import Checker

    query = "images/cat0/image_0000.jpg"
    with Checker("db.shelve") as checker, neardup.open_store("db.shelve") as api:
        assert checker.check_file(query)["matches"] and api.search(query)
        with closing(sqlite3.connect("db.shelve")) as database, database:
            database.execute("DROP TABLE neardup_changes")
        assert "cat0/image_0000.jpg" in {m["relpath"] for m in
                                         checker.check_file(query)["matches"]}
        assert "cat0/image_0000.jpg" in {f.relpath for f in api.search(query)}
        assert checker.health()["status"] == "ok", checker.health()


def test_what_the_store_was_opened_as_changed_by_hand_is_followed(store: Path) -> None:
    """A review: the dataset folder and the recipe changed in neardup_meta by another program
    were not followed by a running checker or an open API store (the folder and recipe read at
    open were used for ever)."""
    import neardup
    from neardup.service.checker import Checker

    query = "images/cat0/image_0000.jpg"
    shutil.copytree("images", "copy")
    said: list[str] = []
    with Checker("db.shelve", warn=said.append) as checker, \
            neardup.open_store("db.shelve") as api:
        first = checker.check_file(query)
        assert os.path.abspath(first["matches"][0]["path"]) == str(
            store / "images" / "cat0" / "image_0000.jpg")
        with closing(sqlite3.connect("db.shelve")) as database, database:
            database.execute("UPDATE neardup_meta SET value = ? WHERE name = 'dataset_root'",
                             (str(store / "copy"),))
        assert (os.path.abspath(checker.check_file(query)["matches"][0]["path"])
                == str(store / "copy" / "cat0" / "image_0000.jpg"))
        assert (os.path.abspath(api.search(query)[0].path)
                == str(store / "copy" / "cat0" / "image_0000.jpg"))
        with closing(sqlite3.connect("db.shelve")) as database, database:
            (recipe,) = database.execute(
                "SELECT value FROM neardup_meta WHERE name = 'recipe'").fetchone()
            database.execute("UPDATE neardup_meta SET value = ? WHERE name = 'recipe'",
                             (recipe.replace("dhash", "phash"),))
        assert checker.check_file(query)["hash"] != first["hash"]  # hashed as the store says
        assert api.recipe.algorithm == "phash"
    assert said == ["db.shelve: another program changed what the store records of itself"
                    " (dataset_root); reopened it",
                    "db.shelve: another program changed what the store records of itself"
                    " (recipe); reopened it"], said


def test_a_dataset_folder_moved_while_checking_is_said_once_and_its_return_too(
        store: Path) -> None:
    """A review: a checker started while the dataset folder existed said nothing once it was
    moved, and answered paths no longer on disk."""
    from neardup.service.checker import Checker

    said: list[str] = []
    query = "query.jpg"
    shutil.copy("images/cat0/image_0000.jpg", query)
    with Checker("db.shelve", warn=said.append) as checker:
        assert checker.check_file(query)["matches"]
        assert said == []
        os.rename("images", "moved")
        for _ in range(3):  # said once, however many answers follow
            assert checker.check_file(query)["matches"][0]["relpath"] == "cat0/image_0000.jpg"
        checker.health()
        assert len(said) == 1, said
        assert f"its dataset folder {store / 'images'} no longer exists" in said[0]
        assert "--moved-from" in said[0]
        os.rename("moved", "images")
        checker.check_file(query)
        checker.check_file(query)
        assert said[1:] == [f"db.shelve: its dataset folder {store / 'images'} is back"]
        # An empty folder in its place (the mount point of a disk not mounted): said too.
        os.rename("images", "moved")
        os.mkdir("images")
        for _ in range(3):
            checker.check_file(query)
        assert len(said) == 3 and said[2] == (f"db.shelve: its dataset folder {store / 'images'}"
                                              " is empty (a disk not mounted?): the paths it"
                                              " answers are not on disk"), said
        os.rmdir("images")
        os.rename("moved", "images")
        checker.check_file(query)
        assert said[3:] == [f"db.shelve: its dataset folder {store / 'images'} is back"]
