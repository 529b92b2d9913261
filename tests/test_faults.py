"""Faults while indexing: a full disk, a second indexer, readers during writes, vanishing files.

(kill -9 and Ctrl-C at random points are in test_index.py.)
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from neardup.cli import index as index_cli
from neardup.core import indexing
from neardup.core.discovery import FoundFile
from neardup.core.hashing import Recipe
from neardup.core.indexing import hash_files
from neardup.core.store import RACY, Store

from .conftest import PROJECT_ROOT, sigint_as_in_a_terminal
from .decoder_traps import crashing_png, with_crashing_decoder
from .imagegen import make_tree
from .test_index import buckets, committed_count, make_large_tree

INDEX = [sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s", "db.shelve", "-q",
         "-j", "1", "--batch-size", "10"]


def test_a_full_disk_is_one_line_and_the_store_keeps_its_last_commit(
    in_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    make_tree("images", 10)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    before = buckets()
    make_tree("images/more", 300, start_seed=100)
    # Room for the store as it is and SQLite's 32 KiB shared-memory file, not for 300 more images.
    limit = os.path.getsize("db.shelve") + 64 * 1024

    def small_disk() -> None:
        # Files may not grow past `limit` bytes: writes then fail as on a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(INDEX, capture_output=True, text=True, preexec_fn=small_disk,
                            timeout=120)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("index.py: error: db.shelve: cannot write (")
    assert "the store keeps its last committed state" in last
    assert "Traceback" not in result.stderr

    after = buckets()  # opens, and files and buckets still agree
    for key, paths in before.items():
        assert set(paths) <= set(after[key]), "a path stored before the fault was lost"
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert committed_count(in_tmp / "db.shelve") == 310


def test_a_second_indexer_is_refused_while_the_first_runs(
    in_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    make_large_tree(in_tmp / "images", 300)
    with subprocess.Popen(INDEX, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as first:
        deadline = time.monotonic() + 60
        while committed_count(in_tmp / "db.shelve") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if first.poll() is not None:
            pytest.skip("the first indexer finished before the second could start")
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q"]) == 2
        assert "another index.py is writing to this store" in capsys.readouterr().err
        first.wait(timeout=120)
    assert first.returncode == 0
    buckets()


def test_readers_see_consistent_snapshots_while_indexing_runs(in_tmp: Path) -> None:
    make_large_tree(in_tmp / "images", 300)
    looks = 0
    with subprocess.Popen(INDEX, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as writer:
        while writer.poll() is None:
            if not (in_tmp / "db.shelve").exists():
                time.sleep(0.01)
                continue
            try:
                store = Store.open_for_reading("db.shelve")
            except Exception:  # noqa: BLE001 - the writer may not have created the tables yet
                time.sleep(0.01)
                continue
            with store, store.snapshot():
                listed = [path for key in store.shelf.keys() for path in store.bucket(key)]
                assert len(listed) == len(set(listed))
                assert set(listed) == set(store.file_states())
            looks += 1
    assert writer.returncode == 0
    assert looks >= 3, "the indexer finished before the readers could look"


def test_a_file_that_vanishes_before_it_is_hashed_is_reported(tmp_path: Path) -> None:
    gone = FoundFile("gone.jpg", str(tmp_path / "gone.jpg"), 100, 1)
    (outcome,) = list(hash_files([gone], Recipe(), jobs=1))
    assert outcome.hash_hex is None
    assert outcome.error == "file not found (deleted or a broken link?)"


def test_a_file_rewritten_while_it_is_hashed_is_reported_then_indexed_next_run(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    make_tree("images", 3)
    real_hash_file = indexing.hash_file

    def hash_while_someone_writes(path: str, *args: object) -> object:
        if path.endswith("image_0001.jpg"):
            os.utime(path, ns=(1, 1))  # another program saves the file meanwhile
        return real_hash_file(path, *args)

    monkeypatch.setattr(indexing, "hash_file", hash_while_someone_writes)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    captured = capsys.readouterr()
    assert "image_0001.jpg: changed while being indexed; run again to index it" in captured.err
    assert "indexed 2, unchanged 0, removed 0, failed 1" in captured.out

    monkeypatch.setattr(indexing, "hash_file", real_hash_file)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert "indexed 1, unchanged 2" in capsys.readouterr().out


def _move_ctime(path: str) -> None:
    """Make the file's ctime move, whatever the file system's timestamp tick: a chmod to the mode
    it has changes nothing else, and is repeated until the clock has ticked."""
    before = os.stat(path)
    while os.stat(path).st_ctime_ns == before.st_ctime_ns:
        os.chmod(path, before.st_mode)


@pytest.mark.parametrize("how", ["hard link", "chmod"])
def test_a_file_whose_ctime_alone_moves_while_it_is_hashed_is_indexed_and_hashed_again_next_run(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, how: str
) -> None:
    # gather.py hard-links its haystack to the source, and another gather run linking the same
    # source (or a backup tool, a chmod, a scanner's xattrs) moves every shared file's ctime
    # without a byte or its mtime changing: the file is indexed, not failed, but recorded racy.
    monkeypatch.setattr(indexing, "RACY_NS", 0)  # only what moved while read is racy here
    make_tree("images", 3)
    os.mkdir("links")
    touched = "cat1/image_0001.jpg"
    real_hash_file = indexing.hash_file
    hashed: list[str] = []
    moved: list[str] = []

    def hash_while_another_program_links(path: str, *args: object) -> object:
        relpath = os.path.relpath(path, "images")
        hashed.append(relpath)
        if relpath == touched and not moved:  # in the first run only
            moved.append(relpath)
            if how == "hard link":
                os.link(path, "links/image_0001.jpg")
            else:
                os.chmod(path, 0o600)
            _move_ctime(path)
        return real_hash_file(path, *args)

    monkeypatch.setattr(indexing, "hash_file", hash_while_another_program_links)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    captured = capsys.readouterr()
    assert "changed while being indexed" not in captured.err
    assert "indexed 3, unchanged 0, removed 0, failed 0" in captured.out
    with Store.open_for_reading("db.shelve") as store:
        states = store.file_states()
    assert states[touched].ctime_ns == RACY  # its hash is not trusted by the next run
    assert RACY not in (states["cat0/image_0000.jpg"].ctime_ns,
                        states["cat0/image_0002.jpg"].ctime_ns)
    assert buckets() == {real_hash_file(os.path.join("images", relpath), Recipe()).hex():
                         [relpath] for relpath in states}

    hashed.clear()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert "indexed 0, unchanged 3" in capsys.readouterr().out
    assert hashed == [touched]  # hashed again, found the same: recorded as it is now
    with Store.open_for_reading("db.shelve") as store:
        assert store.file_states()[touched].ctime_ns not in (RACY, 0)
    hashed.clear()
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert hashed == []


def test_a_file_replaced_while_it_is_hashed_is_still_reported(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Another inode with the same size and mtime (a copy renamed over it, then touch -r): the
    # bytes read may be of neither file, so it fails as before.
    make_tree("images", 2)
    real_hash_file = indexing.hash_file

    def hash_while_someone_replaces(path: str, *args: object) -> object:
        if path.endswith("image_0001.jpg") and not os.path.exists("copy.jpg"):
            info = os.stat(path)
            Path("copy.jpg").write_bytes(Path(path).read_bytes())
            os.utime("copy.jpg", ns=(info.st_atime_ns, info.st_mtime_ns))
            os.link("copy.jpg", path + ".tmp")
            os.replace(path + ".tmp", path)
        return real_hash_file(path, *args)

    monkeypatch.setattr(indexing, "hash_file", hash_while_someone_replaces)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    captured = capsys.readouterr()
    assert "image_0001.jpg: changed while being indexed; run again to index it" in captured.err
    assert "indexed 1, unchanged 0, removed 0, failed 1" in captured.out


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _hashing_workers(indexer: int) -> list[int]:
    """The worker processes of an index.py: children of its fork server (its child too)."""
    workers = []
    for child in _children(indexer):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"forkserver" in command:
            workers += _children(child)
    return workers


@contextlib.contextmanager
def _indexing_mid_run(
    in_tmp: Path, command: list[str], workers_wanted: int, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """index.py started, once it has committed its first batch: the process and its worker
    processes (the test skipped if the run ended first, or has fewer workers than wanted)."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env) as indexer:
        deadline = time.monotonic() + 60
        while committed_count(in_tmp / "db.shelve") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        workers = _hashing_workers(indexer.pid)
        if indexer.poll() is not None or len(workers) < workers_wanted:
            pytest.skip("the run finished before its workers could be signalled")
        yield indexer, workers


# index.py as a script whose reading of a process's exit status (once, from its fork server's pipe)
# is slowed down: two threads reading it at once then always collide, where they did once in a
# CI run (of many that passed) and the death lost its signal's name.
INDEX_WITH_SLOW_STATUS_READS = """
import sys, time
from multiprocessing import forkserver
read_signed = forkserver.read_signed
def slow_read_signed(fd):
    time.sleep(0.3)
    return read_signed(fd)
forkserver.read_signed = slow_read_signed
from neardup.cli.index import main
sys.argv[0] = "index.py"
raise SystemExit(main())
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find workers")
@pytest.mark.parametrize("status_reads", ["as they are", "slowed"])
def test_a_worker_killed_mid_run_costs_no_file(in_tmp: Path, status_reads: str) -> None:
    """multiprocessing.Pool replaced a killed worker (the kernel's out-of-memory killer, say)
    and waited for ever for the files it held, keeping the store's lock; then the run stopped
    there. Now the files the dead worker may have held are hashed again, each alone, and the
    run finishes, naming the signal that ended the worker."""
    make_large_tree(in_tmp / "images", 600)
    script = (["-c", INDEX_WITH_SLOW_STATUS_READS] if status_reads == "slowed"
              else [str(PROJECT_ROOT / "index.py")])
    command = [sys.executable, *script, "-d", "images", "-s", "db.shelve", "-q", "-j", "2",
               "--batch-size", "10"]
    with _indexing_mid_run(in_tmp, command, workers_wanted=1) as (indexer, workers):
        os.kill(workers[0], signal.SIGKILL)
        out, err = indexer.communicate(timeout=120)
    assert indexer.returncode == 0, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("index.py: a worker process died while hashing (SIGKILL); the "), err
    assert lines[0].endswith(" given to the workers and not answered are hashed again, each"
                             " alone, to find the one that killed it"), err
    assert "indexed 600, unchanged 0, removed 0, failed 0" in out
    assert committed_count(in_tmp / "db.shelve") == 600


INDEX_TWO_JOBS = [sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s",
                  "db.shelve", "-q", "-j", "2", "--batch-size", "10"]


def test_a_file_that_crashes_its_worker_fails_alone_and_the_run_goes_on(in_tmp: Path) -> None:
    """A file that kills the process decoding it (a decoder's crash; the out-of-memory killer)
    broke the pool and stopped the run with one line, and every later run stopped at the same
    file: a library holding one could never be indexed. It now fails alone, named with the
    signal, and everything else is stored, run after run."""
    make_large_tree(in_tmp / "images", 200)
    crashing_png(in_tmp / "images" / "d1" / "0050b.png")
    crashing_png(in_tmp / "images" / "d3" / "0150b.png")
    env = with_crashing_decoder(in_tmp)
    command = [sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s",
               "db.shelve", "-q", "-j", "2", "--batch-size", "10"]
    for run in (1, 2):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done
        crashed = [line for line in done.stderr.splitlines() if "crashed" in line]
        assert sorted(crashed) == [
            f"index.py: images/{name}: crashed the process that hashed it (SIGSEGV: a fault in"
            " an image decoder?)" for name in ("d1/0050b.png", "d3/0150b.png")], done.stderr
        died = [line for line in done.stderr.splitlines() if "a worker process died" in line]
        assert 1 <= len(died) <= 2 and len(died) + len(crashed) == len(
            done.stderr.splitlines()), done.stderr
        indexed = 200 if run == 1 else 0
        assert f"indexed {indexed}, unchanged {200 - indexed}, removed 0, failed 2" in done.stdout
        assert committed_count(in_tmp / "db.shelve") == 200


def test_a_run_of_one_new_file_that_crashes_its_decoder_fails_it_alone(in_tmp: Path) -> None:
    """A run with one file to hash (one added since the last run) hashed it in index.py's own
    process, which a crashing decoder then killed, with no line at all (exit -11): it now gets
    a worker process of its own, as any other run does unless --jobs 1 is asked for."""
    crashing_png(in_tmp / "images" / "new.png")
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s",
                           "db.shelve", "-q"], capture_output=True, text=True,
                          env=with_crashing_decoder(in_tmp), timeout=120)
    assert done.returncode == 1, done  # nothing could be indexed
    assert done.stderr.splitlines()[-2:] == [
        "index.py: images/new.png: crashed the process that hashed it (SIGSEGV: a fault in an"
        " image decoder?)", "index.py: no image could be indexed under images; db.shelve was not"
        " written"], done.stderr


def test_a_file_a_decoder_loops_on_fails_after_the_file_timeout(in_tmp: Path) -> None:
    """A decoder caught in a loop held the run for ever, and every later run at the same file.
    With --file-timeout, the pool is given up once no file has come back for that long, its
    files are hashed again alone, and the one still hashing after the timeout fails."""
    make_large_tree(in_tmp / "images", 60)
    crashing_png(in_tmp / "images" / "d2" / "0030b.png", trap="hang")
    env = with_crashing_decoder(in_tmp)
    command = [sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s",
               "db.shelve", "-q", "-j", "2", "--batch-size", "10", "--file-timeout", "2"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert time.monotonic() - started < 30
    assert done.returncode == 0, done
    lines = done.stderr.splitlines()
    assert lines[0].startswith(
        "index.py: no chunk of files has come back from the workers for 2 s; the "), lines
    assert lines[0].endswith(" hashed again, one at a time, each given 2 s"), lines
    assert lines[1:] == ["index.py: images/d2/0030b.png: took more than 2 s to hash (a decoder"
                         " caught in a loop?); --file-timeout sets the limit"], lines
    assert "indexed 60, unchanged 0, removed 0, failed 1" in done.stdout
    assert committed_count(in_tmp / "db.shelve") == 60
    time.sleep(0.5)
    hanging = in_tmp / "hanging.pids"
    for pid in map(int, hanging.read_text().split()):
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(
            f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0], f"{pid} still runs"


def test_the_file_timeout_is_refused_where_it_would_do_nothing(in_tmp: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    make_tree(in_tmp / "images", 2)
    for extra in (["-j", "1"], ["--local-cluster", "1"]):
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "--file-timeout", "5",
                               *extra]) == 2
        assert "--file-timeout does nothing with" in capsys.readouterr().err
    assert not (in_tmp / "db.shelve").exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find workers")
@pytest.mark.parametrize("submitting", ["as it is", "slowed"])
def test_a_death_beside_a_stopped_worker_is_said_at_once_and_the_run_finishes(
    in_tmp: Path, submitting: str
) -> None:
    """One worker crashed while the other was stopped (SIGSTOP: a debugger, a stuck disk), which
    ignores SIGTERM. On Python 3.13 index.py hung for good, deaf to Ctrl-C (the executor's
    thread held the lock shutdown() takes while it waited for the stopped worker); on 3.11 it
    said nothing for 12 s, and then sometimes without the crash's signal (the stopped worker's
    SIGKILL, sent while stopping the pool, counted as a second death). "slowed": the death
    comes while index.py is about to submit more files, which takes that lock too: on 3.13 it
    hung there (1 run in about 25 as it is, under load)."""
    make_large_tree(in_tmp / "images", 600)
    command = [sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s", "db.shelve",
               "-q", "-j", "2", "--batch-size", "10"]
    env = ({**with_crashing_decoder(in_tmp), "SLOW_SUBMIT": "0.2"} if submitting == "slowed"
           else None)
    with _indexing_mid_run(in_tmp, command, workers_wanted=2, env=env) as (indexer, workers):
        os.kill(workers[1], signal.SIGSTOP)
        os.kill(workers[0], signal.SIGSEGV)
        killed = time.monotonic()
        assert indexer.stderr is not None
        # Waited for with a limit: the 3.13 hang said nothing, ever.
        said = select.select([indexer.stderr], [], [], 60)[0]
        first_line = indexer.stderr.readline() if said else "(nothing in 60 s)"
        said_after = time.monotonic() - killed
        try:
            out, err = indexer.communicate(timeout=60)
        finally:
            if indexer.poll() is None:
                os.kill(workers[1], signal.SIGCONT)
                indexer.kill()
    assert indexer.returncode == 0, (out, first_line, err)
    assert first_line.startswith("index.py: a worker process died while hashing (SIGSEGV); the "), \
        first_line
    assert said_after < 8, said_after
    assert err == "", err
    assert "indexed 600, unchanged 0, removed 0, failed 0" in out
    assert committed_count(in_tmp / "db.shelve") == 600


def test_a_worker_killed_while_it_sends_its_results_is_seen_at_once(in_tmp: Path) -> None:
    """A worker killed half way through sending a chunk's results (megabytes with --features)
    leaves half a message: the executor's thread waits for the rest and never sees the death.
    The run stalled until --file-timeout, then ended in a CancelledError traceback (a review)."""
    make_large_tree(in_tmp / "images", 200)
    env = {**with_crashing_decoder(in_tmp), "HALF_WRITTEN": str(in_tmp / "half-written")}
    started = time.monotonic()
    done = subprocess.run([*INDEX_TWO_JOBS, "--file-timeout", "60"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert (in_tmp / "half-written").exists()
    assert time.monotonic() - started < 30, done
    assert done.returncode == 0, done
    assert done.stderr.startswith("index.py: a worker process died while hashing (SIGKILL); the")
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "indexed 200, unchanged 0, removed 0, failed 0" in done.stdout
    assert committed_count(in_tmp / "db.shelve") == 200


def test_eight_files_that_crash_their_decoder_do_not_block_a_folder(in_tmp: Path) -> None:
    """Failed files are hashed again by every run, one after the other: eight of them in a row
    stopped every later run as "the environment, not the files", and a photo added after them
    was never indexed (a review). A file hashed before now tells: it passes, so they are files."""
    make_large_tree(in_tmp / "images", 20)
    for number in range(8):
        crashing_png(in_tmp / "images" / "a" / f"bad{number}.png")
    env = with_crashing_decoder(in_tmp)
    for run in (1, 2):
        if run == 2:
            make_large_tree(in_tmp / "images" / "z", 1)  # a new photo, after the bad ones
        done = subprocess.run(INDEX_TWO_JOBS, capture_output=True, text=True, env=env,
                              timeout=120)
        assert done.returncode == 0, done
        assert sum("crashed the process" in line for line in done.stderr.splitlines()) == 8
        assert f"indexed {20 if run == 1 else 1}, unchanged {0 if run == 1 else 20}, removed 0," \
            " failed 8" in done.stdout, done
    assert committed_count(in_tmp / "db.shelve") == 21


def test_a_file_timeout_too_long_to_wait_for_is_one_line(in_tmp: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """10^10 s (to turn the limit off) raised OverflowError from the pipe once a worker died."""
    make_tree(in_tmp / "images", 2)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "--file-timeout",
                           "10000000000"]) == 2
    assert capsys.readouterr().err == (
        "index.py: error: a file timeout of 1e+10 s is not between 0 and 1,000,000 s (the most a"
        " pipe can be waited on)\n")


def test_a_pool_given_up_with_chunks_still_queued_loses_nothing(in_tmp: Path) -> None:
    """Every worker slow at once, with chunks still queued: giving the pool up cancelled those,
    and reading a cancelled future raised CancelledError, a traceback and the group lost (a
    review). The slow files then pass alone, each within the timeout. (64 files: chunks of 4;
    the first two, all slow, take 2.4 s each on both workers, over the timeout, while the
    chunks behind them wait.)"""
    make_large_tree(in_tmp / "images", 56)
    for number in range(8):
        crashing_png(in_tmp / "images" / "0slow" / f"{number:02d}.png", trap="slow")
    done = subprocess.run([*INDEX_TWO_JOBS, "--file-timeout", "2"], capture_output=True,
                          text=True, env=with_crashing_decoder(in_tmp), timeout=300)
    assert done.returncode == 0, done
    assert "Traceback" not in done.stderr
    assert "indexed 64, unchanged 0, removed 0, failed 0" in done.stdout, done
    assert committed_count(in_tmp / "db.shelve") == 64


def test_a_library_exiting_in_a_worker_fails_its_file_alone(in_tmp: Path) -> None:
    """A decoder that called sys.exit(3) in a worker ended index.py with status 3 and no word
    (a review): the worker dies instead, and the file fails alone like a crash."""
    make_large_tree(in_tmp / "images", 40)
    crashing_png(in_tmp / "images" / "d1" / "0009b.png", trap="exit")
    done = subprocess.run(INDEX_TWO_JOBS, capture_output=True, text=True,
                          env=with_crashing_decoder(in_tmp), timeout=120)
    assert done.returncode == 0, done
    assert done.stderr.splitlines()[-1] == (
        "index.py: images/d1/0009b.png: the process that hashed it ended with exit status 3")
    assert "indexed 40, unchanged 0, removed 0, failed 1" in done.stdout


@pytest.mark.parametrize("reaped_late", ["0", "0.3"], ids=["reaped at once", "reaped late"])
def test_a_file_whose_process_dies_with_the_fork_server_is_hashed_again(
        in_tmp: Path, reaped_late: str) -> None:
    """A worker killed together with the fork server that started it leaves no exit status
    (Python reads 255): hashed alone, such a file failed "the process that hashed it ended with
    exit status 255", as if it were at fault (a review). A new process tries it once more.
    Started while the dead fork server could not yet be reaped, that process failed index.py
    with a ConnectionRefusedError traceback (1 run in 8 under load)."""
    make_large_tree(in_tmp / "images", 40)
    crashing_png(in_tmp / "images" / "d1" / "0009b.png", trap="killboth")
    env = with_crashing_decoder(in_tmp)
    killed = in_tmp / "killed-both"
    killed.touch()
    done = subprocess.run(INDEX_TWO_JOBS, capture_output=True, text=True,
                          env={**env, "KILLED_BOTH": str(killed),
                               "FORK_SERVER_REAPED_LATE": reaped_late}, timeout=120)
    assert done.returncode == 0, done
    assert killed.read_text() == "kk"  # in the pool, then alone
    # The pool's line, without a signal (none was read); no failure.
    line, = done.stderr.splitlines()
    assert line.startswith("index.py: the fork server that starts the worker processes ended"
                           " (killed?), and their exit statuses with it; the "), done
    assert "indexed 41, unchanged 0, removed 0, failed 0" in done.stdout, done
    assert committed_count(in_tmp / "db.shelve") == 41


def test_workers_that_cannot_start_a_thread_still_hash(in_tmp: Path) -> None:
    """Under a limit on processes and threads (a container's pids.max), a worker could not
    start its exit-with-parent thread: a traceback per worker (review r24)."""
    make_large_tree(in_tmp / "images", 40)
    done = subprocess.run(INDEX_TWO_JOBS, capture_output=True, text=True, timeout=120,
                          env={**with_crashing_decoder(in_tmp), "NO_THREADS_IN_WORKERS": "1"})
    assert done.returncode == 0, done
    assert done.stderr == "", done
    assert "indexed 40, unchanged 0, removed 0, failed 0" in done.stdout, done


def test_a_fork_server_killed_alone_is_not_said_as_a_worker_death(in_tmp: Path) -> None:
    """Killed from outside, the fork server takes its workers' exit statuses with it, and the
    executor takes them for dead: index.py said "a worker process died while hashing ... to
    find the one that killed it", where no file killed anything (review r24)."""
    make_large_tree(in_tmp / "images", 40)
    crashing_png(in_tmp / "images" / "d1" / "0009b.png", trap="killserver")
    killed = in_tmp / "killed-server"
    done = subprocess.run(INDEX_TWO_JOBS, capture_output=True, text=True, timeout=120,
                          env={**with_crashing_decoder(in_tmp), "KILLED_BOTH": str(killed)})
    assert done.returncode == 0, done
    assert killed.exists()
    line, = done.stderr.splitlines()
    assert line.startswith("index.py: the fork server that starts the worker processes ended"
                           " (killed?), and their exit statuses with it; the "), done
    assert line.endswith(" hashed again, each alone"), done
    assert "indexed 41, unchanged 0, removed 0, failed 0" in done.stdout, done


@pytest.mark.parametrize("failing", ["2", "2,3", "2-5"], ids=[
    "a pool's worker", "then the one hashing alone", "then the one alone three times"])
def test_a_worker_that_cannot_be_started_costs_no_file(in_tmp: Path, failing: str) -> None:
    """A worker started as the fork server is killed fails to start (EOFError "unexpected EOF",
    ConnectionRefusedError): index.py ended with that traceback, in a pool's submission or
    starting the process that hashes a broken pool's files alone. The files go alone, and such
    a process's start is tried again for up to 2 s."""
    make_large_tree(in_tmp / "images", 40)
    done = subprocess.run(INDEX_TWO_JOBS, capture_output=True, text=True, timeout=120,
                          env={**with_crashing_decoder(in_tmp), "FAIL_WORKER_START": failing})
    assert done.returncode == 0, done
    line, = done.stderr.splitlines()
    assert line.startswith("index.py: a worker process could not be started (EOFError: unexpected"
                           " EOF; the fork server killed, or a limit on processes reached?); the "
                           ), done
    assert "indexed 40, unchanged 0, removed 0, failed 0" in done.stdout, done
    assert committed_count(in_tmp / "db.shelve") == 40


@pytest.mark.parametrize("refused", ["1", "1,2,3", "feeder"], ids=[
    "the pool's thread", "three pools' in a row, said once", "its feeder"])
def test_a_pool_whose_thread_cannot_start_costs_no_file(in_tmp: Path, refused: str) -> None:
    """Under a limit on processes and threads (a container's pids.max, which counts threads), the
    worker pool's own thread could not start: index.py ended with a RuntimeError traceback
    (review r24); or that thread could not start the one that feeds the workers: it died with a
    traceback and the run stalled for the file timeout (600 s). The pool's files go alone, as
    when its worker cannot start, and one line says so."""
    make_large_tree(in_tmp / "images", 40)
    started = time.monotonic()
    done = subprocess.run(INDEX_TWO_JOBS, capture_output=True, text=True, timeout=120,
                          env={**with_crashing_decoder(in_tmp), "NO_POOL_THREAD": refused})
    assert time.monotonic() - started < 60, done
    assert done.returncode == 0, done
    line, = done.stderr.splitlines()
    said = ("a worker process could not be started (RuntimeError: can't start new thread; a limit"
            " on processes and threads reached?)" if refused != "feeder" else
            "the worker pool's own thread ended (a limit on processes and threads reached?)")
    assert line.startswith(f"index.py: {said}; the "), done
    assert "indexed 40, unchanged 0, removed 0, failed 0" in done.stdout, done
    assert committed_count(in_tmp / "db.shelve") == 40


def test_workers_that_never_start_end_the_run_with_one_line(in_tmp: Path) -> None:
    """Every worker start after the first pool's fails: one line, a failed run, no traceback."""
    make_large_tree(in_tmp / "images", 40)
    done = subprocess.run(INDEX_TWO_JOBS, capture_output=True, text=True, timeout=120,
                          env={**with_crashing_decoder(in_tmp), "FAIL_WORKER_START": "2-999"})
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr, done
    assert done.stderr.splitlines()[-1] == (
        "index.py: error: a worker process could not be started (EOFError: unexpected EOF; the fork"
        " server killed, or a limit on processes reached?); what was hashed before is written"
    ), done


def test_a_worker_stopped_by_sigstop_fails_its_file_after_the_timeout(in_tmp: Path) -> None:
    """A stopped process holds SIGTERM until it is continued: ending one waited for ever (a
    review's Ctrl-C hung). Now SIGKILL follows, in the pool and alone."""
    make_large_tree(in_tmp / "images", 40)
    crashing_png(in_tmp / "images" / "d1" / "0009b.png", trap="stop")
    started = time.monotonic()
    done = subprocess.run([*INDEX_TWO_JOBS, "--file-timeout", "2"], capture_output=True,
                          text=True, env=with_crashing_decoder(in_tmp), timeout=120)
    assert time.monotonic() - started < 30
    assert done.returncode == 0, done
    assert done.stderr.splitlines()[-1] == (
        "index.py: images/d1/0009b.png: took more than 2 s to hash (a decoder caught in a"
        " loop?); --file-timeout sets the limit"), done.stderr
    assert "indexed 40, unchanged 0, removed 0, failed 1" in done.stdout


def test_a_run_where_every_process_dies_stops_and_keeps_the_stored_entries(in_tmp: Path) -> None:
    """A review: a decoder broken for every image, after a chmod (every entry looked at again),
    failed all 300 files one process start at a time and removed all 300 entries. After eight
    deaths in a row a file hashed before is tried: it dies too, so the run stops, and the entries
    stay."""
    from PIL import Image

    (in_tmp / "images").mkdir()
    for number in range(24):
        Image.effect_noise((64, 48), 40 + number).convert("RGB").save(
            in_tmp / "images" / f"{number:02d}.png")
    env = with_crashing_decoder(in_tmp)
    time.sleep(2.5)  # older than that, a file is not "racily clean": the next run trusts it
    first = subprocess.run(INDEX_TWO_JOBS, capture_output=True, text=True, env=env, timeout=120)
    assert "indexed 24, unchanged 0" in first.stdout, first
    for image in sorted((in_tmp / "images").iterdir())[:-1]:
        image.chmod(0o664)  # the ctime moves: each file is read again, but the last
    done = subprocess.run(INDEX_TWO_JOBS, capture_output=True, text=True, timeout=120,
                          env={**env, "CRASH_EVERY_PNG": "1"})
    assert done.returncode == 2, done
    last = done.stderr.splitlines()[-1]
    assert last.startswith(
        "index.py: error: 8 files in a row killed the process hashing them (the last, "), last
    assert ": SIGSEGV), and so did " in last and ".png, hashed before: the image decoders are" \
        " broken here, not the files" in last, last
    assert last.endswith(
        "what was hashed before is written, and the entries of those files are kept"), last
    assert committed_count(in_tmp / "db.shelve") == 24


def test_a_one_at_a_time_process_killed_before_reading_its_file_is_a_death_not_an_error(
        in_tmp: Path) -> None:
    """Sending a file to a process that died before reading it says "connection reset" (the
    pipe is a socket pair): a review's kill loop ended index.py with that traceback."""
    import multiprocessing

    make_tree(in_tmp / "images", 1)
    path = next((in_tmp / "images").rglob("*.jpg"))
    info = path.stat()
    item = FoundFile(path.name, str(path), info.st_size, info.st_mtime_ns, info.st_ino,
                     info.st_ctime_ns)
    alone = indexing._OneAtATime(multiprocessing.get_context("forkserver"),
                                 (Recipe(), indexing.DEFAULT_MAX_PIXELS, False))
    assert alone.hash(item, 60).hash_hex  # type: ignore[union-attr]
    os.kill(alone._process.pid, signal.SIGKILL)
    alone._process.join()
    assert alone.hash(item, 60) is None
    assert alone.stop() == -signal.SIGKILL


def test_ctrl_c_while_the_suspects_are_hashed_alone_stops_at_once(in_tmp: Path) -> None:
    """After a worker died, its files are hashed one at a time by a process of its own: Ctrl-C
    while that process is stuck on one stops the run at once, with index.py's one line, and the
    process with it."""
    make_large_tree(in_tmp / "images", 40)
    crashing_png(in_tmp / "images" / "d0" / "0000a.png")
    crashing_png(in_tmp / "images" / "d0" / "0000b.png", trap="hang")
    command = [sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s",
               "db.shelve", "-q", "-j", "2", "--batch-size", "10"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=with_crashing_decoder(in_tmp), start_new_session=True,
                          preexec_fn=sigint_as_in_a_terminal) as indexer:
        pids = in_tmp / "hanging.pids"
        deadline = time.monotonic() + 60
        while not pids.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        # Perhaps hanging first in the pool, stopped when the other worker crashed (both files
        # are in the workers' first chunks); then alone, where it stays.
        time.sleep(2)
        assert indexer.poll() is None, indexer.communicate()
        os.killpg(indexer.pid, signal.SIGINT)
        started = time.monotonic()
        _out, err = indexer.communicate(timeout=60)
    assert time.monotonic() - started < 5
    assert indexer.returncode == 130, err
    assert err.splitlines()[-1] == (
        "index.py: interrupted; every committed batch is kept in db.shelve"
        " (files hashed since the last commit are hashed again); run again to finish"), err
    assert "Traceback" not in err
    time.sleep(0.5)
    for pid in map(int, pids.read_text().split()):
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(
            f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0], f"{pid} still runs"


def test_workers_stopped_while_writing_their_results_leave_no_thread_waiting() -> None:
    """A review: index.py --features stopped on a full disk, printed its error line and hung
    for good: a worker stopped while writing a chunk's results (megabytes of features) left half
    a message in the results' pipe, and the executor's thread read on for ever (interpreter
    exit joins it). The half message is written here by hand, as a stopped worker leaves it."""
    import concurrent.futures
    import multiprocessing
    import struct

    pool = concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("forkserver"))
    assert pool.submit(int, "7").result() == 7  # the worker and the executor's thread run
    thread = pool._executor_manager_thread
    results = pool._result_queue
    os.write(results._writer.fileno(), struct.pack("!i", 1_000_000) + b"the start of it")
    try:
        indexing._stop_workers(pool)
        thread.join(timeout=20)
        assert not thread.is_alive(), "the executor's thread still waits for the rest"
    finally:
        if not results._writer.closed:
            results._writer.close()  # else this test process would hang at its exit


def test_a_worker_whose_status_another_thread_is_reading_counts_as_ended() -> None:
    """A CI run (and 2 of 40 runs of a worker crashed beside a stopped one) named no signal for
    the death: under a fork server a worker's sentinel is the pipe its exit status comes
    through, and once the executor's thread had read the status, until the fork server closed
    the pipe a moment later, the dead worker passed for running and was left out of those that
    died. That moment is made here: a pipe emptied and still open, a pid no longer running."""
    import types

    reader, writer = os.pipe()
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped, as the fork server reaps a worker before it writes its status
    dead = types.SimpleNamespace(pid=process.pid, sentinel=reader,
                                 _popen=types.SimpleNamespace(returncode=None))
    running = types.SimpleNamespace(pid=os.getpid(), sentinel=reader,
                                    _popen=types.SimpleNamespace(returncode=None))
    read = types.SimpleNamespace(pid=os.getpid(), sentinel=reader,
                                 _popen=types.SimpleNamespace(returncode=-11))
    try:
        assert indexing._any_ended([running, dead])
        assert not indexing._any_ended([running])
        assert indexing._any_ended([read])  # its status read already
    finally:
        os.close(reader)
        os.close(writer)


def test_workers_stopped_leave_the_executors_wake_up_pipe_closed() -> None:
    """A full suite run: a worker killed mid-run printed index.py's one line, then "Exception
    ignored in: <module 'threading'> ... OSError: [Errno 9] Bad file descriptor". Python's exit
    hook checks the executor's wake-up pipe is open, then writes to it, while the executor's
    thread may close it in between. Once the workers are stopped, that thread has ended and the
    pipe is closed, so the hook writes nothing."""
    import concurrent.futures
    import multiprocessing

    pool = concurrent.futures.ProcessPoolExecutor(
        2, mp_context=multiprocessing.get_context("forkserver"))
    assert [pool.submit(int, "7").result() for _ in range(4)] == [7] * 4
    thread = pool._executor_manager_thread
    wakeup = pool._executor_manager_thread_wakeup
    for process in list(pool._processes.values()):
        process.kill()  # as the out-of-memory killer would
    indexing._stop_workers(pool)
    assert not thread.is_alive()
    assert wakeup._closed


def test_a_file_that_needs_more_memory_than_allowed_is_one_failed_file(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A MemoryError outside decoding (converting a huge picture under `ulimit -v`) was a
    traceback from the worker and one from the run, exit 1, and nothing written."""
    make_tree("images", 4)
    real = indexing.hash_file

    def hungry(path: str, *args: object) -> object:
        if path.endswith("image_0002.jpg"):
            raise MemoryError
        return real(path, *args)

    monkeypatch.setattr(indexing, "hash_file", hungry)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    captured = capsys.readouterr()
    assert "indexed 3, unchanged 0, removed 0, failed 1" in captured.out
    assert captured.err.endswith("image_0002.jpg: " + indexing.OUT_OF_MEMORY + "\n")


# Each kind of worker that is sent its work through a pipe, the pipe then closed on it.
PIPE_CLOSED_ON_WORKERS = """
import multiprocessing, sys, time
from neardup.core import indexing
from neardup.core.hashing import Recipe
from neardup.service import decoding
decoder = decoding._Worker()
decoder.launch()
decoder.wait_started().close()
alone = indexing._OneAtATime(multiprocessing.get_context("forkserver"),
                             (Recipe(), indexing.DEFAULT_MAX_PIXELS, False))
alone._connection.close()
deadline = time.monotonic() + 30
processes = [decoder._process, alone._process]
while any(process.is_alive() for process in processes) and time.monotonic() < deadline:
    time.sleep(0.05)
print(*(process.exitcode for process in processes))
"""


def test_a_worker_whose_pipe_closes_ends_without_a_word(tmp_path: Path) -> None:
    """A worker whose parent closed the pipe to it (gave up on it, or went away) printed
    "Process neardup-decoder:" and an EOFError's traceback on the parent's stderr: a review saw
    that line alone on the checker's stderr as the fork server was stopped and killed."""
    (tmp_path / "script.py").write_text(PIPE_CLOSED_ON_WORKERS)
    done = subprocess.run([sys.executable, str(tmp_path / "script.py")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert done.stdout.split() == ["0", "0"], done
    assert done.stderr == "", done
