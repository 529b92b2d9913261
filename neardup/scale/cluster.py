"""Hashing on a Dask cluster: index.py --scheduler tcp://HOST:PORT (or --local-cluster N).

The client walks the folder and plans as a local run does, then sends partitions of file paths
to the workers, which read and hash the files themselves (so the files must be on a file system
they share); only hashes and file metadata come back. The store stays the single source of truth:
this process alone writes it, one transaction per finished partition. A re-run after a crash of
the client, the scheduler or a worker finds the committed files unchanged and hashes only the rest.
If a worker dies, Dask runs its partitions again elsewhere.

Before any work is sent, the client asks the scheduler and every worker which neardup they can
import (`check_cluster`): the scheduler unpickles the task graph and the workers run it, so a
process without neardup, or with another version or other files of it (`code_fingerprint`),
would fail with a long traceback in the middle of a run (or, worse, hash with other code).

Dask is optional (the extra 'dask') and imported only when asked for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import logging
import os
import socket
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .. import __version__, code_fingerprint
from ..core.discovery import FoundFile, dataset_folder
from ..core.hashing import Recipe
from ..core.indexing import Hasher, HashOutcome, check_worker_count, hash_partition
from ..core.interrupts import sigint_held
from ..errors import NeardupError, command, install_hint

DEFAULT_PARTITION_SIZE = 1000
# What a cluster process answers when asked which neardup it imports: its version and the
# fingerprint of its code ("" from a neardup older than code_fingerprint). It is evaluated there
# with the built-in eval, which every process can unpickle: a probe function defined in neardup
# would itself need neardup to arrive. find_spec first, so a process without neardup answers
# None instead of raising.
_VERSION_PROBE = (
    "(lambda neardup: (neardup.__version__,"
    " getattr(neardup, 'code_fingerprint', lambda: '')()))(__import__('neardup'))"
    " if __import__('importlib.util').util.find_spec('neardup') is not None else None"
)
# Which of the features extra's modules a worker cannot import (a list, empty when it has both).
FEATURE_MODULES = ("cv2", "faiss")
_FEATURES_PROBE = (f"[name for name in {FEATURE_MODULES!r}"
                   " if __import__('importlib.util').util.find_spec(name) is None]")
# Whether a worker can read HEIC (the heic extra's plug-in).
_HEIC_PROBE = "__import__('importlib.util').util.find_spec('pillow_heif') is not None"


def cluster_install_hint(extras: str = "dask") -> str:
    """Where to install what: the same neardup as this client, in the cluster's environments."""
    return (f"install the same there (neardup {__version__} with its [{extras}] extra, from the"
            " same wheel or checkout as this client, in the environment that runs dask scheduler"
            " and dask worker)")


# A partition whose worker dies is run again elsewhere; one that fails this often is an error.
TASK_RETRIES = 3
# With no worker left, Dask keeps the partitions waiting for a new one, for ever: the run says so
# after this long (checked every WATCH_SECONDS).
WORKERLESS_SECONDS = 30.0
WATCH_SECONDS = 1.0
# How long closing a local cluster may take (about 1 to 4 s), each of its client and cluster.
CLOSE_SECONDS = 20.0


def _dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise NeardupError(
            f"--scheduler and --local-cluster need Dask: {install_hint('dask')}") from None
    return distributed


@contextmanager
def connect(
    scheduler: str | None, local_workers: int | None, timeout_seconds: float = 30,
    features: bool = False, report: Callable[[str], None] = lambda line: None,
) -> Iterator[Any]:
    """A Dask client: to the scheduler at that address, or to a new local cluster on 127.0.0.1.
    Dask's own warnings as it connects become one line each (`report`)."""
    distributed = _dask()
    from .quiet import sync_cancel_bug_silenced

    with sync_cancel_bug_silenced():
        yield from _connected(distributed, scheduler, local_workers, timeout_seconds, features,
                              report)


def _connected(
    distributed: Any, scheduler: str | None, local_workers: int | None, timeout_seconds: float,
    features: bool, report: Callable[[str], None],
) -> Iterator[Any]:
    """connect()'s client, made and closed."""
    if local_workers:
        check_worker_count(local_workers, "local_workers")
        from .quiet import QuietWhenClosing, distributed_silenced

        cluster = client = None
        try:
            # Its worker processes do not hear Ctrl-C: it would stop each with a traceback of
            # its own (KeyboardInterrupt, 17 lines) while this process, which hears it too,
            # closes the cluster anyway. A Ctrl-C while the cluster starts waits until it is
            # up: a KeyboardInterrupt inside Dask's start-up calls also made Dask log tracebacks
            # of its own (a NameError in distributed.utils.sync's cancel, say).
            with sigint_held():
                with _dask_warnings(report):
                    cluster = distributed.LocalCluster(
                        n_workers=local_workers, threads_per_worker=1, processes=True,
                        host="127.0.0.1", dashboard_address=None)
                    client = distributed.Client(cluster)
                _without_gc_diagnosis()
                client.register_plugin(QuietWhenClosing(), name=QuietWhenClosing.name)
                check_cluster(client, timeout_seconds, features, report)
            yield client
        finally:
            # Closing a cluster that still runs partitions (Ctrl-C) logs each cancelled task
            # and lost result: the run says what it kept in its own line. A Ctrl-C meanwhile
            # (an impatient user's second) is held until the close is done: it cut the close
            # short, Dask's own close at exit then waited 10 s for the half-closed cluster, and
            # a third Ctrl-C interrupted that with a 17-line traceback. The close is bounded,
            # so that a held Ctrl-C is not held for ever; the worker processes end with this
            # one whatever becomes of it (they watch their parent).
            with sigint_held(), distributed_silenced():
                if client is not None:
                    with contextlib.suppress(TimeoutError):
                        client.close(timeout=CLOSE_SECONDS)
                if cluster is not None:
                    with contextlib.suppress(TimeoutError):
                        cluster.close(timeout=CLOSE_SECONDS)
        return
    address = scheduler or ""
    check_scheduler_address(address)
    probe_scheduler(address, timeout_seconds)
    try:
        with _dask_warnings(report):
            client = distributed.Client(address, timeout=f"{timeout_seconds}s")
    except (OSError, TimeoutError) as error:
        raise NeardupError(f"cannot reach the Dask scheduler at {address} ({error})") from error
    # The client logs a traceback of its own when the scheduler goes away, and so, at times,
    # does its batched connection ("Batched Comm Closed" and a CommClosedError: 12 lines in one
    # of ten runs); the run says it in one line instead (hash_on_cluster).
    quiet = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        with client:
            check_cluster(client, timeout_seconds, features, report)
            yield client
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _without_gc_diagnosis() -> None:
    """Unhook the local scheduler's garbage collector callback from this process: a Ctrl-C whose
    KeyboardInterrupt is raised inside it is lost ("Exception ignored in ... _gc_callback", and
    the run went on to its end: 2 Ctrl-C in 25 at start-up here). It only logs collection
    times. The scheduler's own unhooking, when it closes, then finds nothing to do."""
    with contextlib.suppress(Exception):  # a Dask without it, or another shape of it
        from distributed.gc import disable_gc_diagnosis

        disable_gc_diagnosis(force=True)


def check_scheduler_address(address: str) -> None:
    """Refuse, in one line naming it, an address Dask could not connect to: it raised a 40-line
    traceback from its address parsing (an http:// URL, a port that is not a number), or from
    deep in its TLS code for tls:// without TLS settings."""
    from distributed.comm.addressing import get_address_host_port, parse_address
    from distributed.comm.registry import backends
    from distributed.security import Security

    def refuse(reason: str) -> NeardupError:
        return NeardupError(f"--scheduler {address}: {reason}")

    scheme, location = parse_address(address)  # splits at "://", tcp without one
    if scheme not in backends:
        schemes = ", ".join(f"{name}://" for name in sorted(backends) if name != "inproc")
        raise refuse(f"unknown address scheme {scheme!r} (Dask's are {schemes})")
    if scheme == "inproc":
        raise refuse("inproc:// addresses are inside one process; give the scheduler's"
                     " tcp://HOST:PORT")
    if scheme in ("tls", "wss") and Security().get_connection_args("client")["ssl_context"] is None:
        raise refuse(f"{scheme}:// needs Dask's TLS settings (distributed.comm.tls in the Dask"
                     " configuration), and there are none")
    try:
        _, port = get_address_host_port(address)
    except ValueError as error:
        port_text = location.rpartition(":")[2]
        if "invalid literal for int()" in str(error):
            raise refuse(f"the port {port_text!r} is not a number") from None
        raise refuse(_first_line(error)) from None
    if not 0 < port < 65536:
        raise refuse(f"the port {port} is out of range")


# A Dask scheduler greets each new connection at once with its handshake: an 8-byte length, then
# a few dozen bytes (its compression, Python version and pickle protocol). Text read as that
# length (an HTTP reply, an SSH banner) is at least 0x2020202020202020 bytes, exabytes: Dask
# tried to allocate that much. A length above this is another protocol.
_MAX_HANDSHAKE_BYTES = 1 << 32


def probe_scheduler(address: str, timeout_seconds: float) -> None:
    """Refuse, in one line, a tcp:// address where something other than a Dask scheduler
    answers: Dask read an HTTP server's or an SSH server's first words as the length of its
    handshake and failed with a 56-line traceback (numpy's "Unable to allocate 3.07 EiB").
    This connection reads the scheduler's handshake and answers it with the same, so that the
    scheduler sees a handshake completed and then a connection closed (which it does not log;
    one closed mid-handshake is an INFO line in its log for every run). Other schemes (tls://,
    ws://) begin with their own protocol's handshake, and are left to Dask."""
    from distributed.comm.addressing import get_address_host_port, parse_address

    if parse_address(address)[0] != "tcp":
        return
    host, port = get_address_host_port(address)
    deadline = time.monotonic() + timeout_seconds
    with _connection(address, host, port, timeout_seconds, deadline) as connection:
        try:
            _read_handshake(connection, address, timeout_seconds, deadline)
        except ConnectionResetError:
            raise NeardupError(f"{address} is not a Dask scheduler (it reset the connection"
                               " without a Dask handshake)") from None
        except OSError as error:
            raise NeardupError(f"the connection to {address} failed before a Dask handshake"
                               f" ({error.strerror or error})") from None


def _read_handshake(
    connection: socket.socket, address: str, timeout_seconds: float, deadline: float
) -> None:
    """probe_scheduler's reading of the handshake, and its answer."""
    try:
        # Dask waits for the handshake without a time limit: an HTTP server (Dask's dashboard,
        # on the port next to the scheduler's) waits in silence for a request, and the run hung
        # for ever. More than the length is read at once, for a server's first line.
        received = _receive(connection, b"", 8, deadline, chunk=4096)
    except TimeoutError:
        raise NeardupError(
            f"{address} accepted the connection but sent no Dask handshake within"
            f" {timeout_seconds:g} s: it is not a Dask scheduler (an HTTP server, such as"
            " Dask's dashboard on port 8787, waits in silence for a request), or a"
            " scheduler too busy to answer") from None
    if len(received) < 8:
        raise NeardupError(f"{address} is not a Dask scheduler (it closed the connection"
                           f" without a Dask handshake{_said(received)})")
    (length,) = struct.unpack("Q", received[:8])  # as Dask reads it (distributed.comm.tcp)
    if length > _MAX_HANDSHAKE_BYTES:
        raise NeardupError(f"{address} is not a Dask scheduler (it answered in another"
                           f" protocol{_said(received)})")
    try:
        received = _receive(connection, received, 8 + length, deadline)
    except TimeoutError:
        raise NeardupError(
            f"{address} began a Dask handshake but did not finish it within"
            f" {timeout_seconds:g} s (a scheduler too busy to answer?)") from None
    if len(received) < 8 + length:
        raise NeardupError(f"{address} is not a Dask scheduler (it closed the"
                           " connection in the middle of a Dask handshake)")
    with contextlib.suppress(OSError):  # gone at once: Dask's own connection says it
        connection.sendall(received[:8 + length])


def _receive(connection: socket.socket, received: bytes, wanted: int, deadline: float,
             chunk: int = 0) -> bytes:
    """`received` and what follows it on `connection`, until it holds `wanted` bytes or the peer
    closes; each read asks for `chunk` bytes at least. Raises TimeoutError at `deadline`."""
    while len(received) < wanted:
        connection.settimeout(max(deadline - time.monotonic(), 0.001))
        more = connection.recv(max(wanted - len(received), chunk))
        if not more:
            break
        received += more
    return received


def _connection(
    address: str, host: str, port: int, timeout_seconds: float, deadline: float
) -> socket.socket:
    """A TCP connection to the scheduler's address, tried again until `deadline`: a scheduler
    slow to accept, a network slow to route, or nothing listening yet (a script that starts
    `dask scheduler` and then index.py: the scheduler took 9 s to listen on a 2-core machine).
    Dask also tried for the whole --connect-timeout, then said only "Timed out trying to
    connect"; this says why (connection refused, no such host, no answer)."""
    pause = 0.05
    while True:
        try:
            return socket.create_connection(
                (host, port), timeout=max(deadline - time.monotonic(), 0.001))
        except OSError as error:
            now = time.monotonic()
            if now >= deadline:
                raise NeardupError(f"cannot reach the Dask scheduler at {address}"
                                   f" ({_unreachable(error, host, timeout_seconds)})") from None
            time.sleep(min(pause, max(deadline - now, 0.0)))
            pause = min(pause * 2, 0.5)


def _unreachable(error: OSError, host: str, timeout_seconds: float) -> str:
    """Why a connection to the scheduler could not be made, in words."""
    if isinstance(error, ConnectionRefusedError):
        return ("connection refused: nothing listens at that port; is the scheduler started, and"
                " is this its port, 8786 by default?")
    if isinstance(error, socket.gaierror) and error.errno == socket.EAI_NONAME:
        return f"no host is named {host!r}"
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout_seconds:g} s"
    return error.strerror or str(error) or type(error).__name__


def _said(received: bytes) -> str:
    """The first line of what a server that is not a scheduler said, for a message: ': '
    and its words ('HTTP/1.1 400 Bad Request'), or nothing when it said nothing readable."""
    line = received.decode("utf-8", "replace").splitlines()[0] if received else ""
    line = "".join(character for character in line
                   if character.isascii() and character.isprintable()).strip()[:80]
    return f": {line!r}" if len(line) >= 3 else ""


# distributed's loggers that write to standard error while the client runs: every one of its
# lines is said by index.py in its own words, or is noise to a person running it.
QUIET_LOGGERS = ("distributed", "distributed.client", "distributed.batched", "distributed.comm",
                 "distributed.core")


@contextmanager
def _dask_warnings(report: Callable[[str], None]) -> Iterator[None]:
    """Dask's warnings while connecting, each said in one line: its table of package versions
    that differ between the client, the scheduler and the workers (9 lines) becomes the names of
    those packages; a port already taken (the local cluster's HTTP server, on 127.0.0.1, then
    takes another) is left out. Others pass as they are."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        text = str(warning.message)
        if type(warning.message).__name__ == "VersionMismatchWarning":
            names = [cells[1].strip() for line in text.splitlines()
                     if len(cells := line.split("|")) > 2 and cells[1].strip()
                     and cells[1].strip() != "Package" and not set(cells[1].strip()) <= set("-")]
            report("Dask: the client, scheduler and workers run different versions of "
                   + (", ".join(names) or "some packages")
                   + " (neardup's own is checked to be the same everywhere)")
        elif "is already in use" in text and "Port" in text:
            continue
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)


def check_cluster(client: Any, timeout_seconds: float = 30, features: bool = False,
                  report: Callable[[str], None] = lambda line: None) -> None:
    """Refuse, in one line, a cluster whose scheduler or workers cannot import this neardup (or,
    for `features`, whose workers lack OpenCV or FAISS); say (`report`) when workers cannot read
    HEIC and this client can."""
    try:
        client.wait_for_workers(1, timeout=timeout_seconds)
    except TimeoutError:
        raise NeardupError(f"no Dask worker joined the scheduler within {timeout_seconds:g} s;"
                           " start some with `dask worker <scheduler address>`") from None
    # A --features run needs the features extra there too: told [dask] alone, a user installed
    # it and was refused again for want of OpenCV and FAISS.
    extras = "dask,features" if features else "dask"
    try:
        answers = {"scheduler": client.run_on_scheduler(eval, _VERSION_PROBE)}
        answers.update(client.run(eval, _VERSION_PROBE))
    except Exception as error:  # noqa: BLE001 - whatever a broken remote import raised
        raise NeardupError(f"the Dask cluster cannot import neardup ({_first_line(error)}); "
                           + cluster_install_hint(extras)) from error
    mine = (__version__, code_fingerprint())
    wrong = {name: found for name, found in answers.items() if tuple(found or ()) != mine}
    if not wrong:
        if features:
            _check_features(client)
        _check_heic(client, report)
        return
    parts = ["the Dask scheduler"] if "scheduler" in wrong else []
    workers = sorted(name for name in wrong if name != "scheduler")
    if workers:
        parts.append(_some_workers(workers, len(answers) - 1))
    seen = " or ".join(sorted({_described(found) for found in wrong.values()}))
    verb = "has" if len(parts) == 1 and (not workers or len(workers) == 1) else "have"
    raise NeardupError(f"{' and '.join(parts)} {verb} {seen}; this client has {__version__}: "
                       + cluster_install_hint(extras))


def _described(found: tuple[str, str] | None) -> str:
    """What a cluster process answered the version probe, as a refusal says it."""
    if not found:
        return "no neardup"
    version, _ = found
    if version != __version__:
        return f"neardup {version}"
    return f"neardup {version} from other files (another commit or checkout)"


def _check_features(client: Any) -> None:
    """Refuse a --features run on workers that could not extract them: each would fail its first
    partition with a traceback, after the store was made."""
    try:
        lacking = {name: missing for name, missing in client.run(eval, _FEATURES_PROBE).items()
                   if missing}
    except Exception as error:  # noqa: BLE001 - whatever the remote probe raised
        raise NeardupError("cannot ask the Dask workers for OpenCV and FAISS"
                           f" ({_first_line(error)})") from error
    if not lacking:
        return
    missing = " and ".join(sorted({name for names in lacking.values() for name in names}))
    raise NeardupError(f"{_some_workers(sorted(lacking), len(client.scheduler_info()['workers']))}"
                       f" cannot extract local features ({missing} missing there); "
                       + cluster_install_hint("dask,features"))


def _check_heic(client: Any, report: Callable[[str], None]) -> None:
    """A review: with pillow-heif on the client and not on the workers, each HEIC file failed
    with "install the pillow-heif plug-in to read it", which the user had just done here."""
    if importlib.util.find_spec("pillow_heif") is None:
        return  # this client cannot read HEIC either: its runs fail those files alike
    try:
        lacking = sorted(name for name, can in client.run(eval, _HEIC_PROBE).items() if not can)
    except Exception:  # noqa: BLE001 - a probe that fails says nothing; hashing will
        return
    if lacking:
        report(f"{_some_workers(lacking, len(client.scheduler_info()['workers']))} cannot read"
               " HEIC (pillow-heif missing there), as this client can: HEIC files hashed there"
               f" fail; {cluster_install_hint('dask,heic')}")


def _some_workers(names: list[str], total: int) -> str:
    """'2 of 5 Dask workers (tcp://..., ...)': which workers a refusal is about."""
    if total == 1:
        return f"the only Dask worker ({names[0]})"
    more = ", ..." if len(names) > 1 else ""
    return f"{len(names)} of {total} Dask workers ({names[0]}{more})"


def _first_line(error: BaseException) -> str:
    """What a remote call raised, in one line: its message's first line, or its type."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def cluster_hasher(
    client: Any, partition_size: int = DEFAULT_PARTITION_SIZE, *, features: bool = False,
    report: Callable[[str], None] = lambda line: None,
) -> Hasher:
    """A Hasher for index_folder that hashes partitions (and extracts features) on the cluster's
    workers. `report` hears when the cluster has had no worker for WORKERLESS_SECONDS (the
    scheduler then waits for one, for ever)."""
    distributed = _dask()

    def hash_on_cluster(
        files: list[FoundFile], recipe: Recipe, max_pixels: int
    ) -> Iterator[list[HashOutcome]]:
        partitions = [files[start:start + partition_size]
                      for start in range(0, len(files), partition_size)]
        if not partitions:
            return
        options = {"recipe": recipe, "max_pixels": max_pixels, "features": features,
                   "retries": TASK_RETRIES, "pure": False}
        futures = client.map(_hash_on_worker, partitions, **options)
        files_of = dict(zip(futures, partitions, strict=True))
        watch = _WorkerWatch(client, report)
        running = distributed.as_completed(futures)
        suspects: list[list[FoundFile]] = []
        try:
            for future in running:
                try:
                    result = future.result()
                except (Exception, asyncio.CancelledError) as error:  # noqa: BLE001
                    if not _killed_workers(distributed, error):
                        raise _cluster_failure(distributed, error) from None
                    # Workers died on this partition every time (one image too large for their
                    # memory, say): its halves go again, down to the file that kills them,
                    # which fails alone as a local run fails it.
                    lost = files_of.pop(future)
                    if len(lost) == 1:
                        # Dask also blames the tasks that waited on a dying worker: the file is
                        # tried again at the end, alone on the cluster, before it is failed.
                        suspects.append(lost)
                        continue
                    for half in (lost[:len(lost) // 2], lost[len(lost) // 2:]):
                        retry = client.submit(_hash_on_worker, half, **options)
                        files_of[retry] = half
                        running.add(retry)
                    continue
                outcomes = _checked(result)
                files_of.pop(future, None)
                yield outcomes
                future.release()  # its outcomes are committed; the cluster can forget them
            for suspect in suspects:
                alone = client.submit(_hash_on_worker, suspect, **options)
                files_of[alone] = suspect
                try:
                    outcomes = _checked(alone.result())
                except WorkerDiffers:
                    raise
                except (Exception, asyncio.CancelledError) as error:  # noqa: BLE001
                    if not _killed_workers(distributed, error):
                        raise _cluster_failure(distributed, error) from None
                    # Its entry stays, if it is still the file indexed (as a local run's).
                    outcomes = [HashOutcome(suspect[0], None, KILLED_WORKERS, unreached="died")]
                files_of.pop(alone)
                yield outcomes
        finally:
            watch.stop()
            with contextlib.suppress(Exception):  # the scheduler may be gone
                client.cancel(list(files_of))

    return hash_on_cluster


class WorkerLacks(NeardupError):
    """A worker that joined after check_cluster cannot run its task (Dask retries it elsewhere
    first: a worker that has what it needs may still take it)."""


class WorkerDiffers(NeardupError):
    """A worker that joined after check_cluster runs other neardup code than the client's."""


def _hash_on_worker(
    files: list[FoundFile], recipe: Recipe, max_pixels: int, features: bool = False
) -> tuple[str, str, str, list[HashOutcome]]:
    """hash_partition, on a worker checked first for what --features needs (the first file
    would otherwise fail with a 45-line ModuleNotFoundError traceback on the client), with the
    neardup the worker ran (its version and code fingerprint) and its address: the client
    stores nothing a worker with other code hashed (_checked)."""
    worker = _dask().get_worker().address
    if features:
        missing = [name for name in FEATURE_MODULES if importlib.util.find_spec(name) is None]
        if missing:
            raise WorkerLacks(
                f"the Dask worker {_dask().get_worker().address} cannot extract local features"
                f" ({' and '.join(missing)} missing there; it joined after the cluster was"
                f" checked); {cluster_install_hint('dask,features')}")
    return __version__, code_fingerprint(), worker, hash_partition(files, recipe, max_pixels,
                                                                   features)


def _checked(result: Any) -> list[HashOutcome]:
    """A partition's outcomes, once the worker that made them is known to run the client's
    neardup. check_cluster asks the workers there at the start; one that joined later was
    given partitions unasked, and a review's, with other code, had its wrong hashes stored
    without a word (1,032 images, 999 buckets merged into one)."""
    if not (isinstance(result, tuple) and len(result) == 4):
        # What _hash_on_worker returned before it said which neardup ran it.
        raise WorkerDiffers("a Dask worker that joined after the start hashed with an older"
                            " neardup; nothing it hashed was stored; stop it, then "
                            + cluster_install_hint("dask"))
    version, fingerprint, worker, outcomes = result
    if (version, fingerprint) != (__version__, code_fingerprint()):
        raise WorkerDiffers(f"the Dask worker {worker}, which joined after the start, has"
                            f" {_described((version, fingerprint))}; this client has"
                            f" {__version__}: nothing it hashed was stored; stop it, then "
                            + cluster_install_hint("dask"))
    return list(outcomes)


class _WorkerWatch:
    """Says once, in one line, when the cluster has had no worker for WORKERLESS_SECONDS while
    partitions wait (every worker killed or gone: Dask waits for a new one without a word), and
    once more when one is back."""

    def __init__(self, client: Any, report: Callable[[str], None]) -> None:
        self._client = client
        self._report = report
        # The scheduler's events from here on tell which workers it lost mid-task: one that
        # cannot import this neardup (joined after check_cluster) dies on its first partition.
        self._events_after = self._last_event_time()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="neardup-worker-watch",
                                        daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        workerless_since: float | None = None
        said = False
        while not self._stopped.wait(WATCH_SECONDS):
            try:
                workers = len(self._client.scheduler_info().get("workers", {}))
            except Exception:  # noqa: BLE001 - the scheduler gone: hash_on_cluster says so
                return
            now = time.monotonic()
            if workers:
                if said:
                    self._report(f"{workers} Dask worker{'s' if workers > 1 else ''} back;"
                                 " hashing goes on")
                workerless_since, said = None, False
            elif workerless_since is None:
                workerless_since = now
            elif not said and now - workerless_since >= WORKERLESS_SECONDS:
                lost = self._lost_mid_task()
                one = len(lost) == 1
                why = (f" {len(lost)} worker{'' if one else 's'} {'was' if one else 'were'} lost"
                       f" while running {'a partition' if one else 'partitions'} ({lost[0]}"
                       f"{'' if one else ', ...'}; a worker that cannot import this neardup is"
                       " lost that way, as is one killed: its log says which);"
                       if lost else "")
                self._report(f"no Dask worker has been connected to the scheduler for"
                             f" {WORKERLESS_SECONDS:g} s;{why} waiting for one (start `dask"
                             " worker <scheduler address>`; Ctrl-C stops, and what was hashed is"
                             " kept)")
                said = True

    def _last_event_time(self) -> float:
        try:
            events = self._client.get_events("all")
        except Exception:  # noqa: BLE001 - no events to read: the line says less
            return float("inf")
        return max((when for when, _ in events), default=0.0)

    def _lost_mid_task(self) -> list[str]:
        """The workers the scheduler removed unexpectedly, with tasks, since the watch began."""
        try:
            events = self._client.get_events("all")
        except Exception:  # noqa: BLE001 - the scheduler gone: hash_on_cluster says so
            return []
        return sorted({event["worker"] for when, event in events
                       if when > self._events_after and isinstance(event, dict)
                       and event.get("action") == "remove-worker" and "worker" in event
                       and not event.get("expected", True) and event.get("processing-tasks")})

    def stop(self) -> None:
        self._stopped.set()


KILLED_WORKERS = ("killed the Dask worker that hashed it (out of memory?); lower --max-pixels,"
                  " or allow the workers more memory")


def _killed_workers(distributed: Any, error: BaseException) -> bool:
    """Whether Dask gave a task up because the workers running it died every time."""
    killed = getattr(getattr(distributed, "scheduler", None), "KilledWorker", None)
    return killed is not None and isinstance(error, killed)


def _cluster_failure(distributed: Any, error: BaseException) -> BaseException:
    """One line for what the cluster did (the scheduler lost, a worker lacking a module);
    anything else (a bug of ours in a worker) is raised as it is."""
    written = f"what was hashed before is written: run {command('index.py')} again to finish"
    if isinstance(error, WorkerLacks):
        return NeardupError(f"{error}; {written}")
    if isinstance(error, (asyncio.CancelledError, concurrent.futures.CancelledError, OSError)):
        reason = getattr(error, "reason", None) or " ".join(str(error).split()) or type(
            error).__name__
        return NeardupError(f"lost the Dask scheduler ({reason}); {written}")
    return error


def worker_paths(dataset: str) -> str:
    """The dataset folder as workers will read it: local paths and file:// URLs only."""
    folder = dataset_folder(dataset)
    if "://" in folder and folder == dataset:
        raise NeardupError(f"{dataset}: only local folders and file:// URLs are supported")
    return os.path.abspath(folder)
