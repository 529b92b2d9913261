"""Dask's log lines while `index.py --local-cluster` shuts its cluster down, left unsaid.

The local cluster's workers write to the terminal index.py runs in. When a run ends mid-partition
(Ctrl-C), closing a worker cancels the task it runs and the worker logs a warning for each
("Async instruction ... ended with CancelledError"), as the scheduler does for the results it
loses: index.py says in its own line what became of the run. Imported only with Dask installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from distributed import WorkerPlugin
from distributed.core import Status

# The states of a worker from the moment it starts to close.
_CLOSING = frozenset({Status.closing, Status.closing_gracefully, Status.closed, Status.failed})


def _handlers() -> list[logging.Handler]:
    """The handlers Dask's log records reach: distributed's and tornado's (set up by Dask's
    logging configuration, not propagating) and the root logger's (a configuration of one's
    own)."""
    found: list[logging.Handler] = []
    for logger in (logging.getLogger("distributed"), logging.getLogger("tornado"),
                   logging.getLogger()):
        found.extend(handler for handler in logger.handlers if handler not in found)
    return found


def _add_filter(keep: Callable[[logging.LogRecord], bool]) -> Callable[[], None]:
    """`keep` as a filter on every handler distributed's records reach; returns its removal."""
    handlers = _handlers()
    for handler in handlers:
        handler.addFilter(keep)

    def remove() -> None:
        for handler in handlers:
            handler.removeFilter(keep)

    return remove


def _not_distributed(record: logging.LogRecord) -> bool:
    """Whether a record is not Dask's own: distributed's, or that of its event loop (tornado)."""
    return not any(record.name == name or record.name.startswith(name + ".")
                   for name in ("distributed", "tornado"))


@contextmanager
def distributed_silenced() -> Iterator[None]:
    """No line of Dask's loggers in this process meanwhile (the local cluster's scheduler and
    nannies, the client and their event loop, as they close); other loggers' lines pass."""
    remove = _add_filter(_not_distributed)
    try:
        yield
    finally:
        remove()


def _not_the_sync_cancel_bug(record: logging.LogRecord) -> bool:
    """Whether a record is not Dask's own failure to cancel a call interrupted by Ctrl-C: the
    callback distributed.utils.sync schedules then may run before the name it reads is bound,
    and the event loop logs "Exception in callback ... sync.<locals>.cancel" with a NameError's
    traceback (10 lines before index.py's own, in one run of a Ctrl-C test in many)."""
    return not (record.name == "tornado.application"
                and "sync.<locals>.cancel" in record.getMessage())


@contextmanager
def sync_cancel_bug_silenced() -> Iterator[None]:
    """That one record (_not_the_sync_cancel_bug) left unsaid meanwhile; every other passes."""
    remove = _add_filter(_not_the_sync_cancel_bug)
    try:
        yield
    finally:
        remove()


class QuietWhenClosing(WorkerPlugin):
    """On each worker of the local cluster (those Dask starts again too): no line of Dask's
    loggers once the worker closes."""

    name = "neardup-quiet-when-closing"

    def setup(self, worker: Any) -> None:
        def keep(record: logging.LogRecord) -> bool:
            return worker.status not in _CLOSING or _not_distributed(record)

        # Not removed at teardown: teardown comes after the closing worker's cancelled tasks
        # have been logged, and the process ends with the worker.
        _add_filter(keep)
