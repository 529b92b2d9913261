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
memory (or refuses: too large, busy, more pixels than asked for), as it did in its own process.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..core.hashing import Hash, Recipe, hash_source
from ..core.processes import (
    as_worker,
    check_timeout,
    death_reason,
    end_process,
    ended_by,
    starting_workers,
    worker_context,
)
from ..errors import ImageError, NeardupError
from .limits import decode_cost

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

        return read_frame(name, max_pixels, data, on_header=_judged_by(on_header))

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
                    raise NeardupError("the checker is stopping")
                worker = self._mine.worker = self._spare.pop() if self._spare else _Worker()
                if worker not in self._all:
                    self._all.append(worker)
        return worker  # type: ignore[no-any-return]


class _Worker:
    """One worker process, started when first needed and again after each death."""

    def __init__(self) -> None:
        self._process: Any = None
        self._connection: Any = None
        # The query's bytes the process kept (a hash asked with keep): not sent again for its
        # frame. Held only for that: an upload's bytes kept until the next query were memory
        # the server's limits no longer counted.
        self.holds: bytes | None = None

    def run(self, name: str, data: bytes | None, job: tuple[Any, ...],
            on_header: OnHeader | None, seconds: float, keep: bool = False) -> Any:
        """What the worker made of the query. With `on_header`, the worker sends the header and
        decodes only once on_header has returned (it raises to refuse); without, it decodes at
        once (the caller has reserved what it may take: limits.cost_bound)."""
        if data is None:  # a file named by the caller (--stdin): read here, sent as bytes
            from .checker import read_regular_file

            data = read_regular_file(name)
        if self._process is None or not self._process.is_alive():
            self._start()
        # A feature store's query is decoded twice (its hash, then its frame): the bytes go once.
        sent = None if data is self.holds else data
        self.holds = None
        try:
            self._connection.send((name, sent, job, on_header is not None, keep))
            answer = self._answer(name, on_header, seconds)
            self.holds = data if keep else None
            return answer
        except (EOFError, OSError):
            # OSError: a socket pair under the pipe says "connection reset" when the process died
            # before it read the query.
            raise ImageError(name, death_reason(self._ended(), did="decoded")) from None

    def _answer(self, name: str, on_header: OnHeader | None, seconds: float) -> Any:
        due = time.monotonic() + seconds
        while True:
            if not self._connection.poll(max(0.0, due - time.monotonic())):
                self._ended()
                raise ImageError(name, f"still decoding after {seconds:g} s: given up")
            kind, value = self._connection.recv()
            if kind == "header":
                assert on_header is not None
                waited = time.monotonic()
                try:
                    on_header(value)
                except BaseException:
                    self._connection.send(False)  # not decoded; the process says when it stopped
                    if self._connection.poll(seconds):
                        self._connection.recv()
                    else:
                        self._ended()
                    raise
                self._connection.send(True)
                due += time.monotonic() - waited  # waiting for decode memory is not decoding
            elif kind == "done":
                return value
            else:  # "failed": the image's fault (ImageError); "raised": a bug of ours, as raised
                raise value

    def _start(self) -> None:
        self.launch()
        self.wait_started()

    def launch(self) -> None:
        """Start the process (without waiting for it to be ready: see wait_started)."""
        self._ended()
        context = worker_context()
        self._connection, theirs = context.Pipe()
        with starting_workers():
            self._process = context.Process(target=_decode_each_sent, name="neardup-decoder",
                                            args=(theirs,), daemon=True)
            self._process.start()
        theirs.close()  # the worker's end: reading here ends with EOF once it is gone

    def wait_started(self) -> None:
        try:
            self._connection.recv()  # "started": it could import neardup and wait for queries
        except (EOFError, OSError):
            raise NeardupError(
                f"a decoding worker process ended as it started ({ended_by(self._ended())}): worker"
                " processes cannot run here (does `python -c 'import neardup.service.decoding'`"
                " work?)") from None

    def _ended(self) -> int | None:
        """End the process, if any (killed if still decoding); its exit code."""
        self.holds = None
        if self._process is None:
            return None
        end_process(self._process)
        with contextlib.suppress(OSError):
            self._connection.close()
        exitcode = self._process.exitcode
        self._process = self._connection = None
        return exitcode  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError):
                self._connection.send(None)
        self._ended()


class _Refused(ImageError):
    """The checker refused the query at its header: not decoded."""


def _decode_each_sent(connection: Any) -> None:
    """A worker process: decodes each query sent and sends back what came of it."""
    as_worker()
    connection.send("started")
    kept: bytes | None = None
    while (query := connection.recv()) is not None:
        name, sent, job, ask, keep = query
        data = sent if sent is not None else kept
        kept = None
        try:
            answer = _decode(name, data, job, _asking(connection, name) if ask else None)
            kept = data if keep else None
            connection.send(("done", answer))
        except _Refused:
            connection.send(("refused", None))
        except ImageError as error:
            connection.send(("failed", error))
        except MemoryError:
            # A decoder's own allocation failed (ulimit -v, a container's limit): the image's
            # size, not a bug; the worker goes on.
            connection.send(("failed", ImageError(name, "out of memory while decoding it")))
        except SystemExit as stop:
            # A library that calls sys.exit: the worker dies, and the query fails like a crash.
            os._exit(stop.code if isinstance(stop.code, int) else 1)
        except Exception as error:  # noqa: BLE001 - a bug of ours: raised again in the checker
            connection.send(("raised", RuntimeError(f"decoding {name}: {type(error).__name__}:"
                                                    f" {error}")))
    connection.close()


def _asking(connection: Any, name: str) -> Callable[[Image.Image], None]:
    """The worker's on_header: tell the checker the header, decode only if it says so."""
    def on_header(image: Image.Image) -> None:
        connection.send(("header", _header(image)))
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


def _judged_by(on_header: OnHeader | None) -> Callable[[Image.Image], None] | None:
    if on_header is None:
        return None
    return lambda image: on_header(_header(image))


def _header(image: Image.Image) -> Header:
    return Header(image.width, image.height, decode_cost(image))
