"""search.py --serve: the checker over HTTP, for clients that may be hostile.

    POST /search[?max_distance=N]   body: the image bytes   -> 200 the result record (results.py)
    GET  /health                    -> 200 {"status": "ok" | "degraded", ...}, 503 "unavailable"

Every answer is JSON. Statuses: 400 not an image (or a bad request), 401 no or wrong token,
404/405 another path or method, 408 the body did not arrive in time, 411 no Content-Length, 413 the
body or its decoded size over the limit, 500 the store is damaged where this query reads it, 503
busy or the store unavailable (with Retry-After).

HTTP itself is uvicorn's (an optional dependency: the `serve` extra): its parser, keep-alive
timeout and graceful shutdown. This module adds what uvicorn leaves to the application or does not
have: a deadline for the request headers (uvicorn times out only idle keep-alive connections, so
a client that sends a byte every few seconds, or nothing after connecting, was kept forever), a
cap on connections, a body deadline, a cap on requests in flight, the bearer token, and one log
line per refused request. Decoding and searching run on a small thread pool (Pillow and numpy
release the GIL), so the event loop keeps answering /health while uploads are decoded.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import faulthandler
import hmac
import ipaddress
import json
import logging
import os
import resource
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from ..core.jpeg import frame_header
from ..core.results import counted
from ..errors import NeardupError, command, install_hint
from .checker import Checker, NotHere, StoreReadFailed, StoreUnavailable
from .limits import DecodeBusy, DecodeTooLarge

DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
# Distances above this are refused: at 64 bits, 10 already reaches images that merely look alike,
# and ?max_distance=64 used to return the whole catalogue to any client.
DEFAULT_MAX_QUERY_DISTANCE = 10
DEFAULT_MAX_MATCHES = 100

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class ServiceLimits:
    """Every bound the server enforces; the defaults are documented in docs/service.md."""

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_query_distance: int = DEFAULT_MAX_QUERY_DISTANCE
    header_timeout: float = 10.0    # from connecting (or the previous answer) to complete headers
    body_timeout: float = 30.0      # from the headers to the last byte of the body
    keep_alive_timeout: float = 5.0  # an idle keep-alive connection is closed after this
    send_timeout: float = 10.0      # an answer the client does not take in for this long: closed
    shutdown_timeout: float = 3.0   # SIGTERM: requests in flight get this long to finish
    max_connections: int = 1000
    max_in_flight: int = 16         # uploads being decoded or searched at once

    @property
    def max_in_flight_per_client(self) -> int:
        """Uploads one client address may have decoded or searched at once: a quarter."""
        return max(1, self.max_in_flight // 4)

    @property
    def reserved_in_flight(self) -> int:
        """Slots only an address with no upload in flight may take: a quarter. Four addresses
        re-sending 47 KB PNGs of 7000 x 7000 pixels (0.45 s of decoding each) held all 16, and
        a fifth address got 503 for 17 of 19 uploads (a hostile review)."""
        return max(1, self.max_in_flight // 4) if self.max_in_flight > 1 else 0

    @property
    def max_connections_per_client(self) -> int:
        """Connections one client address may hold open: a quarter. 1,100 idle sockets from one
        address kept every other client out until the header deadline (a hostile review)."""
        return max(1, self.max_connections // 4)

    @property
    def max_body_bytes(self) -> int:
        """Bytes of uploads all clients together may hold in memory, received so far or being
        checked: as many as max_in_flight uploads of the largest size. Counted as they arrive,
        so an upload trickling in holds what it has sent and no more (counted by upload, 16
        trickling a byte a second held every slot for the body timeout)."""
        return self.max_in_flight * self.max_upload_bytes
    decode_threads: int = max(2, os.cpu_count() or 2)
    backlog: int = 1024
    token: bytes | None = None      # the bearer token every request must carry, if set


# A token shorter than this is said to be guessable when the server starts.
SHORT_TOKEN = 16


def load_token(path: str, warn: Callable[[str], None] = lambda line: None) -> bytes:
    """The bearer token in a file (surrounding whitespace ignored), refused when empty; `warn`
    is told when the token is short or the file readable by other users."""
    try:
        with open(path, "rb") as stream:
            token = stream.read(4097).strip()
            readable_by_others = os.fstat(stream.fileno()).st_mode & 0o077
    except OSError as error:
        raise NeardupError(f"--token-file {path}: cannot read it ({error.strerror})") from error
    if not token:
        raise NeardupError(f"--token-file {path}: the file is empty")
    if len(token) > 4096 or any(byte < 0x21 or byte > 0x7E for byte in token):
        raise NeardupError(f"--token-file {path}: a token is up to 4096 printable ASCII"
                           " characters without spaces")
    if len(token) < SHORT_TOKEN:
        warn(f"--token-file {path}: a token of {len(token)} characters can be guessed; use"
             f" {SHORT_TOKEN} or more (python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if readable_by_others:
        warn(f"--token-file {path}: other users can read it (chmod 600 {path})")
    return token


def reachable_from_elsewhere(host: str) -> bool:
    """Whether a server listening on `host` may be reached from other machines (anything but
    the loopback interface)."""
    if host.lower() == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return True  # a host name: whatever it resolves to


class Refused(Exception):
    """A request answered with an error status, and the one log line it is worth."""

    def __init__(self, status: int, reason: str, *, retry_after: bool = False,
                 close: bool = False, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        self.close = close
        self.headers = headers or []


class CheckerApp:
    """The ASGI application: routing, limits, and the checker's answers as JSON."""

    def __init__(self, checker: Checker, limits: ServiceLimits, log: logging.Logger) -> None:
        self.checker = checker
        self.limits = limits
        self.log = log
        self.in_flight = 0
        self.in_flight_from: dict[str, int] = {}  # per client address
        self.body_bytes = 0  # of uploads held in memory, received so far or being checked
        self.body_bytes_from: dict[str, int] = {}  # per client address
        self.decoders = FairThreads(limits.decode_threads, "decode")
        # /health has a thread of its own, so it never queues behind uploads being decoded.
        self.health_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="health")
        self.expected_token = limits.token or None

    def close(self) -> None:
        self.decoders.shutdown()
        self.health_thread.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.route(scope, receive, tracked)
        except asyncio.CancelledError:
            # SIGTERM waited --shutdown-timeout for this request (an upload still arriving, say)
            # and uvicorn cancels it: answered here, in JSON, instead of uvicorn's plain-text 500
            # and its "Exception in ASGI application".
            if not started:
                self.log.warning("%s %s %s: 503 the server stopped before answering",
                                 address(scope.get("client")), method, log_safe(path))
                await reply(send, 503, {"error": "the server is stopping; try again"},
                            [(b"retry-after", b"1")], close=True)

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request, every refusal and our own errors included, in JSON."""
        method, path = scope["method"], scope["path"]
        try:
            self.check_token(scope)
            if path == "/health":
                if method not in ("GET", "HEAD"):
                    raise Refused(405, "use GET /health", close=True,
                                  headers=[(b"allow", b"GET, HEAD")])
                await self.answer_health(send)
            elif path == "/search":
                if method != "POST":
                    raise Refused(405, "use POST /search with the image as the body", close=True,
                                  headers=[(b"allow", b"POST")])
                await self.answer_search(scope, receive, send)
            else:
                raise Refused(404, "not found; use POST /search or GET /health", close=True)
        except Exception as error:  # noqa: BLE001 - our bug must not become uvicorn's text/plain 500
            if isinstance(error, Refused):
                refusal = error
                self.log.warning("%s %s %s: %d %s", address(scope.get("client")), method, log_safe(path),
                                 refusal.status, refusal.reason)
            else:
                refusal = Refused(500, "internal error; the server log names it", close=True)
                self.log.error("%s %s %s: 500 internal error (%s: %s)", address(scope.get("client")), method,
                               log_safe(path), type(error).__name__, error)
            headers = list(refusal.headers)
            if refusal.retry_after:
                headers.append((b"retry-after", b"1"))
            await reply(send, refusal.status, {"error": refusal.reason}, headers,
                        close=refusal.close)

    def check_token(self, scope: Scope) -> None:
        if self.expected_token is None:
            return
        given = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(given) != 1:  # none, or two: which one a proxy in front checked is not known
            raise Refused(401, "a valid bearer token is required", close=True,
                          headers=[(b"www-authenticate", b'Bearer realm="neardup"')])
        scheme, _, token = given[0].strip().partition(b" ")
        # The scheme is case-insensitive (RFC 7235); the token is compared in constant time, so
        # how much of a guess matched does not show in how long the answer took.
        valid = hmac.compare_digest(token.strip(), self.expected_token)
        if scheme.lower() != b"bearer" or not valid:
            raise Refused(401, "a valid bearer token is required", close=True,
                          headers=[(b"www-authenticate", b'Bearer realm="neardup"')])

    async def answer_health(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        report = await loop.run_in_executor(self.health_thread, self.checker.health)
        await reply(send, 503 if report["status"] == "unavailable" else 200, report,
                    [(b"retry-after", b"5")] if report["status"] == "unavailable" else [])

    async def answer_search(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = client_key((scope.get("client") or ("unknown", 0))[0])
        held = [0]  # bytes of this upload counted in body_bytes
        try:
            distance = parse_distance(scope["query_string"], self.limits.max_query_distance)
            refuse_wrapped_bodies(scope["headers"])
            body = await self.read_body(scope, receive, client, held)
            if body is None:
                return  # the client left; nobody to answer
            await self.check_and_answer(body, distance, client, scope, send)
        finally:
            self._hold(client, held, -held[0])

    async def check_and_answer(self, body: bytes, distance: int | None, client: str,
                               scope: Scope, send: Send) -> None:
        """Decode and search a whole upload, within the limits on uploads checked at once."""
        if self.in_flight >= self.limits.max_in_flight:
            raise Refused(503, f"busy: {counted(self.in_flight, 'upload')} in flight; try again shortly",
                          retry_after=True, close=True)
        mine = self.in_flight_from.get(client, 0)
        if mine >= self.limits.max_in_flight_per_client:
            raise Refused(429, f"busy: {counted(mine, 'upload')} from this address in flight;"
                               " try again shortly", retry_after=True, close=True)
        # An address with uploads in flight already shares what the reserve leaves; the
        # reserve takes only first uploads, so a few addresses cannot hold every slot.
        if mine and self.in_flight >= self.limits.max_in_flight - self.limits.reserved_in_flight:
            raise Refused(503, f"busy: {self.in_flight} uploads in flight, the other"
                               f" {self.limits.max_in_flight - self.in_flight} kept for addresses"
                               " with none; try again shortly", retry_after=True, close=True)
        self.in_flight += 1
        self.in_flight_from[client] = mine + 1
        try:
            answer = None
            if (self.in_flight == 1 and self.checker.decode_budget.used == 0
                    and not self.checker.verifies and inline_decodable(body)):
                # Alone, a small upload is decoded right here: handing it to a thread and back
                # took more time than decoding a CALTECH photo. Not on a store with features:
                # verifying the matches (keypoints, the index, RANSAC) took 16 to 39 ms of the
                # loop, which every connection and /health waited for (a review). A larger one
                # stops at its header and goes to a thread, so the loop is never held more than
                # a few milliseconds; and with no decode memory in use it never waits for any.
                answer = self.check(body, distance, INLINE_MAX_PIXELS)
            if answer is None:
                answer = await asyncio.wrap_future(
                    self.decoders.submit(client, self.check, body, distance, None))
        finally:
            # The upload is checked: its slot is free before the answer is written. A client that
            # never reads its answers held its slots while the write waited, and 16 of them shut
            # every other client out (a hostile review); the write has its own deadline
            # (send_timeout, in the protocol below).
            self.in_flight -= 1
            left = self.in_flight_from[client] - 1
            if left:
                self.in_flight_from[client] = left
            else:
                del self.in_flight_from[client]
        assert answer is not None  # None only where at most INLINE_MAX_PIXELS were asked for
        status, record = answer
        if status != 200:
            self.log.warning("%s POST /search: %d %s", address(scope.get("client")), status,
                             record.get("error"))
        await reply(send, status, record, [(b"retry-after", b"1")] if status == 503 else [])

    def _hold(self, client: str, held: list[int], amount: int) -> None:
        """Count `amount` more (or, negative, fewer) bytes of one upload from `client`."""
        if not amount:
            return
        held[0] += amount
        self.body_bytes += amount
        mine = self.body_bytes_from.get(client, 0) + amount
        if mine:
            self.body_bytes_from[client] = mine
        else:
            del self.body_bytes_from[client]

    def check(self, body: bytes, distance: int | None,
              at_most_pixels: int | None) -> tuple[int, dict[str, Any]] | None:
        """The status and the record for one upload; None if over at_most_pixels."""
        try:
            record = self.checker.check_upload(body, "upload", distance,
                                               at_most_pixels=at_most_pixels)
        except NotHere:
            return None
        except DecodeTooLarge as error:
            return 413, {"query": "upload", "error": error.reason}
        except DecodeBusy as error:
            return 503, {"query": "upload", "error": error.reason}
        except StoreUnavailable as error:
            return 503, {"query": "upload", "error": str(error)}
        except StoreReadFailed as error:
            return 500, {"query": "upload", "error": str(error)}
        return (400 if "error" in record else 200), record

    async def read_body(self, scope: Scope, receive: Receive, client: str,
                        held: list[int]) -> bytes | None:
        """The whole body, each chunk counted in the memory all uploads hold as it arrives."""
        length = content_length(scope["headers"])
        if length > self.limits.max_upload_bytes:
            # Refused unread; closing the connection keeps the unread body from being taken
            # for the next request.
            raise Refused(413, f"upload of {length:,} bytes is over the limit of"
                               f" {self.limits.max_upload_bytes:,}", close=True)
        chunks: list[bytes] = []
        received = 0
        share = max(self.limits.max_upload_bytes, self.limits.max_body_bytes // 4)
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    received += len(chunk)
                    if received > length:  # the parser enforces the length; never trust it twice
                        raise Refused(400, "more body than its Content-Length", close=True)
                    if self.body_bytes + len(chunk) > self.limits.max_body_bytes:
                        raise Refused(503, f"busy: uploads hold {self.body_bytes:,} bytes of"
                                           " memory; try again shortly", retry_after=True,
                                      close=True)
                    if self.body_bytes_from.get(client, 0) + len(chunk) > share:
                        raise Refused(429, "busy: uploads from this address hold"
                                           f" {self.body_bytes_from[client]:,} bytes of memory;"
                                           " try again shortly", retry_after=True, close=True)
                    self._hold(client, held, len(chunk))
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise Refused(408, f"the upload did not arrive within {self.limits.body_timeout:g} s"
                               f" ({received:,} of {length:,} bytes)", close=True) from None
        if received < length:
            raise Refused(400, "the upload ended early", close=True)
        return b"".join(chunks)


# Uploads up to this many pixels and bytes may be decoded on the event loop itself (see
# answer_search): a few milliseconds at most. Most CALTECH-101 photos are under 64 KB (51 of
# 9,145 are over); phone photos are megabytes and go to a thread anyway.
INLINE_MAX_PIXELS = 1_000_000
INLINE_MAX_BYTES = 64 * 1024


def inline_decodable(body: bytes) -> bool:
    """Whether an upload may be decoded on the event loop (then only up to INLINE_MAX_PIXELS, as
    its header says once it is told its reduced size). Only a small JPEG, Huffman-coded
    sequential with every component in its first scan, and small at its full size: another
    kind's decode takes a pass per scan (up to jpeg.MAX_SCANS), and a reduced decode of a large
    one still reads all of it (a 7000 x 7000 arithmetic-coded upload held the loop, and /health,
    for 78 s). Other formats never: their cost follows their bytes, not their pixels (a 100 x 100
    PNG of 33 MB of empty chunks took 11.7 s, a BMP's run-length codes 13.6 s, a TIFF header of
    a million strips 7.9 s), and so does a JPEG's header, walked block by block (4-byte blocks:
    30 ms per 256 KB)."""
    if len(body) > INLINE_MAX_BYTES or not body.startswith(b"\xff\xd8"):
        return False
    frame = frame_header(body)
    return (frame is not None and not frame.needs_scan_count()
            and frame.width * frame.height <= INLINE_MAX_PIXELS)


def refuse_wrapped_bodies(headers: list[tuple[bytes, bytes]]) -> None:
    """A form upload (what an HTML form and `curl -F` send) or a compressed body is not the
    image's bytes: said as such (415), not as "not an image" after decoding what it is not."""
    for name, value in headers:
        value = value.strip().lower()
        if name == b"content-type" and value.startswith(b"multipart/"):
            raise Refused(415, "send the image's bytes as the body (curl --data-binary @FILE),"
                               " not a form (multipart/form-data)", close=True)
        if name == b"content-encoding" and value not in (b"", b"identity"):
            raise Refused(415, "send the image's bytes as they are: Content-Encoding"
                               f" {value.decode('latin-1')[:40]} is not accepted", close=True)


def content_length(headers: list[tuple[bytes, bytes]]) -> int:
    values = [value for name, value in headers if name == b"content-length"]
    if not values:
        raise Refused(411, "send the image with a Content-Length", close=True)
    text = values[0].strip()
    # The parser already refused most bad lengths; this keeps a 5,000-digit one from ever
    # becoming a number, and a byte like 0xB2 (which str.isdigit() accepts) from int().
    if len(values) > 1 or not text or len(text) > 18 or not all(48 <= b <= 57 for b in text):
        raise Refused(400, "the Content-Length is not a number", close=True)
    return int(text)


def parse_distance(query_string: bytes, cap: int) -> int | None:
    try:
        # Blank values kept: `?max_distance=` was answered with the default, while every other
        # value that is not a number got 400 (a hostile review).
        parameters = parse_qs(query_string.decode("latin-1"), keep_blank_values=True,
                              strict_parsing=False)
    except ValueError:
        parameters = {}
    values = parameters.get("max_distance")
    if not values:
        # A misspelt max_distance (`?max_dist=0`, `?MAX_DISTANCE=2`) was answered at the default
        # distance without a word (a hostile review); other parameters (a cache-buster) are
        # left alone.
        for name in parameters:
            if "dist" in name.lower():
                raise Refused(400, f"unknown parameter {log_safe(name)}: the distance is"
                                   " max_distance", close=True)
        return None
    text = values[-1]
    # The length first: int() of a 5,000-digit string raises (Python's conversion limit).
    if not (text.isascii() and text.isdigit()) or len(text) > 4 or int(text) > cap:
        raise Refused(400, f"max_distance must be a whole number from 0 to {cap}", close=True)
    return int(text)


async def reply(send: Send, status: int, payload: dict[str, Any],
                headers: list[tuple[bytes, bytes]] | None = None, *, close: bool = False) -> None:
    body = (json.dumps(payload) + "\n").encode("ascii")
    all_headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode("ascii"))]
    all_headers += headers or []
    if close:
        all_headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


def log_safe(text: str) -> str:
    """A client's path in a log line: at most 100 characters, control characters escaped."""
    shown = text[:100].encode("unicode_escape").decode("ascii")
    return shown + ("..." if len(text) > 100 else "")


def canned(status: str, reason: str, extra: str = "") -> bytes:
    """A whole answer written before any request was parsed (a connection refused or timed out)."""
    body = json.dumps({"error": reason}) + "\n"
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n{body}").encode()


# Request line and headers together; a browser sends under 8 KB, and uvicorn's h11 default is 16 KB.
MAX_HEADER_BYTES = 64 * 1024
# Requests a connection may send ahead of the answers (HTTP pipelining). uvicorn parses every
# request that has arrived and queues it, and reads on after each answer: one connection sending
# a million GET /health without reading the answers took the server from 50 MB to 2.5 GB.
MAX_PIPELINED = 16


def guarded_protocol(base: type, limits: ServiceLimits, log: logging.Logger) -> type:
    """uvicorn's HTTP protocol with a header deadline and a connection cap added.

    The deadline runs from the connection opening, and again from each answer, until the next
    request's headers are complete; uvicorn's own keep-alive timeout stops as soon as one byte
    arrives, so without this a client trickling a header byte at a time was never closed.
    """
    too_many = canned("503 Service Unavailable", "too many connections; try again shortly",
                      "retry-after: 1\r\n")
    too_many_here = canned("429 Too Many Requests", "too many connections from this address;"
                           " try again shortly", "retry-after: 1\r\n")
    open_from: dict[str, int] = {}  # connections open per client address
    # Connections waiting for a request that have sent no byte of it (just opened, or idle
    # between requests), per address, oldest first: at the cap one is closed to let a new one in.
    silent: dict[str, dict[Any, None]] = {}
    too_large = canned("431 Request Header Fields Too Large",
                       f"request headers over {MAX_HEADER_BYTES:,} bytes")
    too_slow = canned("408 Request Timeout",
                      f"no complete request within {limits.header_timeout:g} s")
    malformed = canned("400 Bad Request", "malformed HTTP request")
    ended_early = canned("400 Bad Request", "the upload ended early")
    request_ended_early = canned("400 Bad Request", "the request ended before its headers did")

    class GuardedHttpProtocol(base):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None
        _bytes_seen = False
        _refused = False
        _header_bytes = 0
        _ahead_too_far = False  # more than MAX_PIPELINED requests ahead of their answers
        _running: Any = None  # the request being answered (self.cycle is the last one read)
        _counted_as: str | None = None  # the address this connection is counted under
        _half_closed = False  # the client has sent all it will (shut its write side)
        _after_answers: bytes | None = None  # a refusal to send once those read are answered
        _send_deadline: asyncio.TimerHandle | None = None  # armed while writing is paused
        _lingering: tuple[asyncio.TimerHandle, ...] = ()  # _close_after's (idle, at most)
        _heard_at = 0.0  # when the client last sent something, while lingering

        _after_upgrade = False  # a request asked to upgrade: no further request is parsed
        _upgrade_body_left = 0  # bytes of that request's body still to come

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.parser = ParserIgnoringUpgrades(self.parser, self._upgrade_ignored)

        def _upgrade_ignored(self, rest: bytes) -> None:
            """A request asking to switch protocols (curl --http2's `Upgrade: h2c`, a
            WebSocket's), parsed up to the end of its headers: answered as plain HTTP/1.1, as
            a server may (RFC 9110, 7.8). The parser takes whatever follows for the other
            protocol's, so the request's body (Content-Length bytes) is handed on here, and the
            connection closed after the answer: a POST with curl --http2 got 400 "the upload
            ended early", its body dropped (a hostile review)."""
            self._unsupported_upgrade_warning()
            self._after_upgrade = True
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                return
            cycle.keep_alive = False
            try:
                length = content_length(cycle.scope["headers"])
            except Refused:
                return  # no usable length: the application refuses the request itself
            if length > 0:
                cycle.more_body = True
                self._upgrade_body_left = length
                self._upgrade_body(rest)

        def _upgrade_body(self, data: bytes) -> None:
            """Bytes after an upgrade request's headers: its body, then nothing (dropped)."""
            if self._upgrade_body_left <= 0:
                return
            part = data[: self._upgrade_body_left]
            self._upgrade_body_left -= len(part)
            if part:
                self.on_body(part)
            if self._upgrade_body_left == 0:
                self.on_message_complete()

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            self._running = cycle
            super()._start_asgi_task(cycle, app)

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            host = client_key(self.client[0]) if self.client else "unknown"
            if open_from.get(host, 0) >= limits.max_connections_per_client:
                log.warning("%s: 429 refused a connection: %d open from this address is the"
                            " limit", address(self.client), limits.max_connections_per_client)
                self._refuse(too_many_here)
                return
            if len(self.connections) > limits.max_connections:
                if not silent:
                    log.warning("%s: 503 refused a connection: %d open is the limit",
                                address(self.client), limits.max_connections)
                    self._refuse(too_many)
                    return
                # Four addresses of 250 silent sockets, reopened as soon as the header deadline
                # closed them, kept every other client out (a hostile review): of the address
                # holding the most connections, the one that has waited longest without sending
                # a byte makes room (a client with one idle keep-alive connection keeps it).
                most = max(silent, key=lambda host: open_from.get(host, 0))
                next(iter(silent[most]))._make_room()
            open_from[host] = open_from.get(host, 0) + 1
            self._counted_as = host
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._refused or self._ahead_too_far:
                self._heard_at = self.loop.time()  # a lingering close waits while it comes
                return  # answered already; what the client still sends is not read
            self._bytes_seen = True
            self._not_silent()
            if self._after_upgrade:
                self._upgrade_body(data)
                return
            if self._deadline is not None:  # still waiting for this request's headers
                # The parser keeps every header byte until the headers end: bounded here, so a
                # client cannot hold megabytes per connection within the header deadline.
                end = data.find(b"\r\n\r\n")  # body bytes in the same read do not count
                self._header_bytes += len(data) if end < 0 else end
                if self._header_bytes > MAX_HEADER_BYTES:
                    log.warning("%s: 431 closed: request headers over %d bytes",
                                address(self.client), MAX_HEADER_BYTES)
                    self._refuse(too_large)
                    return
            super().data_received(data)

        def _refuse(self, answer: bytes) -> None:
            """Answer and close. Closing with the client's request unread would reset the
            connection and lose the answer, so the write side is shut first and the socket
            closed a moment later.

            A fixed moment, not _close_after's lingering close, which waits for the client to
            stop sending: most refusals here are of a flood (too many connections, headers too
            slow or too large), and holding each refused socket while its client keeps sending
            would hand a flood the very descriptors the limits keep for other clients."""
            self._refused = True
            self._disarm()
            self._not_silent()
            # A request being answered (the parser refused what came after it) must not write
            # after this answer: uvicorn then raised "Cannot call write() after write_eof()" and
            # logged an exception in the application for something a client did.
            for cycle in (self._running, self.cycle, *(queued for queued, _ in self.pipeline)):
                if cycle is not None and not cycle.response_complete:
                    cycle.disconnected = True
                    cycle.message_event.set()
            self.transport.write(answer)
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.loop.call_later(1.0, self.transport.close)
            else:
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            # uvicorn's own answer to what its parser rejects is plain text, and its log line
            # (left out by UvicornsBadRequestLine) does not say who sent it.
            log.warning("%s: 400 closed: malformed HTTP request", address(self.client))
            if self.cycle is not None and not self.cycle.more_body and (
                    not self.cycle.response_complete or self.pipeline):
                # Requests read whole before it are answered first, in order, and the 400
                # after them: written at once, it took the place of the first one's answer.
                self._refused = True
                self._disarm()
                self.flow.pause_reading()
                self._after_answers = malformed
                return
            self._refuse(malformed)

        def on_headers_complete(self) -> None:
            self._disarm()
            if self._ahead_too_far:
                return  # the rest of what was read in one go: not queued
            if len(self.pipeline) >= MAX_PIPELINED:
                # Not queued: those queued are answered, then the connection is closed. A client
                # may send the rest again on a new one, as after any keep-alive connection closes.
                self._ahead_too_far = True
                self.flow.pause_reading()
                log.warning("%s: more than %d requests sent ahead of their answers; the"
                            " connection is closed once those are answered",
                            address(self.client), MAX_PIPELINED)
                return
            super().on_headers_complete()
            # The request's answer closes the connection through this (see _close_after).
            cycle = self.cycle
            cycle.transport = ClosesAfterTheBody(self.transport, lambda: self._close_after(cycle))

        def _close_after(self, answered: Any) -> None:
            """Close once `answered` (a request answered with "connection: close") is done with.

            A refusal sent while the request's body is still arriving (413 for an upload over
            the limit, 401, 503 busy) used to close at once; the kernel answers the bytes that
            still arrive on a closed socket with a reset, and a client that sends the whole
            body before it reads (Python's http.client, requests) got "connection reset"
            instead of the answer (an upload of 8 MB against a limit of 200 KB). Such a
            connection is half-closed instead, and what the client still sends is read and
            dropped until it stops sending (end of its stream, or LINGER_IDLE seconds without
            a byte), or for the body deadline at most, as web servers do ("lingering close").
            """
            if (not answered.more_body or self.transport.is_closing()
                    or not self.transport.can_write_eof()):
                self.transport.close()
                return
            self._refused = True  # what arrives from now on is dropped (data_received)
            self._disarm()
            self._not_silent()
            self.transport.write_eof()
            self.flow.resume_reading()
            self._heard_at = self.loop.time()
            self._lingering = (self.loop.call_later(LINGER_IDLE, self._linger_idle),
                               self.loop.call_later(limits.body_timeout, self.transport.close))

        def _linger_idle(self) -> None:
            quiet = self.loop.time() - self._heard_at
            if quiet >= LINGER_IDLE:
                self.transport.close()
            elif self._lingering:
                self._lingering = (self.loop.call_later(LINGER_IDLE - quiet, self._linger_idle),
                                   *self._lingering[1:])

        def _stop_lingering(self) -> None:
            for timer in self._lingering:
                timer.cancel()
            self._lingering = ()

        def on_body(self, body: bytes) -> None:
            if not self._ahead_too_far:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._ahead_too_far:
                super().on_message_complete()

        def _unsupported_upgrade_warning(self) -> None:
            # uvicorn logs two lines of its own for an Upgrade header (one advising to install a
            # WebSocket library) without saying who sent it; the request is answered as plain
            # HTTP either way.
            log.warning("%s: an Upgrade request, answered as plain HTTP", address(self.client))

        def on_response_complete(self) -> None:
            queued = bool(self.pipeline)
            super().on_response_complete()  # starts the next queued request; reads on
            if self._after_answers is not None:
                self.flow.pause_reading()
                if not queued:
                    answer, self._after_answers = self._after_answers, None
                    self._refuse(answer)
                return
            if self._ahead_too_far or self._half_closed:
                self.flow.pause_reading()
                if not queued:  # that was the last one queued
                    self.transport.close()  # what was written still goes out first
                return
            # The next request's headers may have arrived already (pipelined): then its body,
            # not its headers, is what comes next, under the body deadline.
            if not self.transport.is_closing() and (
                    self.cycle is None or self.cycle.response_complete):
                self._bytes_seen = False
                self._arm()

        def eof_received(self) -> bool | None:
            """The client shut its write side (`nc -N`, some HTTP/1.0 clients) and waits for the
            answer: requests it sent whole are answered, then the connection is closed, and one
            whose body stopped short is told so (400). asyncio's default, and uvicorn's, closes
            at once: such a client got no answer at all."""
            if self._refused:
                return None
            if self.cycle is None or self.cycle.response_complete:
                if not self._bytes_seen:
                    return None  # nothing to answer: closed
                # Part of a request's headers, and no more to come.
                log.warning("%s: 400 closed: the request ended early", address(self.client))
                self._refuse(request_ended_early)
                return True
            if self.cycle.more_body:
                log.warning("%s: 400 closed: the upload ended early", address(self.client))
                self._refuse(ended_early)
            else:
                self._half_closed = True
                self._disarm()
            return True  # keep the write side open for the answers

        def pause_writing(self) -> None:
            """The client is not taking its answers in (the transport's buffer is full): it
            gets send_timeout to start again. Without this an answer waited for ever, and with
            it the request and its connection: a client that sent requests and never read held
            them past every other deadline (a hostile review)."""
            super().pause_writing()
            if self._send_deadline is None:
                self._send_deadline = self.loop.call_later(limits.send_timeout, self._not_reading)

        def resume_writing(self) -> None:
            super().resume_writing()
            self._stop_send_deadline()

        def _stop_send_deadline(self) -> None:
            if self._send_deadline is not None:
                self._send_deadline.cancel()
                self._send_deadline = None

        def _not_reading(self) -> None:
            # Closing (uvicorn's keep-alive timer, or an answer with "connection: close") waits
            # for the buffer to drain, which it never does: aborted either way.
            self._send_deadline = None
            log.warning("%s: closed: the client took no answer in for %g s",
                        address(self.client), limits.send_timeout)
            self.transport.abort()  # what is buffered is dropped; connection_lost follows

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._stop_lingering()
            self._not_silent()
            self._stop_send_deadline()
            if self._counted_as is not None:
                left = open_from[self._counted_as] - 1
                if left:
                    open_from[self._counted_as] = left
                else:
                    del open_from[self._counted_as]
                self._counted_as = None
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_bytes = 0
            self._deadline = self.loop.call_later(limits.header_timeout, self._headers_too_slow)
            if not self._bytes_seen and self._counted_as is not None:
                self._not_silent()
                silent.setdefault(self._counted_as, {})[self] = None  # the newest

        def _not_silent(self) -> None:
            host = self._counted_as or ""
            mine = silent.get(host)
            if mine is not None and self in mine:
                del mine[self]
                if not mine:
                    del silent[host]

        def _make_room(self) -> None:
            """Closed, having sent nothing, for a new connection at the cap (not logged, like
            a silent connection closed at the header deadline)."""
            self._disarm()
            self._not_silent()
            self._refused = True
            self.transport.close()

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _headers_too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered (pipelined); the body deadline covers it
            if self._bytes_seen:  # a connection that never sent a byte is not worth a line
                log.warning("%s: 408 closed: no complete request within %g s",
                            address(self.client), limits.header_timeout)
                self._refuse(too_slow)
            else:
                self.transport.close()

    return GuardedHttpProtocol


# A lingering close (GuardedHttpProtocol._close_after) ends once the client has sent nothing for
# this long: it has stopped sending and waits for the answer, or has gone.
LINGER_IDLE = 2.0


class ParserIgnoringUpgrades:
    """httptools' request parser, which stops at a request asking to switch protocols and
    raises HttpParserUpgrade with where the other protocol's bytes begin: those bytes are handed
    to `upgraded` instead (see GuardedHttpProtocol._upgrade_ignored)."""

    def __init__(self, parser: Any, upgraded: Callable[[bytes], None]) -> None:
        self._parser = parser
        self._upgraded = upgraded

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)

    def feed_data(self, data: bytes) -> None:
        import httptools  # the serve extra's, as uvicorn's protocol is

        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0]:])


class ClosesAfterTheBody:
    """A connection's transport as one request's answer sees it: closing it asks the connection
    (`close`), which waits for the rest of the request's body when it is still arriving."""

    def __init__(self, transport: asyncio.Transport, close: Callable[[], None]) -> None:
        self._transport = transport
        self._close = close

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._close()


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


def client_key(host: str) -> str:
    """The client a per-address share is counted under: an IPv4 address, or an IPv6 /64 (one
    client is given a whole /64, so keyed by the full address it could take every share from
    addresses of its own; a hostile review). An IPv6 address that carries an IPv4 client's
    address is that IPv4 client: IPv4-mapped, NAT64 (64:ff9b::/96: every IPv4 client behind one
    NAT64 gateway shared its /64), 6to4 (a 6to4 host holds a whole /48 of /64s) and Teredo."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # without a link-local zone (%eth0)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        carried = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if carried is None and ip in NAT64_PREFIX:
            carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if carried is not None:
            return str(carried)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


# The well-known NAT64 prefix (RFC 6052): the IPv4 address is the last 32 bits.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


def address(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"


class OneLineFormatter(logging.Formatter):
    """`search.py: message` (the command as typed); an exception attached by asyncio becomes its
    type and message."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{command('search.py')}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            line += f" ({type(error).__name__}: {error})"
        return line


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
    relay = threading.Thread(target=_relay_library_lines, args=(read_end,), daemon=True,
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
        os.dup2(real, 2)  # the pipe's last writer gone: the relay reads its end and stops
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


def _relay_library_lines(read_end: int) -> None:
    log = logging.getLogger("neardup.service")
    with open(read_end, "rb") as pipe:
        while line := pipe.readline(_LIBRARY_LINE):
            text = line.decode("utf-8", "replace").strip()
            if text:
                log.warning("an image library said: %s", log_safe(text))


def usable_connections(wanted: int) -> int:
    """The connection cap, kept below the open-file limit (raised to its hard limit if needed).

    Past the file limit accept() fails and asyncio's accept loop spins; below it every extra
    connection is accepted, answered 503 and closed.
    """
    reserve = 64  # the store, its WAL, the listening socket, logs, Pillow's files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted + reserve:
        target = wanted + reserve if hard == resource.RLIM_INFINITY else min(hard, wanted + reserve)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - reserve))


def serve(
    checker: Checker,
    host: str,
    port: int,
    limits: ServiceLimits | None = None,
    *,
    ready: Callable[[str], None] = lambda line: None,
) -> None:
    """Serve until SIGTERM or Ctrl-C: stop accepting, close idle connections, finish requests."""
    try:
        import uvicorn
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError as error:
        raise NeardupError(f"--serve needs uvicorn and httptools: {install_hint('serve')}"
                           ) from error
    # Before the log is made: its handler writes to the real stderr, the relay's lines to it.
    with library_output_logged():
        _serve(uvicorn, HttpToolsProtocol, checker, host, port, limits or ServiceLimits(), ready)


def _serve(uvicorn: Any, HttpToolsProtocol: Any, checker: Checker, host: str, port: int,  # noqa: N803
           limits: ServiceLimits, ready: Callable[[str], None]) -> None:
    log = service_logger()
    cap = usable_connections(limits.max_connections)
    if cap < limits.max_connections:
        log.warning("at most %d connections: the open-file limit allows no more", cap)
        limits = ServiceLimits(**{**limits.__dict__, "max_connections": cap})
    listener = listen(host, port, limits.backlog)
    app = CheckerApp(checker, limits, log)
    config = uvicorn.Config(
        app, http=guarded_protocol(HttpToolsProtocol, limits, log), loop="asyncio",
        lifespan="off", ws="none", log_config=None, access_log=False, proxy_headers=False,
        server_header=False, timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]
        timeout_graceful_shutdown=limits.shutdown_timeout,  # type: ignore[arg-type]
        backlog=limits.backlog)
    server = uvicorn.Server(config)

    async def run() -> None:
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            bound_host, bound_port = listener.getsockname()[:2]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host  # an IPv6 address
            ready(f"serving on http://{shown}:{bound_port}")
        await serving

    # uvicorn catches SIGTERM and SIGINT while it serves, shuts down gracefully, then raises the
    # signal again for the handler that was there before: this one, so the exit stays 0.
    previous = {sig: signal.signal(sig, lambda _sig, _frame: None)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    # The event loop and /health's thread must get the GIL back promptly while decode threads
    # run Python and numpy code: 1 ms instead of 5 between forced switches.
    sys.setswitchinterval(0.001)
    try:
        asyncio.run(run())
    finally:
        app.close()
        listener.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """The listening socket, bound before serving so port 0 can be reported."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio disables Nagle's algorithm only on sockets that say
    # so, and with it on every answer waited for the client's delayed ACK (45 ms against 1.8).
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(backlog)
        listener.set_inheritable(True)
    except OSError:
        listener.close()
        raise
    return listener
