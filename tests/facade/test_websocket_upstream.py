"""WebSocket upgrades on the upstream leg: the websockets library over a connection of the service's pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets.asyncio.client
import websockets.exceptions
from websockets.asyncio.client import ClientConnection

from facade.runtime import FacadeRuntime
from facade.split import Split
from facade.websocket import relayable_close_code
from tests.backends import EchoApp
from tests.harness import run_facade
from tests.servers import serve_app


class RecordingEcho(EchoApp):
    """EchoApp that keeps each WebSocket scope it accepted (path bytes, query, headers)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            self.scopes.append(scope)
        await super().__call__(scope, receive, send)


def _cfg(old: str, new: str, pool: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0, token: t}}
services:
  old: {{endpoints: [{old}]{pool}}}
  new: {{endpoints: [{new}]{pool}}}
routes:
  - name: live
    match: {{path: {{prefix: /live}}}}
    backend: old
"""


def _connect(rt: FacadeRuntime, target: str, **kw: Any) -> websockets.asyncio.client.connect:
    return websockets.asyncio.client.connect(rt.url.replace("http://", "ws://") + target, proxy=None,
                                             open_timeout=5, **kw)


async def _eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def _in_use(rt: FacadeRuntime, service: str) -> int:
    pool = rt.holder.current.upstreams.get(service)
    assert pool is not None and pool.live_h1 is not None
    return pool.live_h1.in_use


async def test_upgrade_through_a_split_goes_to_the_candidate_with_host_path_and_query_as_sent(tmp_path: Path) -> None:
    old, new = RecordingEcho("old"), RecordingEcho("new")
    async with serve_app(old) as old_url, serve_app(new) as new_url:
        async with run_facade(tmp_path, _cfg(old_url, new_url)) as rt:
            rt.swap(splits={"live": Split(primary="old", candidate="new", weight_bps=10_000, step_label="1:100")})
            port = int(rt.url.rsplit(":", 1)[1])
            uri = f"ws://shop.local:{port}/live/x%20y?x=%41&y"  # dialled at 127.0.0.1, Host: shop.local:PORT
            async with websockets.asyncio.client.connect(
                uri, host="127.0.0.1", port=port, proxy=None, user_agent_header=None
            ) as ws:
                await ws.send("hi")
                assert await asyncio.wait_for(ws.recv(), 5) == "new:hi"
                assert _in_use(rt, "new") == 1  # the open WebSocket holds one of the pool's connections
            assert await _eventually(lambda: _in_use(rt, "new") == 0)  # ...until it closes
    assert old.scopes == [] and len(new.scopes) == 1
    (scope,) = new.scopes
    assert scope["raw_path"] == b"/live/x%20y" and scope["query_string"] == b"x=%41&y"
    headers = [(k.decode(), v.decode()) for k, v in scope["headers"]]
    assert [v for k, v in headers if k == "host"] == [f"shop.local:{port}"]  # the client's Host, once
    assert not any(k == "user-agent" for k, _ in headers)  # the leg adds no header the client did not send
    assert any(k == "x-forwarded-for" for k, _ in headers)


async def test_an_open_websocket_counts_against_max_connections(tmp_path: Path) -> None:
    old, new = RecordingEcho("old"), RecordingEcho("new")
    pool = ", connection_pool: {max_connections: 1}, timeouts: {connect: 0.3s}"
    async with serve_app(old) as old_url, serve_app(new) as new_url:
        async with run_facade(tmp_path, _cfg(old_url, new_url, pool)) as rt:
            async with _connect(rt, "/live/1") as first:
                await first.send("one")
                assert await asyncio.wait_for(first.recv(), 5) == "old:one"
                with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                    async with _connect(rt, "/live/2"):
                        pass
                assert refused.value.response.status_code == 503  # the pool's one connection is taken
            assert await _eventually(lambda: _in_use(rt, "old") == 0)
            async with _connect(rt, "/live/3") as again:  # freed when the first closed
                await again.send("three")
                assert await asyncio.wait_for(again.recv(), 5) == "old:three"


async def test_a_refused_upstream_handshake_passes_its_status_and_frees_the_connection(tmp_path: Path) -> None:
    async def plain_http_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1008})  # uvicorn answers the upgrade with 403
            return

    async with serve_app(plain_http_only) as old_url, serve_app(EchoApp()) as new_url:
        async with run_facade(tmp_path, _cfg(old_url, new_url)) as rt:
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                async with _connect(rt, "/live"):
                    pass
            assert refused.value.response.status_code == 403  # the upstream's refusal, as behind Envoy
            assert await _eventually(lambda: _in_use(rt, "old") == 0)


async def test_client_close_code_reaches_the_upstream(tmp_path: Path) -> None:
    codes: list[int] = []

    async def recorder(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            msg = await receive()
            codes.append(msg.get("code"))

    async with serve_app(recorder) as old_url, serve_app(EchoApp()) as new_url:
        async with run_facade(tmp_path, _cfg(old_url, new_url)) as rt:
            ws: ClientConnection
            async with _connect(rt, "/live") as ws:
                await ws.close(code=4100)
            assert await _eventually(lambda: codes == [4100])


@pytest.mark.parametrize(
    ("code", "relayed"), [(None, 1000), (1005, 1000), (1006, 1011), (1015, 1011), (1000, 1000), (4001, 4001)]
)
def test_reserved_close_codes_are_never_relayed(code: int | None, relayed: int) -> None:
    assert relayable_close_code(code, abnormal=1011) == relayed
