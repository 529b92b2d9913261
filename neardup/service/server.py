"""search.py --serve: the checker over HTTP, for clients that may be hostile.

    POST /search[?max_distance=N]   body: the image bytes   -> 200 the result record (results.py)
    GET  /health                    -> 200 {"status": "ok" | "degraded", ...}, 503 "unavailable"

Every answer is JSON. Statuses: 400 not an image (or a bad request), 401 no or wrong token,
404/405 another path or method, 408 the body did not arrive in time, 411 no Content-Length, 413 the
body or its decoded size over the limit, 500 the store is damaged where this query reads it, 503
busy or the store unavailable (with Retry-After).

HTTP itself is uvicorn's (an optional dependency: the `serve` extra): its parser, keep-alive
timeout and graceful shutdown. What uvicorn leaves to the application or does not have is added
around it: protocol.py guards each connection (a deadline for the request headers, since uvicorn
times out only idle keep-alive connections and a client that sent a byte every few seconds was
kept forever; caps on connections and on pipelined requests), http.py reads requests and writes
answers, logs.py keeps the log to one line per refused request. This module is the application
(a body deadline, a cap on requests in flight, the bearer token) and the start-up. Uploads are
checked on a small pool of threads (fairness.py), each decoding in a worker process of its own
(decoding.py: an upload that crashes a decoder fails alone), so the event loop keeps answering
/health while uploads are decoded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import ipaddress
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from ..core.results import counted
from ..errors import NeardupError, install_hint
from .checker import Checker, StoreReadFailed, StoreUnavailable
from .decoding import DecoderUnavailable
from .fairness import FairThreads
from .http import (
    ANSWERED_BY_CONNECTION,
    CLIENT_GONE,
    Receive,
    Refused,
    Scope,
    Send,
    address,
    client_key,
    content_length,
    log_safe,
    parse_distance,
    refuse_wrapped_bodies,
    reply,
)
from .limits import DecodeBusy, DecodeTooLarge, large_blocks_returned
from .logs import library_output_logged, service_logger
from .protocol import MAX_LINGERING_REFUSALS, guarded_protocol
from .settings import ServiceLimits

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


# The methods each path answers.
ALLOWED = {"/health": ["GET", "HEAD", "OPTIONS"], "/search": ["POST", "OPTIONS"]}


def check_protocol(scope: Scope) -> None:
    """HTTP as RFCs 9110 and 9112 ask of what uvicorn's parser lets through (reviews): a request
    line of another version (`HTTP/2.0`) was answered as HTTP/1.1, an expectation other than
    100-continue (`Expect: 200-ok`) as if not asked, and an HTTP/1.1 request without a Host
    header, or with two, as if it had one."""
    version = scope.get("http_version", "1.1")
    if version not in ("1.0", "1.1"):
        raise Refused(505, f"HTTP/{log_safe(version)} is not served: use HTTP/1.1", close=True)
    hosts = sum(name == b"host" for name, _ in scope["headers"])
    # HTTP/1.0 had no Host header; in HTTP/1.1 a request names exactly one (RFC 9112, 3.2).
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        raise Refused(400, "an HTTP/1.1 request needs exactly one Host header"
                           f" ({'none' if hosts == 0 else hosts} sent)", close=True)
    if any(name == b"expect" and value.strip().lower() not in (b"100-continue", b"")
           for name, value in scope["headers"]):  # an empty one asks nothing
        raise Refused(417, "the only expectation served is Expect: 100-continue", close=True)


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
            check_protocol(scope)
            self.check_token(scope)
            if path == "*":  # the server itself: only OPTIONS may ask (RFC 9112, 3.2.4)
                if method != "OPTIONS":
                    raise Refused(400, f"{log_safe(method)} * is not a request; use OPTIONS *",
                                  close=True)
                allowed = ["GET", "HEAD", "POST", "OPTIONS"]
            else:
                allowed = ALLOWED.get(path)
            if allowed is None:
                raise Refused(404, "not found; use POST /search or GET /health", close=True)
            allow = [(b"allow", ", ".join(allowed).encode())]
            if method == "OPTIONS":  # what may be asked of the path, or of the server
                # Closed after: a body sent with it is not read (nor kept for a next request).
                await reply(send, 200, {"allow": allowed}, allow, close=True)
            elif method not in allowed:
                raise Refused(405, "use POST /search with the image as the body"
                                   if path == "/search" else f"use GET {path}", close=True,
                              headers=allow)
            elif path == "/health":
                await self.answer_health(send)
            else:
                await self.answer_search(scope, receive, send)
        except Exception as error:  # noqa: BLE001 - our bug must not become uvicorn's text/plain 500
            answered = scope.get(ANSWERED_BY_CONNECTION)
            if isinstance(error, Refused) and answered is not None and answered():
                return  # the connection refused it first, and said so in the log
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
            answer = await asyncio.wrap_future(self.decoders.submit(
                client, self._check_if_wanted, body, distance, scope.get(CLIENT_GONE)))
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
        if answer is None:
            self.log.warning("%s POST /search: the client left before its upload was decoded;"
                             " not decoded", address(scope.get("client")))
            return
        status, record = answer
        if status != 200:
            # A 413 here is the decode budget's: what the operator can do about it goes to the
            # log, not to the client (a review: 24-megapixel WebPs are refused by default on a
            # store with features).
            self.log.warning("%s POST /search: %d %s%s", address(scope.get("client")), status,
                             record.get("error"),
                             "; --decode-memory-mb raises the limit" if status == 413 else "")
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

    def _check_if_wanted(self, body: bytes, distance: int | None,
                         gone: Callable[[], bool] | None) -> tuple[int, dict[str, Any]] | None:
        """check(), unless the client has gone while the upload waited for a decode thread
        (None): a client sending uploads and closing at once had each decoded for nobody (a
        hostile review). One being decoded when its client goes runs to its end."""
        if gone is not None and gone():
            return None
        return self.check(body, distance)

    def check(self, body: bytes, distance: int | None) -> tuple[int, dict[str, Any]]:
        """The status and the record for one upload."""
        try:
            record = self.checker.check_upload(body, "upload", distance)
        except DecodeTooLarge as error:
            return 413, {"query": "upload", "error": error.reason}
        except DecodeBusy as error:
            return 503, {"query": "upload", "error": error.reason}
        except StoreUnavailable as error:
            return 503, {"query": "upload", "error": str(error)}
        except DecoderUnavailable as error:
            # The why is the operator's (the log's); the client is told to come back.
            self.log.warning("%s", error)
            return 503, {"query": "upload", "error": "busy: no decoding worker process could be"
                                                     " started; try again shortly"}
        except StoreReadFailed as error:
            return 500, {"query": "upload", "error": str(error)}
        return (400 if "error" in record else 200), record

    async def read_body(self, scope: Scope, receive: Receive, client: str,
                        held: list[int]) -> bytearray | None:
        """The whole body, each chunk counted in the memory all uploads hold as it arrives."""
        length = content_length(scope["headers"])
        if length > self.limits.max_upload_bytes:
            # Refused unread; closing the connection keeps the unread body from being taken
            # for the next request.
            raise Refused(413, f"upload of {length:,} bytes is over the limit of"
                               f" {self.limits.max_upload_bytes:,}", close=True)
        # One buffer grown as chunks arrive (not allocated at the announced size: a body
        # trickling in holds what it has sent); the chunks kept and joined at the end held each
        # body twice for a moment. Returned as it is (Pillow, the worker pipes and the hash take
        # any bytes-like object): a copy to bytes would double it again. (What stayed with the
        # server after large uploads was the allocator's: limits.large_blocks_returned.)
        body = bytearray()
        received = 0
        share = max(self.limits.max_upload_bytes, self.limits.max_body_bytes // 4)
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        # Said, as an upload cut short by a plain close is (400 "ended
                        # early", by the connection, which then says it alone): a reset
                        # mid-upload left no line at all (a review).
                        answered = scope.get(ANSWERED_BY_CONNECTION)
                        if answered is not None and answered():
                            return None
                        self.log.warning("%s POST /search: the client left during its upload"
                                         " (%s of %s bytes); not answered",
                                         address(scope.get("client")), f"{received:,}",
                                         f"{length:,}")
                        return None
                    chunk = message.get("body", b"")
                    if received + len(chunk) > length:  # the parser enforces it; trusted once
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
                    body += chunk
                    received += len(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise Refused(408, f"the upload did not arrive within {self.limits.body_timeout:g} s"
                               f" ({received:,} of {length:,} bytes)", close=True) from None
        if received < length:
            raise Refused(400, "the upload ended early", close=True)
        return body


# Connections asyncio accepts in one go when the listening socket is ready: uvicorn's backlog,
# which asyncio also uses as that count. At 1,024, a flood of new connections had up to 1,024
# descriptors open before the connection caps saw any of them, and accept() failed with EMFILE
# (then paused for a second, healthy clients waiting) under an open-file limit of 1,024.
ACCEPT_BATCH = 8


# Descriptors kept free besides those open when the server starts and those the connections
# take: refusals waiting to close, a batch accepted before the caps see it, and some margin
# (a decode worker replaced, the store's files reopened, Pillow's files).
SPARE_DESCRIPTORS = MAX_LINGERING_REFUSALS + 4 * ACCEPT_BATCH + 16


def open_descriptors() -> int | None:
    """How many file descriptors this process has open, where the system says (Linux, macOS)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder)) - 1  # less the one listdir opened
        except OSError:
            continue
    return None


def usable_connections(wanted: int, in_use: int | None = None) -> int:
    """The connection cap, kept below the open-file limit (raised to its hard limit if needed).

    Past the file limit accept() fails and asyncio stops accepting for a second; below it every
    extra connection is accepted, answered 503 and closed. `in_use`: the descriptors open before
    any connection (the store, the listening socket, the decode workers' pipes: 28 with two
    workers, more with more cores); 64 if unknown. A fixed reserve of 64 let a flood from four
    addresses reach 252 of 256 descriptors, and accept() fail.
    """
    reserve = (64 if in_use is None else in_use) + SPARE_DESCRIPTORS
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
    large_blocks_returned()
    listener = listen(host, port, limits.backlog)
    # Inside library_output_logged: the workers' decoders write to stderr too, and it is logged.
    checker.start_decoding(limits.decode_threads)
    cap = usable_connections(limits.max_connections, open_descriptors())
    if cap < limits.max_connections:
        log.warning("at most %d connections: the open-file limit allows no more", cap)
        limits = ServiceLimits(**{**limits.__dict__, "max_connections": cap})
    app = CheckerApp(checker, limits, log)
    config = uvicorn.Config(
        app, http=guarded_protocol(HttpToolsProtocol, limits, log), loop="asyncio",
        lifespan="off", ws="none", log_config=None, access_log=False, proxy_headers=False,
        server_header=False, timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]
        timeout_graceful_shutdown=limits.shutdown_timeout,  # type: ignore[arg-type]
        backlog=ACCEPT_BATCH)
    server = uvicorn.Server(config)

    async def run() -> None:
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            # asyncio listened with ACCEPT_BATCH, which is also how many it accepts at a time;
            # the kernel's queue of connections waiting to be accepted is limits.backlog again.
            listener.listen(limits.backlog)
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
