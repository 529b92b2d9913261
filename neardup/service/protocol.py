"""uvicorn's HTTP protocol, guarded against clients that may be hostile: a deadline for the
request headers, caps on connections (in all and per address) and on requests pipelined ahead of
their answers, a deadline for answers the client does not take in, lingering closes, and Upgrade
requests answered as plain HTTP. The application (server.CheckerApp) sees only requests that
passed these."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .http import ANSWERED_BY_CONNECTION, CLIENT_GONE, Refused, address, canned, client_key, content_length

if TYPE_CHECKING:
    from .settings import ServiceLimits

# Request line and headers together; a browser sends under 8 KB, and uvicorn's h11 default is 16 KB.
MAX_HEADER_BYTES = 64 * 1024
# Requests a connection may send ahead of the answers (HTTP pipelining). uvicorn parses every
# request that has arrived and queues it, and reads on after each answer: one connection sending
# a million GET /health without reading the answers took the server from 50 MB to 2.5 GB.
MAX_PIPELINED = 16
# Connections refused on arrival (over the caps) whose answer waits a moment before the close
# (_refuse). Past this many, one more is answered and closed at once: a flood of new connections
# (2,900 in 5 s from four threads) held one descriptor each for that moment, on top of the
# capped connections, until accept() failed with EMFILE and healthy clients waited seconds.
# usable_connections (server.py) keeps descriptors free for them.
MAX_LINGERING_REFUSALS = 16


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
    # Connections whose request's headers have begun but not ended, per address, oldest first:
    # at the cap, with no silent one to close, one of these is refused to let a new one in.
    unfinished: dict[str, dict[Any, None]] = {}
    lingering_refusals: set[Any] = set()  # refused on arrival, waiting to be closed
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
            if self.client is None:
                # uvicorn asks the socket, which no longer knows its peer once the client has
                # reset the connection; asyncio kept the address accept() gave. Without it such
                # a client was "of unknown address" in the log and shared one per-address limit
                # with every other such client (a review).
                peer = transport.get_extra_info("peername")
                if isinstance(peer, tuple) and len(peer) >= 2:
                    self.client = (str(peer[0]), int(peer[1]))
            host = client_key(self.client[0]) if self.client else "unknown"
            if open_from.get(host, 0) >= limits.max_connections_per_client:
                log.warning("%s: 429 refused a connection: %d open from this address is the"
                            " limit", address(self.client), limits.max_connections_per_client)
                self._refuse_on_arrival(too_many_here)
                return
            if len(self.connections) > limits.max_connections:
                if not silent and not unfinished:
                    log.warning("%s: 503 refused a connection: %d open is the limit",
                                address(self.client), limits.max_connections)
                    self._refuse_on_arrival(too_many)
                    return
                # Four addresses of 250 silent sockets, reopened as soon as the header deadline
                # closed them, kept every other client out (a hostile review): of the address
                # holding the most connections, the one that has waited longest without sending
                # a byte makes room (a client with one idle keep-alive connection keeps it).
                # Failing that, the one that has waited longest with its headers unfinished: a
                # later review's 250 sockets per address that each sent one byte kept every
                # other client, /health included, out as the silent ones had.
                waiting = silent or unfinished
                most = max(waiting, key=lambda host: open_from.get(host, 0))
                next(iter(waiting[most]))._make_room()
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
                if self._counted_as is not None:
                    unfinished.setdefault(self._counted_as, {}).setdefault(self)
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

        def _refuse(self, answer: bytes, *, wait: bool = True) -> None:
            """Answer and close. Closing with the client's request unread would reset the
            connection and lose the answer, so the write side is shut first and the socket
            closed a moment later (at once when not `wait`: the client may then get a reset).

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
            if wait and self.transport.can_write_eof() and self._half_close():
                self.loop.call_later(1.0, self.transport.close)
            else:
                self.transport.close()

        def _refuse_on_arrival(self, answer: bytes) -> None:
            """_refuse for a connection over the caps: with MAX_LINGERING_REFUSALS of them
            waiting already, answered and closed at once, a flood's lot: the descriptor is
            free."""
            wait = len(lingering_refusals) < MAX_LINGERING_REFUSALS
            if wait:
                lingering_refusals.add(self)
            self._refuse(answer, wait=wait)

        def send_400_response(self, msg: str) -> None:
            # uvicorn's own answer to what its parser rejects is plain text, and its log line
            # (left out by UvicornsBadRequestLine) does not say who sent it.
            log.warning("%s: 400 closed: malformed HTTP request", address(self.client))
            current = self.cycle
            if current is not None and current.more_body:
                # The parser refused this request's body (a chunk size of 20 hex digits): it is
                # never answered, its body cannot be read. Queued behind others, it is dropped
                # from the queue, so that those are answered first and the 400 after them (a
                # review: answered at once, the 400 took their place).
                for queued in list(self.pipeline):
                    if queued[0] is current:
                        self.pipeline.remove(queued)
                        current.disconnected = True
                        current.message_event.set()
                pending = self.pipeline or (self._running is not None and self._running
                                            is not current and not self._running.response_complete)
            else:
                pending = current is not None and (not current.response_complete or self.pipeline)
            if pending:
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
            if self.parser.get_http_version() == "1.0":
                # HTTP/1.0 has no 100 Continue: a 1.0 client is not to be sent one (RFC 9110,
                # 10.1.1), as uvicorn did when it sent `Expect: 100-continue` (a review).
                self.expect_100_continue = False
            super().on_headers_complete()
            # The request's answer closes the connection through this (see _close_after).
            cycle = self.cycle
            cycle.transport = ClosesAfterTheBody(self.transport, lambda: self._close_after(cycle))
            # Whether this connection answered the request itself (its parser refused what came
            # in the same read, a chunk size of 20 hex digits): the application's own refusal is
            # then neither sent nor logged (it logged a 411 after the 400 the client got).
            cycle.scope[ANSWERED_BY_CONNECTION] = lambda: self._refused and cycle.disconnected
            cycle.scope[CLIENT_GONE] = lambda: cycle.disconnected

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
            if not self._half_close():
                return
            self.flow.resume_reading()
            self._heard_at = self.loop.time()
            self._lingering = (self.loop.call_later(LINGER_IDLE, self._linger_idle),
                               self.loop.call_later(limits.body_timeout, self.transport.close))

        def _half_close(self) -> bool:
            """End what is sent, still reading; False, and the connection closed, when the
            client is gone already. shutdown() then fails (ENOTCONN), and raised from the
            answer's send it was logged as an exception in the application: clients trickling
            an upload in, closing as their 408 went out (a test run, 1 in about 30)."""
            try:
                self.transport.write_eof()
            except OSError:
                self.transport.close()
                return False
            return True

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
            lingering_refusals.discard(self)
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
            """Closed, having sent nothing or headers that have not ended, for a new connection
            at the cap (not logged, like a silent connection closed at the header deadline)."""
            self._disarm()
            self._not_silent()
            self._refused = True
            self.transport.close()

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            mine = unfinished.get(self._counted_as or "")
            if mine is not None and self in mine:
                del mine[self]
                if not mine:
                    del unfinished[self._counted_as]

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
