"""index.py on a real Dask LocalCluster (127.0.0.1): same store as a local run, whatever dies."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import neardup
from neardup.cli import index as index_cli
from neardup.errors import NeardupError, install_hint

from .conftest import PROJECT_ROOT, finished, sigint_as_in_a_terminal
from .imagegen import make_tree
from .test_index import buckets, committed_count, make_large_tree

distributed = pytest.importorskip(
    "distributed", reason="Dask is optional: pip install -r requirements-dask.txt to test it")


def local_index(store: str) -> None:
    assert index_cli.main(["-d", "images", "-s", store, "-q", "-j", "1"]) == 0


@pytest.fixture()
def cluster() -> Iterator[object]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as running:
        yield running


def test_a_store_built_on_the_cluster_equals_a_local_one(in_tmp: Path) -> None:
    make_tree("images", 40, folders=3)
    assert index_cli.main(["-d", "images", "-s", "dask.shelve", "-q", "--local-cluster", "2",
                           "--partition-size", "7"]) == 0
    local_index("local.shelve")
    assert buckets("dask.shelve") == buckets("local.shelve")


def test_on_a_caltech_subset(caltech_root: Path, in_tmp: Path, cluster) -> None:  # type: ignore[no-untyped-def]
    for category in ("accordion", "brain", "emu"):
        os.makedirs(f"images/{category}")
        for photo in sorted((caltech_root / category).iterdir()):
            os.symlink(photo, f"images/{category}/{photo.name}")
    assert index_cli.main(["-d", "images", "-s", "dask.shelve", "-q", "--scheduler",
                           cluster.scheduler_address, "--partition-size", "25"]) == 0
    local_index("local.shelve")
    assert buckets("dask.shelve") == buckets("local.shelve")
    assert sum(len(paths) for paths in buckets("dask.shelve").values()) > 150


def test_a_killed_worker_loses_nothing(in_tmp: Path, cluster, capsys) -> None:  # type: ignore[no-untyped-def]
    make_large_tree(in_tmp / "images", 300)
    with distributed.Client(cluster) as client:
        worker_pids = list(client.run(os.getpid).values())
    outcome: list[int] = []
    run = threading.Thread(target=lambda: outcome.append(index_cli.main(
        ["-d", "images", "-s", "dask.shelve", "-q", "--scheduler", cluster.scheduler_address,
         "--partition-size", "10"])))
    run.start()
    deadline = time.monotonic() + 60
    while committed_count(in_tmp / "dask.shelve") < 20:
        assert time.monotonic() < deadline and run.is_alive(), "nothing committed"
        time.sleep(0.01)
    os.kill(worker_pids[0], signal.SIGKILL)
    run.join(timeout=180)
    assert outcome == [0]
    assert "indexed 300, unchanged 0, removed 0, failed 0" in capsys.readouterr().out
    local_index("local.shelve")
    assert buckets("dask.shelve") == buckets("local.shelve")


def test_an_interrupted_client_resumes_without_duplicates(in_tmp: Path, cluster) -> None:  # type: ignore[no-untyped-def]
    make_large_tree(in_tmp / "images", 300)
    command = [sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s", "dask.shelve",
               "-q", "--scheduler", cluster.scheduler_address, "--partition-size", "10"]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as client:
        deadline = time.monotonic() + 60
        while committed_count(in_tmp / "dask.shelve") < 20 and client.poll() is None:
            assert time.monotonic() < deadline, "nothing committed"
            time.sleep(0.01)
        client.send_signal(signal.SIGKILL)
    kept = committed_count(in_tmp / "dask.shelve")
    assert 20 <= kept < 300, "the client finished before it could be killed"
    buckets("dask.shelve")  # opens, consistent

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert f"indexed {300 - kept}, unchanged {kept}" in resumed.stdout
    local_index("local.shelve")
    assert buckets("dask.shelve") == buckets("local.shelve")


IMAGES = 1200  # local_cluster_run_under_way's


@contextmanager
def local_cluster_run_under_way(in_tmp: Path) -> Iterator[subprocess.Popen[str]]:
    """`index.py --local-cluster 2` on IMAGES images, yielded once it has committed 10 of them.
    In a process group of its own, as a terminal's foreground job: a Ctrl-C there (SIGINT to the
    group) reaches every process in it, the local cluster's workers too. (300 images were
    indexed whole within 0.6 s of the tenth commit on an idle machine: too few to be sure the
    Ctrl-C comes first.)"""
    make_large_tree(in_tmp / "images", IMAGES)
    command = [sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s", "db.shelve",
               "-q", "--local-cluster", "2", "--partition-size", "5"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, preexec_fn=sigint_as_in_a_terminal) as run:
        deadline = time.monotonic() + 120
        while committed_count(in_tmp / "db.shelve") < 10 and run.poll() is None:
            assert time.monotonic() < deadline, "nothing committed"
            time.sleep(0.01)
        yield run


def test_ctrl_c_on_a_local_cluster_is_index_pys_one_line(in_tmp: Path) -> None:
    """A review: Ctrl-C during `index.py --local-cluster 2` printed 69 lines, 4 tracebacks of
    Dask's worker processes among them (KeyboardInterrupt, CancelledError in "Process Dask
    Worker process (from Nanny)"), before index.py's own line: a terminal sends SIGINT to each
    process of the foreground group, the local cluster's workers too."""
    with local_cluster_run_under_way(in_tmp) as run:
        os.killpg(run.pid, signal.SIGINT)
        out, err = finished(run, timeout=120)
    assert committed_count(in_tmp / "db.shelve") < IMAGES, "the run finished before its Ctrl-C"
    assert (run.returncode, out, err) == (
        130, "", "index.py: interrupted; every committed batch is kept in db.shelve"
        " (files hashed since the last commit are hashed again); run again to finish\n")


def test_ctrl_c_pressed_again_while_a_local_cluster_closes_is_still_one_line(in_tmp: Path) -> None:
    """A review: a second Ctrl-C while an interrupted --local-cluster run closed its cluster cut
    the close short, and Dask's own close at exit then waited 10 s; a third interrupted that, a
    17-line "Exception ignored in atexit callback <function close_clusters>" traceback. Here an
    impatient user presses Ctrl-C again and again until the run has ended."""
    with local_cluster_run_under_way(in_tmp) as run:
        presses = 0
        while run.poll() is None and presses < 3000:  # a minute of presses at most
            with contextlib.suppress(ProcessLookupError):  # the group gone meanwhile
                os.killpg(run.pid, signal.SIGINT)
            presses += 1
            time.sleep(0.02)
        out, err = finished(run, timeout=120)
    assert presses > 1, "the run ended at the first Ctrl-C: nothing was pressed while it closed"
    assert 10 <= committed_count(in_tmp / "db.shelve") < IMAGES, "the run finished before its Ctrl-C"
    buckets("db.shelve")  # opens, consistent
    assert (run.returncode, out, err) == (
        130, "", "index.py: interrupted; every committed batch is kept in db.shelve"
        " (files hashed since the last commit are hashed again); run again to finish\n")


def test_without_dask_the_option_says_what_to_install(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    make_tree("images", 2)
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "--local-cluster", "1"]) == 2
    assert capsys.readouterr().err == (
        f"index.py: error: --scheduler and --local-cluster need Dask: {install_hint('dask')}\n")


def test_an_unreachable_scheduler_is_one_line(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: with nothing listening at the address, the run tried again for the whole
    --connect-timeout and then said "Timed out trying to connect", never that the connection was
    refused. It is still tried until then (a scheduler may be starting), and the line says why."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # a port of this test's, where nothing listens
        port = probe.getsockname()[1]
        make_tree("images", 2)
        code = index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "--scheduler",
                               f"tcp://127.0.0.1:{port}", "--connect-timeout", "2"])
    assert code == 2
    assert capsys.readouterr().err == (
        f"index.py: error: cannot reach the Dask scheduler at tcp://127.0.0.1:{port} (connection"
        " refused: nothing listens at that port; is the scheduler started, and is this its port,"
        " 8786 by default?)\n")
    assert not os.path.exists("db.shelve") and not os.path.exists("db.shelve.lock")


@contextmanager
def another_protocols_server(greeting: bytes | None) -> Iterator[str]:
    """A TCP server on 127.0.0.1, in a thread, that is not a Dask scheduler; yields its address.
    Each connection gets `greeting` and is closed (an HTTP server answering "400 Bad Request" at
    once, an SSH server's banner), or with b"" is reset at once, or with None is held open in
    silence until the server stops (an HTTP server waiting for a request: Dask's dashboard,
    `python -m http.server`)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                connection, _ = server.accept()
            except OSError:  # the server closed
                return
            if greeting is None:
                held.append(connection)
                continue
            with connection:
                if greeting:
                    connection.sendall(greeting)
                else:  # closed with a reset (a firewall's or a proxy's refusal)
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stopping.set()
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
        server.close()
        for connection in held:
            connection.close()
        thread.join(timeout=10)


def index_in_a_process(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """index.py run as a user runs it, on ./images into ./db.shelve: every line it writes."""
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "index.py"), "-d", "images", "-s",
                           "db.shelve", "-q", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("greeting", [
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n",
])
def test_a_scheduler_address_that_answers_in_another_protocol_is_one_line(
        in_tmp: Path, greeting: bytes) -> None:
    """A review: an HTTP server answering at once (a proxy's "400 Bad Request") or an SSH banner
    at the --scheduler address gave a 56-line traceback ending in numpy's "Unable to allocate
    3.07 EiB" (Dask read the text as the length of its handshake), exit 1."""
    make_tree("images", 2)
    with another_protocols_server(greeting) as address:
        run = index_in_a_process(["--scheduler", address, "--connect-timeout", "10"])
    said = greeting.split(b"\r\n")[0].decode()
    assert (run.returncode, run.stdout, run.stderr) == (2, "", (
        f"index.py: error: {address} is not a Dask scheduler (it answered in another protocol:"
        f" {said!r})\n"))
    assert not os.path.exists("db.shelve") and not os.path.exists("db.shelve.lock")


def test_a_scheduler_address_that_resets_the_connection_is_one_line(in_tmp: Path) -> None:
    """A connection reset before any handshake (a firewall's or a proxy's refusal) is said in
    one line, as a refused one is, not raised as an OSError's traceback."""
    make_tree("images", 2)
    with another_protocols_server(b"") as address:
        run = index_in_a_process(["--scheduler", address, "--connect-timeout", "10"])
    assert (run.returncode, run.stdout, run.stderr) == (2, "", (
        f"index.py: error: {address} is not a Dask scheduler (it reset the connection without"
        " a Dask handshake)\n"))
    assert not os.path.exists("db.shelve") and not os.path.exists("db.shelve.lock")


def test_a_scheduler_address_that_says_nothing_gives_up_after_the_connect_timeout(
        in_tmp: Path) -> None:
    """A review: --scheduler at Dask's dashboard port (8787 for 8786), or any HTTP server, which
    waits in silence for a request, hung for ever whatever --connect-timeout said (Dask's
    handshake read has no time limit)."""
    make_tree("images", 2)
    with another_protocols_server(None) as address:
        # The process's own limit is far above the 2 s asked for: only a hang reaches it.
        run = index_in_a_process(["--scheduler", address, "--connect-timeout", "2"], timeout=120)
    assert (run.returncode, run.stdout) == (2, ""), run.stderr
    assert run.stderr == (
        f"index.py: error: {address} accepted the connection but sent no Dask handshake within"
        " 2 s: it is not a Dask scheduler (an HTTP server, such as Dask's dashboard on port 8787,"
        " waits in silence for a request), or a scheduler too busy to answer\n")
    assert not os.path.exists("db.shelve") and not os.path.exists("db.shelve.lock")


class _ClusterWithoutNeardup:
    """A client whose scheduler has this neardup and whose one worker has none."""

    def wait_for_workers(self, count: int, timeout: float) -> None:
        pass

    def run_on_scheduler(self, function: object, probe: str) -> tuple[str, str]:
        return (neardup.__version__, neardup.code_fingerprint())

    def run(self, function: object, probe: str) -> dict[str, None]:
        return {"tcp://127.0.0.1:1": None}


@pytest.mark.parametrize(("features", "extras"), [(False, "[dask]"), (True, "[dask,features]")])
def test_a_worker_without_neardup_is_told_the_extras_the_run_needs(
        features: bool, extras: str) -> None:
    """A review: on a --features run, a worker without neardup was told to install its [dask]
    extra, after which the run was refused again for want of OpenCV and FAISS there."""
    from neardup.scale.cluster import check_cluster

    with pytest.raises(NeardupError) as refused:
        check_cluster(_ClusterWithoutNeardup(), features=features)
    assert str(refused.value) == (
        f"the only Dask worker (tcp://127.0.0.1:1) has no neardup; this client has"
        f" {neardup.__version__}: install the same there (neardup {neardup.__version__} with its"
        f" {extras} extra, from the same wheel or checkout as this client, in the environment"
        " that runs dask scheduler and dask worker)")


def test_dasks_version_table_is_one_line() -> None:
    """A review: a 3.11 client with 3.13 workers printed distributed's 9-line table of package
    versions; it is one line naming the packages that differ."""
    import warnings

    import distributed.versions as versions

    from neardup.scale.cluster import _dask_warnings

    mine = versions.get_versions()
    theirs = {"packages": dict(mine["packages"], python="3.13.0", numpy="9.9.9")}
    table = versions.error_message(mine, {"tcp://127.0.0.1:1": theirs}, mine)["warning"]
    said: list[str] = []
    with warnings.catch_warnings(record=True) as passed:
        warnings.simplefilter("always")
        with _dask_warnings(said.append):
            warnings.warn(table, versions.VersionMismatchWarning, stacklevel=1)
            warnings.warn("Port 8787 is already in use.", UserWarning, stacklevel=1)
    assert said == ["Dask: the client, scheduler and workers run different versions of numpy,"
                    " python (neardup's own is checked to be the same everywhere)"]
    assert passed == []


def test_distributeds_own_log_lines_are_quiet_while_the_client_runs(
    cluster,  # type: ignore[no-untyped-def]
) -> None:
    """A review's test run: the scheduler killed mid-run, distributed's batched connection
    logged "Batched Comm Closed" and a 10-line CommClosedError traceback in one run of ten
    (only the client's own logger was quiet); index.py says it in one line."""
    import logging

    from neardup.scale.cluster import connect

    names = ("distributed.batched", "distributed.comm.tcp", "distributed.core",
             "distributed.client")
    before = {name: logging.getLogger(name).getEffectiveLevel() for name in names}
    with connect(cluster.scheduler_address, None, timeout_seconds=30):
        for name in names:
            assert not logging.getLogger(name).isEnabledFor(logging.ERROR), name
    assert {name: logging.getLogger(name).getEffectiveLevel() for name in names} == before


@pytest.mark.parametrize(("address", "reason"), [
    ("http://127.0.0.1:8786", "unknown address scheme 'http' (Dask's are tcp://, tls://, ucx://,"
                               " ws://, wss://)"),
    ("tls://127.0.0.1:8786", "tls:// needs Dask's TLS settings (distributed.comm.tls in the Dask"
                             " configuration), and there are none"),
    ("tcp://127.0.0.1:abc", "the port 'abc' is not a number"),
    ("tcp://[::1", "invalid address '[::1'; maybe: ipv6 needs brackets like [::1]"),
    ("inproc://x", "inproc:// addresses are inside one process; give the scheduler's"
                   " tcp://HOST:PORT"),
    ("tcp://127.0.0.1", "missing port number in address '127.0.0.1'"),
    ("tcp://127.0.0.1:99999", "the port 99999 is out of range"),
])
def test_a_malformed_scheduler_address_is_one_line(
        in_tmp: Path, capsys: pytest.CaptureFixture, address: str, reason: str) -> None:
    """A review: each of these printed a 40-line traceback from Dask's address parsing, exit 1."""
    make_tree("images", 2)
    code = index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "--scheduler", address,
                           "--connect-timeout", "2"])
    assert code == 2
    assert capsys.readouterr().err == f"index.py: error: --scheduler {address}: {reason}\n"
    assert not os.path.exists("db.shelve") and not os.path.exists("db.shelve.lock")


def test_an_empty_scheduler_address_is_refused(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A review: --scheduler "$SCHED" with the variable unset indexed locally without a word."""
    make_tree("images", 2)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "--scheduler", ""]) == 2
    assert capsys.readouterr().err == (
        "index.py: error: --scheduler is empty (an unset variable?): give the scheduler's"
        " address, tcp://HOST:PORT\n")
    assert not os.path.exists("db.shelve")


def test_a_file_url_is_decoded_for_the_workers(in_tmp: Path) -> None:
    """A review: Path.as_uri() of a folder with a space reached the workers percent-encoded."""
    make_tree("my photos", 4)
    assert index_cli.main(["-d", Path("my photos").absolute().as_uri(), "-s", "dask.shelve", "-q",
                           "--local-cluster", "1"]) == 0
    assert index_cli.main(["-d", "my photos", "-s", "local.shelve", "-q", "-j", "1"]) == 0
    assert buckets("dask.shelve") == buckets("local.shelve")


class _WorkerlessClient:
    """A client whose scheduler has no worker, and whose events after the first read say the
    scheduler lost `lost` mid-task (the watch reads them only to word its line)."""

    def __init__(self, lost: list[str]) -> None:
        self._lost = lost
        self._reads = 0

    def scheduler_info(self) -> dict[str, dict[str, object]]:
        return {"workers": {}}

    def get_events(self, topic: str) -> list[tuple[float, dict[str, object]]]:
        self._reads += 1
        if self._reads == 1:  # when the watch begins
            return [(1.0, {"action": "add-worker", "worker": "tcp://old:1"})]
        return [(2.0, {"action": "remove-worker", "worker": worker, "expected": False,
                       "processing-tasks": ["hash-1"]}) for worker in self._lost]


@pytest.mark.parametrize(("lost", "said"), [
    ([], " 0 s; waiting for one"),
    (["tcp://a:1"], " 0 s; 1 worker was lost while running a partition (tcp://a:1; a worker"),
    (["tcp://a:1", "tcp://b:2"],
     " 0 s; 2 workers were lost while running partitions (tcp://a:1, ...; a worker"),
])
def test_the_workerless_line_counts_the_workers_lost_in_words(
        monkeypatch: pytest.MonkeyPatch, lost: list[str], said: str) -> None:
    """A review: two workers lost read "2 was lost while running a partition"."""
    from neardup.scale import cluster as scale_cluster

    monkeypatch.setattr(scale_cluster, "WATCH_SECONDS", 0.01)
    monkeypatch.setattr(scale_cluster, "WORKERLESS_SECONDS", 0.0)
    lines: list[str] = []
    spoken = threading.Event()

    def report(line: str) -> None:
        lines.append(line)
        spoken.set()

    watch = scale_cluster._WorkerWatch(_WorkerlessClient(lost), report)
    try:
        assert spoken.wait(30), "the watch said nothing"
    finally:
        watch.stop()
    assert lines[0].startswith("no Dask worker has been connected to the scheduler for"), lines
    assert said in lines[0], lines[0]


def test_dasks_failure_to_cancel_an_interrupted_call_is_left_unsaid(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A Ctrl-C test run printed 10 lines before index.py's own: distributed.utils.sync's cancel
    callback, run before the name it reads was bound, and the event loop's "Exception in
    callback" with the NameError. That record is left unsaid while a client is connected; the
    event loop's other errors are not."""
    import logging

    from neardup.scale.quiet import sync_cancel_bug_silenced

    loop_log = logging.getLogger("tornado.application")
    handler = logging.StreamHandler()  # as Dask's logging configuration gives tornado one
    logging.getLogger("tornado").addHandler(handler)
    try:
        with sync_cancel_bug_silenced():
            loop_log.error("Exception in callback functools.partial(<function"
                           " sync.<locals>.cancel at 0x7f9164d05580>)")
            loop_log.error("Exception in callback something else")
        loop_log.error("Exception in callback functools.partial(<function"
                       " sync.<locals>.cancel at 0x7f9164d05580>)")  # outside: said
    finally:
        logging.getLogger("tornado").removeHandler(handler)
    assert capsys.readouterr().err.splitlines() == [
        "Exception in callback something else",
        "Exception in callback functools.partial(<function sync.<locals>.cancel at"
        " 0x7f9164d05580>)"]


def test_nothing_a_worker_with_other_code_hashed_is_stored(
        in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A review: a worker started after the run's start-up check, with another neardup (a
    rolling upgrade, say), was given partitions unasked, and its wrong hashes were stored
    without a word (1,032 images; 999 buckets merged into one). Here the client's own code
    stands for the other side: the workers answer with theirs."""
    import neardup.scale.cluster as scale_cluster

    make_tree("images", 20, folders=2)
    monkeypatch.setattr(scale_cluster, "check_cluster", lambda *args, **kwargs: None)  # joined late
    monkeypatch.setattr(scale_cluster, "code_fingerprint", lambda: "another checkout")
    assert index_cli.main(["-d", "images", "-s", "dask.shelve", "-q", "--local-cluster", "1",
                           "--partition-size", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "which joined after the start, has neardup" in err, err
    assert "from other files" in err and "nothing it hashed was stored" in err
    assert not os.path.exists("dask.shelve") or buckets("dask.shelve") == {}
    # What a worker of a neardup older than this check returns: refused as such.
    with pytest.raises(scale_cluster.WorkerDiffers, match="hashed with an older neardup"):
        scale_cluster._checked([])


def test_workers_that_cannot_read_heic_are_said_once_when_this_client_can(
        in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A review: each HEIC file failed on the workers with "install the pillow-heif plug-in",
    which the user had just installed here."""
    import importlib.util

    import neardup.scale.cluster as scale_cluster

    if importlib.util.find_spec("pillow_heif") is None:
        pytest.skip("pillow-heif is not installed here (requirements-heic.txt)")
    make_tree("images", 4)
    monkeypatch.setattr(scale_cluster, "_HEIC_PROBE", "False")  # as a worker without it answers
    assert index_cli.main(["-d", "images", "-s", "dask.shelve", "-q", "--local-cluster", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("cannot read HEIC (pillow-heif missing there)") == 1, err
    assert "[dask,heic] extra" in err
