"""The proxy's upstream HTTP/1.1 client: asyncio protocol + httptools, pooled per service.

    client = H1Client(limit=1024, idle_timeout=4.0, connect_timeout=5.0, ssl_context=None)
    resp = await client.request(endpoint.address, "GET", "/x?y=1", headers, body=None, idempotent=True)
    first = resp.read_nowait()            # body bytes already received (maybe the whole body)
    while not resp.at_eof():
        chunk = await resp.readany()      # b"" at the end; raises UpstreamError on a reset
    resp.release()                        # back to the pool when complete and reusable, else closed

Why not aiohttp's client here (the first design chose it and asked to revisit with numbers):
on this project's 2-core benchmark aiohttp's client was ~55 µs of the facade's ~156 µs of CPU
per proxied request; with this client the facade costs ~85 µs (benchmarks/RESULTS.md). It is
only what the proxy needs: one request at a time per connection (no pipelining), bodies
streamed both ways with backpressure, keep-alive with idle expiry, TLS through any
``ssl.SSLContext`` (the mesh's SPIFFE-checking contexts included), and errors classified for
retries and outlier detection. HTTP parsing is httptools' (llhttp, the parser uvicorn uses).
Health checks and shadow copies use it too (one pool, one ``max_connections`` per service), and a
WebSocket upgrade takes its connection through ``open_connection`` (same TLS, counted in the limit).

Errors (all ``UpstreamError``):

- ``ConnectFailed``: TCP connect or TLS handshake failed; nothing was sent. ``ConnectTimeout``
  is the connect that took longer than ``connect_timeout``.
- ``ResponseInvalid``: the upstream answered something that is not HTTP/1.x.
- ``ConnectionReset``: the connection closed before the response was complete.
- ``BodyAborted``: reading the request body from the client failed (client gone, too large).
- ``PoolClosed``: a reload replaced the service and closed this client before the request got
  a connection (a ``ConnectFailed``: nothing was sent).
- ``PoolExhausted``: every connection stayed busy for ``connect_timeout`` (the wait for a free
  connection counts as connecting; Envoy answers a full pool with 503 as well).
- ``PoolOverflow`` (a ``PoolExhausted``): every connection busy and ``max_pending`` requests already
  waiting; refused at once (Envoy's circuit breaker ``max_pending_requests``).

Waiting is first come, first served: a connection that comes back, or a slot that frees, goes
to the oldest waiter (handed over, never left for a newcomer to grab), and a new request queues
behind the waiters instead of taking it.

The keep-alive race (an upstream closes an idle connection just as the next request is sent),
judged by what the client can really know (docs/upstreams.md, "The keep-alive race"):

- Nothing written: a pooled connection is checked right before it is reused (its closing seen
  by the loop, or one ``poll(2)`` with zero timeout: the upstream's FIN already queued in the
  kernel). A dead one is dropped and the request, of any method, goes on another connection
  (Envoy's reset-before-request). The body's first chunk is taken from the client before a
  connection is chosen and kept (``ReplayableBody``), so the same bytes go out on the new one.
- Written, then closed before a single response byte: whether the upstream read the request
  cannot be known. It is sent once more on a fresh connection only when the method is
  idempotent and the body is replayable (kept whole, at most ``REPLAY_LIMIT`` bytes); a POST
  or PATCH fails with ``ConnectionReset`` and is never replayed.
- Learned keep-alive: when an upstream closes an idle connection sooner than ``idle_timeout``
  (the loop sees it close, the check before reuse catches it, or a reused one dies before a
  response byte), the pool reuses that address's connections for at most 3/4 of the idle time
  it observed (never less than ``LEARN_FLOOR``), so the race is met at most once per address
  instead of on every gap that straddles the upstream's timer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import select
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, TypeVar, cast

import httptools

__all__ = [
    "REPLAY_LIMIT",
    "Address",
    "BodyAborted",
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionReset",
    "H1Client",
    "PoolClosed",
    "PoolExhausted",
    "PoolOverflow",
    "ReplayableBody",
    "ResponseInvalid",
    "UpstreamError",
    "UpstreamResponse",
]

_P = TypeVar("_P", bound=asyncio.BaseProtocol)

Address = tuple[str, int, bool]
"""(host, port, tls): where a connection goes; connections are pooled per address."""

log = logging.getLogger(__name__)

MAX_RESPONSE_HEAD = 64 * 1024  # status line + headers (+ any 1xx before them); Envoy allows 60 KiB
MAX_RESPONSE_HEADERS = 100  # header fields in a response head; more is a 502 (Envoy's max_headers_count)
HIGH_WATER = 256 * 1024  # buffered response bytes at which reading from the upstream pauses
LOW_WATER = 64 * 1024  # ...and resumes once the proxy has taken the buffer below this
REPLAY_LIMIT = 64 * 1024  # request body bytes kept so a request can be sent again (the first chunk always)

_POOL_CLOSED = "the service's connection pool is closed (reconfigured); retry the request"
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE", "CONNECT"})


class UpstreamError(Exception):
    """The request could not be completed on the upstream connection."""


class ConnectFailed(UpstreamError):
    """TCP connect or TLS handshake failed: nothing was sent."""


class ConnectTimeout(ConnectFailed, TimeoutError):
    """The connect (or TLS handshake) took longer than the connect timeout."""


class ResponseInvalid(UpstreamError):
    """The upstream's answer is not valid HTTP/1.x."""


class ConnectionReset(UpstreamError):
    """The connection closed before the response was complete."""


class BodyAborted(UpstreamError):
    """The request body could not be read from the client."""


class PoolClosed(ConnectFailed):
    """The client was closed (a reload replaced the service) before this request got a connection."""


class PoolExhausted(UpstreamError):
    """Every connection was busy for the whole connect timeout: nothing was sent."""


class PoolOverflow(PoolExhausted):
    """Every connection was busy and ``max_pending`` requests already waited: refused at once, nothing sent."""


class ReplayableBody:
    """A request body taken from ``source`` chunk by chunk, keeping what was taken so it can be sent again.

    Chunks are kept while they total at most ``limit`` bytes (the first one whatever its size:
    it is taken before a connection is chosen). Past that, or once taking a chunk failed or was
    interrupted (what the source holds next is then unknown), ``replayable`` is False for good.
    One object serves every attempt of one request (the proxy's retries included).
    """

    __slots__ = ("_iterator", "_kept", "_kept_size", "_limit", "_taken", "_taking", "ended")

    def __init__(self, source: AsyncIterable[bytes], *, limit: int = REPLAY_LIMIT) -> None:
        self._iterator: AsyncIterator[bytes] = source.__aiter__()
        self._kept: list[bytes] | None = []
        self._kept_size = 0
        self._limit = limit
        self._taking = False
        self._taken = False  # a chunk (or the end) was taken from the source
        self.ended = False  # the source is exhausted

    def __repr__(self) -> str:
        kept = "dropped" if self._kept is None else f"{self._kept_size} bytes"
        return f"<ReplayableBody kept={kept} ended={self.ended} replayable={self.replayable}>"

    @property
    def replayable(self) -> bool:
        """Every byte taken so far is kept and no take is in progress: the body can start over."""
        return self._kept is not None and not self._taking

    @property
    def kept(self) -> list[bytes]:
        """The chunks taken so far (replayable bodies only)."""
        assert self._kept is not None, "the body is not replayable"
        return self._kept

    async def take(self) -> bytes | None:
        """The next chunk from the source (kept while within the limit); None at its end."""
        self._taking = self._taken = True
        try:
            chunk = await self._iterator.__anext__()
        except StopAsyncIteration:
            self.ended = True
            return None
        except BaseException:
            self._kept = None  # failed or interrupted mid-take: the source cannot be replayed
            raise
        finally:
            self._taking = False
        kept = self._kept
        if kept is not None:
            self._kept_size += len(chunk)
            if self._kept_size <= self._limit or not kept:
                kept.append(chunk)
            else:
                self._kept = None  # too large to keep: streamed, never replayed
        return chunk

    async def prefetch(self) -> None:
        """Take the first chunk unless one was taken (a client body error becomes ``BodyAborted``)."""
        if self._taken:
            return
        try:
            await self.take()
        except Exception as exc:  # noqa: BLE001 - the client's side of the body failed, whatever the reason
            raise BodyAborted(f"request body aborted: {exc!r}") from None


class UpstreamResponse:
    """One upstream response: status and headers as received, the body as a bounded stream."""

    __slots__ = ("_buffered", "_chunks", "_conn", "_done", "_error", "_waiter", "headers", "keep_alive", "status")

    def __init__(self, conn: _Conn, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._conn: _Conn | None = conn
        self.status = status
        self.headers = headers  # raw (name, value) pairs, names as the upstream spelled them
        self.keep_alive = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} done={self._done} buffered={self._buffered}>"

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return self.headers

    @property
    def content_type(self) -> str:
        """The media type (lower case, no parameters); "" when absent."""
        for name, value in self.headers:
            if name.lower() == b"content-type":
                return value.split(b";", 1)[0].strip().lower().decode("latin-1")
        return ""

    # -- reading --------------------------------------------------------------------------

    def read_nowait(self) -> bytes:
        """Every body byte received so far (b"" when none), without waiting."""
        if not self._chunks:
            return b""
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        conn = self._conn
        if conn is not None and conn.reading_paused:
            conn.resume_reading()
        return data

    def at_eof(self) -> bool:
        """The whole body was received and read."""
        return self._done and not self._chunks

    async def readany(self) -> bytes:
        """The next body bytes; b"" once the body is complete. Raises UpstreamError on a reset."""
        while True:
            if self._chunks:
                return self.read_nowait()
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    # -- end ------------------------------------------------------------------------------

    def release(self) -> None:
        """Done with this response: the connection goes back to the pool if it can be reused."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(reusable=self._done and self._error is None and self.keep_alive and not self._chunks)

    def close(self) -> None:
        """Done with this response, and its connection is closed whatever its state."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(reusable=False)

    # -- fed by the connection ------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        conn = self._conn
        if self._buffered >= HIGH_WATER and conn is not None and not conn.reading_paused:
            conn.pause_reading()
        self._wake()

    def _complete(self, keep_alive: bool) -> None:
        self._done = True
        self.keep_alive = keep_alive
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if not self._done:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Conn(asyncio.Protocol):
    """One upstream connection: at most one request at a time, the response parsed by httptools."""

    def __init__(self, pool: H1Client, address: Address) -> None:
        self.pool = pool
        self.address = address
        # Made inside the loop (loop.create_connection's factory). Kept: asyncio.get_running_loop()
        # costs a getpid() syscall on every call (its fork check), and the request path needs the loop thrice.
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reading_paused = False
        self.received = False  # any byte of the current response arrived
        self._poll: Any = None  # select.poll on the socket: is an idle connection readable (closed)?
        self._parser: Any = httptools.HttpResponseParser(self)
        self._busy = False
        self._head = False  # the current request is HEAD: its response has no body whatever it says
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # bytes received for the current request before its response head completed
        self._framing_bytes = 0  # bytes of the current body's reads since the last one with body bytes
        self._body_seen = False  # the read being parsed carried body bytes
        self._framed = False  # the response has Content-Length or Transfer-Encoding
        self._informational = False
        self._replace_parser = False
        self._response: UpstreamResponse | None = None
        self._head_waiter: asyncio.Future[UpstreamResponse] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if _poll_available:
                with contextlib.suppress(OSError, ValueError):
                    poll = select.poll()
                    poll.register(sock.fileno(), select.POLLIN)
                    self._poll = poll

    def peer_closed(self) -> bool:
        """An idle connection is readable: the upstream closed it (or sent bytes nobody asked for).

        The loop learns of a close only when it next polls; a request written before then would
        reach a closed socket. One ``poll(2)`` with zero timeout (~0.3 µs) tells now.
        """
        if self.closed or (self.transport is not None and self.transport.is_closing()):
            return True
        poll = self._poll
        return poll is not None and bool(poll.poll(0))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake_drain(exc)
        response = self._response
        if response is not None and not response._done:
            if exc is None and not self._framed and not self._head:
                response._complete(keep_alive=False)  # a body delimited by the connection's close
            else:
                response._fail(ConnectionReset(f"connection closed mid-body: {exc or 'closed by the upstream'}"))
        elif self._head_waiter is not None:
            what = "reset" if exc is not None else "closed"
            self._fail_head(ConnectionReset(f"connection {what} before a response: {exc or 'closed by the upstream'}"))
        if not self._busy:
            self.pool._forget_idle(self)

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted again
            return
        self.received = True
        response = self._response
        if response is None:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._protocol_error("the upstream switched protocols on a plain HTTP request")
        except httptools.HttpParserError as exc:
            self._protocol_error(f"invalid HTTP response: {exc}")
        if self._replace_parser:
            self._replace_parser = False
            self._parser = httptools.HttpResponseParser(self)
        elif self._response is None and self._head_bytes > MAX_RESPONSE_HEAD and self._busy:
            # Checked after feeding, so body bytes that arrived with a complete head never count:
            # still no complete head after this many bytes means the head itself is too large
            # (the parser would otherwise buffer a header that never ends).
            self._protocol_error(f"response head larger than {MAX_RESPONSE_HEAD // 1024} KiB")
        elif response is not None and not response._done and self._busy:
            # Mid-body, reads without a body byte are chunk framing or trailers, which the parser
            # buffers (a trailer value that never ends grew it without limit): same bound as a head.
            if self._body_seen:
                self._body_seen = False
                self._framing_bytes = 0
            else:
                self._framing_bytes += len(data)
                if self._framing_bytes > MAX_RESPONSE_HEAD:
                    self._protocol_error(f"response trailers (or chunk framing) over {MAX_RESPONSE_HEAD // 1024} KiB")

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain(None)

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status: int = self._parser.get_status_code()
        if status < 100:
            self._protocol_error(f"invalid status code {status:03d}")  # RFC 9110 15: 100-599
            return
        if status < 200:
            self._headers = []
            if status == 101:
                # Refused here, before a response is handed out: the parser only raises its
                # upgrade error after this callback, when the caller already has a 101.
                self._protocol_error("the upstream switched protocols on a plain HTTP request")
                return
            self._informational = True  # 100 Continue, 103 Early Hints: the real response follows
            return
        headers, self._headers = self._headers, []
        if len(headers) > MAX_RESPONSE_HEADERS:
            self._protocol_error(f"response head with more than {MAX_RESPONSE_HEADERS} header fields")
            return
        for name, value in headers:
            n = name.lower()
            if n == b"content-length":
                self._framed = True
                break
            if n == b"transfer-encoding":
                # Only chunked as the final coding delimits the body; any other coding in a
                # response runs until the connection closes (RFC 9112 6.3).
                self._framed = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
                break
        response = self._response = UpstreamResponse(self, status, headers)
        if self._head:
            # A HEAD response has no body whatever Content-Length says; the parser cannot be told,
            # so it is replaced by a fresh one before the next response.
            response._complete(keep_alive=self._parser.should_keep_alive())
            self._replace_parser = True
        waiter, self._head_waiter = self._head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def on_message_begin(self) -> None:
        response = self._response
        if response is not None and response._done:
            # Bytes after a complete response: the upstream sent more than its framing said. The
            # connection is not reused, or they would be read as the next request's response.
            response.keep_alive = False

    def on_body(self, body: bytes) -> None:
        self._body_seen = True
        response = self._response
        if response is not None:
            if not response._done:
                response._feed(body)
            else:
                response.keep_alive = False  # a body after a HEAD response's head: as above

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        response = self._response
        if response is not None and not response._done:
            response._complete(keep_alive=self._parser.should_keep_alive())

    # -- the client side ------------------------------------------------------------------

    def start(
        self, head: bytes, body: ReplayableBody | None, chunked: bool, is_head: bool
    ) -> asyncio.Future[UpstreamResponse]:
        """Write a request; the future resolves with the response once its headers arrived.

        The head and every body chunk taken so far (at least the first: ``request`` takes it
        before choosing a connection) go out in one write; a writer task sends the rest.
        """
        assert self.transport is not None and not self._busy
        self._busy = True
        self._head = is_head
        self._framed = False
        self._informational = False
        self._response = None
        self._headers = []
        self._head_bytes = 0
        self._framing_bytes = 0
        self._body_seen = False
        self.received = False
        waiter = self._head_waiter = self.loop.create_future()
        if body is None:
            self.transport.write(head)
            return waiter
        parts = [head]
        for chunk in body.kept:
            if chunk:  # chunked, an empty chunk would be the last-chunk marker: the body's end
                parts.append(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        if body.ended and chunked:
            parts.append(b"0\r\n\r\n")
        self.transport.write(b"".join(parts))
        if not body.ended:
            self._writer = asyncio.ensure_future(self._write_body(body, chunked))
        return waiter

    async def _write_body(self, body: ReplayableBody, chunked: bool) -> None:
        transport = self.transport
        assert transport is not None
        try:
            if self._write_paused:
                await self._drain()
            while True:
                chunk = await body.take()
                if self.closed:
                    return
                if chunk is None:
                    break
                if not chunk:
                    continue  # chunked, an empty chunk would be the last-chunk marker: the body's end
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                if self._write_paused:
                    await self._drain()
            if chunked and not self.closed:
                transport.write(b"0\r\n\r\n")
        except UpstreamError:
            pass  # the connection went away; the response side reports it
        except Exception as exc:  # noqa: BLE001 - the client's side of the body failed, whatever the reason
            error = BodyAborted(f"request body aborted: {exc!r}")
            self._fail_head(error)
            if self._response is not None:
                self._response._fail(error)
            self.abort()

    async def _drain(self) -> None:
        if self.closed:
            raise ConnectionReset("connection closed while sending the request body")
        waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None

    def _wake_drain(self, exc: Exception | None) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            if exc is not None or self.closed:
                waiter.set_exception(ConnectionReset(f"connection closed while sending the request body: {exc}"))
            else:
                waiter.set_result(None)

    def finish(self, *, reusable: bool) -> None:
        """The request is over: back to the pool, or closed."""
        writer, self._writer = self._writer, None
        if writer is not None and not writer.done():
            writer.cancel()  # the upstream answered before taking the whole body
            reusable = False
        self._busy = False
        self._response = None
        self._head_waiter = None
        if self.reading_paused:
            self.resume_reading()
        if reusable and not self.closed:
            self.pool._put(self)
        else:
            self.abort()
            self.pool._slot_freed()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close_idle(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _protocol_error(self, message: str) -> None:
        error = ResponseInvalid(message)
        self._fail_head(error)
        if self._response is not None:
            self._response._fail(error)
        self.abort()

    def _fail_head(self, error: UpstreamError) -> None:
        waiter, self._head_waiter = self._head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


LEARN_MARGIN = 0.75  # reuse for at most this share of the idle time after which an upstream closed
LEARN_FLOOR = 0.5  # seconds: a close sooner than this is a restart or a one-off, not a keep-alive timer


class H1Client:
    """Keep-alive connections to a service's endpoints, at most ``limit`` open at once.

    Callers wait for a free slot when every connection is busy (bounded by the caller's own
    timeout; ``exhausted`` tells a timeout spent waiting from one spent on the upstream), at
    most ``max_pending`` of them at once (None: no bound), in the order they came.
    Idle connections are reused newest first and closed after ``idle_timeout`` seconds.
    """

    def __init__(
        self,
        *,
        limit: int,
        idle_timeout: float,
        connect_timeout: float | None,
        ssl_context: ssl.SSLContext | None = None,
        dns_ttl: float = 10.0,
        max_pending: int | None = None,
    ) -> None:
        self.limit = limit
        self.max_pending = max_pending
        self.dns_ttl = dns_ttl  # aiohttp's default; endpoints named by DNS are resolved once per TTL
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._ssl = ssl_context
        self._idle: dict[Address, collections.deque[_Conn]] = {}
        self._idle_limits: dict[Address, float] = {}  # learned: below idle_timeout for these addresses
        self._open = 0  # connections open or being opened
        # Waiters in arrival order: (future, address wanted or None for "a slot", fresh). A future's
        # result is what was handed over: an idle connection to its address, or None for a slot
        # already counted in ``_open`` (the waiter opens the connection).
        self._waiters: collections.deque[tuple[asyncio.Future[_Conn | None], Address | None, bool]] = (
            collections.deque()
        )
        self._pending = 0  # waiters nothing was handed to yet (the deque keeps ones that gave up until its front)
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self.stats: collections.Counter[str] = collections.Counter()

    @property
    def closed(self) -> bool:
        """``close()`` was called: no new connection will be opened."""
        return self._closed

    @property
    def in_use(self) -> int:
        return self._open - sum(len(d) for d in self._idle.values())

    @property
    def exhausted(self) -> bool:
        """Every connection slot is taken (requests are waiting for one)."""
        return self.in_use >= self.limit > 0  # idle keep-alive connections are free to take

    async def request(
        self,
        address: Address,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: ReplayableBody | AsyncIterable[bytes] | None = None,
        *,
        idempotent: bool = False,
        chunked: bool | None = None,
    ) -> UpstreamResponse:
        """Send one request and return its response once the headers arrived.

        ``target`` is sent byte for byte (already encoded). ``headers`` must not contain
        hop-by-hop fields; framing is added here: the client's Content-Length when the body has
        one, else chunked transfer coding (``chunked`` forces either), ``content-length: 0`` on
        a body-carrying method sent without a body. Pass a ``ReplayableBody`` to send the same
        body again on a later call (a retry); any other async iterable is wrapped in one.
        """
        head, use_chunked = _serialize(method, target, headers, body, chunked, address)
        is_head = method == "HEAD"
        source: ReplayableBody | None = None
        if body is not None:
            source = body if isinstance(body, ReplayableBody) else ReplayableBody(body)
            # The first chunk before a connection: then the head and it go out in one write the
            # moment a connection is chosen and checked, and a client slow to send its body
            # holds no upstream connection meanwhile.
            await source.prefetch()
            if not source.replayable:
                raise ValueError("the request body was partly sent on an earlier attempt and cannot be replayed")
        fresh = False
        while True:
            conn, reused = await self._acquire(address, fresh=fresh)
            taken_after = conn.idle_since  # when a reused connection went idle (0.0 for a new one)
            try:
                return await conn.start(head, source, use_chunked, is_head)
            except ConnectionReset:
                conn.finish(reusable=False)
                if reused and not conn.received:
                    self._learn(address, asyncio.get_running_loop().time() - taken_after)
                # Written on a pooled connection that closed before a single response byte: most
                # likely the keep-alive race, but whether the upstream read the request cannot be
                # known. Sent again (once, on a new connection) only if doing so is harmless.
                stale = reused and not conn.received and idempotent and (source is None or source.replayable)
                if not stale:
                    raise
                self.stats["stale_retries"] += 1
                fresh = True
            except BaseException:
                conn.finish(reusable=False)  # cancelled (timeout) or failed: its state is unknown
                raise

    # -- the pool -------------------------------------------------------------------------

    def _take_idle(self, address: Address) -> _Conn | None:
        """The newest live idle connection to ``address`` (the warmest; old ones age out at the bottom)."""
        idle = self._idle.get(address)
        if not idle:
            return None
        now = idle[-1].loop.time()
        limit = self._idle_limits.get(address, self.idle_timeout)
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < limit:
                if not conn.peer_closed():
                    return conn
                self.stats["closed_while_idle"] += 1  # caught before a byte was written on it
                self._learn(address, now - conn.idle_since)
            self._drop(conn)
        return None

    def idle_limit(self, address: Address) -> float:
        """How long an idle connection to ``address`` may wait to be reused (learned or configured)."""
        return self._idle_limits.get(address, self.idle_timeout)

    def _learn(self, address: Address, idle_for: float) -> None:
        """The upstream closed a connection that had been idle ``idle_for`` seconds: reuse less long.

        A close sooner than ``LEARN_FLOOR`` teaches nothing: it is a restart (which closes idle connections
        whatever their age) or a one-off, and the limit could not go below the floor anyway."""
        if idle_for < LEARN_FLOOR:
            return
        limit = max(LEARN_FLOOR, idle_for * LEARN_MARGIN)
        if limit >= self._idle_limits.get(address, self.idle_timeout):
            return
        self._idle_limits[address] = limit
        self.stats["idle_limit_lowered"] += 1
        log.warning(
            "upstream %s:%s closed a connection idle for %.2f s, before idle_timeout %.1f s: "
            "its pooled connections are now reused for at most %.2f s (set connection_pool.idle_timeout "
            "below the upstream's keep-alive timeout to avoid the race altogether)",
            address[0], address[1], idle_for, self.idle_timeout, limit,
        )

    def _drop(self, conn: _Conn) -> None:
        """Close a connection taken out of the idle queues and free its slot (no wake-up)."""
        if not conn.closed:
            conn.close_idle()
        self._open -= 1

    @property
    def pending(self) -> int:
        """Requests waiting for a connection now."""
        return self._pending

    async def _acquire(self, address: Address, *, fresh: bool = False) -> tuple[_Conn, bool]:
        if self._pending == 0:  # nobody waits: no one to jump ahead of
            conn = None if fresh else self._take_idle(address)
            if conn is not None:
                return conn, True
        if self._closed:
            raise PoolClosed(_POOL_CLOSED)
        handed = await self._reserve(address, fresh=fresh)
        if handed is not None:
            # Checked like an idle one before reuse: the upstream may have closed it in the turn
            # it was handed over. Then its slot is this request's: a new connection on it.
            if not handed.peer_closed():
                return handed, True
            self.stats["closed_while_idle"] += 1
            handed.close_idle()
        try:
            conn = await self._connect(address, lambda: _Conn(self, address))
        except BaseException:
            self._slot_freed()
            raise
        return conn, False

    async def _reserve(self, address: Address | None, *, fresh: bool) -> _Conn | None:
        """A slot counted in ``_open`` (None: the caller opens the connection) or, unless ``fresh``,
        an idle connection to ``address`` handed over by a request that finished with it."""
        if self._pending == 0 and (not self.limit or self._open < self.limit or self._reclaim_idle()):
            self._open += 1
            return None
        if self.max_pending is not None and self._pending >= self.max_pending:
            self.stats["pending_overflow"] += 1
            raise PoolOverflow(
                f"all {self.limit} connections busy and {self._pending} requests waiting "
                "(connection_pool.max_pending_requests)"
            )
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Conn | None] = loop.create_future()
        self._waiters.append((waiter, address, fresh))
        self._pending += 1
        try:
            # The wait for a slot is part of connecting: bounded by the connect timeout.
            async with asyncio.timeout(self.connect_timeout):
                return await waiter
        except BaseException as exc:
            if not waiter.done() or waiter.cancelled():
                self._pending -= 1  # gave up before anything was handed over (else _next_waiter counted it)
            elif waiter.exception() is None:
                self._give_back(waiter.result())  # handed over in the turn it gave up: to the next waiter
            self._prune_waiters()
            if not isinstance(exc, TimeoutError):
                raise
            self.stats["pool_exhausted"] += 1
            raise PoolExhausted(
                f"all {self.limit} connections busy for {self.connect_timeout:g}s (connection_pool.max_connections)"
            ) from None

    def _give_back(self, handed: _Conn | None) -> None:
        if handed is None:
            self._slot_freed()
        else:
            self._put(handed)

    async def open_connection(self, address: Address, factory: Callable[[], _P]) -> _P:
        """A connection for another protocol (a WebSocket, after its upgrade) made through this pool.

        The same address resolution, TLS context and connect timeout as the pool's own connections,
        and it takes one of the ``limit`` slots (waiting for one like a request does) until
        ``release_slot`` is called, once, when it has closed.
        """
        if self._closed:
            raise PoolClosed(_POOL_CLOSED)
        await self._reserve(None, fresh=True)  # fresh: always a slot, never a handed-over connection
        try:
            return await self._connect(address, factory)
        except BaseException:
            self._slot_freed()
            raise

    def release_slot(self) -> None:
        """A connection from ``open_connection`` closed: its slot is free."""
        self._slot_freed()

    async def _connect(self, address: Address, factory: Callable[[], _P]) -> _P:
        host, port, tls = address
        loop = asyncio.get_running_loop()
        ctx: ssl.SSLContext | None = None
        if tls:
            ctx = self._ssl if self._ssl is not None else _default_context()
        self.stats["connects"] += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                ips = await self._resolve(host, port)
                last: OSError | None = None
                for ip in ips:  # in the resolver's order, the next on a refusal (IPv6 then IPv4...)
                    try:
                        _, protocol = await loop.create_connection(
                            factory, ip, port, ssl=ctx, server_hostname=host if tls else None
                        )
                        break
                    except ssl.SSLError:
                        raise  # the peer answered: another address of the same name will not do better
                    except OSError as exc:
                        last = exc
                else:
                    self._dns.pop((host, port), None)  # every address failed: ask the resolver again next time
                    assert last is not None
                    raise last
        except TimeoutError:  # ours, or the kernel's (ETIMEDOUT) when there is no connect timeout
            after = f" after {self.connect_timeout:g}s" if self.connect_timeout is not None else ""
            raise ConnectTimeout(f"connect to {host}:{port} timed out{after}") from None
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS handshake with {host}:{port} failed: {exc}") from None
        except OSError as exc:
            if self._idle_limits.pop(address, None) is not None:
                # The upstream went away (a restart closes its idle connections whatever their age, which
                # the pool took for a short keep-alive): what was learned of the old process is forgotten.
                log.info("upstream %s:%s unreachable: its learned keep-alive limit is forgotten", host, port)
            raise ConnectFailed(f"connect to {host}:{port} failed: {exc.strerror or exc}") from None
        return protocol

    async def _resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``, cached for ``dns_ttl`` seconds (an IP literal is its own answer)."""
        if _is_ip(host):
            return [host]
        loop = asyncio.get_running_loop()
        now = loop.time()
        cached = self._dns.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        self.stats["dns_lookups"] += 1
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not ips:
            raise OSError(f"{host} has no address")
        if self.dns_ttl > 0:
            self._dns[(host, port)] = (now + self.dns_ttl, ips)
        return ips

    def _put(self, conn: _Conn) -> None:
        if self._closed:
            conn.close_idle()
            self._slot_freed()
            return
        waiter = self._next_waiter() if self._waiters else None  # (nobody waits: the common case, no call)
        if waiter is not None:
            future, address, fresh = waiter
            if address == conn.address and not fresh:
                future.set_result(conn)  # handed over warm: the oldest waiter wants this address
                return
            conn.close_idle()  # the oldest waiter wants another address: its slot goes to it
            future.set_result(None)
            return
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(conn.address, collections.deque()).append(conn)
        if self._sweep is None:
            limit = self._idle_limits.get(conn.address, self.idle_timeout)
            self._sweep = conn.loop.call_later(limit, self._expire_idle)

    def _slot_freed(self) -> None:
        """A connection closed (or a reserved slot went unused): the oldest waiter gets the slot."""
        waiter = self._next_waiter()
        if waiter is not None:
            waiter[0].set_result(None)  # the slot stays counted in _open: it is the waiter's now
            return
        self._open -= 1

    def _next_waiter(self) -> tuple[asyncio.Future[_Conn | None], Address | None, bool] | None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter[0].done():
                self._pending -= 1
                return waiter
        return None

    def _grant_free_slots(self) -> None:
        """Slots freed without a hand-over (idle connections expired): to waiters, oldest first."""
        while self._pending and (not self.limit or self._open < self.limit):
            waiter = self._next_waiter()
            if waiter is None:
                return
            self._open += 1
            waiter[0].set_result(None)

    def _prune_waiters(self) -> None:
        # Waiters that gave up leave from the front: with one connect timeout for all, they give
        # up in the order they came, so the queue stays about as long as the live waiters are
        # many (it kept every one until a slot freed: unbounded while long streams held them all).
        waiters = self._waiters
        while waiters and waiters[0][0].done():
            waiters.popleft()

    def _reclaim_idle(self) -> bool:
        """Close one idle connection to another address, making room for a new one."""
        for idle in self._idle.values():
            if idle:
                self._drop(idle.popleft())  # the oldest
                return True
        return False

    def _forget_idle(self, conn: _Conn) -> None:
        """An idle connection was closed by the upstream: drop it from the pool now."""
        idle = self._idle.get(conn.address)
        if idle is not None and conn in idle:
            idle.remove(conn)
            self._learn(conn.address, asyncio.get_running_loop().time() - conn.idle_since)
            self._slot_freed()

    def _expire_idle(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        due: float | None = None  # when the oldest connection left turns too old to reuse
        for address, idle in self._idle.items():
            limit = self._idle_limits.get(address, self.idle_timeout)
            while idle and now - idle[0].idle_since >= limit:
                self._drop(idle.popleft())
            if idle and (due is None or idle[0].idle_since + limit < due):
                due = idle[0].idle_since + limit
        if due is not None and not self._closed:
            self._sweep = loop.call_at(due, self._expire_idle)
        self._grant_free_slots()

    async def close(self) -> None:
        """Close idle connections now; busy ones close when their requests finish."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            while idle:
                self._drop(idle.popleft())
        while (waiter := self._next_waiter()) is not None:
            waiter[0].set_exception(PoolClosed(_POOL_CLOSED))  # no new connection on a closed pool


def _serialize(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: object | None,
    chunked: bool | None,
    address: Address,
) -> tuple[bytes, bool]:
    """Request line and header block as one bytes object, and whether the body goes chunked.

    Refuses a CR or LF smuggled into a field. Adds Host (from the address) when absent.
    """
    parts = [method, " ", target, " HTTP/1.1\r\n"]
    has_length = has_host = False
    for name, value in headers:
        n = len(name)
        if n == 4 and not has_host and name.lower() == "host":
            has_host = True
        elif n == 14 and not has_length and name.lower() == "content-length":
            has_length = True
        parts += (name, ": ", value, "\r\n")
    lines = len(headers) + 1
    if not has_host:
        host, port, tls = address
        authority = f"[{host}]" if ":" in host else host
        if port != (443 if tls else 80):
            authority += f":{port}"
        parts[4:4] = ("host", ": ", authority, "\r\n")
        lines += 1
    use_chunked = False
    if body is not None:
        if chunked or (chunked is None and not has_length):
            if has_length:
                parts = _without_content_length(parts)
                lines -= 1
            parts.append("transfer-encoding: chunked\r\n")
            lines += 1
            use_chunked = True
    elif not has_length and method not in _BODYLESS_METHODS:
        parts.append("content-length: 0\r\n")  # RFC 9110 8.6: a POST without a body says so
        lines += 1
    parts.append("\r\n")
    text = "".join(parts)
    # Every field was checked by the listener's parser or the config validator; this catches a
    # CR or LF that would still split a header (one count, in C, instead of a scan per field).
    if text.count("\n") != lines + 1 or text.count("\r") != lines + 1:
        raise ValueError("CR or LF inside a request line or header field")
    try:
        return text.encode("latin-1"), use_chunked
    except UnicodeEncodeError:
        raise ValueError("a request header is not latin-1") from None


def _without_content_length(parts: list[str]) -> list[str]:
    out = parts[:4]
    for i in range(4, len(parts), 4):
        if parts[i].lower() != "content-length":
            out += parts[i : i + 4]
    return out


_default_ctx: ssl.SSLContext | None = None


_poll_available = hasattr(select, "poll")


def _default_context() -> ssl.SSLContext:
    """The system trust store, TLS 1.2+, for https:// endpoints of a service without ``tls:``."""
    global _default_ctx
    if _default_ctx is None:
        ctx = ssl.create_default_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        _default_ctx = ctx
    return _default_ctx


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
