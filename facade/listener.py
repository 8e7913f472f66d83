"""The client-facing HTTP listener: uvicorn's httptools protocol with the bounds uvicorn lacks.

uvicorn has no header-read timeout and no request-head size limit: a client that trickles its
headers holds a connection forever, and a client that sends megabytes of headers makes the
parser buffer them. ``guarded_protocol(limits)`` returns an ``HttpToolsProtocol`` subclass that

- closes a connection whose request head (request line + headers) is not complete within
  ``header_timeout`` of its first byte, or of the connection opening (slowloris);
- answers 431 and closes when a request head grows past ``max_request_headers`` bytes.

httptools (llhttp) is used on purpose: h11 accepts Content-Length together with
Transfer-Encoding (request smuggling) and obs-folded headers; httptools rejects both.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HeadLimits", "guarded_protocol"]

logger = logging.getLogger("facade.listener")


class HeadLimits:
    """Mutable holder so a hot reload can change the limits of the running listener."""

    __slots__ = ("header_timeout", "max_head_bytes")

    def __init__(self, *, max_head_bytes: int, header_timeout: float) -> None:
        self.max_head_bytes = max_head_bytes
        self.header_timeout = header_timeout

    def __repr__(self) -> str:
        return f"HeadLimits(max_head_bytes={self.max_head_bytes}, header_timeout={self.header_timeout})"


def _plain_response(status_line: bytes, message: str) -> bytes:
    body = message.encode("ascii")
    return (
        status_line
        + b"content-type: text/plain; charset=utf-8\r\n"
        + b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
        + b"connection: close\r\n\r\n"
        + body
    )


_RESPONSE_431 = _plain_response(b"HTTP/1.1 431 Request Header Fields Too Large\r\n", "request header fields too large")
_RESPONSE_400_FRAGMENT = _plain_response(b"HTTP/1.1 400 Bad Request\r\n", "fragment in request target")
_RESPONSE_408 = _plain_response(b"HTTP/1.1 408 Request Timeout\r\n", "request header timeout")


def guarded_protocol(limits: HeadLimits) -> type[HttpToolsProtocol]:
    """An HttpToolsProtocol subclass bound to ``limits``."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _in_body: bool
        _head_bytes: int
        _head_timer: asyncio.TimerHandle | None
        _refusal: bytes | None = None  # a response decided mid-parse, sent once the parser returns

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            # A new connection must send its first request head in time, even if it sends nothing at all.
            self._in_body = False
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(limits.header_timeout, self._head_timed_out)

        def data_received(self, data: bytes) -> None:
            # Bytes that arrive outside a request body belong to a request head (or to the next one).
            counted = not self._in_body
            if counted:
                self._head_bytes += len(data)
            super().data_received(data)
            if self.transport.is_closing():
                return
            if self._refusal is not None:
                self._reject(self._refusal, "%s", self._refusal.split(b"\r\n", 1)[0].decode())
            elif counted and not self._in_body and self._head_bytes > limits.max_head_bytes:
                self._reject(_RESPONSE_431, "request head over %d bytes", limits.max_head_bytes)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head_timer is None:
                # First byte of a keep-alive connection's next request: its clock starts now
                # (until then uvicorn's keep-alive timeout governs the idle connection).
                self._head_timer = self.loop.call_later(limits.header_timeout, self._head_timed_out)

        def on_headers_complete(self) -> None:
            seen = self._head_bytes
            self._in_body = True
            self._head_bytes = 0
            self._cancel_head_timer()
            # A head that arrived whole in one read was never seen half-way: measure it now (only
            # when the bytes read so far could hold an oversized head at all).
            if seen > limits.max_head_bytes:
                size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
                if size > limits.max_head_bytes:
                    self._refusal = _RESPONSE_431  # answered by data_received once the parser returns
            if self._refusal is not None:
                return
            super().on_headers_complete()

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if b"#" in url:
                # A fragment is never sent by a correct client (RFC 9112 3.2), and the parser would drop
                # it silently before the proxy could see it: refuse the request instead.
                self._refusal = _RESPONSE_400_FRAGMENT

        def on_body(self, body: bytes) -> None:
            if self._refusal is None:
                super().on_body(body)

        def on_message_complete(self) -> None:
            self._in_body = False
            if self._refusal is None:
                super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self._in_body and not self.transport.is_closing():
                # Answer only a client that sent something; a silent connection is just closed.
                response = _RESPONSE_408 if self._head_bytes else b""
                self._reject(response, "request head not complete within %.1fs", limits.header_timeout)

        def _reject(self, response: bytes, why: str, arg: object) -> None:
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            logger.info("closing connection from %s: " + why, client, arg)
            if response and (self.cycle is None or self.cycle.response_complete):
                self.transport.write(response)
            self.transport.close()

    return GuardedHttpToolsProtocol
