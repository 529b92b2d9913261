"""The service's log: one line per event on stderr, at most a few lines a second, and what C
image libraries write to stderr themselves brought into it."""

from __future__ import annotations

import faulthandler
import logging
import os
import select
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import command
from .http import log_safe


class OneLineFormatter(logging.Formatter):
    """`search.py: message` (the command as typed); an exception attached by asyncio becomes its
    type and message."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{command('search.py')}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            line += f" ({type(error).__name__}: {error})"
        # asyncio writes some events on two lines ("socket.accept() out of system resource",
        # then "socket: <...>"): one event, one line.
        return " ".join(line.split("\n"))


class LinesPerSecond(logging.Filter):
    """At most `limit` lines a second: a client sending thousands of bad requests must not fill
    the disk. The first line let through after some were left out says how many."""

    def __init__(self, limit: int = 20) -> None:
        super().__init__()
        self.limit = limit
        self.second = 0
        self.passed = 0
        self.left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        second = int(record.created)
        if second != self.second:
            self.second, self.passed = second, 0
        if self.passed >= self.limit:
            self.left_out += 1
            return False
        self.passed += 1
        if self.left_out:
            lines = "1 line" if self.left_out == 1 else f"{self.left_out:,} lines"
            record.msg = f"{record.msg} (and {lines} left out before this one)"
            self.left_out = 0
        return True


class UvicornsBadRequestLine(logging.Filter):
    """Leaves out uvicorn's "Invalid HTTP request received.": our protocol logs the same event
    with the client's address (GuardedHttpProtocol.send_400_response)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("uvicorn")
                    and record.getMessage() == "Invalid HTTP request received.")


def service_logger() -> logging.Logger:
    """One handler for our lines, uvicorn's and asyncio's: stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())
    handler.addFilter(UvicornsBadRequestLine())
    handler.addFilter(LinesPerSecond())
    for name in ("neardup.service", "uvicorn", "asyncio"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    return logging.getLogger("neardup.service")


# The longest line of a library's output logged (the rest of it is logged as further lines).
_LIBRARY_LINE = 1000
# How often the relay of library output looks whether it should stop.
RELAY_LOOK_SECONDS = 0.1


@contextmanager
def library_output_logged() -> Iterator[None]:
    """While the block runs, what C libraries write to file descriptor 2 themselves (libtiff's
    `ZIPDecode: Decoding error at scanline 0, ...` for every corrupt deflate TIFF: 200 uploads put
    200 such lines on stderr at 986 a second, a hostile review) goes through the service's log
    and its limit of lines a second, one line each. Python's own stderr (sys.stderr: tracebacks
    of bugs, and the log's handler, made after this starts) writes to the real stderr directly,
    so nothing of ours is held back or lost with it."""
    previous = sys.stderr
    try:
        os.fstat(2)
    except OSError:
        previous = None
    if previous is None:  # started with stderr closed (2>&-): nothing to keep it from
        yield
        return
    previous.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    stopping = threading.Event()
    relay = threading.Thread(target=_relay_library_lines, args=(read_end, stopping), daemon=True,
                             name="library-stderr")
    try:
        sys.stderr = open(real, "w", buffering=1, encoding=previous.encoding,  # noqa: SIM115
                          errors="backslashreplace", closefd=False)
        os.dup2(write_end, 2)
    finally:
        os.close(write_end)
    # A fatal error's dump (faulthandler, PYTHONFAULTHANDLER=1) must not go into the pipe: the
    # thread reading it dies with the process (a review: the dump of a segmentation fault was
    # lost, or cut to one line).
    dumping = faulthandler.is_enabled()
    if dumping:
        _dump_fatal_errors_to(sys.stderr)
    relay.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # nothing here writes to the pipe any more
        # The checker's decoding worker processes (and the fork server that starts them) write
        # to it too, and live until the process exits: the relay stops once it has read what is
        # there, rather than wait for the end of the pipe (shutting down took 5 s).
        stopping.set()
        if dumping:
            _dump_fatal_errors_to(previous)
        relay.join(5)
        # `real` stays open: the log's handler still holds the stream on it, and a line logged
        # after this (a thread finishing late) must reach stderr, not a file given its number.
        sys.stderr = previous


def _dump_fatal_errors_to(stream: Any) -> None:
    try:
        faulthandler.enable(stream, all_threads=True)
    except (OSError, ValueError, AttributeError):  # a stream without a file descriptor
        pass


def _relay_library_lines(read_end: int, stopping: threading.Event) -> None:
    log = logging.getLogger("neardup.service")
    pending = b""
    try:
        while True:
            if not select.select([read_end], [], [], RELAY_LOOK_SECONDS)[0]:
                if stopping.is_set():
                    return
                continue
            chunk = os.read(read_end, 65536)
            if not chunk:
                return  # every writer gone
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                _log_library_line(log, line)
            while len(pending) >= _LIBRARY_LINE:
                _log_library_line(log, pending[:_LIBRARY_LINE])
                pending = pending[_LIBRARY_LINE:]
    finally:
        _log_library_line(log, pending)
        os.close(read_end)


def _log_library_line(log: logging.Logger, line: bytes) -> None:
    for start in range(0, len(line), _LIBRARY_LINE):
        text = line[start:start + _LIBRARY_LINE].decode("utf-8", "replace").strip()
        if text:
            log.warning("an image library said: %s", log_safe(text))
