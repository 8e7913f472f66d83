"""WebSocket upgrades, proxied both ways (a monolith's live features keep working behind the facade).

Same routing and header hygiene as HTTP; the upstream side is aiohttp's ``ws_connect`` on the
chosen service's pool. Either side closing closes the other with the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import aiohttp

from .errors import UpstreamUnavailable
from .headers import ForwardContext, build_upstream_headers
from .normalize import HostRejected, PathRejected, normalize_host, normalize_path

if TYPE_CHECKING:
    from .snapshot import Snapshot

__all__ = ["proxy_websocket"]

logger = logging.getLogger("facade.websocket")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# The handshake headers aiohttp generates itself for the upstream leg.
_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                        "sec-websocket-protocol", "upgrade", "connection", "host"})


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        body = message.encode()
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1011})


async def proxy_websocket(snap: Snapshot, scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    norm = snap.config.normalize
    try:
        path = normalize_path(scope.get("raw_path") or scope["path"].encode(),
                              merge_slashes=norm.merge_slashes, reject_encoded_slash=norm.reject_encoded_slash,
                              semicolons=norm.semicolons)
        host_header = next((v for k, v in headers if k == b"host"), b"")
        host = normalize_host(host_header) if host_header else ""
    except (PathRejected, HostRejected) as exc:
        await _refuse(scope, send, 400, f"bad request: {exc.reason}")
        return
    query: bytes = scope.get("query_string", b"")
    hit = snap.table.resolve(host=host, path=path, method="GET", headers=headers, query_string=query)
    if hit is None or not hit.route.backends:
        await _refuse(scope, send, 404, "no route matches")
        return
    route = hit.route
    split = snap.splits.get(route.name)
    if split is not None:
        backend = snap.decide(split, headers, random.random).backend
    else:
        backend = snap.pick_backend(route, random.random())
    pool = snap.upstreams.get(backend)
    if pool is None:
        await _refuse(scope, send, 503, "no healthy upstream")
        return
    client = scope.get("client") or ("", 0)
    ctx = ForwardContext(client_ip=client[0], client_port=client[1], scheme="https" if scope.get("scheme") == "wss" else "http",
                         host_header=host_header.decode("latin-1"), trusted_peer=snap.is_trusted(client[0]),
                         listener_by=None)
    up_headers, _ = build_upstream_headers(headers, ctx)
    up_headers = [(k, v) for k, v in up_headers if k not in _HANDSHAKE]
    if host_header:
        up_headers.append(("host", host_header.decode("latin-1")))
    target = hit.upstream_path + ("?" + query.decode("latin-1") if query else "")
    try:
        endpoint = pool.pick()
    except UpstreamUnavailable as exc:
        logger.warning("websocket route %s backend %s: %s", route.name, backend, exc)
        await _refuse(scope, send, 503, "no healthy upstream")  # the detail is for the log, not the client
        return
    try:
        upstream = await pool.session.ws_connect(
            endpoint.url_for(target), headers=up_headers, protocols=tuple(scope.get("subprotocols") or ()),
            autoclose=False, autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        logger.warning("websocket upstream %s failed on route %s: %r", backend, route.name, exc)
        await _refuse(scope, send, 502, "upstream websocket connect failed")
        return
    await send({"type": "websocket.accept", "subprotocol": upstream.protocol})

    async def client_to_upstream() -> None:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.receive":
                if msg.get("text") is not None:
                    await upstream.send_str(msg["text"])
                else:
                    await upstream.send_bytes(msg.get("bytes") or b"")
            elif msg["type"] == "websocket.disconnect":
                await upstream.close(code=msg.get("code", 1000))
                return

    async def upstream_to_client() -> None:
        async for msg in upstream:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await send({"type": "websocket.send", "text": msg.data})
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await send({"type": "websocket.send", "bytes": msg.data})
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED) or msg.type == aiohttp.WSMsgType.ERROR:
                break
        code = upstream.close_code or 1000
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code})

    tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if not upstream.closed:
            await upstream.close()
