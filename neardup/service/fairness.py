"""The threads that decode and search uploads, serving first the client address that has
used them least."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

# How many addresses' decode time is remembered once they have nothing queued or running: the
# rest start again level with the addresses being served.
REMEMBERED_ADDRESSES = 10_000


class FairThreads:
    """A thread pool whose next job comes from the address that has used the threads least (first
    in, first out within an address).

    With one queue for all, an upload waited behind every upload queued before it: under four
    addresses re-sending PNGs that take 0.45 s each to decode, another client's upload waited
    seconds for the two threads. Taking the addresses in turn fixed that wait but not its
    length: a client sending photos that decode in milliseconds still waited its turn behind
    each heavy address, 0.8 to 2.9 s beside four of them (a review's cpu_flood.py, 2 cores).
    So each address is charged the thread time its jobs take, as a scheduler charges run time,
    and the least charged goes next: a light client is served as soon as a thread is free, and
    heavy addresses share what is left among themselves. A job is charged its address's recent
    duration when it starts (corrected when it ends), so an address cannot take every thread
    at once with jobs not yet charged. An address that comes back after a pause starts level
    with the least charged one being served, never below: being idle buys no credit.
    """

    def __init__(self, threads: int, name: str) -> None:
        # Each address's queue, in the order addresses arrived (ties go to the earliest).
        self._queues: dict[str, collections.deque[tuple[concurrent.futures.Future[Any],
                                                         Callable[..., Any], tuple[Any, ...]]]] = {}
        self._charged: dict[str, float] = {}  # seconds of thread time, per address
        self._recent: dict[str, float] = {}  # an address's recent job duration, seconds
        self._running: dict[str, int] = {}  # jobs running, per address
        self._level = 0.0  # the least charge among addresses served; never goes down
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
            if client not in self._queues and not self._running.get(client):
                self._charged[client] = max(self._charged.get(client, 0.0), self._level)
            self._queues.setdefault(client, collections.deque()).append((future, function, args))
            self._work.notify()
        return future

    def _take(self) -> tuple[str, float, concurrent.futures.Future[Any], Callable[..., Any],
                             tuple[Any, ...]]:
        """The next job (called holding the lock, with jobs queued), charged in advance."""
        client = min(self._queues, key=self._charged.__getitem__)
        self._level = max(self._level, self._charged[client])
        queue = self._queues[client]
        future, function, args = queue.popleft()
        if not queue:
            del self._queues[client]
        advance = self._recent.get(client, 0.0)
        self._charged[client] += advance
        self._running[client] = self._running.get(client, 0) + 1
        return client, advance, future, function, args

    def _done(self, client: str, advance: float, took: float) -> None:
        with self._work:
            self._charged[client] += took - advance
            recent = self._recent.get(client)
            self._recent[client] = took if recent is None else (recent + took) / 2
            running = self._running[client] - 1
            if running:
                self._running[client] = running
            else:
                del self._running[client]
            self._forget()

    def _forget(self) -> None:
        """Past REMEMBERED_ADDRESSES, addresses with nothing queued or running are forgotten,
        those charged least first (they would start level anyway)."""
        if len(self._charged) <= REMEMBERED_ADDRESSES:
            return
        idle = sorted((charge, client) for client, charge in self._charged.items()
                      if client not in self._queues and client not in self._running)
        for _, client in idle[: len(self._charged) - REMEMBERED_ADDRESSES]:
            del self._charged[client]
            self._recent.pop(client, None)

    def _run(self) -> None:
        while True:
            with self._work:
                self._work.wait_for(lambda: self._queues or self._stopping)
                if not self._queues:
                    return  # stopping, nothing queued
                client, advance, future, function, args = self._take()
            started = time.monotonic()
            try:
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(function(*args))
                except BaseException as error:  # noqa: BLE001 - the caller's to raise
                    future.set_exception(error)
            finally:
                self._done(client, advance, time.monotonic() - started)

    def shutdown(self) -> None:
        """Jobs not started are cancelled; those running finish on their threads."""
        with self._work:
            self._stopping = True
            for queue in self._queues.values():
                for future, _, _ in queue:
                    future.cancel()
            self._queues.clear()
            self._work.notify_all()
