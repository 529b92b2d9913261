"""The bounds the HTTP checker enforces and their defaults, apart from the server: search.py's
options read them without loading the server (and asyncio) for every one-shot search."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
# Distances above this are refused: at 64 bits, 10 already reaches images that merely look alike,
# and ?max_distance=64 used to return the whole catalogue to any client.
DEFAULT_MAX_QUERY_DISTANCE = 10
DEFAULT_MAX_MATCHES = 100


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
