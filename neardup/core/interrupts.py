"""Ctrl-C (and SIGTERM) held back while a step must not be cut in two, then given its due.

Ctrl-C reaches the whole process group. A child caught starting (a worker, the fork server, a
Dask nanny) printed its own traceback, or "Fatal Python error: init_import_site"; and this
process, interrupted between starting a child and recording it, left that child out of the ones
it stops (a review: a worker lived on to find the pool's semaphores gone).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def signals_deferred(*signums: int, reraise: bool = True) -> Iterator[list[int]]:
    """The signals heard meanwhile only noted (in the list it gives), and, with `reraise`, raised
    once the body is done, as if they came then: a step that must not be cut in two (a swap of
    two folders) runs whole. Only the main thread can set handlers, and only it is interrupted:
    elsewhere nothing changes."""
    heard: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield heard
        return
    previous: dict[int, Any] = {}
    try:
        for signum in signums:
            # An ignored signal stays ignored (a background job of a script keeps SIGINT so:
            # noted, a second review's Ctrl-C stopped such a gather.py once its swap was done).
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum,
                                                 lambda number, _frame: heard.append(number))
        yield heard
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # (None: a handler set from C, which cannot be set back)
                signal.signal(signum, handler)
    if reraise:
        for signum in dict.fromkeys(heard):
            signal.raise_signal(signum)


@contextmanager
def sigint_held() -> Iterator[None]:
    """SIGINT blocked for good in the threads started meanwhile and in every process they start
    (a blocked signal stays blocked across fork and exec, and Python does not unblock it), so
    that Ctrl-C reaches this process's main thread alone. A Ctrl-C meanwhile is held back, and
    raised once the body is done: as a KeyboardInterrupt in the middle of starting a
    LocalCluster, it left half-started processes and 70 to 150 lines of tracebacks; in the
    middle of starting index.py's worker pool, tracebacks in 3 of 4 batches of 25 tries."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no such thing
        yield
        return
    from multiprocessing import resource_tracker

    # Started from a thread, the resource tracker process of a spawning multiprocessing unblocks
    # SIGINT in that thread afterwards, whatever it was before: start it from here, first.
    resource_tracker.ensure_running()
    # Another thread (one of a C library's) may take the signal meanwhile: its Python handler
    # then runs in this thread at any point, where a KeyboardInterrupt would be lost (in a
    # garbage collector callback) or break the start in two. So it is only noted meanwhile,
    # and so is SIGTERM, which the commands turn into an exception too (cli.common.Terminated).
    with signals_deferred(signal.SIGINT, signal.SIGTERM):
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)  # hears one pending
