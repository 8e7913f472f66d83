"""The client-facing HTTP listener: uvicorn's httptools protocol with the bounds uvicorn lacks.

uvicorn has no header-read timeout and no request-head size limit: a client that trickles its
headers holds a connection forever, and a client that sends megabytes of headers makes the
parser buffer them. ``guarded_protocol(limits)`` returns an ``HttpToolsProtocol`` subclass that

- closes a connection whose request head (request line + headers) is not complete within
  ``header_timeout`` of its first byte, or of the connection opening (slowloris);
- answers 431 and closes when a request head grows past ``max_request_headers`` bytes;
- applies ``facade.request_head`` to every complete head, before the app (HTTP or WebSocket) sees it:
  more than ``max_headers_count`` header fields -> 431; header names with "_" dropped (counted) or
  refused with 400 per ``underscores``; an absolute-form target's authority replaces Host and the
  target becomes origin-form (RFC 9112 3.2.2). ``HeadStats`` counts what was dropped and refused;
- writes a response head together with the first body bytes that follow it in the same event-loop
  turn (``HeadCoalescingWriter``): uvicorn writes the head as soon as ``http.response.start`` is
  sent, so a small complete response cost two write syscalls instead of one.

httptools (llhttp) is used on purpose: h11 accepts Content-Length together with
Transfer-Encoding (request smuggling) and obs-folded headers; httptools rejects both.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .request_head import (
    DEFAULT_MAX_HEADERS_COUNT,
    DEFAULT_UNDERSCORES,
    HeadRejected,
    Underscores,
    screen_headers,
    split_absolute_form,
    with_host,
)
from .timers import TimerWheel, WheelHandle, wheel_for

__all__ = ["HeadCoalescingWriter", "HeadLimits", "HeadStats", "guarded_protocol"]

logger = logging.getLogger("facade.listener")


class HeadLimits:
    """Mutable holder so a hot reload can change the limits of the running listener."""

    __slots__ = ("header_timeout", "max_head_bytes", "max_headers_count", "stats", "underscores")

    def __init__(
        self,
        *,
        max_head_bytes: int,
        header_timeout: float,
        max_headers_count: int = DEFAULT_MAX_HEADERS_COUNT,
        underscores: Underscores = DEFAULT_UNDERSCORES,
        stats: HeadStats | None = None,
    ) -> None:
        self.max_head_bytes = max_head_bytes
        self.header_timeout = header_timeout
        self.max_headers_count = max_headers_count
        self.underscores: Underscores = underscores
        self.stats = stats if stats is not None else HeadStats()

    def __repr__(self) -> str:
        return (
            f"HeadLimits(max_head_bytes={self.max_head_bytes}, header_timeout={self.header_timeout}, "
            f"max_headers_count={self.max_headers_count}, underscores={self.underscores!r})"
        )


class HeadStats:
    """What the listener dropped and refused before the app saw a request (exposed on ``/metrics``)."""

    __slots__ = ("dropped", "rejected")

    def __init__(self) -> None:
        self.dropped: dict[str, int] = {}  # header fields removed, by reason
        self.rejected: dict[str, int] = {}  # requests refused, by reason

    def count_dropped(self, reason: str, n: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def count_rejected(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + n

    def prometheus_text(self, prefix: str = "facade") -> str:
        """Two counter families, ``<prefix>_request_headers_dropped_total`` and ``<prefix>_requests_rejected_total``.

        Every known reason is always present (0 until it happens), so a dashboard can rate() it.
        """
        lines: list[str] = []
        families = (
            ("request_headers_dropped", "Request header fields dropped by the listener", self.dropped, _DROP_REASONS),
            ("requests_rejected", "Requests refused by the listener before routing", self.rejected, _REJECT_REASONS),
        )
        for name, help_text, counts, known in families:
            full = f"{prefix}_{name}_total"
            lines.append(f"# HELP {full} {help_text}")
            lines.append(f"# TYPE {full} counter")
            for reason in sorted(set(known) | set(counts)):
                lines.append(f'{full}{{reason="{reason}"}} {counts.get(reason, 0)}')
        return "\n".join(lines) + "\n"


_DROP_REASONS = ("underscore",)
_REJECT_REASONS = ("absolute_form", "too_many_headers", "underscore_header")


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
_STATUS_LINES = {400: b"HTTP/1.1 400 Bad Request\r\n", 431: _RESPONSE_431.split(b"\r\n", 1)[0] + b"\r\n"}


class HeadCoalescingWriter(asyncio.Transport):
    """What one request/response cycle of uvicorn writes through: its first write (the response head,
    or a 100 Continue) is held until the next write, a close, or the end of the event-loop turn,
    whichever comes first, and goes out joined with it.

    The proxy sends ``http.response.body`` in the same turn as ``http.response.start`` when the
    upstream's whole body came with its head, so a small response leaves in one write. A head
    followed by a slow body (a stream) waits one loop turn at most, and still leaves before the next
    pipelined response (that one's task runs in a later turn). Not used for HEAD requests: no body
    write follows their head (uvicorn writes nothing for it). The cycle only writes, closes and asks
    ``is_closing``.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None  # None: nothing written yet (the next write is held)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
        elif held:
            self._held = b""
            self._transport.write(held + data)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held:
            self._held = b""
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


class ProtocolLoop:
    """The event loop as uvicorn's HTTP protocol uses it (``create_task`` per request, ``call_later`` for
    the keep-alive timeout), with ``call_later`` on the loop's :class:`facade.timers.TimerWheel`: a
    keep-alive or request-head deadline may fire up to 10 ms late, and costs a dict insert and delete
    instead of a loop timer armed and cancelled on every request. Anything else is the loop's own."""

    __slots__ = ("_loop", "call_later", "call_soon", "create_task", "time")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.call_later = wheel_for(loop).call_later
        self.call_soon = loop.call_soon
        self.create_task = loop.create_task
        self.time = loop.time

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


_protocol_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProtocolLoop] = weakref.WeakKeyDictionary()


def protocol_loop(loop: Any) -> Any:
    """One :class:`ProtocolLoop` per event loop (typed ``Any``: it stands in for the loop uvicorn expects)."""
    if isinstance(loop, ProtocolLoop):
        return loop
    shim = _protocol_loops.get(loop)
    if shim is None:
        shim = _protocol_loops[loop] = ProtocolLoop(loop)
    return shim


def guarded_protocol(limits: HeadLimits) -> type[HttpToolsProtocol]:
    """An HttpToolsProtocol subclass bound to ``limits``."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _in_body: bool
        _head_bytes: int
        _head_timer: WheelHandle | None
        _wheel: TimerWheel
        _refusal: bytes | None = None  # a response decided mid-parse, sent once the parser returns

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            # Its timers (keep-alive, request head) on the loop's coarse wheel: ~2 µs a request each otherwise.
            self._wheel = wheel_for(self.loop)
            self.loop = protocol_loop(self.loop)
            # A new connection must send its first request head in time, even if it sends nothing at all.
            self._in_body = False
            self._head_bytes = 0
            self._head_timer = self._wheel.call_later(limits.header_timeout, self._head_timed_out)

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
                self._head_timer = self._wheel.call_later(limits.header_timeout, self._head_timed_out)

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
            if self._refusal is None:
                self._screen_head()
            if self._refusal is not None:
                return
            previous = self.cycle
            super().on_headers_complete()
            cycle = self.cycle
            # A new request/response cycle (not a WebSocket upgrade, which makes none): its response
            # head leaves with the body bytes that follow it (HeadCoalescingWriter). Set before its
            # task first runs: the task was only created.
            if cycle is not None and cycle is not previous and cycle.scope["method"] != "HEAD":
                cycle.transport = HeadCoalescingWriter(self.transport, self.loop)

        def _screen_head(self) -> None:
            # One pass over the head the parser already built; the app (HTTP or WebSocket) sees the result.
            stats = limits.stats
            try:
                url = self.url
                if url[:1] != b"/":
                    split = split_absolute_form(url)
                    if split is not None:
                        authority, self.url = split
                        self.headers[:] = with_host(self.headers, authority)  # scope["headers"] is this list
                screen = screen_headers(
                    self.headers, max_count=limits.max_headers_count, underscores=limits.underscores
                )
            except HeadRejected as exc:
                stats.count_rejected(exc.counter)
                self._refusal = _plain_response(_STATUS_LINES[exc.status], exc.reason)
                return
            if screen.headers is not None:
                self.headers[:] = screen.headers
                stats.count_dropped("underscore", screen.dropped)

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if 0x23 in url:  # "#" (an int needle is the cheap form of bytes.__contains__)
                # A fragment is never sent by a correct client (RFC 9112 3.2), and the parser would drop
                # it silently before the proxy could see it: refuse the request instead.
                self._refusal = _RESPONSE_400_FRAGMENT

        def handle_websocket_upgrade(self) -> None:
            # uvicorn upgrades whenever the parser stops at an Upgrade head, even one refused above (a
            # fragment, too many header fields): it would hand a refused head to the app, or fail on a
            # scope without a method. A refused head gets its refusal instead (sent by data_received).
            if self._refusal is None:
                super().handle_websocket_upgrade()

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
