"""Where the checker decodes its queries: in worker processes, so a hostile upload ends a worker.

Pillow's decoders are C code (libjpeg, zlib, libtiff, libwebp, libavif...) fed the bytes of
strangers. A file that crashes one (a fault in a decoder), loops in one, or takes more memory than
the machine has would end the whole checker in its own process, with every request in flight. In a
worker it ends that worker: the upload gets an error record naming the signal, and the next upload
gets a new worker.

Each of the checker's threads (search.py --serve decodes on a few; --stdin on one) owns one worker
process and sends it one decode at a time, so a worker's death is always the one upload's it was
decoding, never a neighbour's. The header is still the checker's to judge: the worker reads it,
says the decoded size and cost, and decodes only once the checker has reserved that much decode
memory (or refuses: too large, or no memory free in time), as it did in its own process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..core.hashing import Hash, Recipe, hash_source
from ..core.processes import (
    STATUS_LOST,
    ForkServerUnreachable,
    answer_each_sent,
    as_worker,
    check_timeout,
    death_reason,
    end_process,
    ended_by,
    start_worker,
    worker_context,
)
from ..errors import ImageError, NeardupError
from .limits import decode_cost, large_blocks_returned

# How long one query may take to decode before its worker is killed and the query fails. The
# slowest legitimate file measured, a picture of noise at the default --max-pixels (100
# megapixels, a PNG or a progressive JPEG), took 2.7 to 5.6 s with local features; an upload that
# takes longer holds one of the server's few decode threads. The time a query waits for decode
# memory (limits.DecodeBudget) is not counted.
DEFAULT_DECODE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Header:
    """What a query's header says once the decoder knows its reduced size."""

    width: int
    height: int
    cost: int  # bytes decoding it will take at its peak (limits.decode_cost)


OnHeader = Callable[[Header], None]


class InProcess:
    """Queries decoded in the caller's own process (the Python API's default)."""

    def hash(self, name: str, data: bytes | None, recipe: Recipe, max_pixels: int, mirror: bool,
             on_header: OnHeader | None, keep: bool = False) -> tuple[Hash, Hash | None]:
        return hash_source(name, recipe, max_pixels, data=data, mirror=mirror,
                           on_header=_judged_by(on_header))

    def frame(self, name: str, data: bytes | None, max_pixels: int,
              on_header: OnHeader | None) -> Any:
        from ..features.extract import read_frame

        return read_frame(name, max_pixels, data, on_header=_judged_by(on_header, frame=True))

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class InWorkers:
    """Queries decoded in worker processes, one per calling thread (see the module's docstring)."""

    def __init__(self, seconds: float = DEFAULT_DECODE_SECONDS) -> None:
        check_timeout(seconds)
        self.seconds = seconds
        self._mine = threading.local()
        self._all: list[_Worker] = []
        self._spare: list[_Worker] = []  # started ahead, not yet taken by a thread
        self._lock = threading.Lock()
        self._closed = False

    def hash(self, name: str, data: bytes | None, recipe: Recipe, max_pixels: int, mirror: bool,
             on_header: OnHeader | None, keep: bool = False) -> tuple[Hash, Hash | None]:
        """The query's hash (and its mirror image's); with `keep`, the worker keeps its bytes
        for the frame asked for next (a store with features), until release()."""
        return self._worker().run(name, data, ("hash", recipe, max_pixels, mirror), on_header,
                                  self.seconds, keep)  # type: ignore[no-any-return]

    def frame(self, name: str, data: bytes | None, max_pixels: int,
              on_header: OnHeader | None) -> Any:
        return self._worker().run(name, data, ("frame", max_pixels), on_header, self.seconds)

    def release(self) -> None:
        """This thread's query is done: its bytes are not kept for it any more."""
        worker = getattr(self._mine, "worker", None)
        if worker is not None:
            worker.holds = None

    def start(self, count: int) -> None:
        """Start `count` workers now, for the threads to take when they first decode: a server
        does so before it takes uploads (started with the first ones, a worker took 0.1 to 0.3
        s, and four clients' first uploads held every slot meanwhile)."""
        workers = [_Worker() for _ in range(count)]
        for worker in workers:
            worker.launch()
        with self._lock:
            self._all += workers
        for worker in workers:
            worker.wait_started()
        with self._lock:
            self._spare += workers

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._all, self._spare = self._all, [], []
        for worker in workers:
            worker.stop()

    def _worker(self) -> _Worker:
        worker = getattr(self._mine, "worker", None)
        if worker is None:
            with self._lock:
                if self._closed:
                    raise DecoderUnavailable("the checker is stopping")
                worker = self._mine.worker = self._spare.pop() if self._spare else _Worker()
                if worker not in self._all:
                    self._all.append(worker)
        return worker  # type: ignore[no-any-return]


class DecoderUnavailable(NeardupError):
    """No worker process could be started to decode the query (503: try again shortly)."""


# A query of at most this many bytes fits in the pipe's buffer (a socket pair's is about 200 KB),
# so sending it never waits for the worker.
UNBLOCKED_SEND_BYTES = 64 * 1024
# How long a new worker process may take to start and import neardup (25 to 35 ms here, forked
# from a fork server that has the libraries loaded; the first, which starts the fork server
# too, 0.1 to 0.3 s).
START_SECONDS = 30.0


class _Worker:
    """One worker process, started when first needed and again after each death.

    Used by one thread, except stop(), which the checker calls from another while it closes:
    the process and its pipe are swapped under a lock, and the thread decoding holds its own
    reference to the pipe (a close meanwhile ended in AttributeError and exit 1, a review)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: Any = None
        self._connection: Any = None
        self._exitcode: int | None = None  # the last process's, once it ended
        self._stopped = False
        # The query's bytes the process kept (a hash asked with keep): not sent again for its
        # frame. Held only for that: an upload's bytes kept until the next query were memory
        # the server's limits no longer counted.
        self.holds: bytes | None = None

    def run(self, name: str, data: bytes | None, job: tuple[Any, ...],
            on_header: OnHeader | None, seconds: float, keep: bool = False) -> Any:
        """What the worker made of the query (its bytes, or None: the worker reads the file
        `name`, one too large to hold). With `on_header`, the worker sends the header and
        decodes only once on_header has returned (it raises to refuse); without, it decodes at
        once (the caller has reserved what it may take: limits.cost_bound)."""
        # Its header judged (decode memory reserved) and the worker then lost: the next worker
        # sends the same header, which is not judged again (a review: the reservation, taken a
        # second time, raised "a reservation is taken once": a 500, and --stdin's traceback).
        judged = False
        for attempt in range(2):
            connection = self._ready()
            # A feature store's query is decoded twice (its hash, then its frame): the bytes go
            # once. Only to the process that kept them: one replaced meanwhile (_ready ended
            # the old one, which forgets them) is sent them again (sent "reuse", a new worker
            # read the frame from a file named "upload" in its folder, a review).
            reuse = data is not None and data is self.holds
            self.holds = None
            told_to_decode: list[bool] = []
            try:
                sent = None if reuse else data
                self._send(connection, (name, sent, reuse, job, on_header is not None, keep),
                           sent, seconds)
                answer = self._answer(connection, name, _accepting if judged else on_header,
                                      seconds, told_to_decode)
            except (EOFError, OSError, TypeError, ValueError) as error:
                # OSError: a socket pair under the pipe says "connection reset" when the process
                # died before it read the query. TypeError or ValueError: the pipe closed under
                # the call by another thread (stop(), as the checker closes); otherwise a bug.
                if isinstance(error, (TypeError, ValueError)) and not connection.closed:
                    raise
                exitcode = self._ended()
                judged = judged or bool(told_to_decode)
                # A lost status (STATUS_LOST: the fork server killed too) was answered 400,
                # "the process that decoded it ended with exit status 255", as if the upload
                # were at fault (a review: 14 of 2,634 uploads while a worker and the fork server
                # were killed together every second).
                if attempt == 0 and (exitcode == STATUS_LOST or not told_to_decode and (
                        exitcode == -signal.SIGKILL or isinstance(error, _SendGivenUp))):
                    # Killed before it was told to decode this query (idle, or waiting for
                    # decode memory): most likely killed from outside (an operator, the
                    # out-of-memory killer choosing it), or its send given up (_send). A new
                    # worker tries it once; one that really needs more memory than there is
                    # is killed again. So does a worker whose end is unknown.
                    continue
                if exitcode == STATUS_LOST:
                    raise DecoderUnavailable(
                        "the decoding worker process ended twice, its exit status lost with the"
                        " fork server that started it (both ended from outside?)") from None
                raise ImageError(name, death_reason(exitcode, did="decoded")) from None
            self.holds = data if keep else None
            return answer
        raise AssertionError("unreachable")

    def _send(self, connection: Any, query: tuple[Any, ...], sent: bytes | None,
              seconds: float) -> None:
        """Send a query; one larger than the pipe's buffer waits for the worker to read it, and
        a stopped worker (SIGSTOP) never does: past `seconds` it is killed, and the query goes
        to a new one (it waited for ever, and SIGTERM with it, a review)."""
        if sent is None or len(sent) <= UNBLOCKED_SEND_BYTES:
            connection.send(query)
            return
        gave_up: list[bool] = []

        def give_up() -> None:
            gave_up.append(True)
            # Only the process is ended here: the write then fails (the worker's end is gone),
            # and the pipe is closed by the thread writing to it. Closed from this thread, a
            # write that had sent part of the query as the worker died went on with no handle
            # (TypeError, a test run under load), or with its number already given to another
            # file or socket.
            with self._lock:
                process = self._process
            if process is not None:
                end_process(process)

        watchdog = threading.Timer(seconds, give_up)
        watchdog.daemon = True
        watchdog.start()
        try:
            connection.send(query)
        except OSError as error:
            if gave_up:
                raise _SendGivenUp(str(error)) from None
            raise
        finally:
            watchdog.cancel()

    def _ready(self) -> Any:
        """The pipe to a live process, started (again) if needed."""
        with self._lock:
            if self._stopped:
                raise DecoderUnavailable("the checker is stopping")
            connection = self._connection
        try:
            # Idle, a live process has sent nothing: something to read is its end (EOF). A kill
            # between queries is seen here at once, where is_alive() learns it late under a
            # fork server (a review: 11 to 13 of 30 uploads sent right after a kill were
            # answered "killed the process that decoded it").
            if connection is not None and not connection.poll(0):
                return connection
        except OSError:
            pass
        self._ended()
        retried_start = False
        while True:
            self.launch()
            try:
                return self.wait_started()
            except DecoderUnavailable:
                if retried_start:  # it ended as it started twice: it cannot run here
                    raise
                retried_start = True

    def _answer(self, connection: Any, name: str, on_header: OnHeader | None,
                seconds: float, told_to_decode: list[bool]) -> Any:
        due = time.monotonic() + seconds
        while True:
            if not connection.poll(max(0.0, due - time.monotonic())):
                self._ended()
                raise ImageError(name, f"still decoding after {seconds:g} s: given up")
            kind, value = connection.recv()
            if kind == "header":
                assert on_header is not None
                waited = time.monotonic()
                try:
                    on_header(value)
                except BaseException:
                    connection.send(False)  # not decoded; the process says when it stopped
                    if connection.poll(seconds):
                        connection.recv()
                    else:
                        self._ended()
                    raise
                told_to_decode.append(True)
                connection.send(True)
                due += time.monotonic() - waited  # waiting for decode memory is not decoding
            elif kind == "done":
                return value
            else:  # "failed": the image's fault (ImageError); "raised": a bug of ours, as raised
                raise value

    def launch(self) -> None:
        """Start the process (without waiting for it to be ready: see wait_started)."""
        self._ended()
        context = worker_context()
        ours, theirs = context.Pipe()
        process = context.Process(target=_decode_each_sent, name="neardup-decoder",
                                  args=(theirs,), daemon=True)
        try:
            start_worker(process, lambda: self._stopped, kind="decoding worker")
        except ForkServerUnreachable as error:
            # Nothing was started. (Recorded before it had started, such a process failed every
            # later query of its thread, "can only join a started process", a review.)
            ours.close()
            raise DecoderUnavailable(str(error)) from None
        finally:
            theirs.close()  # the worker's end: reading here ends with EOF once it is gone
        with self._lock:
            stopped = self._stopped
            if not stopped:
                self._process, self._connection = process, ours
        if stopped:
            ours.close()
            end_process(process)
            raise DecoderUnavailable("the checker is stopping")

    def wait_started(self) -> Any:
        """The pipe to the process once it says it can decode."""
        connection = self._connection
        try:
            if connection is None or not connection.poll(START_SECONDS):
                raise EOFError
            connection.recv()  # "started": it could import neardup and wait for queries
            return connection
        except (EOFError, OSError):
            exitcode = self._ended()
            # Killed as it started (the out-of-memory killer, an operator), or unable to run
            # here at all: said with the signal; the first is tried again.
            raise DecoderUnavailable(
                f"a decoding worker process ended as it started ({ended_by(exitcode)}); if this"
                " repeats, check that `python -c 'import neardup.service.decoding'` runs"
            ) from None

    def _ended(self) -> int | None:
        """End the process, if any (killed if still decoding); its exit code."""
        self.holds = None
        with self._lock:
            process, connection = self._process, self._connection
            self._process = self._connection = None
        if process is None:
            return self._exitcode  # ended already (by another thread, as the checker closed)
        end_process(process)
        with contextlib.suppress(OSError):
            connection.close()
        self._exitcode = process.exitcode
        return self._exitcode

    def stop(self) -> None:
        # Ended (SIGTERM, then SIGKILL), not asked to stop: asking blocked on a pipe full of a
        # query a stopped worker never read (a review).
        with self._lock:
            self._stopped = True
        self._ended()


def _accepting(header: Header) -> None:
    """The on_header of a query whose header was judged already, by a worker lost since."""


class _SendGivenUp(OSError):
    """A query the worker did not read within the timeout: it was ended (_Worker._send)."""


class _Refused(ImageError):
    """The checker refused the query at its header: not decoded."""


def _decode_each_sent(connection: Any) -> None:
    """A worker process: decodes each query sent and sends back what came of it."""
    as_worker()
    large_blocks_returned()
    kept: bytes | None = None

    def answer(query: tuple[Any, ...]) -> tuple[str, Any]:
        nonlocal kept
        name, sent, reuse, job, ask, keep = query
        data = kept if reuse else sent
        kept = None
        try:
            asking = _asking(connection, name, frame=job[0] != "hash") if ask else None
            decoded = _decode(name, data, job, asking)
            kept = data if keep else None
            return ("done", decoded)
        except _Refused:
            return ("refused", None)
        except ImageError as error:
            return ("failed", error)
        except MemoryError:
            # A decoder's own allocation failed (ulimit -v, a container's limit): the image's
            # size, not a bug; the worker goes on.
            return ("failed", ImageError(name, "out of memory while decoding it"))
        except SystemExit as stop:
            # A library that calls sys.exit: the worker dies, and the query fails like a crash.
            os._exit(stop.code if isinstance(stop.code, int) else 1)
        except Exception as error:  # noqa: BLE001 - a bug of ours: raised again in the checker
            return ("raised", RuntimeError(f"decoding {name}: {type(error).__name__}: {error}"))

    answer_each_sent(connection, answer)


def _asking(connection: Any, name: str, *, frame: bool) -> Callable[[Image.Image], None]:
    """The worker's on_header: tell the checker the header, decode only if it says so."""
    def on_header(image: Image.Image) -> None:
        connection.send(("header", _header(image, frame)))
        if not connection.recv():
            raise _Refused(name, "refused at its header")

    return on_header


def _decode(name: str, data: bytes | None, job: tuple[Any, ...],
            on_header: Callable[[Image.Image], None] | None) -> Any:
    if job[0] == "hash":
        _, recipe, max_pixels, mirror = job
        return hash_source(name, recipe, max_pixels, data=data, mirror=mirror, on_header=on_header)
    from ..features.extract import read_frame

    return read_frame(name, job[1], data, on_header=on_header)


def _judged_by(on_header: OnHeader | None, *, frame: bool = False
               ) -> Callable[[Image.Image], None] | None:
    if on_header is None:
        return None
    return lambda image: on_header(_header(image, frame))


def _header(image: Image.Image, frame: bool) -> Header:
    """`frame`: decoded for its local features (extract.read_frame), not for its hash."""
    return Header(image.width, image.height, decode_cost(image, frame=frame))
