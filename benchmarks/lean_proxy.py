"""Prototype: raw ASGI + a hand-rolled asyncio HTTP/1.1 upstream client (measurement only, not product code).

bench_proxy.py runs it as ``lean`` beside ``minimal`` (the same raw ASGI app on aiohttp's client) to
measure how much of a request's CPU aiohttp's client costs. The upstream client is the least that is
still correct for keep-alive reuse: a bounded pool of keep-alive connections (``asyncio.Protocol``,
TCP_NODELAY), requests serialized as one bytes object, responses parsed by ``httptools``
(Content-Length and chunked), the whole body returned when complete. A connection returns to the
pool only after the response is complete and neither side said ``Connection: close``; one that died
while idle is dropped and replaced. No streaming, timeouts, TLS, retries beyond one stale-connection
resend. Backend from $BACKEND (e.g. http://127.0.0.1:8001).
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

BACKEND = os.environ.get("BACKEND", "")
POOL_SIZE = int(os.environ.get("LEAN_POOL_SIZE", "64"))
# RFC 9110 §7.6.1 hop-by-hop fields, plus what the proxy recomputes (content-length for a whole body).
_HOP_REQUEST = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
     b"content-length")
)
_HOP_RESPONSE = _HOP_REQUEST


class UpstreamError(Exception):
    """The upstream connection failed or closed before a complete response."""


class _Conn(asyncio.Protocol):
    """One keep-alive upstream connection: at most one request in flight, parsed by httptools."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.received = False  # any response bytes for the current request
        self.keep_alive = True
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._head = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(UpstreamError(f"upstream connection lost: {exc or 'closed by peer'}"))

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamError(f"bad upstream response: {e}"))
            self.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._head:  # a HEAD response has no body, but the parser cannot be told: finish here, never reuse
            self.keep_alive = False
            self._finish()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        self._finish()

    # client side
    def request(self, data: bytes, head: bool) -> asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]]:
        assert self.transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._headers, self._body, self._head, self.received = [], [], head, False
        self.transport.write(data)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _finish(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), self._headers, b"".join(self._body)))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class Pool:
    """A bounded pool of keep-alive connections to one host:port; callers wait when all are busy."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self._idle: collections.deque[_Conn] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[_Conn | None]] = collections.deque()
        self._count = 0  # open or opening connections

    async def _acquire(self) -> tuple[_Conn, bool]:
        """A connection and whether it was reused (a reused one may have died silently in flight)."""
        while self._idle:
            conn = self._idle.pop()  # LIFO: the warmest connection, and idle ones at the bottom age out
            if not conn.closed:
                return conn, True
            self._count -= 1
        if self._count >= self.size:
            fut: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            handed = await fut
            if handed is not None:
                return handed, True
            # None: a slot was freed by a closed connection; open a new one in it
        else:
            self._count += 1
        try:
            _, conn = await asyncio.get_running_loop().create_connection(_Conn, self.host, self.port)
        except OSError as e:
            self._release_slot()
            raise UpstreamError(f"connect to {self.host}:{self.port} failed: {e}") from e
        return conn, False

    def _release(self, conn: _Conn) -> None:
        if conn.closed or not conn.keep_alive:
            conn.close()
            self._release_slot()
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self._idle.append(conn)

    def _release_slot(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the waiter opens a connection in this slot
                return
        self._count -= 1

    async def send(self, data: bytes, head: bool) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send one serialized request; resend once on a fresh connection if a reused one died before replying."""
        for attempt in (0, 1):
            conn, reused = await self._acquire()
            try:
                result = await conn.request(data, head)
            except UpstreamError:
                conn.close()
                self._release_slot()
                if reused and not conn.received and attempt == 0:
                    continue
                raise
            except BaseException:  # cancelled mid-request: the connection's state is unknown, drop it
                conn.close()
                self._release_slot()
                raise
            self._release(conn)
            return result
        raise AssertionError("unreachable")


_target = urlsplit(BACKEND)
_pool: Pool | None = None


def serialize(scope: dict[str, Any], body: bytes) -> bytes:
    """Request line + forwarded headers (client's, minus hop-by-hop) + body, joined once."""
    path = scope.get("raw_path") or scope["path"].encode()
    if scope["query_string"]:
        path += b"?" + scope["query_string"]
    drop = _HOP_REQUEST
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"connection":  # fields named in Connection are hop-by-hop too
            drop = drop | frozenset(v.strip().lower() for v in value.split(b","))
    parts = [scope["method"].encode(), b" ", path, b" HTTP/1.1\r\n"]
    for name, value in headers:
        if name not in drop:
            parts += (name, b": ", value, b"\r\n")
    if body or scope["method"] in ("POST", "PUT", "PATCH"):
        parts += (b"content-length: ", str(len(body)).encode(), b"\r\n")
    parts += (b"\r\n", body)
    return b"".join(parts)


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _pool
    if scope["type"] != "http":
        return
    if _pool is None:
        _pool = Pool(_target.hostname or "127.0.0.1", _target.port or 80, POOL_SIZE)
    body = await _read_body(receive)
    try:
        status, headers, payload = await _pool.send(serialize(scope, body), scope["method"] == "HEAD")
    except UpstreamError as e:
        msg = f"bad gateway: {e}\n".encode()
        await send({"type": "http.response.start", "status": 502,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(msg)).encode())]})
        await send({"type": "http.response.body", "body": msg})
        return
    out = [(k, v) for k, v in headers if k not in _HOP_RESPONSE]
    if scope["method"] == "HEAD":
        out += [(k, v) for k, v in headers if k == b"content-length"]
    else:
        out.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": payload})
