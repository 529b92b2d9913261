"""search.py --stdin and --serve: the store loaded once and many queries answered, paths read
from standard input or images uploaded over HTTP."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import BinaryIO, TextIO

from ..core.results import json_text
from ..errors import NeardupError
from ..service.checker import Checker
from ..service.decoding import InWorkers
from ..service.limits import DecodeBudget
from ..service.server import load_token, reachable_from_elsewhere, serve
from ..service.settings import ServiceLimits
from .common import warn
from .search_common import EXIT_ERROR, EXIT_MATCH, PROG

# Longer than any path the system takes (PATH_MAX is 4,096 bytes on Linux).
MAX_LINE_BYTES = 64 * 1024


def run_checker(args: argparse.Namespace) -> int:
    """--stdin and --serve: the store loaded once, many queries answered."""
    if args.stdin:  # started with either closed (`<&-`, `>&-`), Python has None for it
        for stream, name in ((sys.stdin, "standard input"), (sys.stdout, "standard output")):
            if stream is None:
                raise NeardupError(f"--stdin needs {name}, and it is closed")
    limits = None
    if args.serve:
        host, port = parse_address(args.serve)
        limits = ServiceLimits(
            max_upload_bytes=args.max_upload_bytes, max_query_distance=args.max_query_distance,
            header_timeout=args.header_timeout, body_timeout=args.body_timeout,
            keep_alive_timeout=args.keep_alive_timeout, send_timeout=args.send_timeout,
            max_connections=args.max_connections,
            max_in_flight=args.max_in_flight,
            token=load_token(args.token_file, lambda line: warn(PROG, line))
            if args.token_file else None)
        if limits.token is None and reachable_from_elsewhere(host):
            warn(PROG, f"--serve {args.serve}: reachable from other machines without"
                       " --token-file: anyone who reaches the port can query the store")
    with Checker(args.shelve, max_distance=args.max_distance, max_pixels=args.max_pixels,
                 include_low_information=args.include_low_information, mirror=args.mirror,
                 max_matches=args.max_matches, full_paths=not args.serve or args.full_paths,
                 decode_budget=DecodeBudget(args.decode_memory_mb * 2**20) if args.serve else None,
                 decoders=InWorkers(args.file_timeout),
                 warn=lambda line: warn(PROG, line)) as checker:
        if args.serve:
            try:
                serve(checker, host, port, limits, ready=lambda line: warn(PROG, line))
            except OSError as error:
                raise NeardupError(f"cannot serve on {args.serve}: {error.strerror}") from error
            return 0
        return answer_lines(checker, sys.stdin.buffer, sys.stdout, null=args.null)


def answer_lines(checker: Checker, lines: BinaryIO, out: TextIO, null: bool = False) -> int:
    """--stdin: one JSON line per path read, flushed; 2 at the end if any query failed.

    Lines are bytes, so a file name need not be UTF-8 (it is decoded as the OS does, and its
    record escapes what is not ASCII); a CRLF line ending is not part of the name. Every line
    gets its answer, an empty one included. `null` (--null): paths end with a NUL byte instead,
    the one byte no file name holds, so names with line breaks can be asked for too.
    """
    failed = False
    unit = "path" if null else "line"
    records = bounded_records(lines, MAX_LINE_BYTES) if null else bounded_lines(lines,
                                                                                 MAX_LINE_BYTES)
    for line in records:
        if line is None:  # skipped unkept: a 100 MB line took 732 MB and was answered twice over
            record = {"query": "", "error": f"a {unit} of more than {MAX_LINE_BYTES:,} bytes: no"
                                            " file name is that long"}
            failed = True
            out.write(json_text(record) + "\n")
            out.flush()
            continue
        if null:
            line = line[:-1] if line.endswith(b"\0") else line
        else:
            # Exactly one line ending comes off: any other byte, spaces and CRs included, can be
            # part of a file name.
            line = line[:-1] if line.endswith(b"\n") else line
            line = line[:-1] if line.endswith(b"\r") else line
        path = os.fsdecode(line)
        if path:
            record = checker.check_file(path)
        else:  # still answered: a client pairs answers with its lines by their order
            record = {"query": "", "error": f"empty {unit}: no file named"}
        failed = failed or "error" in record
        out.write(json_text(record) + "\n")
        out.flush()
    return EXIT_ERROR if failed else EXIT_MATCH


def bounded_lines(stream: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """The stream's lines, each with its line ending; None for a line longer than `limit`,
    which is read to its end without being kept."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):  # the rest of the long line, dropped
            line = stream.readline(limit)
        yield None


def bounded_records(stream: BinaryIO, limit: int, end: bytes = b"\0") -> Iterator[bytes | None]:
    """bounded_lines() for records ending with `end` (a NUL byte): each as soon as its end has
    arrived (a client waits for its answer before sending the next path), None for one longer
    than `limit`, dropped as it streams in."""
    pending = b""
    too_long = False
    while chunk := _read_available(stream):
        pending += chunk
        while (cut := pending.find(end)) >= 0:
            record, pending = pending[:cut + 1], pending[cut + 1:]
            yield None if too_long or len(record) > limit + 1 else record
            too_long = False
        if len(pending) > limit:
            too_long, pending = True, b""
    if pending or too_long:  # the last path without its NUL
        yield None if too_long else pending


def _read_available(stream: BinaryIO) -> bytes:
    """What the stream holds now (at least one byte, or b"" at its end), without waiting for
    more: read(n) of a pipe would wait for all n bytes."""
    read1 = getattr(stream, "read1", None)
    return read1(64 * 1024) if read1 is not None else stream.read(1)


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    # "/" in the host: a URL (`http://127.0.0.1:8080`), which failed as an unknown host name.
    if not host or not port.isdigit() or int(port) > 65535 or not host.isascii() \
            or not host.isprintable() or "/" in host:
        raise NeardupError(f"--serve {text}: expected HOST:PORT, such as 127.0.0.1:8080")
    return host.strip("[]"), int(port)
