"""The edge's rules before any token is read: what a request's head may be, how long it
may take, how many connections a process and a client address may hold, and how each
refusal is answered. Pure (no socket, no clock): `runtime/http.py` applies them.

The rules bound what a client without a token can make the gateway hold: the bytes of a
head (the parser sees at most `max_header_bytes` of one, plus what followed the previous
request in the same socket read), its time, and the number of connections.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ingester_gateway import errors
from ingester_gateway.errors import Problem, error_body


class Networks:
    """Addresses and networks (`10.0.0.0/8`, `::1`) that an address is tested against:
    the trusted proxies, for the edge's caps and for X-Forwarded-* (api/forwarded.py)."""

    __slots__ = ("_networks",)

    def __init__(self, texts: Sequence[str] = ()) -> None:
        self._networks = tuple(ipaddress.ip_network(text, strict=False) for text in texts)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, address: object) -> bool:
        if not self._networks or not isinstance(address, str):
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_header_bytes: int = 64 * 1024  # request line and header fields of one request
    max_header_count: int = 100
    max_request_line_bytes: int = 8 * 1024  # the request target (path and query)
    header_timeout: float = 10.0  # from a request's first byte to the end of its head
    max_connections: int | None = None  # per process; None: no cap
    max_connections_per_client: int | None = None  # per peer address; None: no cap
    # Peers whose connections carry many clients (a proxy in front): not capped per address.
    uncapped_peers: Networks = field(default_factory=Networks)
    linger_seconds: float = 2.0  # after a refusal: input read and dropped, then closed


# Every reason the edge closes or refuses a connection (the metric's `reason` label),
# with the answer it gets; None: closed without one.
REFUSALS: dict[str, Problem | None] = {
    "header_too_large": errors.HEADER_TOO_LARGE,
    "too_many_headers": errors.HEADER_TOO_LARGE,
    "request_line_too_long": errors.REQUEST_LINE_TOO_LONG,
    "header_timeout": errors.HEADER_TIMEOUT,
    "repeated_header": errors.REPEATED_HEADER,
    "transfer_coding": errors.UNSUPPORTED_TRANSFER_CODING,
    "malformed_request": errors.MALFORMED_REQUEST,
    "connection_limit": errors.TOO_MANY_CONNECTIONS,
    "client_connection_limit": errors.CLIENT_TOO_MANY_CONNECTIONS,
    "idle_timeout": None,
}

_MESSAGES = {
    "header_too_large": "the request header is larger than {max_header_bytes} bytes",
    "too_many_headers": "the request has more than {max_header_count} header fields",
    "request_line_too_long": "the request target is longer than {max_request_line_bytes} bytes",
    "header_timeout": "the request header did not arrive within {header_timeout:g} s",
    "repeated_header": "a header field that must appear once is repeated",
    "transfer_coding": "only Transfer-Encoding: chunked is supported",
    "malformed_request": "the request is not valid HTTP/1.1",
    "connection_limit": "this server holds {max_connections} connections; retry later",
    "client_connection_limit": (
        "this address holds {max_connections_per_client} connections; retry later"
    ),
}

# Header fields a request may carry once: a second one would make it ambiguous which of
# them auth, the body's framing or the upload's identity follow. A bit each.
SINGLE_FIELDS: dict[bytes, int] = {
    b"authorization": 1,
    b"content-type": 2,
    b"transfer-encoding": 4,
    b"host": 8,
    b"x-upload-id": 16,
    b"x-checksum-sha256": 32,
}


def plain_chunked(value: bytes) -> bool:
    """A request's Transfer-Encoding may only be `chunked`: with another coding in front
    (`gzip, chunked`) the body would be stored still coded, as if it were the file."""
    return value.strip().lower() == b"chunked"


def answer(reason: str, limits: EdgeLimits) -> bytes | None:
    """The whole HTTP response a refusal gets (JSON envelope, `connection: close`), or
    None for one that is closed without an answer."""
    problem = REFUSALS[reason]
    if problem is None:
        return None
    message = _MESSAGES[reason].format(
        max_header_bytes=limits.max_header_bytes,
        max_header_count=limits.max_header_count,
        max_request_line_bytes=limits.max_request_line_bytes,
        header_timeout=limits.header_timeout,
        max_connections=limits.max_connections,
        max_connections_per_client=limits.max_connections_per_client,
    )
    request_id = secrets.token_hex(16)  # no request was read to take an id from
    body = error_body(problem(message), request_id)
    lines = [
        f"HTTP/1.1 {problem.status} {_PHRASES[problem.status]}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        f"x-request-id: {request_id}",
        *(f"{name.decode()}: {value.decode()}" for name, value in problem.headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


_PHRASES = {
    400: "Bad Request",
    408: "Request Timeout",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class EdgeObserver(Protocol):
    """Where the edge reports (the process's metrics)."""

    def refused(self, reason: str) -> None: ...
    def opened(self) -> None: ...
    def closed(self) -> None: ...


class _Unobserved:
    def refused(self, reason: str) -> None:
        return None

    def opened(self) -> None:
        return None

    def closed(self) -> None:
        return None


UNOBSERVED: EdgeObserver = _Unobserved()


class ConnectionCount:
    """Open connections of a process, in all and per peer address, against the caps."""

    def __init__(self, limits: EdgeLimits) -> None:
        self._limits = limits
        self.open = 0
        self._by_peer: dict[str, int] = {}

    def admit(self, peer: str | None) -> str | None:
        """Count a new connection in, or name the cap it would pass (then it is not
        counted)."""
        limits = self._limits
        if limits.max_connections is not None and self.open >= limits.max_connections:
            return "connection_limit"
        if peer is not None:
            held = self._by_peer.get(peer, 0)
            cap = limits.max_connections_per_client
            if cap is not None and held >= cap and not self._uncapped(peer):
                return "client_connection_limit"
            self._by_peer[peer] = held + 1
        self.open += 1
        return None

    def release(self, peer: str | None) -> None:
        self.open -= 1
        if peer is not None:
            held = self._by_peer[peer] - 1
            if held:
                self._by_peer[peer] = held
            else:
                del self._by_peer[peer]

    def _uncapped(self, peer: str) -> bool:
        return peer in self._limits.uncapped_peers


@dataclass
class Edge:
    """The limits, the connection count and the observer one process applies."""

    limits: EdgeLimits
    observer: EdgeObserver = UNOBSERVED

    def __post_init__(self) -> None:
        self.connections = ConnectionCount(self.limits)
