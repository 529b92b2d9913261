"""The threads that decode and search uploads, taking each client address's jobs in turn."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any


class FairThreads:
    """A thread pool taking its jobs from each client address in turn (first in, first out
    within an address). With one queue for all, an upload waited behind every upload queued
    before it: under four addresses re-sending PNGs that take 0.45 s each to decode, another
    client's upload waited seconds for the two threads."""

    def __init__(self, threads: int, name: str) -> None:
        # Each address's queue; the order of the dict is the turn (the front goes next).
        self._queues: dict[str, collections.deque[tuple[concurrent.futures.Future[Any],
                                                         Callable[..., Any], tuple[Any, ...]]]] = {}
        self._work = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._run, name=f"{name}_{number}", daemon=True)
                         for number in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, client: str, function: Callable[..., Any],
               *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._work:
            if self._stopping:
                raise RuntimeError("the decode threads are stopping")
            self._queues.setdefault(client, collections.deque()).append((future, function, args))
            self._work.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._work:
                self._work.wait_for(lambda: self._queues or self._stopping)
                if not self._queues:
                    return  # stopping, nothing queued
                client = next(iter(self._queues))
                queue = self._queues.pop(client)
                future, function, args = queue.popleft()
                if queue:
                    self._queues[client] = queue  # to the back of the turn
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as error:  # noqa: BLE001 - the caller's to raise
                future.set_exception(error)

    def shutdown(self) -> None:
        """Jobs not started are cancelled; those running finish on their threads."""
        with self._work:
            self._stopping = True
            for queue in self._queues.values():
                for future, _, _ in queue:
                    future.cancel()
            self._queues.clear()
            self._work.notify_all()
