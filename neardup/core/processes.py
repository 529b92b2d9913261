"""Worker processes: how they are started, how they end, and what their deaths are called.

index.py hashes in worker processes and the checker (search.py --stdin and --serve) decodes
uploads in them, so that a file which crashes an image decoder, loops in one or takes more memory
than the machine has ends a worker, not the run or the service. Both start them the same way
(here), from a fork server that preloads the libraries.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from ..errors import NeardupError
from .interrupts import sigint_held

# Waiting longer on a pipe raised OverflowError (a review gave 10^10 to turn the limit off).
MAX_WAIT_SECONDS = 1_000_000
# How long a worker process has to end once terminated before it is killed.
TERMINATE_WAIT_SECONDS = 2.0
# How long a worker's start is tried again while the fork server cannot be reached. A killed fork
# server has closed its socket (which then refuses) a moment before the kernel lets it be reaped,
# and until then multiprocessing takes it for alive and does not start another; under load that
# moment is longer (CI's one failure: the checker's retry came too soon, and the query failed).
LAUNCH_RETRY_SECONDS = 2.0
# A worker's exit status comes through the fork server that started it: when that has ended too,
# Python reads the status as 255, whatever ended the worker.
STATUS_LOST = 255


def check_timeout(seconds: float) -> None:
    """Refuse a per-file timeout no pipe can be waited on for."""
    if not 0 < seconds <= MAX_WAIT_SECONDS:  # NaN too
        raise NeardupError(f"a file timeout of {seconds:g} s is not between 0 and"
                           f" {MAX_WAIT_SECONDS:,} s (the most a pipe can be waited on)")


def worker_context() -> Any:
    """The multiprocessing context every worker process is started with.

    forkserver: workers start from a clean process, never a fork of one holding threads or a
    database connection. The fork server imports the libraries once and every worker is forked
    from it ready, instead of each importing numpy, Pillow and ImageHash anew (0.2 s of CPU each):
    on a short run of small photos the workers' start-up was a sixth of the time. (The preload is
    ignored when this process's fork server is already running.) Not neardup itself: see
    workers_import_ours.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(FORK_SERVER_PRELOAD))
    _quiet_resource_tracker()
    return context

# The checker's decoding threads start workers at any moment, each for itself: what the contexts
# below swap (__main__, an environment variable, the current folder) is the whole process's, and
# two at once left __main__ blank for good (a review).
_STARTING = threading.Lock()


@contextmanager
def starting_workers() -> Iterator[None]:
    """Where worker processes are started (a pool's, the one-at-a-time one, the checker's):
    without the caller's script, importing this neardup, and with a Ctrl-C held until they are
    started; one thread at a time."""
    with _STARTING, _workers_without_the_callers_script(), workers_import_ours(), sigint_held():
        yield


class ForkServerUnreachable(NeardupError):
    """A worker process could not be started: the fork server died or was killed meanwhile."""


def start_worker(process: Any, stopping: Callable[[], bool] = lambda: False,
                 kind: str = "worker") -> None:
    """Start a worker process (see starting_workers), tried again with pauses doubling from
    10 ms for up to LAUNCH_RETRY_SECONDS while the fork server cannot be reached, unless
    `stopping` says the caller is ending. Started right after the fork server was killed, a
    worker failed index.py with a ConnectionRefusedError traceback (once in 8 runs under load),
    and the checker's query with 503."""
    pause, given_up = 0.01, time.monotonic() + LAUNCH_RETRY_SECONDS
    while True:
        try:
            with starting_workers():
                process.start()  # a start that fails leaves the process unstarted: startable
            watch(process)
            return
        except (OSError, EOFError) as error:
            left = given_up - time.monotonic()
            if stopping() or left <= 0:
                raise ForkServerUnreachable(not_started(error, kind)) from None
            time.sleep(min(pause, left))  # the last pause cut short: 2 s in all, not 1.3
            pause *= 2


def not_started(error: BaseException, kind: str = "worker") -> str:
    """Why a worker process could not be started, as a person reads it. The fork server dies
    either way: killed, or unable to fork under a limit on processes (a container's pids.max,
    which counts threads too; review r24 found "the fork server killed?" said of that)."""
    cause = ("a limit on processes and threads reached?" if thread_refused(error)
             else "the fork server killed, or a limit on processes reached?")
    return f"a {kind} process could not be started ({type(error).__name__}: {error}; {cause})"


def thread_refused(error: BaseException | None) -> bool:
    """Whether `error` is the RuntimeError of a thread the system would not start."""
    return isinstance(error, RuntimeError) and thread_refused_text(str(error))


def thread_refused_text(text: str) -> bool:
    """Whether `text` (an error, or a traceback passed on as text) says a thread could not start."""
    return "can't start new thread" in text


@contextmanager
def _workers_without_the_callers_script() -> Iterator[None]:
    """Start worker processes that import neardup but not the caller's script.

    multiprocessing runs the parent's __main__ again in every new worker. The workers need nothing
    from it, and a script that calls neardup.index_folder without an `if __name__ == "__main__":`
    guard (or one read from standard input) would then index again in each worker, fail, and be
    restarted without end. Workers are started while __main__ is a blank module: they are all
    started here, before the pool is used.
    """
    script = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = script


# Libraries the fork server imports before forking workers (see worker_context).
FORK_SERVER_PRELOAD = ("numpy", "PIL.Image", "imagehash")


@contextmanager
def workers_import_ours() -> Iterator[None]:
    """Start the fork server so that it imports nothing from the current directory.

    Python (3.11 to 3.13) starts its fork server as `python -c ...`, which puts the current
    directory first on sys.path, and imports the preloaded modules from there, ignoring this
    process's sys.path: run from a folder holding another neardup (an older checkout) the
    workers hashed with that one (records of another feature version, found only when the
    store was read), and a `numpy.py` in the folder being indexed would run in every worker.
    PYTHONSAFEPATH keeps the current directory off the fork server's path, and neardup is not
    preloaded: each worker imports it after taking this process's sys.path, so it runs the
    same neardup as this process. Under `python -E` (passed on to the fork server, which then
    ignores PYTHONSAFEPATH) the fork server is started from the standard library's own folder
    instead, already on its path.

    Every worker also starts by changing to this process's current folder: one its user cannot
    enter (runuser -u nobody from root's folder) failed each worker with a traceback, and a
    deleted one failed this process (and under Python 3.13 the resource tracker, with a warning
    and a traceback per semaphore). Nothing relative resolves in such a folder, so the workers
    are started from the standard library's folder too, and this process stays there when it
    cannot go back.
    """
    earlier = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    # One thread for numpy's OpenBLAS in the fork server and so in every worker (the user's own
    # setting kept): a worker hashes one image at a time and never multiplies matrices, and
    # under a limit on processes and threads each worker printed OpenBLAS's four-line
    # "pthread_create failed" warning when its threads were refused (44 lines in one run).
    blas_set = "OPENBLAS_NUM_THREADS" not in os.environ
    if blas_set:
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        here: str | None = os.getcwd()
    except OSError:  # deleted
        here = None
    leave = here is None or not os.access(here, os.X_OK)
    if leave or (sys.flags.ignore_environment and not sys.flags.safe_path):
        os.chdir(os.path.dirname(os.__file__))
    else:
        here = None  # stays where it is
    try:
        yield
    finally:
        if here is not None and not leave:
            os.chdir(here)
        if earlier is None:
            del os.environ["PYTHONSAFEPATH"]
        else:
            os.environ["PYTHONSAFEPATH"] = earlier
        if blas_set:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)


def _quiet_resource_tracker() -> None:
    """After a kill -9 of index.py, the resource tracker (a child it starts) frees the pool's
    semaphores and warns once per run that they "leaked"; they are freed, so the warning only
    buries the useful output. It inherits -W options from sys.warnoptions when started."""
    option = "ignore:resource_tracker:UserWarning"
    if option not in sys.warnoptions:
        sys.warnoptions.append(option)


def as_worker() -> None:
    """Called first in every worker process."""
    # Ctrl-C reaches the whole process group: only the parent handles it (it stops the workers
    # and keeps what is done), so workers do not each print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # After a kill -9 of the parent, a worker sending its result finds the pipe broken and
    # multiprocessing prints the BrokenPipeError twice. The parent's sentinel pipe says whether it
    # is still there: once it is gone, this worker's stderr says nothing more.
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        sys.stderr = _SilentOnceOrphaned(sys.stderr, parent.sentinel)
        # And the worker ends with it: a concurrent.futures worker waits for its next file on a
        # queue whose writing end it holds itself, and a decoder caught in a loop never asks for
        # more, so either would live on for ever.
        watcher = threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True,
                                   name="exit-with-parent")
        try:
            watcher.start()
        except RuntimeError:
            # "can't start new thread": a limit on processes and threads (a container's
            # pids.max) reached. The worker goes on without it; it failed with a traceback.
            pass


def answer_each_sent(connection: Any, answer: Callable[[Any], Any]) -> None:
    """A worker's loop: says it started, then sends back `answer` of each query sent, until sent
    None. `answer` catches whatever the work raises, so that only the pipe's own errors end up
    here.

    Once the pipe is gone (the parent closed it, gave up on this worker or ended) the worker ends
    quietly: the EOFError escaped before, and multiprocessing printed "Process neardup-decoder:"
    and its traceback on the parent's stderr (a review saw that line as the fork server was
    stopped and killed)."""
    try:
        connection.send("started")
        while (query := connection.recv()) is not None:
            connection.send(answer(query))
    except (EOFError, OSError):
        return  # no one to answer: the parent ends this process or already has
    connection.close()


def _exit_with(sentinel: int) -> None:
    """Wait for the process that started this worker to end, then end this one at once."""
    try:
        multiprocessing.connection.wait([sentinel])
    except (OSError, ValueError):
        return  # it cannot be watched: the worker goes on as without this thread
    os._exit(0)


class _SilentOnceOrphaned:
    """A worker's stderr that drops everything once the process that started it has died."""

    def __init__(self, stream: object, sentinel: int) -> None:
        self._stream = stream
        self._sentinel = sentinel

    def _orphaned(self) -> bool:
        try:
            return bool(multiprocessing.connection.wait([self._sentinel], timeout=0))
        except (OSError, ValueError):
            return True

    def write(self, text: str) -> int:
        if self._orphaned():
            return len(text)
        return self._stream.write(text)  # type: ignore[attr-defined, no-any-return]

    def flush(self) -> None:
        if not self._orphaned():
            self._stream.flush()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def end_process(process: Any) -> None:
    """Terminate a worker process and wait for it; a stopped one (SIGSTOP) holds SIGTERM until
    it is continued, and a review's Ctrl-C waited for it for ever: SIGKILL after a moment."""
    if process.is_alive():
        process.terminate()
    process.join(TERMINATE_WAIT_SECONDS)
    if process.is_alive():
        process.kill()
        # Under a fork server the exit status comes through it, and a stopped fork server
        # (SIGSTOP, a debugger) never tells: waited for without a limit, the checker hung for
        # good (a review). Killed, the process ends; it is not waited for past this.
        process.join(TERMINATE_WAIT_SECONDS)
    kill_for_sure(process)


def watch(process: Any) -> None:
    """Keep a handle on a worker process just started (a pidfd, on Linux): one that names this
    process and no other, even once its pid is free and used again, for kill_for_sure."""
    if getattr(process, "_neardup_pidfd", None) is None and hasattr(os, "pidfd_open"):
        with suppress(OSError):
            process._neardup_pidfd = os.pidfd_open(process.pid)


def kill_for_sure(process: Any) -> None:
    """SIGKILL a worker process, if it still runs, through its watch() handle, then close that.

    Once the fork server that started it has ended, Python reads its status as lost (255) and
    takes it for ended, so nothing else signals it: one caught in a loop inside a decoder (which
    holds the GIL, so its exit-with-parent thread never runs) or stopped (SIGSTOP) outlived
    index.py and the checker, spinning for 25 minutes, and held index.py's stdout open, so a
    reader of it waited for ever (review r24)."""
    handle = getattr(process, "_neardup_pidfd", None)
    if handle is None:
        return
    process._neardup_pidfd = None
    try:
        signal.pidfd_send_signal(handle, signal.SIGKILL)  # a process gone already: an OSError
    except OSError:
        pass
    finally:
        os.close(handle)


def ended_by(exitcode: int | None) -> str:
    """A process's end as a person reads it: the signal's name, or the exit status."""
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit status {exitcode}"


def death_reason(exitcode: int | None, did: str = "hashed") -> str:
    """Why a file failed whose process died working on it alone (`did`: hashed, decoded)."""
    if exitcode == -signal.SIGKILL:
        # The advice is index.py's user's to take; the checker's client has no --max-pixels.
        advice = "; lower --max-pixels, or allow more memory" if did == "hashed" else ""
        return f"killed the process that {did} it (SIGKILL: out of memory?){advice}"
    if exitcode is not None and exitcode < 0:
        return f"crashed the process that {did} it ({ended_by(exitcode)}: a fault in an image decoder?)"
    if exitcode == STATUS_LOST:
        # Said once a second process has ended so: the first is tried again (a lost status
        # says nothing of the file). Python cannot tell a lost status from a real one.
        return (f"the process that {did} it ended twice with exit status {STATUS_LOST} (a"
                " decoder's exit(-1), or its status lost with the fork server that started it:"
                " both ended from outside?)")
    return f"the process that {did} it ended with {ended_by(exitcode)}"
