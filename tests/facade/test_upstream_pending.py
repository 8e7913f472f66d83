"""Circuit breaking in the HTTP/1.1 client: a bounded queue of waiters, served first come first served."""

from __future__ import annotations

import asyncio

import pytest

from facade.upstream.h1 import PoolExhausted, PoolOverflow

from .test_upstream_h1 import Scripted, Seen, answering, eventually, fetch, h1, ok, upstream


def _gated(gate: asyncio.Event) -> object:
    async def answer(server: Scripted, seen: Seen) -> tuple[bytes, bool]:
        await gate.wait()
        return ok(seen.head.split(b" ", 2)[1]), False

    return answer


def _targets(server: Scripted) -> list[bytes]:
    return [seen.head.split(b" ", 2)[1] for seen in server.requests]


async def test_a_full_queue_of_waiters_refuses_at_once() -> None:
    gate = asyncio.Event()
    async with upstream(_gated(gate)) as (server, address), h1(limit=1, max_pending=1, connect_timeout=30.0) as client:  # type: ignore[arg-type]
        holding = asyncio.create_task(fetch(client, address, target="/a"))
        await eventually(lambda: server.connections == 1)
        waiting = asyncio.create_task(fetch(client, address, target="/b"))
        await eventually(lambda: client.pending == 1)
        # The queue is full: refused now, not after the 30 s connect timeout.
        async with asyncio.timeout(2):
            with pytest.raises(PoolOverflow):
                await fetch(client, address, target="/c")
        assert isinstance(PoolOverflow("x"), PoolExhausted)  # the proxy answers both with 503
        assert client.stats["pending_overflow"] == 1
        gate.set()
        assert await holding == b"/a"
        assert await waiting == b"/b"
        assert client.pending == 0 and client._open == 1


async def test_max_pending_zero_never_waits() -> None:
    gate = asyncio.Event()
    async with upstream(_gated(gate)) as (server, address), h1(limit=1, max_pending=0) as client:  # type: ignore[arg-type]
        holding = asyncio.create_task(fetch(client, address, target="/a"))
        await eventually(lambda: server.connections == 1)
        with pytest.raises(PoolOverflow):
            await fetch(client, address, target="/b")
        gate.set()
        assert await holding == b"/a"


async def test_a_freed_connection_goes_to_the_oldest_waiter_not_a_newcomer() -> None:
    async with upstream(answering(ok(b"x"))) as (server, address), h1(limit=1) as client:
        first = await client.request(address, "GET", "/a", [])
        waiter = asyncio.create_task(fetch(client, address, target="/b"))
        await eventually(lambda: client.pending == 1)
        # A newcomer whose first step runs before the waiter wakes: it must not take the connection
        # the release frees (it used to find it idle and jump the queue).
        newcomer = asyncio.create_task(fetch(client, address, target="/c"))
        assert first.read_nowait() == b"x" and first.at_eof()
        first.release()
        assert await waiter == b"x"
        assert await newcomer == b"x"
        assert _targets(server) == [b"/a", b"/b", b"/c"]
        assert server.connections == 1  # handed over warm, never closed
        assert client.pending == 0 and client.in_use == 0


async def test_a_slot_freed_for_another_address_goes_to_the_oldest_waiter() -> None:
    async with upstream(answering(ok(b"x"))) as (_, a), upstream(answering(ok(b"y"))) as (other, b):
        async with h1(limit=1) as client:
            first = await client.request(a, "GET", "/a", [])
            waiter = asyncio.create_task(fetch(client, b, target="/b"))
            await eventually(lambda: client.pending == 1)
            newcomer = asyncio.create_task(fetch(client, a, target="/c"))
            assert first.read_nowait() == b"x"
            first.release()  # the waiter wants b: a's connection closes and its slot goes to the waiter
            assert await waiter == b"y"
            assert await newcomer == b"x"
            assert _targets(other) == [b"/b"]
            assert client._open == 1


async def test_a_waiter_that_gives_up_passes_its_turn_on() -> None:
    gate = asyncio.Event()
    async with upstream(_gated(gate)) as (server, address), h1(limit=1, connect_timeout=0.3) as client:  # type: ignore[arg-type]
        holding = asyncio.create_task(fetch(client, address, target="/a"))
        await eventually(lambda: server.connections == 1)
        with pytest.raises(PoolExhausted):
            await fetch(client, address, target="/b")
        assert client.pending == 0
        later = asyncio.create_task(fetch(client, address, target="/c"))
        await eventually(lambda: client.pending == 1)
        gate.set()
        assert await holding == b"/a"
        assert await later == b"/c"


async def test_a_waiter_never_gets_a_connection_the_upstream_closed() -> None:
    # The upstream closes every connection right after its response (without saying so in a header):
    # whether the close is seen before the release or only by the check on hand-over (a FIN queued in
    # the kernel, which a test cannot time), the waiting POST (never replayed once written) goes out
    # on a new connection.
    async with upstream(answering(ok(b"x"), close=True)) as (server, address), h1(limit=1) as client:
        for _ in range(5):
            first = await client.request(address, "GET", "/a", [])
            waiter = asyncio.create_task(
                fetch(client, address, "POST", "/b", headers=[("Content-Length", "1")], body=_one(b"p"))
            )
            await eventually(lambda: client.pending == 1)
            assert first.read_nowait() == b"x"
            first.release()
            assert await waiter == b"x"
        assert server.connections == 10  # every request on a connection of its own
        assert client.pending == 0 and client.in_use == 0


async def _one(data: bytes):  # type: ignore[no-untyped-def]
    yield data
