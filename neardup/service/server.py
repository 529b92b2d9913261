"""search.py --serve: the checker over HTTP.

    POST /search[?max_distance=N]   body: the image bytes   -> 200 the result record (results.py)
    GET  /health                    -> 200 {"status": "ok", "hashes", "images", "generation"}

Errors are JSON too: 400 for a body that is not an image (or a bad max_distance), 411 without a
Content-Length, 413 for a body over the limit (refused before it is read), 404 elsewhere.

The standard library's threading server serves: requests run in threads, and the costly part
(decoding and resizing the upload) runs in Pillow's C code without the GIL, so concurrent uploads
use several cores. SIGTERM stops accepting, lets requests in flight finish, and exits 0.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .checker import Checker

DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
MAX_QUERY_DISTANCE = 64


class CheckerServer(ThreadingHTTPServer):
    daemon_threads = False  # SIGTERM waits for requests in flight
    block_on_close = True

    def __init__(self, address: tuple[str, int], checker: Checker, max_upload_bytes: int) -> None:
        self.checker = checker
        self.max_upload_bytes = max_upload_bytes
        super().__init__(address, CheckerHandler)


class CheckerHandler(BaseHTTPRequestHandler):
    server: CheckerServer
    protocol_version = "HTTP/1.1"  # keep-alive: a client can send many uploads on one connection
    # Headers and body leave in two writes; with Nagle's algorithm on, the client's delayed ACK
    # held every answer back 40 ms (measured: p50 44 ms, against under 2 ms without).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        if urlsplit(self.path).path == "/health":
            self.reply(HTTPStatus.OK, self.server.checker.health())
        else:
            self.reply(HTTPStatus.NOT_FOUND, {"error": "not found; use POST /search or GET /health"})

    def do_POST(self) -> None:  # noqa: N802 - the http.server protocol
        url = urlsplit(self.path)
        if url.path != "/search":
            self.reply(HTTPStatus.NOT_FOUND, {"error": "not found; use POST /search"})
            return
        try:
            max_distance = parse_distance(url.query)
        except ValueError as error:
            self.reply(HTTPStatus.BAD_REQUEST, {"error": str(error)}, close=True)
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self.reply(HTTPStatus.LENGTH_REQUIRED, {"error": "send the image with a Content-Length"},
                       close=True)
            return
        length = int(length_header)
        if length > self.server.max_upload_bytes:
            # Refused unread; the connection is closed so the unread body cannot be mistaken for
            # the next request.
            self.reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       {"error": f"upload of {length:,} bytes is over the limit of"
                                 f" {self.server.max_upload_bytes:,}"}, close=True)
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self.reply(HTTPStatus.BAD_REQUEST, {"error": "the upload ended early"}, close=True)
            return
        record = self.server.checker.check_upload(body, "upload", max_distance)
        self.reply(HTTPStatus.BAD_REQUEST if "error" in record else HTTPStatus.OK, record)

    def reply(self, status: HTTPStatus, payload: dict[str, Any], close: bool = False) -> None:
        body = (json.dumps(payload) + "\n").encode("ascii")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base signature
        pass  # one line per upload would drown the errors; the answers carry everything


def parse_distance(query: str) -> int | None:
    values = parse_qs(query).get("max_distance")
    if not values:
        return None
    text = values[-1]
    if not text.isdigit() or int(text) > MAX_QUERY_DISTANCE:
        raise ValueError(f"max_distance must be a whole number from 0 to {MAX_QUERY_DISTANCE}")
    return int(text)


def serve(
    checker: Checker,
    host: str,
    port: int,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ready: Callable[[str], None] = lambda line: None,
) -> None:
    """Serve until SIGTERM or Ctrl-C; requests in flight are finished first."""
    server = CheckerServer((host, port), checker, max_upload_bytes)

    def stop(_signal: int, _frame: object) -> None:
        # shutdown() waits for serve_forever() to return, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        bound_host, bound_port = server.server_address[:2]
        ready(f"serving on http://{bound_host}:{bound_port}")
        server.serve_forever()
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
