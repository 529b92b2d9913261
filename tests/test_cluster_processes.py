"""index.py --scheduler against real `dask scheduler` and `dask worker` processes on 127.0.0.1.

Unlike a LocalCluster, these processes do not share the test's folder or sys.path: they import
neardup only if it is installed in their environment (scripts/setup-venv.sh installs this checkout
into .venv). So this is what a user's cluster does, including a worker with another neardup.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import neardup
from neardup.cli import index as index_cli

from .conftest import finished, sigint_as_in_a_terminal
from .imagegen import make_tree
from .test_index import buckets

pytest.importorskip("distributed", reason="Dask is optional: pip install -r requirements-dask.txt")

BIN = Path(sys.executable).parent
DASK = BIN / "dask"
START_SECONDS = 60


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a Dask process: the venv's packages, and on PYTHONPATH the checkout
    under test (the venv's editable install may be of another worktree, whose code the cluster
    check would refuse), after `extra`'s PYTHONPATH if any. Nothing else of the test's path."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    paths = [extra.pop("PYTHONPATH")] if "PYTHONPATH" in extra else []
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(Path(neardup.__file__).parent.parent)])
    return env


@pytest.fixture(scope="module")
def installed_venv() -> Path:
    """The running venv, if it has the dask command and imports this very neardup from anywhere."""
    if not DASK.exists():
        pytest.skip(f"no dask command beside {sys.executable}: pip install -r requirements-dask.txt")
    probe = subprocess.run([sys.executable, "-c", "import neardup; print(neardup.__version__)"],
                           cwd="/", env=clean_env(), capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != neardup.__version__:
        pytest.skip("neardup is not installed in this venv (bash scripts/setup-venv.sh installs the"
                    " checkout into .venv), so real Dask workers could not import it")
    return BIN


@contextmanager
def dask_cluster(folder: Path, workers: int, worker_env: dict[str, str],
                 hidden: Path | None = None,
                 scheduler_env: dict[str, str] | None = None) -> Iterator[str]:
    """A real scheduler and `workers` worker processes; yields the scheduler's address. `hidden`:
    a folder the workers do not see (an empty tmpfs mounted over it in their own mount namespace,
    as on worker machines where a share is not mounted)."""
    folder.mkdir()
    scheduler_file = folder / "scheduler.json"
    logs = []
    processes = []

    def start(name: str, command: list[str], env: dict[str, str]) -> None:
        log = open(folder / f"{name}.log", "w")  # noqa: SIM115 - closed below, after the process
        logs.append(log)
        processes.append(subprocess.Popen(command, cwd=folder, env=env, stdout=log,
                                          stderr=subprocess.STDOUT))

    try:
        start("scheduler", [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0",
                            "--no-dashboard", "--scheduler-file", str(scheduler_file)],
              scheduler_env or clean_env())
        deadline = time.monotonic() + START_SECONDS
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert time.monotonic() < deadline, (folder / "scheduler.log").read_text()
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        worker = [str(DASK), "worker", address, "--host", "127.0.0.1", "--nworkers",
                  str(workers), "--nthreads", "1", "--no-dashboard"]
        if hidden is not None:
            worker = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                      'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hidden), *worker]
        start("workers", worker, worker_env)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


def test_real_workers_build_the_same_store_as_a_local_run(installed_venv: Path, in_tmp: Path) -> None:
    make_tree("images", 40, folders=3)
    with dask_cluster(in_tmp / "cluster", 2, clean_env()) as address:
        code = index_cli.main(["-d", "images", "-s", "dask.shelve", "-q", "--scheduler", address,
                               "--partition-size", "7", "--connect-timeout", str(START_SECONDS)])
    assert code == 0
    assert index_cli.main(["-d", "images", "-s", "local.shelve", "-q", "-j", "1"]) == 0
    cluster_buckets = buckets("dask.shelve")
    assert cluster_buckets == buckets("local.shelve")
    assert sum(len(paths) for paths in cluster_buckets.values()) == 40


def test_workers_with_another_neardup_are_refused_in_one_line(
    installed_venv: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A real worker whose environment imports another neardup first (as an old install would).
    other = in_tmp / "other-neardup" / "neardup"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text('__version__ = "0.0.1"\n')
    make_tree("images", 4)
    env = clean_env(PYTHONPATH=str(other.parent))
    with dask_cluster(in_tmp / "cluster", 1, env) as address:
        code = index_cli.main(["-d", "images", "-s", "dask.shelve", "-q", "--scheduler", address,
                               "--connect-timeout", str(START_SECONDS)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith("index.py: error: the only Dask worker (tcp://127.0.0.1:")
    assert err.endswith(
        f") has neardup 0.0.1; this client has {neardup.__version__}: install the same there"
        f" (neardup {neardup.__version__} with its [dask] extra, from the same wheel or checkout"
        " as this client, in the environment that runs dask scheduler and dask worker)\n")
    assert not os.path.exists("dask.shelve"), "nothing is written before the cluster is checked"


def test_real_workers_update_an_older_store_its_own_way(
    installed_venv: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A store made with preprocessing v3 takes new images from real workers hashed the v3 way,
    # as a local run does (test_index.py): the workers get the store's recipe, not the default.
    from neardup.core.hashing import Recipe, hash_file
    from neardup.core.indexing import index_folder
    from neardup.core.store import Store

    from .imagegen import hashed_apart

    older = Recipe(preprocess_version=3)
    make_tree("images", 3)
    index_folder("images", "dask.shelve", older)
    big = hashed_apart("images/big.jpg", older)
    with dask_cluster(in_tmp / "cluster", 1, clean_env()) as address:
        code = index_cli.main(["-d", "images", "-s", "dask.shelve", "-q", "--scheduler", address,
                               "--connect-timeout", str(START_SECONDS)])
    assert code == 0
    assert "normalised v3): new images are hashed with v3 too" in capsys.readouterr().err
    with Store.open_for_reading("dask.shelve") as store:
        assert store.recipe == older
    assert "big.jpg" in buckets("dask.shelve")[hash_file(big, older).hex()]


def test_losing_the_scheduler_mid_run_is_one_line(installed_venv: Path, in_tmp: Path) -> None:
    """The scheduler killed mid-run: a FutureCancelledError traceback and distributed's own
    log lines, exit 1 ("nothing could be indexed"). Now one line, exit 2; a re-run finishes."""
    import signal

    from .test_index import committed_count, make_large_tree

    make_large_tree(in_tmp / "images", 300)
    with dask_cluster(in_tmp / "cluster", 1, clean_env()) as address:
        with subprocess.Popen(
                [sys.executable, "index.py", "-d", str(in_tmp / "images"), "-s",
                 str(in_tmp / "dask.shelve"), "-q", "--scheduler", address, "--partition-size",
                 "5", "--connect-timeout", str(START_SECONDS)],
                cwd=Path(neardup.__file__).parent.parent, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True) as indexer:
            deadline = time.monotonic() + START_SECONDS
            while committed_count(in_tmp / "dask.shelve") == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            if indexer.poll() is not None:
                pytest.skip("the run finished before the scheduler could be stopped")
            os.kill(_scheduler_pid(in_tmp / "cluster"), signal.SIGKILL)
            out, err = indexer.communicate(timeout=120)
    assert indexer.returncode == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("index.py: error: lost the Dask scheduler ("), err
    assert lines[0].endswith("what was hashed before is written: run index.py again to finish")
    assert index_cli.main(["-d", "images", "-s", "dask.shelve", "-q", "-j", "1"]) == 0
    assert sum(len(paths) for paths in buckets("dask.shelve").values()) == 300


def _processes_in(folder: Path) -> Iterator[tuple[int, bytes]]:
    """(pid, command line) of each process whose working directory is `folder`."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes()
                where = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if where == str(folder):
                yield int(entry), command


def _scheduler_pid(folder: Path) -> int:
    """The `dask scheduler` process started for `folder` (its working directory)."""
    for pid, command in _processes_in(folder):
        if b"scheduler" in command and b"--scheduler-file" in command:
            return pid
    raise AssertionError("no scheduler process")


def test_workers_that_do_not_see_the_folder_remove_nothing(
        installed_venv: Path, in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: workers that could not see the dataset folder reported every changed file "not
    found", and index.py removed their entries (all 200 of a store; with a few changed files,
    exit 0). Entries of files the workers cannot reach now stay, and the run says why."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("hiding a folder from the workers needs root and unshare (a mount namespace)")
    make_tree("images", 30, folders=2)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    before = buckets("db.shelve")
    for path in Path("images").rglob("*.jpg"):
        os.chmod(path, 0o644)  # content unchanged, ctime moved: hashed again
    capsys.readouterr()
    with dask_cluster(in_tmp / "cluster", 1, clean_env(), hidden=in_tmp / "images") as address:
        code = index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "--scheduler", address,
                               "--connect-timeout", str(START_SECONDS)])
    captured = capsys.readouterr()
    assert code == 1, captured
    assert buckets("db.shelve") == before
    assert ", removed 0," in captured.out and "30 kept as they were" in captured.out
    lines = captured.err.splitlines()
    assert lines[-1] == (
        "index.py: the Dask workers did not find 30 files that are under images here: each"
        " worker must see the folder at the same path; stored entries of such files were kept")
    # A review: one "file not found (deleted or a broken link?)" line per file came first.
    assert len(lines) == 4, captured.err
    assert all(line.startswith("index.py: /") and "/images/cat" in line and line.endswith(
        ": a Dask worker did not find it, though it is here (up to 3 such files are named)")
        for line in lines[:3]), captured.err


def features_on_a_worker_without_opencv(in_tmp: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> tuple[int, str]:
    """index.py --features on a real cluster of one worker that cannot import OpenCV: the exit
    status and stderr."""
    blocker = in_tmp / "no-opencv"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['cv2'] = None\n")
    make_tree("images", 4)
    with dask_cluster(in_tmp / "cluster", 1, clean_env(PYTHONPATH=str(blocker))) as address:
        code = index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "--features",
                               "--scheduler", address, "--connect-timeout", str(START_SECONDS)])
    return code, capsys.readouterr().err


def test_features_on_workers_without_opencv_are_refused_in_one_line(
        installed_venv: Path, in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: --features on workers without the features extra failed with a 45-line
    traceback from a worker (No module named 'cv2'), and left an empty store that then refused a
    run without --features. Now one line before anything is written."""
    pytest.importorskip("cv2", reason="the client needs the features extra")
    code, err = features_on_a_worker_without_opencv(in_tmp, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("index.py: error: the only Dask worker (tcp://127.0.0.1:"), err
    assert err.endswith(
        ") cannot extract local features (cv2 missing there); install the same there (neardup"
        f" {neardup.__version__} with its [dask,features] extra, from the same wheel or checkout"
        " as this client, in the environment that runs dask scheduler and dask worker)\n"), err
    assert not os.path.exists("db.shelve") and not os.path.exists("db.shelve.lock")


def test_a_run_whose_workers_all_died_says_it_waits(
        installed_venv: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: with every worker killed mid-run, index.py waited for ever without a word (Dask
    keeps the partitions for a worker that may come). It now says so in one line; Ctrl-C
    (SIGINT) still ends it with what was hashed kept."""
    import signal

    from .test_index import committed_count, make_large_tree

    make_large_tree(in_tmp / "images", 300)
    with dask_cluster(in_tmp / "cluster", 1, clean_env()) as address:
        with subprocess.Popen(
                [sys.executable, "-c", "import sys, neardup.scale.cluster as c;"
                 " c.WORKERLESS_SECONDS = 2; from neardup.cli.index import main;"
                 " sys.exit(main(sys.argv[1:]))", "-d", str(in_tmp / "images"), "-s",
                 str(in_tmp / "dask.shelve"), "-q", "--scheduler", address, "--partition-size",
                 "5", "--connect-timeout", str(START_SECONDS)],
                cwd=in_tmp, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, preexec_fn=sigint_as_in_a_terminal) as indexer:
            deadline = time.monotonic() + START_SECONDS
            while committed_count(in_tmp / "dask.shelve") == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            if indexer.poll() is not None:
                pytest.skip("the run finished before its workers could be stopped")
            for pid in _worker_pids(in_tmp / "cluster"):
                os.kill(pid, signal.SIGKILL)
            assert indexer.stderr
            line = read_line(indexer.stderr, timeout=60)
            indexer.send_signal(signal.SIGINT)
            out, err = finished(indexer, timeout=60)
    assert line.startswith("index.py: no Dask worker has been connected to the scheduler for"
                           " 2 s; 1 worker was lost while running a partition (tcp://127.0.0.1:"), line
    assert "its log says which); waiting for one" in line, line
    assert indexer.returncode == 130, (out, err)
    assert committed_count(in_tmp / "dask.shelve") > 0


def _worker_pids(folder: Path) -> list[int]:
    """The `dask worker` processes (and their nannies' children) started in `folder`."""
    return [pid for pid, command in _processes_in(folder)
            if b"scheduler-file" not in command
            and (b"worker" in command or b"multiprocessing" in command)]


def read_line(stream, timeout: float) -> str:  # type: ignore[no-untyped-def]
    import select

    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "nothing said within the time limit"
    return stream.readline()


def test_a_worker_without_opencv_that_joins_later_is_one_line(
        installed_venv: Path, in_tmp: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: a worker without OpenCV that joined a --features run after the cluster was
    checked (a replacement, an autoscaler's) failed it with a 45-line traceback, exit 1. Joining
    after the check is played by skipping the check."""
    pytest.importorskip("cv2", reason="the client needs the features extra")
    from neardup.scale import cluster

    monkeypatch.setattr(cluster, "_check_features", lambda client: None)
    code, err = features_on_a_worker_without_opencv(in_tmp, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("index.py: error: the Dask worker tcp://127.0.0.1:"), err
    assert (" cannot extract local features (cv2 missing there; it joined after the cluster was"
            " checked); install the same there (neardup") in err
    assert err.endswith("what was hashed before is written: run index.py again to finish\n"), err


def test_a_worker_without_neardup_that_joins_later_is_named(
        installed_venv: Path, in_tmp: Path) -> None:
    """A review: a worker without neardup that joined mid-run died on its first partition (it
    cannot unpickle the task), and the run said only that no worker had been connected, with
    `start dask worker` as the remedy. It now names the worker lost and what loses one that way.
    Joining after the check is played by a check that only waits for the worker."""
    import signal

    blocker = in_tmp / "no-neardup"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['neardup'] = None\n")
    make_tree("images", 4)
    with dask_cluster(in_tmp / "cluster", 1, clean_env(PYTHONPATH=str(blocker))) as address:
        with subprocess.Popen(
                [sys.executable, "-c", "import sys, neardup.scale.cluster as c;"
                 " c.WORKERLESS_SECONDS = 2;"
                 " c.check_cluster = lambda client, *args: client.wait_for_workers(1, 60);"
                 " from neardup.cli.index import main; sys.exit(main(sys.argv[1:]))",
                 "-d", "images", "-s", "dask.shelve", "-q", "--scheduler", address],
                cwd=in_tmp, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, preexec_fn=sigint_as_in_a_terminal) as indexer:
            assert indexer.stderr
            line = read_line(indexer.stderr, timeout=60)
            indexer.send_signal(signal.SIGINT)
            finished(indexer, timeout=60)
    assert line.startswith("index.py: no Dask worker has been connected to the scheduler for 2 s;"
                           " 1 worker was lost while running a partition (tcp://127.0.0.1:"), line
    assert ("; a worker that cannot import this neardup is lost that way, as is one killed: its"
            " log says which); waiting for one") in line, line


def test_workers_with_other_code_of_the_same_version_are_refused(
        installed_venv: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A review: a worker with neardup 0.2.0 from an earlier commit passed the check, which
    compared only __version__ (0.2.0 for some 180 commits), and hashed with its own code."""
    other = in_tmp / "other-code"
    shutil.copytree(Path(neardup.__file__).parent, other / "neardup",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "neardup" / "core" / "hashing.py", "a") as changed:
        changed.write("\n# a later commit\n")
    make_tree("images", 2)
    with dask_cluster(in_tmp / "cluster", 1, clean_env(PYTHONPATH=str(other))) as address:
        code = index_cli.main(["-d", "images", "-s", "dask.shelve", "-q", "--scheduler", address,
                               "--connect-timeout", str(START_SECONDS)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("index.py: error: the only Dask worker (tcp://127.0.0.1:"), err
    assert (f") has neardup {neardup.__version__} from other files (another commit or"
            f" checkout); this client has {neardup.__version__}: install the same there") in err
    assert not os.path.exists("dask.shelve")


def test_a_file_that_kills_its_workers_is_one_failed_file(
        installed_venv: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A review: one image that ran a worker out of memory had Dask give up on its whole
    partition (KilledWorker), and the run stopped with "run again to finish", which failed the
    same way every time. The partition is now split until the file is alone, and that file is
    failed. A worker that dies on a file named killer.jpg plays the out-of-memory kill; the
    scheduler gives a task up at its first death (allowed-failures 0, not 3) to keep it fast."""
    dies = in_tmp / "dies"
    dies.mkdir()
    (dies / "sitecustomize.py").write_text(
        "import os\nimport neardup.core.indexing as indexing\nhash_one = indexing._hash_one\n"
        "def _hash_one(item, *args):\n    if item.path.endswith('killer.jpg'):\n"
        "        os._exit(1)\n    return hash_one(item, *args)\n"
        "indexing._hash_one = _hash_one\n")
    make_tree("images", 7)
    shutil.copy("images/cat0/image_0000.jpg", "images/cat1/killer.jpg")
    with dask_cluster(in_tmp / "cluster", 1, clean_env(PYTHONPATH=str(dies)), scheduler_env=clean_env(
            DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")) as address:
        code = index_cli.main(["-d", "images", "-s", "dask.shelve", "-q", "--scheduler", address,
                               "--partition-size", "4", "--connect-timeout", str(START_SECONDS)])
    captured = capsys.readouterr()
    assert "indexed 7, unchanged 0, removed 0, failed 1," in captured.out, captured
    assert captured.err.splitlines()[0].endswith(
        "/images/cat1/killer.jpg: killed the Dask worker that hashed it (out of memory?); lower"
        " --max-pixels, or allow the workers more memory"), captured.err
    assert code == 0
    assert sum(len(paths) for paths in buckets("dask.shelve").values()) == 7
