"""The HTTP side of the checker that is not uvicorn's: reading a request's headers and query,
the answers (JSON, one record each), and who a client is for its per-address shares and in the log."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes

from ..core.results import json_text

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


# A key the guarded protocol adds to each request's scope: a function saying whether the
# connection has already answered the request itself (protocol.py) and closed.
ANSWERED_BY_CONNECTION = "neardup.answered_by_connection"
# Another: whether the client has gone (its connection lost or closed by the server), so an
# upload still queued for decoding need not be decoded.
CLIENT_GONE = "neardup.client_gone"


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


# Names a client may try for the distance: refused (400), not answered at the default distance.
# A name with a byte beyond ASCII (`max_d%D1%96stance`, a Cyrillic letter) too: a review found
# homoglyphs and `threshold`, `radius`, `max_hamming`, `md` getting the default silently.
# Names are compared lowercased and without `_` and `-` (a later review: `tolerance`, `max_bits`,
# `max_diff`, `hd`, `k`, and `max-matches`, `maxMatches` got the defaults silently).
_DISTANCE_WORDS = ("dist", "radius", "thresh", "hamming", "tol", "bits", "diff")
_DISTANCE_NAMES = {"d", "md", "maxd", "hd", "k"}  # not `r`, `t`, `v`, `_`: common cache-busters
# Any other name is refused too (a third review found `limit`, `top`, `flip`, `low_info`,
# `similarity` and more answered at the server's settings without a word), except these
# cache-busters and names starting with `_` (jQuery's `_=1700000000`).
CACHE_BUSTERS = {"v", "t", "r", "ts", "cb", "nocache", "cachebust", "cachebuster", "rand",
                 "random", "nonce", "version"}
# search.py options a client may try per request; they are the server's.
SERVER_OPTIONS = {"mirror", "max_matches", "include_low_information", "full_paths", "max_pixels"}
_SERVER_OPTION_KEYS = {option.replace("_", ""): option for option in SERVER_OPTIONS}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _asks_for_a_distance(name: str) -> bool:
    key = _key(name)
    return (not name.isascii() or key in _DISTANCE_NAMES
            or any(word in key for word in _DISTANCE_WORDS))


def parse_distance(query_string: bytes, cap: int) -> int | None:
    try:
        # Bytes that are not UTF-8 once percent-decoded (`?%ff=1`) became U+FFFD, and the name
        # was then refused as a misspelt distance shown as "\ufffd" (a review).
        unquote_to_bytes(query_string.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "the query string is not UTF-8 text once percent-decoded",
                      close=True) from None
    try:
        # Blank values kept: `?max_distance=` was answered with the default, while every other
        # value that is not a number got 400 (a hostile review).
        parameters = parse_qs(query_string.decode("latin-1"), keep_blank_values=True,
                              strict_parsing=False)
    except ValueError:
        parameters = {}
    values = parameters.get("max_distance")
    # A misspelt max_distance (`?max_dist=0`, `?MAX_DISTANCE=2`) was answered at the default
    # distance without a word, and beside the real one it was ignored (hostile reviews); other
    # parameters (a cache-buster) are left alone.
    for name in parameters:
        if name != "max_distance" and _asks_for_a_distance(name):
            raise Refused(400, f"unknown parameter {log_safe(name)}: the distance is"
                               " max_distance", close=True)
        option = _SERVER_OPTION_KEYS.get(_key(name))
        if option is not None:
            # `?mirror=1`, `?max_matches=1` were answered as if not asked (a review).
            raise Refused(400, f"{log_safe(name)} is not a parameter of /search: it is set for"
                               f" the whole server (search.py --serve"
                               f" --{option.replace('_', '-')})", close=True)
        if name != "max_distance" and not name.startswith("_") and (
                name.lower() not in CACHE_BUSTERS):
            raise Refused(400, f"unknown parameter {log_safe(name)}: /search takes max_distance"
                               " (the server's other settings are its options; a cache-buster"
                               " may be named _ or start with _)", close=True)
    if not values:
        return None
    if len(values) > 1:
        # The last one was taken, unchecked the others: a proxy or a log reading the first
        # would see another distance than the one answered (a review).
        raise Refused(400, "max_distance given more than once", close=True)
    text = values[0]
    # The length first: int() of a 5,000-digit string raises (Python's conversion limit).
    # Leading zeros are no reason to refuse a value (`00` was taken, `00004` refused: a review).
    digits = text.lstrip("0") or "0"
    if not (text.isascii() and text.isdigit()) or len(digits) > 4 or int(digits) > cap:
        raise Refused(400, f"max_distance must be a whole number from 0 to {cap}", close=True)
    return int(digits)


async def reply(send: Send, status: int, payload: dict[str, Any],
                headers: list[tuple[bytes, bytes]] | None = None, *, close: bool = False) -> None:
    body = (json_text(payload) + "\n").encode("ascii")
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
    body = json_text({"error": reason}) + "\n"
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n{body}").encode()


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
    """How a log line names a client: host:port, or (a connection reset before the server could
    ask its address) a label that says so rather than a bare "client"."""
    return f"{client[0]}:{client[1]}" if client else "a client of unknown address"
