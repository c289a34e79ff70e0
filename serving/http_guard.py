"""uvicorn's HTTP/1.1 protocol (httptools) with a header-size limit and a header deadline.

uvicorn has neither for httptools (h11's ``h11_max_incomplete_event_size`` limits only h11, which
costs more CPU per request): a header that never ends grew in memory, one quadratic concatenation
per packet, stalling the event loop, and a client sending a byte every few seconds kept its
connection, since every byte restarts the keep-alive timer. Here the bytes before the end of a
request's headers are counted (over ``max_header_bytes``: 431 and close) and a connection has
``header_timeout`` seconds, from its start or from its previous response, to deliver the next
request's headers (else 408 and close; an idle one is closed silently). The body has its own
deadline, in the route that reads it (``bodies.request_body``). One client address may hold at most
``max_client_connections`` connections to an HTTP process: more are answered 503 and closed, so a
client that opens connections and sends nothing (a few hundred suffice) cannot take every slot of
uvicorn's ``limit_concurrency`` from the others.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_OPEN: Counter[str] = Counter()  # connections per client address, in this HTTP process


def guarded_protocol(max_header_bytes: int, header_timeout: float,
                     max_client_connections: int = 32) -> type[asyncio.Protocol]:
    """The protocol class to pass as uvicorn's ``http`` option."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                {"max_header_bytes": max_header_bytes, "header_timeout": header_timeout,
                 "max_client_connections": max_client_connections})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with ``max_header_bytes`` and ``header_timeout`` (set by ``guarded_protocol``)."""

    max_header_bytes = 64 * 1024
    header_timeout = 10.0
    max_client_connections = 32

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection: refused when its address holds too many; else its first request's headers are
        due within ``header_timeout``."""
        super().connection_made(transport)
        self._header_bytes, self._awaiting_headers = 0, True
        self._header_timer: asyncio.TimerHandle | None = None
        peer = transport.get_extra_info("peername")
        self._client = peer[0] if isinstance(peer, tuple) else str(peer)
        _OPEN[self._client] += 1
        if _OPEN[self._client] > self.max_client_connections:
            self._reject(503, "Service Unavailable", f"your address holds {self.max_client_connections} connections "
                         "to this server already: reuse them (keep-alive) or close some")
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection ended: no deadline left to watch, one connection less for its address."""
        self._cancel_header_timer()
        _OPEN[self._client] -= 1
        if _OPEN[self._client] <= 0:
            del _OPEN[self._client]
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Count the bytes that arrive before the end of the headers; over the limit, answer 431 and close."""
        if self.transport.is_closing():
            return
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._awaiting_headers and self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._reject(431, "Request Header Fields Too Large",
                         f"the request line and headers are over {self.max_header_bytes} bytes")

    def on_headers_complete(self) -> None:
        """The headers are in: the header deadline no longer applies (the body has its own)."""
        self._awaiting_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The request is in: what arrives next is the next request's headers."""
        super().on_message_complete()
        self._header_bytes, self._awaiting_headers = 0, True

    def on_response_complete(self) -> None:
        """Answered: the next request's headers are due within ``header_timeout``."""
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        busy = self.cycle is not None and not self.cycle.response_complete  # the app is answering a request
        if busy or self.transport.is_closing():
            return
        if self._awaiting_headers and self._header_bytes:
            self._reject(408, "Request Timeout", f"the request headers did not arrive within {self.header_timeout:g} s")
        else:
            self.transport.close()

    def _reject(self, status: int, reason: str, message: str) -> None:
        body = f"{message}\n".encode()
        self.transport.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
                             f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
        self.transport.close()
