"""Ctrl-C held back while child processes start, then given its due.

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
    heard: list[int] = []
    main = threading.current_thread() is threading.main_thread()  # signal.signal's only thread
    # Another thread (one of a C library's) may take the signal meanwhile: its Python handler
    # then runs in this thread at any point, where a KeyboardInterrupt would be lost (in a
    # garbage collector callback) or break the start in two. This one only notes it.
    previous_handler = signal.signal(signal.SIGINT, lambda *_: heard.append(1)) if main else None
    # (None too for a handler set from C: left as it is.)
    try:
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)  # hears one pending
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    if heard:
        signal.raise_signal(signal.SIGINT)  # as if it came now: a KeyboardInterrupt, as a rule
