from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neardup.cli import index as index_cli
from neardup.core import hashing, indexing
from neardup.core.discovery import FoundFile, walk_images
from neardup.core.hashing import Recipe, hash_file
from neardup.core.indexing import index_folder
from neardup.core.store import Store
from neardup.errors import NeardupError

from .conftest import PROJECT_ROOT, finished, sigint_as_in_a_terminal
from .imagegen import hashed_apart, make_tree, save, textured


def run_index(*extra: str) -> int:
    return index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1", *extra])


def index_folder_with(recipe: Recipe) -> None:
    """Index ./images into ./db.shelve with a given recipe, as an older neardup would have."""
    index_folder("images", "db.shelve", recipe)


def buckets(path: str = "db.shelve") -> dict[str, list[str]]:
    """Every bucket, after checking that no path is listed twice and files and buckets agree."""
    with Store.open_for_reading(path) as store:
        result = {key: store.bucket(key) for key in store.shelf.keys()}
        listed = [p for paths in result.values() for p in paths]
        assert len(listed) == len(set(listed)), "a path is listed twice"
        assert set(listed) == set(store.file_states())
    return result


class TestIncremental:
    def test_rerun_adds_nothing(self, in_tmp: Path, capsys: pytest.CaptureFixture,
                                monkeypatch: pytest.MonkeyPatch) -> None:
        # Files written just now are hashed again by the next run, to be sure (racily clean):
        # not here, where the second run must hash nothing.
        monkeypatch.setattr(indexing, "RACY_NS", 0)
        make_tree("images", 8)
        assert run_index() == 0
        first = buckets()
        assert "indexed 8, unchanged 0" in capsys.readouterr().out
        assert run_index() == 0
        out = capsys.readouterr().out
        assert "indexed 0, unchanged 8, removed 0" in out
        # No rate where nothing was hashed: a review read "(0 images/s)", and one new photo
        # among thousands as a few images a second (the whole run's time).
        assert re.search(r"8 images in the store \(\d+\.\d s in all\)$", out.strip()), out
        assert buckets() == first
        assert sum(len(paths) for paths in first.values()) == 8

    def test_files_hashed_again_to_be_sure_are_said(self, in_tmp: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
        """Files written just before a run are hashed again by the next one (racily clean): the
        line says so, beside "unchanged", rather than leave "8 hashed" unexplained."""
        make_tree("images", 8)
        assert run_index() == 0
        capsys.readouterr()
        assert run_index() == 0
        out = capsys.readouterr().out.strip()
        assert "indexed 0, unchanged 8, removed 0" in out
        assert re.search(r"\(8 hashed \(8 again, to be sure\); \d+\.\d s in all\)$", out), out

    def test_files_that_fail_are_not_counted_as_hashed(self, in_tmp: Path,
                                                       capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
        """A review: a broken file tried again read "1 hashed, 3,265 images/s"."""
        monkeypatch.setattr(indexing, "RACY_NS", 0)
        make_tree("images", 3)
        Path("images/broken.jpg").write_bytes(b"junk")
        assert run_index() == 0
        assert "(3 hashed; " in capsys.readouterr().out
        assert run_index() == 0
        out = capsys.readouterr().out.strip()
        assert "unchanged 3, removed 0, failed 1" in out and " hashed" not in out, out

    def test_the_rate_is_the_hashings_own(self, in_tmp: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(indexing, "RACY_NS", 0)  # hashed again to be sure: not here
        make_tree("images", 8)
        assert run_index() == 0
        capsys.readouterr()
        for number in range(indexing.RATE_FROM):
            save(textured(100 + number, (48, 32)), f"images/new/{number}.jpg", quality=92)
        walk = indexing.walk_images

        def slow_walk(*args, **kwargs):  # type: ignore[no-untyped-def]
            time.sleep(1.0)  # a large folder's walk: no hashing in it
            yield from walk(*args, **kwargs)

        monkeypatch.setattr(indexing, "walk_images", slow_walk)
        assert run_index() == 0
        out = capsys.readouterr().out.strip()
        found = re.search(r"\((\d+) hashed, ([\d,]+) images/s; (\d+\.\d) s in all\)$", out)
        assert found and int(found[1]) == indexing.RATE_FROM, out
        rate, seconds = int(found[2].replace(",", "")), float(found[3])
        assert seconds >= 1.0 and rate > 2 * indexing.RATE_FROM / seconds, out
        # One file: no rate (a review read "1 hashed, 6 images/s" as a slowdown).
        save(textured(77), "images/one.jpg", quality=92)
        assert run_index() == 0
        out = capsys.readouterr().out.strip()
        assert re.search(r"\(1 hashed; \d+\.\d s in all\)$", out), out

    def test_a_file_damaged_in_place_is_said_to_be_unreadable_now(
            self, in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
        """Its entry goes (search must not answer a picture that is no longer there), and the
        line says why: "removed 1" alone read as a file deleted (a review)."""
        relpaths = make_tree("images", 4)
        assert run_index() == 0
        capsys.readouterr()
        damaged = Path("images", relpaths[0])
        damaged.write_bytes(damaged.read_bytes()[:200])
        os.utime(damaged, ns=(1, 1))
        assert run_index() == 0
        out = capsys.readouterr().out
        assert "removed 1 (1 no longer readable), failed 1" in out, out

    def test_changed_added_and_deleted_files(self, in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
        relpaths = make_tree("images", 6)
        assert run_index() == 0
        before = buckets()
        changed, deleted = relpaths[0], relpaths[1]
        save(textured(500), f"images/{changed}", quality=92)
        os.utime(f"images/{changed}", ns=(1, 1))  # a different mtime even on a coarse clock
        os.remove(f"images/{deleted}")
        save(textured(501), "images/new/added.jpg", quality=92)
        capsys.readouterr()

        assert run_index() == 0
        assert "indexed 2, unchanged 4, removed 1" in capsys.readouterr().out
        after = buckets()
        listed = {path for paths in after.values() for path in paths}
        assert deleted not in listed and "new/added.jpg" in listed and changed in listed
        old_key = next(key for key, paths in before.items() if changed in paths)
        assert changed not in after.get(old_key, [])

    def test_every_format_pillow_reads_and_an_extensionless_jpeg(self, in_tmp: Path) -> None:
        picture = textured(7)
        for name in ("a.png", "b.webp", "c.bmp", "d.gif", "e.tiff", "f.jpeg"):
            save(picture, f"images/{name}")
        save(picture, "images/tmp", format="JPEG")  # like CALTECH-101's BACKGROUND_Google/tmp
        Path("images/manifest.csv").write_text("file,role\n")  # not an image: passed over silently
        assert run_index() == 0
        listed = {path for paths in buckets().values() for path in paths}
        assert listed == {"a.png", "b.webp", "c.bmp", "d.gif", "e.tiff", "f.jpeg", "tmp"}


class TestBadInput:
    def test_bad_files_are_reported_and_skipped(self, in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
        make_tree("images", 3)
        Path("images/text.jpg").write_text("this is text\n")
        Path("images/empty.jpg").write_bytes(b"")
        whole = Path(save(textured(9, (300, 200)), "whole.jpg", quality=90)).read_bytes()
        Path("images/truncated.jpg").write_bytes(whole[: len(whole) // 3])
        Path("images/folder.jpg").mkdir()
        os.symlink("does-not-exist.jpg", "images/broken.jpg")

        assert run_index() == 0
        captured = capsys.readouterr()
        errors = captured.err.splitlines()
        expected = {"text.jpg": "not an image", "empty.jpg": "empty file",
                    "truncated.jpg": "truncated", "broken.jpg": "broken link"}
        for name, reason in expected.items():
            (line,) = [line for line in errors if f"images/{name}:" in line]
            # The path as the folder was named (-d images), not made absolute.
            assert line.startswith(f"index.py: images/{name}: ") and reason in line
        assert "Traceback" not in captured.err
        assert "indexed 3, unchanged 0, removed 0, failed 3, skipped 1" in captured.out
        assert sum(len(paths) for paths in buckets().values()) == 3

    def test_nothing_indexable_exits_1(self, in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
        os.makedirs("images")
        Path("images/text.jpg").write_text("no")
        assert run_index() == 1
        # search.py would then say only "no such store": this run says why there is none.
        assert capsys.readouterr().err.splitlines()[-1] == (
            "index.py: no image could be indexed under images; db.shelve was not written")
        assert not Path("db.shelve").exists()
        # A store already there is kept and named no more: its images went, it did not.
        save(textured(1), "images/ok.png")
        assert run_index() == 0
        Path("images/ok.png").unlink()
        capsys.readouterr()
        assert run_index("--allow-mass-removal") == 1
        assert capsys.readouterr().err.splitlines()[-1] == (
            "index.py: no image could be indexed under images")
        assert Path("db.shelve").exists()

    def test_missing_dataset_and_mixed_recipes_exit_2(
        self, in_tmp: Path, capsys: pytest.CaptureFixture
    ) -> None:
        assert index_cli.main(["-d", "nowhere", "-s", "db.shelve"]) == 2
        assert capsys.readouterr().err == "index.py: error: nowhere: not a folder\n"
        make_tree("images", 2)
        assert run_index() == 0
        assert run_index("--hash-size", "16") == 2
        err = capsys.readouterr().err
        assert "built with dhash-8" in err and "asks for dhash-16" in err
        assert len(err.splitlines()) == 1

    def test_a_store_of_an_older_preprocessing_is_updated_its_own_way(
        self, in_tmp: Path, capsys: pytest.CaptureFixture
    ) -> None:
        # A store built before an upgrade goes on taking new images, hashed as its others were
        # (one store, one recipe), and says how to move to the new one.
        older = Recipe(preprocess_version=3)
        make_tree("images", 2)
        index_folder_with(older)
        big = hashed_apart("images/big.jpg", older)  # v3 decodes it at 1/8, v4 at 1/2
        assert run_index() == 0
        captured = capsys.readouterr()
        assert "indexed 1, unchanged 2" in captured.out
        assert "normalised v3): new images are hashed with v3 too" in captured.err
        with Store.open_for_reading("db.shelve") as store:
            assert store.recipe == older
        assert "big.jpg" in buckets()[hash_file(big, older).hex()]
        assert run_index("--exact") == 2  # another hash altogether is still refused

    def test_an_exact_store_of_an_older_neardup_is_updated(
        self, in_tmp: Path, capsys: pytest.CaptureFixture
    ) -> None:
        # neardup 0.1.0 recorded --exact stores with the default preprocessing of the day (v3),
        # which --exact never uses: they go on as they are, without a word.
        make_tree("images", 2)
        index_folder_with(Recipe(exact=True, preprocess_version=3))
        save(textured(9), "images/new.png")
        assert run_index("--exact") == 0
        captured = capsys.readouterr()
        assert "indexed 1, unchanged 2" in captured.out and captured.err == ""
        with Store.open_for_reading("db.shelve") as store:
            assert store.recipe == Recipe(exact=True, preprocess_version=3)
        assert run_index() == 2  # the default recipe is another hash: still refused


def test_parallel_workers_build_the_same_store(in_tmp: Path) -> None:
    make_tree("images", 24, folders=3)
    assert index_cli.main(["-d", "images", "-s", "one.shelve", "-q", "-j", "1"]) == 0
    assert index_cli.main(["-d", "images", "-s", "two.shelve", "-q", "-j", "2"]) == 0
    assert buckets("one.shelve") == buckets("two.shelve")


def test_workers_import_nothing_from_the_current_folder(in_tmp: Path) -> None:
    """Python starts its fork server with the current folder first on its path: run from a
    folder holding another neardup (an older checkout) or a numpy.py, the workers imported
    those. Each decoy here leaves a mark if imported; the workers must run this neardup."""
    make_tree("images", 12, folders=2)
    for decoy in ("neardup/__init__.py", "numpy.py", "imagehash.py"):
        Path(decoy).parent.mkdir(exist_ok=True)
        Path(decoy).write_text(f"open({str(in_tmp / 'imported')!r}, 'a').write({decoy!r})\n")
    for flags in ([], ["-E"]):  # -E reaches the fork server, which then ignores PYTHONSAFEPATH
        result = subprocess.run([sys.executable, *flags, str(PROJECT_ROOT / "index.py"), "-d",
                                 "images", "-s", "db.shelve", "-q", "-j", "2"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert not Path("imported").exists(), (flags, Path("imported").read_text())
        assert committed_count(Path("db.shelve")) == 12
        for name in os.listdir("."):
            if name.startswith("db.shelve"):
                shutil.rmtree(name) if os.path.isdir(name) else os.remove(name)


def test_workers_start_one_blas_thread_unless_told_otherwise(in_tmp: Path) -> None:
    """Under a limit on processes and threads, every worker printed OpenBLAS's four-line warning
    when the threads numpy's OpenBLAS starts were refused (a review): workers start with one,
    or with what the user set; the process that starts them keeps its own setting. (In a
    process of its own: a fork server keeps the environment it started with.)"""
    probe = ("import concurrent.futures, os\n"
             "from neardup.core import processes\n"
             "with processes.starting_workers(), concurrent.futures.ProcessPoolExecutor(\n"
             "        1, mp_context=processes.worker_context()) as pool:\n"
             "    worker = pool.submit(os.getenv, 'OPENBLAS_NUM_THREADS')\n"
             "print(worker.result(60), os.environ.get('OPENBLAS_NUM_THREADS'))\n")
    for given, expected in ((None, "1 None"), ("3", "3 3")):
        env = {name: value for name, value in os.environ.items()
               if name != "OPENBLAS_NUM_THREADS"} | ({} if given is None
                                                      else {"OPENBLAS_NUM_THREADS": given})
        env["PYTHONPATH"] = str(PROJECT_ROOT)
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == expected.split()


def test_workers_start_from_a_current_folder_that_cannot_be_entered(in_tmp: Path) -> None:
    """multiprocessing starts each worker in the parent's current folder: run from one that was
    deleted, the parent failed with a traceback (os.getcwd); run from one its user cannot enter
    (runuser -u nobody from root's folder), each worker printed a traceback (os.chdir:
    Permission denied) and the run blamed a killed worker. Nothing relative resolves in such a
    folder, so the workers start elsewhere and the absolute paths are indexed. (The permission
    case needs a user other than root: /tmp/wt-f1/repro/unenterable_cwd.sh; a deleted folder
    takes the same path.)"""
    make_tree("images", 12, folders=2)
    gone = in_tmp / "gone"
    # This checkout first on the path in place of the current folder, as `python index.py` has
    # its own (-E ignores PYTHONPATH); then the current folder made and deleted, once imported
    # (numpy under Python 3.13 cannot be imported from a deleted folder at all).
    start = ("import os, runpy, sys; sys.path[0] = sys.argv[1]; import neardup.cli.index;"
             " os.mkdir(sys.argv[2]);"
             " os.chdir(sys.argv[2]); os.rmdir(sys.argv[2]); sys.argv = sys.argv[3:];"
             " runpy.run_path(sys.argv[0], run_name='__main__')")
    for flags in ([], ["-E"]):
        result = subprocess.run([sys.executable, *flags, "-c", start, str(PROJECT_ROOT),
                                 str(gone), str(PROJECT_ROOT / "index.py"), "-d",
                                 str(in_tmp / "images"), "-s", str(in_tmp / "db.shelve"), "-q",
                                 "-j", "2"], capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stderr) == (0, ""), (flags, result.stderr)
        assert committed_count(in_tmp / "db.shelve") == 12


def make_large_tree(root: Path, count: int) -> None:
    """count distinct 640x480 JPEGs, cut from one noise field so they are quick to make."""
    rng = np.random.default_rng(1)
    field = rng.integers(0, 256, size=(600, 900, 3), dtype=np.uint8)
    for number in range(count):
        top, left = number % 100, (number * 7) % 250
        crop = Image.fromarray(field[top:top + 480, left:left + 640])
        save(crop, str(root / f"d{number % 4}" / f"{number:04d}.jpg"), quality=85)


def committed_count(store: Path) -> int:
    try:
        uri = store.resolve().as_uri() + "?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=1)) as connection:
            return connection.execute("SELECT COUNT(*) FROM neardup_files").fetchone()[0]
    except sqlite3.Error:
        return 0


class HeldFile(FoundFile):
    """A file whose worker stays busy with it until a marker file exists (or RELEASE_TIMEOUT
    passes), as with a huge image or a slow disk: it is held when the worker receives it."""

    __slots__ = ()
    release: str = ""  # set on the class by the test: the marker's absolute path

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (_received_when_released, (HeldFile.release, *dataclasses.astuple(self)))


RELEASE_TIMEOUT = 5.0


def _received_when_released(release: str, *fields: object) -> FoundFile:
    deadline = time.monotonic() + RELEASE_TIMEOUT
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return FoundFile(*fields)  # type: ignore[arg-type]


def test_a_slow_file_holds_back_no_commit(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With two workers, one busy on a slow file: the other's files are committed while it is
    (they came back in the order sent, so nothing was committed until the slow file was done,
    and then only when another result arrived after BATCH_SECONDS)."""
    make_tree("images", 12)
    monkeypatch.setattr(indexing, "BATCH_SECONDS", 0.1)
    monkeypatch.setattr(HeldFile, "release", str(in_tmp / "release"))

    def first_file_held(root: str) -> list[object]:
        entries = list(walk_images(root))
        entries[0] = HeldFile(*dataclasses.astuple(entries[0]))
        return entries

    monkeypatch.setattr(indexing, "walk_images", first_file_held)
    seen_while_held: list[int] = []
    finished = threading.Event()

    def release_once_the_others_are_committed() -> None:
        while not finished.is_set() and not Path(HeldFile.release).exists():
            seen_while_held.append(committed_count(in_tmp / "db.shelve"))
            if seen_while_held[-1] == 11:
                Path(HeldFile.release).touch()
            time.sleep(0.01)

    watcher = threading.Thread(target=release_once_the_others_are_committed)
    watcher.start()
    try:
        summary = index_folder("images", "db.shelve", Recipe(), jobs=2, batch_size=500)
    finally:
        finished.set()
        watcher.join()
    assert summary.indexed == 12 and committed_count(in_tmp / "db.shelve") == 12
    assert max(seen_while_held) == 11, "the other files waited for the slow one"


def test_kill_9_at_random_points_loses_no_committed_batch(in_tmp: Path) -> None:
    total = 400
    make_large_tree(in_tmp / "images", total)
    command = [sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s", "db.shelve",
               "-q", "-j", "1", "--batch-size", "10"]
    kills = 0
    seen = 0
    for _round in range(4):
        with subprocess.Popen(command, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) as process:
            deadline = time.monotonic() + 60
            # Kill it once it has committed something beyond what the last round left.
            while process.poll() is None and time.monotonic() < deadline:
                if committed_count(in_tmp / "db.shelve") >= seen + 20:
                    process.send_signal(signal.SIGKILL)
                    kills += 1
                    break
                time.sleep(0.01)
        now = committed_count(in_tmp / "db.shelve")
        assert now >= seen, "a committed batch was lost"
        buckets()  # the store opens and is consistent after every kill
        seen = now
    assert kills >= 2, "the indexer finished before it could be killed; make the data set larger"

    assert subprocess.run(command, capture_output=True).returncode == 0
    assert committed_count(in_tmp / "db.shelve") == total
    # The killed-and-resumed store equals one built in a single clean run.
    assert index_cli.main(["-d", "images", "-s", "clean.shelve", "-q", "-j", "1"]) == 0
    assert buckets("db.shelve") == buckets("clean.shelve")


def test_ctrl_c_stops_cleanly_and_keeps_what_was_committed(in_tmp: Path) -> None:
    make_large_tree(in_tmp / "images", 400)
    command = [sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s", "db.shelve",
               "-q", "-j", "2", "--batch-size", "10"]
    # Its own process group, so the signal reaches the workers too, as a terminal's Ctrl-C does.
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, preexec_fn=sigint_as_in_a_terminal) as process:
        deadline = time.monotonic() + 60
        while committed_count(in_tmp / "db.shelve") < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGINT)
        _out, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the indexer finished before Ctrl-C arrived")
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == (
        "index.py: interrupted; every committed batch is kept in db.shelve"
        " (files hashed since the last commit are hashed again); run again to finish")
    assert "Traceback" not in err
    kept = committed_count(in_tmp / "db.shelve")
    assert 20 <= kept < 400
    buckets()
    assert run_index() == 0
    assert committed_count(in_tmp / "db.shelve") == 400


def test_sigterm_stops_cleanly_and_keeps_what_was_committed(in_tmp: Path) -> None:
    """SIGTERM (a service manager stopping a job, `kill`, a container's stop) ended index.py at
    once, without a word (a shell showed 143); it now stops as Ctrl-C does: the worker
    processes ended, every committed batch kept, one line. Sent to index.py alone, not its
    group, as `kill PID` does: the workers must be stopped by index.py."""
    make_large_tree(in_tmp / "images", 400)
    command = [sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s", "db.shelve",
               "-q", "-j", "2", "--batch-size", "10"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        deadline = time.monotonic() + 60
        while committed_count(in_tmp / "db.shelve") < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the indexer finished before SIGTERM arrived")
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines() == [
        "index.py: terminated; every committed batch is kept in db.shelve"
        " (files hashed since the last commit are hashed again); run again to finish"], err
    time.sleep(0.5)
    for child in map(int, children):
        assert not Path(f"/proc/{child}").exists() or "Z" in Path(
            f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0], f"{child} still runs"
    kept = committed_count(in_tmp / "db.shelve")
    assert 20 <= kept < 400
    buckets()
    assert run_index() == 0
    assert committed_count(in_tmp / "db.shelve") == 400


def test_the_summary_is_one_line_whatever_the_store_is_called(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: a store named with a line break printed its summary over two lines."""
    make_tree("images", 3)
    assert index_cli.main(["-d", "images", "-s", "new\nline.shelve", "-q", "-j", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("new\\nline.shelve: indexed 3,"), out


def test_a_file_not_read_keeps_its_entry_only_while_it_is_unchanged(in_tmp: Path) -> None:
    """Files the hashing side could not read (permission denied, as a worker or a non-root user
    sees them): one only chmod-ed keeps its entry; one rewritten with another picture (a review:
    its old hash answered for ever, an exact match for a picture it no longer held) loses it."""
    from neardup.core.indexing import HashOutcome

    make_tree("images", 3, folders=3)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    time.sleep(0.01)
    os.chmod("images/cat0/image_0000.jpg", 0o600)  # its ctime moves: hashed again
    save(textured(99), "images/cat1/image_0001.jpg", quality=70)  # another picture
    # Another picture of the same size and mtime renamed over it (a new inode): not the same.
    replaced = "images/cat2/image_0002.jpg"
    data = Path(replaced).read_bytes()
    other = bytearray(Path("images/cat1/image_0001.jpg").read_bytes()[:len(data)])
    other += b"\0" * (len(data) - len(other))
    Path("new.jpg").write_bytes(bytes(other))
    info = os.stat(replaced)
    os.utime("new.jpg", ns=(info.st_atime_ns, info.st_mtime_ns))
    os.replace("new.jpg", replaced)

    def denied(files, recipe, max_pixels):  # type: ignore[no-untyped-def]
        yield [HashOutcome(item, None, "permission denied", unreached="denied") for item in files]

    summary = index_folder("images", "db.shelve", Recipe(), hasher=denied)
    assert (summary.kept, summary.removed, summary.failed) == (1, 2, 3)
    with Store.open_for_reading("db.shelve") as store:
        assert sorted(store.file_states()) == ["cat0/image_0000.jpg"]


def test_every_message_is_one_line_whatever_the_file_is_called(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: a file named with a line break made its failure two lines on stderr (index.py
    and gather.py alike)."""
    os.makedirs("images")
    Path("images/bad\nname.jpg").write_bytes(b"x")
    Path("images/c1\u0085\u2028\u009b.jpg").write_bytes(b"x")  # NEL, line separator, CSI
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"index.py: images/bad\\nname.jpg: not an image, or a format neardup does not read (it"
        f" reads {hashing._formats_read()})",
        f"index.py: images/c1\\x85\\u2028\\x9b.jpg: not an image, or a format neardup does not"
        f" read (it reads {hashing._formats_read()})",
        "index.py: no image could be indexed under images; db.shelve was not written"]


def test_a_cielab_tiff_is_indexed_and_where_it_cannot_be_hashed_it_is_one_line(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: one CIELab TIFF (Photoshop writes them) among 1,235 photos made every index.py
    run die with a traceback (ValueError from a conversion to gray), 0 files stored, for ever."""
    make_tree("images", 3)
    textured(0).convert("LAB").save("images/cat0/lab.tif")
    assert run_index() == 0
    assert capsys.readouterr().err == ""
    with Store.open_for_reading("db.shelve") as store:
        assert sorted(store.file_states()) == [
            "cat0/image_0000.jpg", "cat0/image_0002.jpg", "cat0/lab.tif", "cat1/image_0001.jpg"]
    # --exact hashes as plain ImageHash, which cannot convert CIELab to gray: refused, one line.
    assert index_cli.main(["-d", "images", "-s", "exact.shelve", "-q", "-j", "1", "--exact"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "index.py: images/cat0/lab.tif: unsupported colour mode LAB with --exact"
        " (plain ImageHash cannot read it)"]
    with Store.open_for_reading("exact.shelve") as store:
        assert sorted(store.file_states()) == [
            "cat0/image_0000.jpg", "cat0/image_0002.jpg", "cat1/image_0001.jpg"]


def test_a_store_inside_the_dataset_is_not_indexed_as_an_image(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: `index.py -d photos -s photos/dupes` (no extension, so a candidate image) found
    its own store at the next run and reported it "not an image", failed 1. The store's files
    (the store, its -wal and -shm, its .lock and its .cache folder) are passed over wherever
    the dataset holds them."""
    make_tree("photos", 3)
    store = Path("photos/dupes")
    assert index_cli.main(["-d", "photos", "-s", str(store), "-j", "1"]) == 0
    os.makedirs("photos/dupes.cache", exist_ok=True)
    Path("photos/dupes.cache/entry").write_bytes(b"not an image")  # extensionless, as -wal
    capsys.readouterr()
    with Store.open_for_reading(str(store)):  # a reader keeps its -wal and -shm there
        for named in ("photos/dupes", "./photos/../photos/dupes", str(in_tmp / "photos/dupes")):
            assert index_cli.main(["-d", "photos", "-s", named, "-j", "1"]) == 0
            captured = capsys.readouterr()
            assert captured.err == "" and "failed 0, skipped 0; 3 images" in captured.out
    assert sorted(path for paths in buckets(str(store)).values() for path in paths) == sorted(
        os.path.relpath(os.path.join(folder, name), "photos")
        for folder, _, names in os.walk("photos") for name in names
        if name.endswith(".jpg") or name.endswith(".png"))


@pytest.mark.parametrize(("options", "refusal"), [
    ((), "db.shelve: indexes {first}, not {other}; use another --shelve"),
    (("--algorithm", "phash"), "db.shelve: built with dhash"),
])
def test_what_the_store_alone_refuses_is_said_before_the_folder_is_walked(
        in_tmp: Path, capsys: pytest.CaptureFixture, options: tuple[str, ...],
        refusal: str) -> None:
    """A review: `-d /` with a store of another folder printed a line for each of 8,709 files it
    could not read, then refused. The refusal comes first, and alone."""
    make_tree("first", 2)
    assert index_cli.main(["-d", "first", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    make_tree("other", 2)
    folder = "first" if options else "other"
    os.symlink("nowhere.jpg", Path(folder, "broken.jpg"))  # said as the folder is walked
    capsys.readouterr()
    assert index_cli.main(["-d", folder, "-s", "db.shelve", "-q", "-j", "1", *options]) == 2
    err = capsys.readouterr().err.splitlines()
    expected = refusal.format(first=in_tmp / "first", other=in_tmp / "other")
    assert len(err) == 1 and err[0].startswith(f"index.py: error: {expected}"), err


def test_a_moved_dataset_folder_is_said_once_and_the_store_can_follow_it(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: after the folder holding the images and the store was moved, search.py printed
    the old paths (exit 0), --groups said "run index.py" for every file, and index.py refused
    ("indexes <old>, not <new>; use another --shelve"). Each says once that the store's dataset
    folder no longer exists, naming it, and what to do; `--moved-from OLD` re-points the store
    (its paths are relative to the folder), and only files whose stat changed are hashed again."""
    from neardup.cli import search as search_cli

    make_tree("old/images", 4)
    shutil.copyfile("old/images/cat0/image_0000.jpg", "old/images/dup.jpg")
    assert index_cli.main(["-d", "old/images", "-s", "old/db.shelve", "-q", "-j", "1"]) == 0
    gone, moved = str(in_tmp / "old" / "images"), str(in_tmp / "new" / "images")
    os.rename("old", "new")
    capsys.readouterr()
    said = (f"new/db.shelve: its dataset folder {gone} no longer exists (moved or deleted?): the"
            " paths it answers are not on disk; if the folder was moved, run index.py -d"
            f" NEW_FOLDER -s new/db.shelve --moved-from {gone} (or move it back), else index it"
            " again into a new store")
    assert search_cli.main(["-s", "new/db.shelve", "-q", "new/images/dup.jpg"]) == 0
    assert capsys.readouterr().err.splitlines() == [f"search.py: {said}"]
    assert search_cli.main(["-s", "new/db.shelve", "--groups"]) == 0
    assert capsys.readouterr().err.splitlines() == [f"search.py: {said}"]  # not one per file
    assert index_cli.main(["-d", "new/images", "-s", "new/db.shelve", "-q", "-j", "1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"index.py: error: new/db.shelve: indexes {gone}, which no longer exists (moved?): if"
        f" {moved} is that folder moved, add --moved-from {gone} to re-point the store, else"
        f" index {moved} into another --shelve"]
    # A --moved-from that is not the folder the store indexes is refused, the store untouched.
    assert index_cli.main(["-d", "new/images", "-s", "new/db.shelve", "-q", "-j", "1",
                           "--moved-from", "elsewhere"]) == 2
    elsewhere = in_tmp / "elsewhere"
    # Naming the folder to give: it said "add --moved-from" to a user who had (a review).
    assert capsys.readouterr().err == (
        f"index.py: error: new/db.shelve: indexes {gone}, not --moved-from {elsewhere}: give"
        f" --moved-from {gone}, or name the store that indexed {elsewhere}\n")
    assert index_cli.main(["-d", "new/images", "-s", "new/db.shelve", "-q", "-j", "1",
                           "--moved-from", "old/images"]) == 0
    assert "indexed 0, unchanged 5, removed 0" in capsys.readouterr().out  # nothing hashed again
    assert search_cli.main(["-s", "new/db.shelve", "-q", "new/images/dup.jpg"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.splitlines() == [
        "0\tnew/images/cat0/image_0000.jpg", "0\tnew/images/dup.jpg"]
    assert index_cli.main(["-d", "new/images", "-s", "new/db.shelve", "-q", "-j", "1"]) == 0


def test_a_moved_from_that_the_store_does_not_index_is_refused(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: `--moved-from /no/such/folder` was taken when the store already indexed
    --dataset (docs/usage.md: refused); a new store has no folder to have moved from either: a
    mistyped -s would build a whole new store where the user meant to re-point one."""
    make_tree("images", 2)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    before = Path("db.shelve").read_bytes()
    capsys.readouterr()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1",
                           "--moved-from", "/no/such/folder"]) == 2
    assert capsys.readouterr().err == (
        f"index.py: error: db.shelve: indexes {in_tmp / 'images'} already, not --moved-from"
        " /no/such/folder: drop --moved-from, or name the store that indexed that folder\n")
    assert Path("db.shelve").read_bytes() == before
    assert index_cli.main(["-d", "images", "-s", "new.shelve", "-q", "-j", "1",
                           "--moved-from", "/no/such/folder"]) == 2
    assert capsys.readouterr().err == (
        "index.py: error: new.shelve: a new store, indexing no folder yet, not --moved-from"
        " /no/such/folder: drop --moved-from, or name the store that indexed that folder\n")
    assert not [name for name in os.listdir(".") if name.startswith("new.shelve")]
    # The folder it indexes, named again, is no mistake.
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1",
                           "--moved-from", "images"]) == 0


def test_a_dataset_folder_whose_path_is_not_utf8_is_one_line(
        in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A review: a folder named in Latin-1 (`M\\xfcnchen`, from an old disk) ended index.py in a
    UnicodeEncodeError traceback (the store keeps the folder's path as text). Now one line that
    names the way round it, a symlink with a UTF-8 name, and that way works."""
    folder = os.fsdecode(b"M\xfcnchen")
    make_tree(folder, 2)
    assert index_cli.main(["-d", folder, "-s", "db.shelve", "-q", "-j", "1"]) == 2
    err = capsys.readouterr().err
    assert err == ("index.py: error: M\\xfcnchen: the folder's path is not UTF-8"
                   f" ({os.getcwd()}/M\\xfcnchen), and a store keeps it as text: rename the"
                   " folder, or index it through a symlink whose path is UTF-8\n"), err
    assert not os.path.exists("db.shelve")
    os.symlink(folder, "photos")
    assert index_cli.main(["-d", "photos", "-s", "db.shelve", "-q", "-j", "1"]) == 0


@pytest.mark.parametrize("size", ["2", "3", "6", "10"])
def test_a_hash_size_whose_bits_are_not_whole_bytes_is_refused_before_any_store(
        in_tmp: Path, capsys: pytest.CaptureFixture[str], size: str) -> None:
    """A review: --hash-size 6 (36 bits, nine hex digits) passed the range check and ended in a
    ValueError traceback from bytes.fromhex, leaving an empty store recorded as dhash-6 that
    refused every recipe after it. Sizes a store can keep are multiples of 4 (hash_file makes
    any size, as ImageHash does)."""
    make_tree("images", 2)
    with pytest.raises(SystemExit) as stopped:
        index_cli.main(["-d", "images", "-s", "db.shelve", "--hash-size", size])
    assert stopped.value.code == 2
    assert ("argument --hash-size: must be a multiple of 4 from 4 to 32 (a store keeps each hash"
            " as whole bytes)") in capsys.readouterr().err
    assert not os.path.exists("db.shelve")
    with pytest.raises(NeardupError, match="multiple of 4"):  # the API's way in
        index_folder("images", "db.shelve", Recipe(hash_size=int(size)))
    assert not os.path.exists("db.shelve")


def test_the_fork_server_and_workers_start_deaf_to_ctrl_c(in_tmp: Path) -> None:
    """A review: Ctrl-C while index.py started its workers printed the workers' own tracebacks
    (KeyboardInterrupt in their start-up, "Fatal Python error: init_import_site" from the fork
    server), in 3 of 4 batches of 25 tries, before each worker had set SIGINT aside. The fork
    server and every worker now start with SIGINT blocked (the parent takes Ctrl-C), seen here
    in each child's /proc status while a run is under way."""
    make_large_tree(in_tmp / "images", 400)
    command = [sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s", "db.shelve",
               "-q", "-j", "2", "--batch-size", "10"]
    sigint = 1 << (signal.SIGINT - 1)

    def descendants(pid: int) -> list[int]:
        found = []
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            found += [int(child), *descendants(int(child))]
        return found

    with subprocess.Popen(command, preexec_fn=sigint_as_in_a_terminal) as process:
        deadline = time.monotonic() + 60
        seen: dict[int, str] = {}
        while len(seen) < 3 and process.poll() is None and time.monotonic() < deadline:
            for pid in descendants(process.pid):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
                deaf = (int(fields["SigBlk"], 16) | int(fields["SigIgn"], 16)) & sigint
                seen[pid] = f"{fields['Name'].strip()} deaf={bool(deaf)}"
            time.sleep(0.01)
        finished(process, 60)
    assert len(seen) >= 3, seen  # the fork server and two workers (and the resource tracker)
    assert all(line.endswith("deaf=True") for line in seen.values()), seen


def test_a_folder_that_vanishes_during_the_run_is_said_once(in_tmp: Path) -> None:
    """A review: a subfolder deleted during a run gave a line per file (711 for one folder)."""
    for number in range(12):
        save(textured(number), f"images/keep/k{number}.jpg")
        save(textured(100 + number), f"images/lib/vanish/deep/v{number}.jpg")
    said: list[str] = []
    real = indexing.local_hasher(1, 4)

    def vanishing(files, recipe, max_pixels):  # type: ignore[no-untyped-def]
        shutil.rmtree("images/lib/vanish")  # after the files were found, before any is read
        os.remove("images/keep/k0.jpg")  # a file alone: still said by name
        yield from real(files, recipe, max_pixels)

    summary = index_folder("images", "db.shelve", Recipe(), hasher=vanishing, report=said.append)
    assert summary.failed == 13 and summary.indexed == 11
    assert sorted(said) == ["images/keep/k0.jpg: file not found (deleted or a broken link?)",
                            "images/lib/vanish: this folder was deleted or moved during the"
                            " run; its files are not found (said once for the folder, counted"
                            " as failed)"], said
