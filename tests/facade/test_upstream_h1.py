"""The proxy's HTTP/1.1 upstream client (facade.upstream.h1) against real servers on loopback.

Most backends here are byte-level (asyncio.start_server through tests.backends.raw_server) so a
test controls exactly what goes on the wire: framing, resets, 1xx, invalid bytes, slow bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from facade.config import UpstreamTLS
from facade.upstream import client_ssl_context
from facade.upstream.h1 import (
    HIGH_WATER,
    LEARN_FLOOR,
    LEARN_MARGIN,
    MAX_RESPONSE_HEAD,
    Address,
    BodyAborted,
    ConnectFailed,
    ConnectionReset,
    ConnectTimeout,
    H1Client,
    PoolExhausted,
    ReplayableBody,
    ResponseInvalid,
    UpstreamError,
    UpstreamResponse,
    _Conn,
)
from tests.backends import EchoApp, close_immediately, raw_server
from tests.servers import serve_app

from .test_upstream_session import pki  # noqa: F401 - the module's real CA / server certificate fixture

# -- a scripted byte-level upstream ------------------------------------------------------------


@dataclass
class Seen:
    """One request as the server read it."""

    conn: int  # which accepted connection (0-based)
    head: bytes
    body: bytes

    @property
    def header_lines(self) -> list[bytes]:
        return [line.lower() for line in self.head.split(b"\r\n")[1:] if line]


Reply = tuple[bytes, bool] | None  # (bytes to write, close afterwards), or None: close without answering
Answer = Callable[["Scripted", Seen], Awaitable[Reply]]


@dataclass
class Scripted:
    """Reads HTTP/1.1 requests (Content-Length or chunked bodies) and answers what ``answer`` says."""

    answer: Answer
    connections: int = 0
    open: int = 0
    max_open: int = 0
    active: int = 0  # requests being answered right now
    max_active: int = 0
    eofs: int = 0  # connections the client closed while the server waited for a request
    raw_bytes: list[int] = field(default_factory=list)  # bytes received per connection
    requests: list[Seen] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def close_all(self) -> None:
        """Close every connection from the server's side (as an upstream's own idle timeout would)."""
        for writer in self.writers:
            writer.close()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        self.writers.append(writer)
        self.raw_bytes.append(0)
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            while True:
                seen = await _read_request(reader, index)
                if seen is None:
                    self.eofs += 1
                    return
                self.raw_bytes[index] += len(seen.head) + len(seen.body)
                self.requests.append(seen)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                try:
                    reply = await self.answer(self, seen)
                finally:
                    self.active -= 1
                if reply is None:
                    return
                data, close = reply
                writer.write(data)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        except asyncio.CancelledError:
            return  # raw_server cancels what is still open when the test ends; nothing to report
        finally:
            self.open -= 1
            writer.close()


async def _read_request(reader: asyncio.StreamReader, conn: int) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    fields = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)
    }
    body = b""
    if b"content-length" in fields:
        body = await reader.readexactly(int(fields[b"content-length"]))
    elif fields.get(b"transfer-encoding") == b"chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(data[:-2])
        body = b"".join(parts)
    return Seen(conn, head, body)


def ok(body: bytes = b"ok", *extra: bytes) -> bytes:
    lines = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def answering(data: bytes, close: bool = False) -> Answer:
    async def answer(server: Scripted, seen: Seen) -> Reply:
        return data, close

    return answer


@contextlib.asynccontextmanager
async def upstream(answer: Answer) -> AsyncIterator[tuple[Scripted, Address]]:
    server = Scripted(answer)
    async with raw_server(server) as url:
        yield server, _address(url)


def _address(url: str) -> Address:
    host, _, port = url.split("://", 1)[1].rpartition(":")
    return host.strip("[]"), int(port), url.startswith("https")


@contextlib.asynccontextmanager
async def h1(**kwargs: Any) -> AsyncIterator[H1Client]:
    settings: dict[str, Any] = {"limit": 8, "idle_timeout": 30.0, "connect_timeout": 2.0}
    client = H1Client(**(settings | kwargs))
    try:
        yield client
    finally:
        await client.close()


async def fetch(client: H1Client, address: Address, method: str = "GET", target: str = "/", **kw: Any) -> bytes:
    """One whole exchange: the body, the response released."""
    resp = await client.request(address, method, target, kw.pop("headers", []), **kw)
    try:
        return await read_all(resp)
    finally:
        resp.release()


async def read_all(resp: UpstreamResponse) -> bytes:
    parts = [resp.read_nowait()]
    for _ in range(100_000):
        if resp.at_eof():
            break
        parts.append(await resp.readany())
    return b"".join(parts)


class Body:
    """A request body (the proxy's BodySource): chunks, optionally failing at chunk ``fail_at``."""

    def __init__(self, chunks: list[bytes], fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.started = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        self.started = True
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise RuntimeError("client went away (test)")
            await asyncio.sleep(0)
            yield chunk
        if self.fail_at is not None and self.fail_at >= len(self.chunks):
            raise RuntimeError("client went away (test)")


async def eventually(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


# -- 1. keep-alive ------------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection() -> None:
    async with upstream(answering(ok(b"hello"))) as (server, address), h1() as client:
        for _ in range(5):
            assert await fetch(client, address) == b"hello"
        assert server.connections == 1
        assert len(server.requests) == 5
        assert client.stats["connects"] == 1
        assert client.in_use == 0


async def test_connection_close_from_the_server_is_not_reused() -> None:
    async with upstream(answering(ok(b"bye", b"Connection: close"))) as (server, address), h1() as client:
        for _ in range(3):
            assert await fetch(client, address) == b"bye"
        assert server.connections == 3


async def test_a_named_endpoint_is_resolved_once_per_ttl_and_every_address_is_tried() -> None:
    # "localhost" may resolve to ::1 first while the server listens on 127.0.0.1 only: the refusal
    # on one address moves on to the next. The answer is cached: two connections, one lookup.
    async with upstream(answering(ok(b"bye", b"Connection: close"))) as (server, address), h1() as client:
        named: Address = ("localhost", address[1], False)
        for _ in range(2):
            assert await fetch(client, named) == b"bye"
        assert server.connections == 2
        assert client.stats["dns_lookups"] == 1
    async with upstream(answering(ok(b"bye", b"Connection: close"))) as (server, address), h1(dns_ttl=0) as client:
        for _ in range(2):
            assert await fetch(client, ("localhost", address[1], False)) == b"bye"
        assert client.stats["dns_lookups"] == 2


async def test_http10_response_without_keep_alive_is_not_reused() -> None:
    reply = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with upstream(answering(reply)) as (server, address), h1() as client:
        for _ in range(3):
            assert await fetch(client, address) == b"ok"
        assert server.connections == 3


async def test_echo_app_over_uvicorn_keeps_alive() -> None:
    app = EchoApp("a")
    async with serve_app(app) as url, h1() as client:
        address = _address(url)
        for i in range(3):
            resp = await client.request(address, "GET", f"/x?i={i}", [("x-test", "1")])
            assert resp.status == 200
            assert resp.content_type == "application/json"
            assert b'"raw_path": "/x"' in await read_all(resp)
            resp.release()
        assert client.stats["connects"] == 1
        assert [r["query"] for r in app.requests] == ["i=0", "i=1", "i=2"]
        assert ("host", f"127.0.0.1:{address[1]}") in app.requests[0]["headers"]


# -- 2. body framing ----------------------------------------------------------------------------


async def test_chunked_response_body_is_decoded_and_the_connection_reused() -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    async with upstream(answering(reply)) as (server, address), h1() as client:
        assert await fetch(client, address) == b"hello world"
        assert await fetch(client, address) == b"hello world"
        assert server.connections == 1


async def test_close_delimited_body_is_read_to_the_end_and_not_reused() -> None:
    async def answer(server: Scripted, seen: Seen) -> Reply:
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"z" * 100_000, True

    async with upstream(answer) as (server, address), h1() as client:
        resp = await client.request(address, "GET", "/", [])
        assert await read_all(resp) == b"z" * 100_000
        assert resp.keep_alive is False
        resp.release()
        assert await fetch(client, address) == b"z" * 100_000
        assert server.connections == 2


async def test_a_body_with_a_non_chunked_transfer_coding_runs_to_the_close() -> None:
    # RFC 9112 6.3: a response whose final transfer coding is not chunked is delimited by the close.
    async def answer(server: Scripted, seen: Seen) -> Reply:
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + b"g" * 5000, True

    async with upstream(answer) as (_server, address), h1() as client:
        resp = await client.request(address, "GET", "/", [])
        assert await read_all(resp) == b"g" * 5000
        assert resp.keep_alive is False
        resp.release()


async def test_a_status_below_100_is_response_invalid() -> None:
    async with upstream(answering(b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n")) as (_s, address), h1() as client:
        with pytest.raises(ResponseInvalid, match="invalid status code 099"):
            await client.request(address, "GET", "/", [])
        assert client.in_use == 0


# -- 3. HEAD ------------------------------------------------------------------------------------


async def test_head_response_with_content_length_has_no_body_and_the_connection_is_reused() -> None:
    async def answer(server: Scripted, seen: Seen) -> Reply:
        if seen.head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", False
        return ok(b"after head"), False

    async with upstream(answer) as (server, address), h1() as client:
        async with asyncio.timeout(2):
            resp = await client.request(address, "HEAD", "/", [])
            assert resp.status == 200
            assert resp.at_eof()
            assert await resp.readany() == b""
            resp.release()
            assert await fetch(client, address) == b"after head"  # a fresh parser: not 1000 bytes of body
            assert await fetch(client, address, "HEAD") == b""
            assert await fetch(client, address) == b"after head"
        assert server.connections == 1


# -- 4. bodiless statuses and 1xx ---------------------------------------------------------------


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_bodiless_statuses_complete_at_once(status: bytes) -> None:
    async with upstream(answering(b"HTTP/1.1 " + status + b"\r\nETag: x\r\n\r\n")) as (server, address), h1() as client:
        async with asyncio.timeout(2):
            for _ in range(2):
                resp = await client.request(address, "GET", "/", [])
                assert resp.status == int(status[:3])
                assert resp.at_eof()
                resp.release()
        assert server.connections == 1


async def test_100_continue_and_103_early_hints_are_skipped() -> None:
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    reply = b"HTTP/1.1 100 Continue\r\n\r\n" + early_hints + ok(b"final", b"X-Final: 1")
    async with upstream(answering(reply)) as (server, address), h1() as client:
        for _ in range(2):
            resp = await client.request(address, "POST", "/", [], Body([b"data"]))
            assert resp.status == 200
            assert resp.headers == [(b"Content-Length", b"5"), (b"X-Final", b"1")]
            assert await read_all(resp) == b"final"
            resp.release()
        assert server.connections == 1


# -- 5. invalid responses -----------------------------------------------------------------------


async def test_invalid_status_line_is_response_invalid() -> None:
    async with upstream(answering(b"HTTX/1.1 200 OK\r\n\r\n")) as (_server, address), h1() as client:
        with pytest.raises(ResponseInvalid, match="invalid HTTP response"):
            await client.request(address, "GET", "/", [])
        assert client.in_use == 0
        assert client.stats["stale_retries"] == 0


async def test_a_response_head_over_the_limit_is_response_invalid() -> None:
    # One header that never ends would otherwise grow the parser's buffer without bound.
    endless = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_RESPONSE_HEAD + 1024)
    async with upstream(answering(endless)) as (_server, address), h1() as client:
        with pytest.raises(ResponseInvalid, match="response head larger than 64 KiB"):
            await client.request(address, "GET", "/", [])
        assert client.in_use == 0


async def test_a_large_head_under_the_limit_and_a_large_body_with_it_pass() -> None:
    # Body bytes arriving in the same reads as the head never count towards the head limit.
    body = b"b" * (4 * MAX_RESPONSE_HEAD)
    reply = ok(body, b"X-Big: " + b"a" * (MAX_RESPONSE_HEAD - 1024))
    async with upstream(answering(reply)) as (_server, address), h1() as client:
        assert await fetch(client, address) == body


@pytest.mark.parametrize("upgrade", [b"Upgrade: websocket\r\nConnection: Upgrade\r\n", b""])
async def test_switching_protocols_on_a_plain_request_is_response_invalid(upgrade: bytes) -> None:
    reply = b"HTTP/1.1 101 Switching Protocols\r\n" + upgrade + b"\r\n"
    async with upstream(answering(reply)) as (_server, address), h1() as client:
        with pytest.raises(ResponseInvalid, match="switched protocols"):
            resp = await client.request(address, "GET", "/", [])
            resp.release()  # (only reached when the 101 was handed out as a response)
        assert client.in_use == 0


# -- 6. resets before the response, and the keep-alive race -------------------------------------


async def test_reset_before_any_byte_on_a_fresh_connection_is_connection_reset() -> None:
    async with raw_server(close_immediately) as url, h1() as client:
        with pytest.raises(ConnectionReset, match="before a response"):
            await client.request(_address(url), "GET", "/", [], idempotent=True)
        assert client.stats["stale_retries"] == 0
        assert client.in_use == 0


def _closes_the_second_request_on_each_connection() -> Answer:
    async def answer(server: Scripted, seen: Seen) -> Reply:
        on_this_conn = sum(1 for s in server.requests if s.conn == seen.conn)
        if on_this_conn == 2:
            return None  # the upstream closed the idle connection as the request arrived
        return ok(b"fine"), False

    return answer


async def test_idempotent_request_on_a_stale_connection_is_retried_once_on_a_new_one() -> None:
    async with upstream(_closes_the_second_request_on_each_connection()) as (server, address), h1() as client:
        assert await fetch(client, address) == b"fine"
        assert await fetch(client, address, idempotent=True) == b"fine"
        assert client.stats["stale_retries"] == 1
        assert server.connections == 2
        assert len(server.requests) == 3


async def test_post_on_a_stale_connection_is_not_retried() -> None:
    async with upstream(_closes_the_second_request_on_each_connection()) as (server, address), h1() as client:
        assert await fetch(client, address, "POST", body=Body([b"once"])) == b"fine"
        with pytest.raises(ConnectionReset):
            await client.request(address, "POST", "/", [], Body([b"twice"]), idempotent=False)
        assert client.stats["stale_retries"] == 0
        assert server.connections == 1
        assert client.in_use == 0


async def test_idle_connection_closed_by_the_upstream_is_dropped_before_reuse() -> None:
    async with upstream(answering(ok(b"one"), close=False)) as (server, address), h1() as client:
        assert await fetch(client, address) == b"one"
        server.answer = answering(ok(b"two"))
        # The server side closes the idle connection; the client notices (connection_lost) and
        # forgets it, so the next request neither fails nor needs the stale retry.
        server.close_all()
        await eventually(lambda: client.in_use == 0 and client._open == 0)
        assert await fetch(client, address, idempotent=True) == b"two"
        assert client.stats["stale_retries"] == 0
        assert server.connections == 2


async def test_an_upstream_closing_idle_connections_early_lowers_how_long_they_are_reused() -> None:
    # The upstream's keep-alive (here: whenever the test closes it) is shorter than idle_timeout:
    # once the pool saw it close an idle connection, it reuses that address's connections for at
    # most 3/4 of the observed idle time, so a later request never meets the race on that timer.
    async with upstream(answering(ok(b"one"), close=False)) as (server, address), h1(idle_timeout=30.0) as client:
        assert client.idle_limit(address) == 30.0
        assert await fetch(client, address) == b"one"
        released = time.monotonic()
        await asyncio.sleep(1.0)  # the connection's idle age when the upstream closes it
        server.close_all()
        await eventually(lambda: client._open == 0)
        observed = time.monotonic() - released
        limit = client.idle_limit(address)
        assert LEARN_FLOOR <= limit <= observed * LEARN_MARGIN + 0.01
        assert limit >= 1.0 * LEARN_MARGIN - 0.01
        assert client.stats["idle_limit_lowered"] == 1
        # A connection idle longer than the learned limit is not reused (the upstream still has it
        # open: it would close it only later), and one idle less long is.
        server.answer = answering(ok(b"two"), close=False)
        assert await fetch(client, address) == b"two"
        assert await fetch(client, address) == b"two"
        assert server.connections == 2
        await asyncio.sleep(limit + 0.05)
        assert await fetch(client, address) == b"two"
        assert server.connections == 3
        assert client.stats["closed_while_idle"] == 0


async def test_a_close_sooner_than_the_floor_teaches_nothing() -> None:
    # A restart closes connections whatever their age: it must not shorten keep-alive (nor warn).
    async with upstream(answering(ok(b"one"), close=False)) as (server, address), h1(idle_timeout=30.0) as client:
        assert await fetch(client, address) == b"one"
        server.close_all()
        await eventually(lambda: client._open == 0)
        assert client.idle_limit(address) == 30.0
        assert client.stats["idle_limit_lowered"] == 0


async def test_a_close_just_past_the_floor_lowers_the_limit_only_to_the_floor() -> None:
    async with upstream(answering(ok(b"one"), close=False)) as (server, address), h1(idle_timeout=30.0) as client:
        assert await fetch(client, address) == b"one"
        await asyncio.sleep(LEARN_FLOOR + 0.05)  # 3/4 of it is below the floor
        server.close_all()
        await eventually(lambda: client._open == 0)
        assert client.idle_limit(address) == LEARN_FLOOR


async def test_a_learned_limit_is_forgotten_when_the_upstream_goes_away() -> None:
    # A restart closes every idle connection at once, which the pool takes for a short keep-alive; the
    # refused connect that follows says the process it learned from is gone: back to idle_timeout.
    async with h1(idle_timeout=30.0) as client:
        async with upstream(answering(ok(b"one"), close=False)) as (server, address):
            assert await fetch(client, address) == b"one"
            await asyncio.sleep(LEARN_FLOOR + 0.05)
            server.close_all()
            await eventually(lambda: client._open == 0)
            assert client.idle_limit(address) == LEARN_FLOOR
        with pytest.raises(ConnectFailed):
            await client.request(address, "GET", "/", [], None, idempotent=True)
        assert client.idle_limit(address) == 30.0


# -- 6b. the keep-alive race, decided by what the client can know --------------------------------


class RacingUpstream(asyncio.Protocol):
    """A byte-level upstream that answers the first request of each connection and then, on a
    signal, closes a connection exactly when the next request is written, before any of it is
    read: ``processed`` counts only requests the "application" read whole and answered.

    - ``close_now()`` shuts every idle connection down at once (a synchronous ``shutdown(2)``:
      the FIN is in the client's kernel before the client's loop can notice it);
    - with ``reset_on_next_request`` set, the first bytes of a connection's second request
      make it abort the connection (RST) unread.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.answered = 0

    # (class-level state shared by every connection of one test server)
    processed: list[bytes]
    connections: list[RacingUpstream]
    reset_on_next_request: bool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast_transport(transport)
        self.connections.append(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.answered and not self.buffer and self.reset_on_next_request:
            self.transport.abort()  # not one byte of this request reached the application
            return
        self.buffer += data
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            body, sep, after = rest.partition(b"0\r\n\r\n")  # (the tests' bodies hold no "0" chunk)
            if not sep:
                return
            self.buffer = after
            content = b""
            while body:
                size, _, body = body.partition(b"\r\n")
                content, body = content + body[: int(size, 16)], body[int(size, 16) + 2 :]
        else:
            length = int(lower.split(b"content-length: ")[1].split(b"\r\n")[0]) if b"content-length: " in lower else 0
            if len(rest) < length:
                return
            self.buffer, content = rest[length:], rest[:length]
        self.processed.append(head.split(b" ", 1)[0] + b" " + content)
        self.answered += 1
        self.transport.write(ok(b"done"))

    @classmethod
    def close_now(cls) -> None:
        for conn in cls.connections:
            if conn.transport is not None and not conn.transport.is_closing():
                # (on a duplicate: uvloop's transport sockets refuse shutdown(); the connection is shared)
                fd = conn.transport.get_extra_info("socket").fileno()
                with socket.socket(fileno=os.dup(fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)


def cast_transport(transport: asyncio.BaseTransport) -> asyncio.Transport:
    assert isinstance(transport, asyncio.Transport)
    return transport


@contextlib.asynccontextmanager
async def racing_upstream() -> AsyncIterator[tuple[type[RacingUpstream], Address]]:
    state = type("Racing", (RacingUpstream,), {"processed": [], "connections": [], "reset_on_next_request": False})
    server = await asyncio.get_running_loop().create_server(state, "127.0.0.1", 0)
    try:
        async with asyncio.timeout(10):  # a test that waits for bytes that never come fails, not hangs
            yield state, ("127.0.0.1", server.sockets[0].getsockname()[1], False)
    finally:
        server.close()
        for conn in state.connections:
            if conn.transport is not None:
                conn.transport.abort()


@pytest.mark.parametrize("method", ["POST", "PUT", "GET"])
async def test_an_idle_connection_closed_as_the_request_is_sent_is_never_written_to(method: str) -> None:
    # Nothing was written on the dead connection: the request, of any method (POST too), goes
    # out on a new one with its first body chunk, and the upstream processes it exactly once.
    body = None if method == "GET" else Body([b"payload"])
    async with racing_upstream() as (server, address), h1() as client:
        assert await fetch(client, address, "POST", body=Body([b"first"])) == b"done"
        server.close_now()  # the FIN is queued in the client's kernel; its loop has not seen it
        assert await fetch(client, address, method, body=body, idempotent=method != "POST") == b"done"
        expected = b"" if body is None else b"payload"
        assert server.processed == [b"POST first", method.encode() + b" " + expected]
        assert client.stats["closed_while_idle"] == 1
        assert client.stats["stale_retries"] == 0
        assert len(server.connections) == 2


async def test_without_the_check_before_reuse_the_same_race_fails_a_post(monkeypatch: pytest.MonkeyPatch) -> None:
    # The race above is real: with the pre-write check reduced to what the loop already knows,
    # the POST is written to the closed connection and fails (and is rightly not resent).
    monkeypatch.setattr(_Conn, "peer_closed", lambda self: self.closed)
    async with racing_upstream() as (server, address), h1() as client:
        assert await fetch(client, address, "POST", body=Body([b"first"])) == b"done"
        server.close_now()
        with pytest.raises(ConnectionReset):
            await client.request(address, "POST", "/", [], Body([b"payload"]))
        assert server.processed == [b"POST first"]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_a_request_written_then_reset_before_a_response_is_not_replayed_if_not_idempotent(method: str) -> None:
    # The upstream reset the connection on the request's first bytes, unread; the client cannot
    # know that (it may as well have processed it and crashed): a POST or PATCH is never resent.
    async with racing_upstream() as (server, address), h1() as client:
        assert await fetch(client, address, "POST", body=Body([b"first"])) == b"done"
        server.reset_on_next_request = True
        with pytest.raises(ConnectionReset):
            await client.request(address, method, "/", [], Body([b"payload"]), idempotent=False)
        assert server.processed == [b"POST first"]
        assert len(server.connections) == 1
        assert client.stats["stale_retries"] == 0
        assert client.in_use == 0


async def test_a_put_written_then_reset_before_a_response_is_sent_once_more_with_its_body() -> None:
    async with racing_upstream() as (server, address), h1() as client:
        assert await fetch(client, address, "POST", body=Body([b"first"])) == b"done"
        server.reset_on_next_request = True
        got = await fetch(
            client, address, "PUT", headers=[("content-length", "8")], body=Body([b"put-", b"body"]), idempotent=True
        )
        assert got == b"done"
        assert server.processed == [b"POST first", b"PUT put-body"]  # once, whole
        assert client.stats["stale_retries"] == 1
        assert len(server.connections) == 2


async def test_a_put_reset_while_its_body_is_still_streaming_is_not_replayed() -> None:
    # The connection dies while the client is still sending the body (a take from the client is
    # in progress): what comes next is unknown, so even an idempotent PUT is not resent.
    release = asyncio.Event()

    class SlowSecondChunk:
        def __aiter__(self) -> AsyncIterator[bytes]:
            return self._iterate()

        async def _iterate(self) -> AsyncIterator[bytes]:
            yield b"part-1"
            await release.wait()
            yield b"part-2"

    async with racing_upstream() as (server, address), h1() as client:
        assert await fetch(client, address, "POST", body=Body([b"first"])) == b"done"
        server.reset_on_next_request = True
        with pytest.raises(ConnectionReset):
            await client.request(address, "PUT", "/", [("content-length", "12")], SlowSecondChunk(), idempotent=True)
        release.set()
        assert server.processed == [b"POST first"]
        assert client.stats["stale_retries"] == 0


async def test_replayable_body_keeps_the_first_chunk_and_up_to_the_limit() -> None:
    async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    small = ReplayableBody(chunks(b"a" * 10, b"b" * 10), limit=32)
    assert [await small.take(), await small.take(), await small.take()] == [b"a" * 10, b"b" * 10, None]
    assert small.replayable and small.ended and small.kept == [b"a" * 10, b"b" * 10]

    big_first = ReplayableBody(chunks(b"x" * 100, b"y"), limit=32)
    await big_first.prefetch()
    assert big_first.replayable and big_first.kept == [b"x" * 100]  # the first chunk whatever its size
    assert await big_first.take() == b"y"
    assert not big_first.replayable  # past the limit: streamed, never replayed

    async def failing() -> AsyncIterator[bytes]:
        yield b"ok"
        raise RuntimeError("client went away")

    broken = ReplayableBody(failing())
    await broken.prefetch()
    with pytest.raises(RuntimeError):
        await broken.take()
    assert not broken.replayable


# -- 7. reset mid-body --------------------------------------------------------------------------


async def test_reset_mid_body_raises_connection_reset_from_readany() -> None:
    async def answer(server: Scripted, seen: Seen) -> Reply:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"s" * 10, True

    async with upstream(answer) as (_server, address), h1() as client:
        resp = await client.request(address, "GET", "/", [])
        got = resp.read_nowait()
        with pytest.raises(ConnectionReset, match="mid-body"):
            async with asyncio.timeout(2):
                for _ in range(100):
                    got += await resp.readany()
        assert got == b"s" * 10
        assert not resp.at_eof()
        resp.release()
        assert client.in_use == 0 and client._open == 0


# -- 8. connect failures ------------------------------------------------------------------------


async def test_connect_refused_is_connect_failed() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # bound, never listening: the port refuses
    async with h1() as client:
        with pytest.raises(ConnectFailed, match="failed") as info:
            await client.request(("127.0.0.1", port, False), "GET", "/", [])
        assert not isinstance(info.value, ConnectTimeout)
        assert client._open == 0


async def test_connect_to_a_full_backlog_times_out() -> None:
    # A listener that never accepts, with listen(0): once its accept queue holds one connection,
    # Linux drops further SYNs, so the next connect hangs until the client's connect timeout.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    try:
        address = ("127.0.0.1", listener.getsockname()[1], False)
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(address[:2])
            fillers.append(filler)
        await asyncio.sleep(0.05)
        probe = socket.socket()
        probe.setblocking(False)
        try:
            async with asyncio.timeout(0.2):
                await asyncio.get_running_loop().sock_connect(probe, address[:2])
            pytest.skip("this kernel accepts connects beyond a full backlog: no offline way to time one out")
        except TimeoutError:
            pass  # the SYN was dropped: the client's connect will hang the same way
        finally:
            probe.close()
        async with h1(connect_timeout=0.3) as client:
            with pytest.raises(ConnectTimeout, match="timed out after 0.3s"):
                async with asyncio.timeout(3):
                    await client.request(address, "GET", "/", [])
            assert client._open == 0
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# -- TLS ----------------------------------------------------------------------------------------


async def test_tls_handshake_with_the_services_context(pki: dict[str, str]) -> None:  # noqa: F811
    app = EchoApp("tls")
    async with serve_app(app, ssl_certfile=pki["server"], ssl_keyfile=pki["server_key"]) as url:
        ctx = client_ssl_context(UpstreamTLS(ca_file=pki["ca"], server_name="catalog.internal"))
        async with h1(ssl_context=ctx) as client:
            address = _address(url)
            assert address[2] is True
            for _ in range(2):
                resp = await client.request(address, "GET", "/secure", [])
                assert resp.status == 200
                assert b'"raw_path": "/secure"' in await read_all(resp)
                resp.release()
            assert client.stats["connects"] == 1


def _other_ca_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some other ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


async def test_tls_with_the_wrong_ca_is_connect_failed(pki: dict[str, str]) -> None:  # noqa: F811
    async with serve_app(EchoApp("tls"), ssl_certfile=pki["server"], ssl_keyfile=pki["server_key"]) as url:
        ctx = client_ssl_context(UpstreamTLS(server_name="catalog.internal"))
        ctx.load_verify_locations(cadata=_other_ca_pem().decode())
        async with h1(ssl_context=ctx) as client:
            with pytest.raises(ConnectFailed, match="TLS handshake") as info:
                await client.request(_address(url), "GET", "/", [])
            assert not isinstance(info.value, ConnectTimeout)
            assert client._open == 0
        # No context: the system trust store does not know the test CA either.
        async with h1() as client:
            with pytest.raises(ConnectFailed, match="TLS handshake"):
                await client.request(_address(url), "GET", "/", [])


# -- 9. the pool limit --------------------------------------------------------------------------


def _slow(delay: float) -> Answer:
    async def answer(server: Scripted, seen: Seen) -> Reply:
        await asyncio.sleep(delay)
        return ok(b"slow"), False

    return answer


async def test_limit_bounds_open_connections_and_the_third_request_waits() -> None:
    async with upstream(_slow(0.2)) as (server, address), h1(limit=2) as client:
        tasks = [asyncio.create_task(fetch(client, address)) for _ in range(3)]
        await eventually(lambda: server.connections == 2)
        assert client.exhausted
        await asyncio.sleep(0.05)
        assert server.connections == 2 and not any(t.done() for t in tasks)
        assert await asyncio.gather(*tasks) == [b"slow"] * 3
        assert server.max_open == 2 and server.max_active == 2
        assert server.connections == 2  # the third request took a released connection


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    async with upstream(_slow(0.2)) as (server, address), h1(limit=2) as client:
        busy = [asyncio.create_task(fetch(client, address)) for _ in range(2)]
        await eventually(lambda: server.connections == 2)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await fetch(client, address)
        await asyncio.gather(*busy)
        assert client.in_use == 0
        # Both slots are still there: two requests run at once (the server sees them overlap).
        server.max_active = 0
        before = len(server.requests)
        async with asyncio.timeout(2):
            await asyncio.gather(fetch(client, address), fetch(client, address))
        assert len(server.requests) == before + 2
        assert server.connections == 2
        assert server.max_active == 2


async def test_exhausted_only_while_every_connection_is_busy() -> None:
    async with upstream(_slow(0.1)) as (server, address), h1(limit=2) as client:
        first = [asyncio.create_task(fetch(client, address)) for _ in range(2)]
        await eventually(lambda: server.connections == 2)
        assert client.exhausted and client.in_use == 2
        await asyncio.gather(*first)
        # Two idle keep-alive connections: nothing is waiting and a request would go out at once.
        assert client.in_use == 0
        assert not client.exhausted


# -- 10. idle expiry ----------------------------------------------------------------------------


async def test_idle_connections_expire_and_the_next_request_opens_a_new_one() -> None:
    async with upstream(answering(ok())) as (server, address), h1(idle_timeout=0.2) as client:
        assert await fetch(client, address) == b"ok"
        assert server.eofs == 0
        await asyncio.sleep(0.4)
        await eventually(lambda: server.eofs == 1, timeout=1.0)  # the client closed it
        assert client._open == 0
        assert await fetch(client, address) == b"ok"
        assert server.connections == 2


# -- 11. request bodies -------------------------------------------------------------------------


async def test_body_with_content_length_is_sent_raw() -> None:
    async with upstream(answering(ok())) as (server, address), h1() as client:
        body = Body([b"hello ", b"world"])
        await fetch(client, address, "PUT", headers=[("Content-Length", "11")], body=body)
        seen = server.requests[0]
        assert b"content-length: 11" in seen.header_lines
        assert not any(line.startswith(b"transfer-encoding") for line in seen.header_lines)
        assert seen.body == b"hello world"


async def test_body_without_length_goes_chunked() -> None:
    async with upstream(answering(ok())) as (server, address), h1() as client:
        await fetch(client, address, "POST", body=Body([b"a" * 10, b"b" * 70_000, b"c"]))
        await fetch(client, address, "POST", body=Body([]))
        first, empty = server.requests
        assert b"transfer-encoding: chunked" in first.header_lines
        assert not any(line.startswith(b"content-length") for line in first.header_lines)
        assert first.body == b"a" * 10 + b"b" * 70_000 + b"c"
        assert empty.body == b""
        assert server.connections == 1


async def test_chunked_body_with_an_empty_chunk_is_not_cut_short() -> None:
    # An empty chunk framed as "0\r\n\r\n" would end the body early and the rest would be read
    # by the upstream as the next request (a smuggled request).
    async with upstream(answering(ok())) as (server, address), h1() as client:
        await fetch(client, address, "POST", body=Body([b"abc", b"", b"GET /smuggled HTTP/1.1\r\n\r\n"]))
        assert [s.body for s in server.requests] == [b"abcGET /smuggled HTTP/1.1\r\n\r\n"]
        assert server.requests[0].head.startswith(b"POST / ")


async def test_body_failing_before_its_first_chunk_sends_nothing() -> None:
    async with upstream(answering(ok())) as (server, address), h1() as client:
        with pytest.raises(BodyAborted, match="client went away"):
            await client.request(address, "POST", "/", [], Body([b"never"], fail_at=0))
        # The first chunk is taken before a connection is chosen: not even a connection was made.
        assert server.connections == 0
        assert server.requests == []
        assert client._open == 0


async def test_body_failing_mid_way_aborts_and_the_connection_is_not_reused() -> None:
    async with upstream(answering(ok())) as (server, address), h1() as client:
        with pytest.raises((BodyAborted, ConnectionReset)):
            await client.request(address, "POST", "/", [], Body([b"part", b"more"], fail_at=2))
        assert client._open == 0
        assert await fetch(client, address, "POST", body=Body([b"next"])) == b"ok"
        assert server.connections == 2
        assert [s.body for s in server.requests] == [b"next"]


# -- 12. backpressure ---------------------------------------------------------------------------

BIG = 20 * 1024 * 1024
ONE_READ = 256 * 1024  # the most asyncio's socket transport reads at once


async def test_a_slowly_read_big_response_stays_bounded_in_memory() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
        block = b"x" * (1024 * 1024)
        for _ in range(BIG // len(block)):
            writer.write(block)
            await writer.drain()
        await reader.read()

    async with raw_server(handler) as url, h1() as client:
        resp = await client.request(_address(url), "GET", "/", [])
        total, most, reads = 0, 0, 0
        async with asyncio.timeout(10):
            while not resp.at_eof():
                await asyncio.sleep(0.002 if reads % 4 else 0.02)  # the proxy's client is slow
                most = max(most, resp._buffered)
                total += len(await resp.readany())
                reads += 1
        resp.release()
        assert total == BIG
        assert most <= HIGH_WATER + ONE_READ
        assert most >= HIGH_WATER  # it did fill up: the bound above was actually tested


class Capturing(H1Client):
    """The client, keeping its connections for the test to look at."""

    conns: list[_Conn]

    async def _connect(self, address: Address, factory: Callable[[], Any]) -> Any:
        conn = await super()._connect(address, factory)
        self.conns = [*getattr(self, "conns", []), conn]
        return conn


async def test_a_big_upload_to_a_slow_reader_waits_for_drain() -> None:
    received = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while received < length:
            data = await reader.read(256 * 1024)
            if not data:
                return
            received += len(data)
            await asyncio.sleep(0.005)
        writer.write(ok(b"got it"))
        await writer.drain()

    chunk = b"u" * (64 * 1024)
    most = 0
    client = Capturing(limit=2, idle_timeout=30.0, connect_timeout=2.0)

    class Upload:
        started = False

        def __aiter__(self) -> AsyncIterator[bytes]:
            return self._iterate()

        async def _iterate(self) -> AsyncIterator[bytes]:
            nonlocal most
            self.started = True
            for _ in range(BIG // len(chunk)):
                if getattr(client, "conns", None):  # (the first chunk is taken before the connection)
                    transport = client.conns[0].transport
                    assert transport is not None
                    most = max(most, transport.get_write_buffer_size())
                yield chunk

    async with raw_server(handler) as url:
        try:
            async with asyncio.timeout(10):
                body = await fetch(client, _address(url), "PUT", headers=[("content-length", str(BIG))], body=Upload())
        finally:
            await client.close()
    assert body == b"got it"
    assert received == BIG
    high_water = 64 * 1024  # asyncio's default write buffer limit
    assert most <= high_water + len(chunk)


# -- 13. serialization --------------------------------------------------------------------------


async def test_cr_or_lf_in_a_header_is_refused_before_anything_is_sent() -> None:
    async with upstream(answering(ok())) as (server, address), h1() as client:
        for headers in ([("x-a", "1\r\nx-smuggled: 1")], [("x-a", "1\nx")], [("x-a\r\n", "1")]):
            with pytest.raises(ValueError, match="CR or LF"):
                await client.request(address, "GET", "/", headers)
        with pytest.raises(ValueError, match="CR or LF"):
            await client.request(address, "GET", "/ HTTP/1.1\r\nx: y", [])
        assert server.connections == 0
        assert client._open == 0


async def test_host_is_added_from_the_address_when_absent() -> None:
    async with upstream(answering(ok())) as (server, address), h1() as client:
        await fetch(client, address)
        await fetch(client, address, headers=[("Host", "shop.local")])
        first, second = server.requests
        assert f"host: 127.0.0.1:{address[1]}".encode() in first.header_lines
        assert second.header_lines.count(b"host: shop.local") == 1
        assert sum(line.startswith(b"host:") for line in second.header_lines) == 1


async def test_host_for_ipv6_and_default_ports() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    app = EchoApp("v6")
    try:
        cm = serve_app(app, host="::1")
        url = await cm.__aenter__()
    except OSError as exc:
        pytest.skip(f"::1 not available: {exc}")
    try:
        async with h1() as client:
            address = _address(url)
            assert address[0] == "::1"
            await fetch(client, address)
            assert ("host", f"[::1]:{address[1]}") in app.requests[0]["headers"]
    finally:
        await cm.__aexit__(None, None, None)


async def test_post_without_body_says_content_length_zero_and_get_does_not() -> None:
    async with upstream(answering(ok())) as (server, address), h1() as client:
        await fetch(client, address, "POST")
        await fetch(client, address, "GET")
        await fetch(client, address, "DELETE")
        post, get, delete = server.requests
        assert b"content-length: 0" in post.header_lines
        assert not any(line.startswith(b"content-length") for line in get.header_lines)
        assert not any(line.startswith(b"content-length") for line in delete.header_lines)
        assert get.head.startswith(b"GET / HTTP/1.1\r\n")


# -- 14. release() and close() of a response ----------------------------------------------------


async def test_releasing_an_incomplete_response_closes_its_connection() -> None:
    async with upstream(answering(ok(b"y" * 2_000_000))) as (server, address), h1() as client:
        resp = await client.request(address, "GET", "/", [])
        assert not resp.at_eof()
        resp.release()
        assert client._open == 0
        assert await fetch(client, address) == b"y" * 2_000_000
        assert server.connections == 2


async def test_close_always_closes_and_release_of_a_complete_response_reuses() -> None:
    async with upstream(answering(ok())) as (server, address), h1() as client:
        resp = await client.request(address, "GET", "/", [])
        assert await read_all(resp) == b"ok"
        resp.close()
        assert client._open == 0
        assert await fetch(client, address) == b"ok"
        assert await fetch(client, address) == b"ok"
        assert server.connections == 2
        assert client._open == 1 and client.in_use == 0


# -- 15. closing the client ---------------------------------------------------------------------


async def test_close_closes_idle_connections_and_refuses_later_requests() -> None:
    async with upstream(answering(ok())) as (server, address):
        client = H1Client(limit=4, idle_timeout=30.0, connect_timeout=2.0)
        assert await fetch(client, address) == b"ok"
        await client.close()
        await eventually(lambda: server.eofs == 1)
        with pytest.raises(ConnectFailed, match="closed"):
            await client.request(address, "GET", "/", [])
        assert server.connections == 1


async def test_a_request_waiting_for_a_slot_when_the_client_closes_fails() -> None:
    async with upstream(_slow(0.2)) as (server, address):
        client = H1Client(limit=1, idle_timeout=30.0, connect_timeout=2.0)
        busy = asyncio.create_task(fetch(client, address))
        await eventually(lambda: server.connections == 1)
        waiting = asyncio.create_task(fetch(client, address))
        await asyncio.sleep(0.02)
        await client.close()
        assert await busy == b"slow"
        with pytest.raises(ConnectFailed, match="closed"):
            async with asyncio.timeout(2):
                await waiting
        assert server.connections == 1
        assert client._open == 0


def test_errors_are_one_hierarchy() -> None:
    for error in (ConnectFailed, ConnectTimeout, ResponseInvalid, ConnectionReset, BodyAborted):
        assert issubclass(error, UpstreamError)
    assert issubclass(ConnectTimeout, TimeoutError) and issubclass(ConnectTimeout, ConnectFailed)


async def test_bytes_after_a_complete_response_are_not_taken_for_the_next_response() -> None:
    # An upstream that sends more than its framing said must not poison the next request on the
    # connection with a response of its choosing (nginx: "upstream sent more data than specified").
    async def answer(server: Scripted, seen: Seen) -> Reply:
        if len(server.requests) == 1:
            return ok(b"one") + b"HTTP/1.1 302 Found\r\nLocation: /evil\r\nX-Junk: ", False
        return ok(b"two"), False

    async with upstream(answer) as (server, address), h1() as client:
        assert await fetch(client, address) == b"one"
        resp = await client.request(address, "GET", "/", [])
        assert (resp.status, await read_all(resp)) == (200, b"two")
        resp.release()
        assert server.connections == 2


async def test_a_body_sent_after_a_head_response_is_not_reused() -> None:
    async def answer(server: Scripted, seen: Seen) -> Reply:
        if seen.head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nHTTP/1.1 302 Found\r\n", False
        return ok(b"get"), False

    async with upstream(answer) as (server, address), h1() as client:
        resp = await client.request(address, "HEAD", "/", [])
        assert resp.status == 200 and resp.at_eof()
        await asyncio.sleep(0.05)  # (the extra bytes arrive while the response is still held)
        resp.release()
        assert await fetch(client, address) == b"get"
        assert server.connections == 2


async def test_each_idle_connection_expires_about_idle_timeout_after_its_release() -> None:
    async def answer(server: Scripted, seen: Seen) -> Reply:
        if b"/later" in seen.head.split(b"\r\n", 1)[0]:
            await asyncio.sleep(0.1)
        return ok(), False

    async with upstream(answer) as (server, address), h1(idle_timeout=0.3) as client:
        await asyncio.gather(fetch(client, address, target="/now"), fetch(client, address, target="/later"))
        idle = client._idle[address]
        assert len(idle) == 2
        later_since = idle[-1].idle_since
        assert later_since - idle[0].idle_since >= 0.05
        await eventually(lambda: server.eofs == 1)  # the first sweep closed the older one
        assert server.eofs == 1 and len(idle) == 1
        # The next sweep is due when the younger one is idle_timeout old, not a whole period later
        # (which left a connection open up to twice its idle timeout).
        assert client._sweep is not None
        assert client._sweep.when() <= later_since + 0.3 + 0.05
        await eventually(lambda: server.eofs == 2)


async def test_an_os_level_connect_timeout_without_a_configured_one_is_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The kernel's own SYN timeout (ETIMEDOUT, minutes) cannot run in a test: the loop's connect
    # is replaced by one that fails the way it does.
    async def timed_out(*args: Any, **kwargs: Any) -> Any:
        raise TimeoutError(errno.ETIMEDOUT, "Connection timed out")

    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", timed_out)
    async with h1(connect_timeout=None) as client:
        with pytest.raises(ConnectTimeout, match="connect to 127.0.0.1:9 timed out"):
            await client.request(("127.0.0.1", 9, False), "GET", "/", [])
        assert client._open == 0


async def test_chunked_can_be_forced_over_a_content_length() -> None:
    async with upstream(answering(ok())) as (server, address), h1() as client:
        headers = [("content-length", "6"), ("x-keep", "1")]
        await fetch(client, address, "POST", headers=headers, body=Body([b"ab", b"cdef"]), chunked=True)
        seen = server.requests[0]
        assert b"transfer-encoding: chunked" in seen.header_lines and b"x-keep: 1" in seen.header_lines
        assert not any(line.startswith(b"content-length") for line in seen.header_lines)
        assert seen.body == b"abcdef"


async def test_bytes_on_an_idle_connection_close_it() -> None:
    async def answer(server: Scripted, seen: Seen) -> Reply:
        if len(server.requests) == 1:
            asyncio.get_running_loop().call_later(0.05, server.writers[0].write, ok(b"unasked"))
        return ok(b"asked"), False

    async with upstream(answer) as (server, address), h1() as client:
        assert await fetch(client, address) == b"asked"
        await eventually(lambda: client._open == 0)  # the client dropped it on the unasked bytes
        assert await fetch(client, address) == b"asked"
        assert server.connections == 2


async def test_a_wake_up_that_races_a_waiters_timeout_goes_on_to_the_next_waiter() -> None:
    # One connection, held by A; B and C wait for it. A's slot is freed in the same loop turn as
    # B's wait times out: B gives up, so the wake-up it got must go to C (or C waits for nothing
    # and fails with "all connections busy" while the only slot is free).
    timeout = 1.0
    big = answering(ok(b"y" * 2_000_000))
    async with upstream(big) as (_, address), h1(limit=1, connect_timeout=timeout) as client:
        loop = asyncio.get_running_loop()
        held = await client.request(address, "GET", "/", [])
        b = asyncio.create_task(fetch(client, address))
        await eventually(lambda: len(client._waiters) == 1)
        b_deadline = loop.time() + timeout  # B's own deadline is at most this
        await asyncio.sleep(0.3)
        c = asyncio.create_task(fetch(client, address))
        await eventually(lambda: len(client._waiters) == 2)
        loop.call_soon(held.close)  # runs in the turn that also runs B's expired timeout...
        # ...as the loop is late for it (blocked on purpose):
        time.sleep(max(0.0, b_deadline + 0.05 - loop.time()))  # noqa: ASYNC251
        await asyncio.gather(b, return_exceptions=True)
        async with asyncio.timeout(5):
            assert await c == b"y" * 2_000_000
        assert client.in_use == 0 and client._open == 1


async def _by_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each request with its target, except a few that misbehave (never read the body...)."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        target = head.split(b" ", 2)[1]
        if target == b"/early":
            writer.write(ok(b"early"))  # answered without reading the body
        elif target == b"/slowbody":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"s" * 10)
        elif target != b"/hang":
            writer.write(ok(target))
            continue
        await asyncio.sleep(30)  # /hang, /early, /slowbody: then nothing more (the test ends first)
        return


class Forever:
    """A request body that never ends (one 64 KiB chunk per ``pause``); ``closed`` once abandoned."""

    def __init__(self, pause: float = 0.0) -> None:
        self.pause = pause
        self.started = False
        self.closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        self.started = True
        try:
            for _ in range(100_000):
                await asyncio.sleep(self.pause)
                yield b"f" * 65536
        finally:
            self.closed = True


async def _cancel_in_connect(client: H1Client, address: Address) -> None:
    task = asyncio.create_task(client.request(address, "GET", "/never", []))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _timeout_waiting_for_the_head(client: H1Client, address: Address) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await client.request(address, "GET", "/hang", [])


async def _timeout_mid_upload_to_a_non_reader(client: H1Client, address: Address) -> None:
    body = Forever()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await client.request(address, "PUT", "/hang", [("content-length", str(1 << 40))], body)
    await eventually(lambda: body.closed)  # the body writer did not outlive the request


async def _early_answer_mid_upload(client: H1Client, address: Address) -> None:
    body = Forever(pause=0.05)
    assert await fetch(client, address, "POST", "/early", body=body) == b"early"
    await eventually(lambda: body.closed)


async def _timeout_mid_response_body(client: H1Client, address: Address) -> None:
    resp = await client.request(address, "GET", "/slowbody", [])
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await read_all(resp)
    resp.release()


@pytest.mark.parametrize(
    "interrupt",
    [
        _cancel_in_connect,
        _timeout_waiting_for_the_head,
        _timeout_mid_upload_to_a_non_reader,
        _early_answer_mid_upload,
        _timeout_mid_response_body,
    ],
)
async def test_an_interrupted_request_frees_its_slot_once_and_its_connection_is_never_reused(
    interrupt: Callable[[H1Client, Address], Awaitable[None]],
) -> None:
    async with raw_server(_by_target) as url, h1(limit=1) as client:
        address = _address(url)
        assert await fetch(client, address, "GET", "/before") == b"/before"
        await interrupt(client, address)
        assert client.in_use == 0 and client._open <= 1
        # The next request gets its own response (nothing left of the interrupted exchange), on
        # the only slot (a leaked slot would make this wait; a double free would open a second).
        async with asyncio.timeout(2):
            assert await fetch(client, address, "GET", "/after") == b"/after"
            assert await fetch(client, address, "GET", "/again") == b"/again"
        assert client.in_use == 0 and client._open == 1


async def test_a_trailer_that_never_ends_is_response_invalid_within_a_bounded_size() -> None:
    # The parser buffers a header value until it ends: an endless trailer after the last chunk
    # grew the facade's memory without limit (and quadratically in CPU), as an endless head did.
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(256):  # 16 MiB at most
                writer.write(b"t" * 65536)
                sent += 65536
                await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(handler) as url, h1() as client:
        resp = await client.request(_address(url), "GET", "/", [])
        with pytest.raises(ResponseInvalid, match="trailers"):
            async with asyncio.timeout(5):
                await read_all(resp)
        resp.release()
        assert client._open == 0
        assert sent <= 4 * 1024 * 1024  # stopped early (the rest sits in socket buffers at most)


async def test_many_tiny_chunks_and_modest_trailers_pass() -> None:
    # The bound counts framing bytes since the last body byte only: a body in one-byte chunks has
    # far more framing than body, and trailers under the bound are fine.
    body = b"".join(b"1\r\n%c\r\n" % (65 + i % 26) for i in range(50_000))
    trailer = b"X-Checksum: " + b"c" * 30_000 + b"\r\n"
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n" + trailer + b"\r\n"
    async with upstream(answering(reply)) as (server, address), h1() as client:
        got = await fetch(client, address)
        assert len(got) == 50_000 and got.startswith(b"ABC")
        assert await fetch(client, address) == got
        assert server.connections == 1  # complete and reusable


async def test_waiters_that_gave_up_are_not_kept() -> None:
    # While every connection stays busy (long streams), each request that times out waiting
    # left its future queued until a slot freed: memory grew with the request rate, unbounded.
    async with upstream(answering(ok(b"y" * 2_000_000))) as (_, address), h1(limit=1) as client:
        held = await client.request(address, "GET", "/", [])  # a real connect: the default timeout (loaded CI)
        client.connect_timeout = 0.01  # from here on only waits for the busy slot time out: keep them short
        for _ in range(20):
            with pytest.raises(PoolExhausted):
                await client.request(address, "GET", "/", [])
        for _ in range(20):
            before = len(client._waiters)
            task = asyncio.create_task(client.request(address, "GET", "/", []))
            await eventually(lambda before=before: len(client._waiters) > before)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert len(client._waiters) == 0
        held.close()
        client.connect_timeout = 2.0  # the next request may connect again
        assert await fetch(client, address) == b"y" * 2_000_000
