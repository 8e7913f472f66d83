"""WebSocket upgrades, proxied both ways (a monolith's live features keep working behind the facade).

Same routing and header hygiene as HTTP; the upstream side is the ``websockets`` library (the one
uvicorn serves the client side with) over a connection from the chosen service's pool
(``H1Client.open_connection``: its TLS context, the mesh's included, and one of its
``max_connections``). Either side closing closes the other with the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.http11 import Request
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI

from .errors import UpstreamUnavailable
from .headers import ForwardContext, build_upstream_headers
from .normalize import HostRejected, PathRejected, normalize_host, normalize_path
from .upstream.h1 import PoolClosed, PoolExhausted, UpstreamError

if TYPE_CHECKING:
    from .snapshot import Snapshot
    from .upstream import Endpoint, ServicePool

__all__ = ["proxy_websocket"]

logger = logging.getLogger("facade.websocket")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# The handshake headers the upstream leg generates itself (Host: the client's, set by _Handshake).
_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                        "sec-websocket-protocol", "upgrade", "connection", "host"})


MAX_MESSAGE = 4 * 1024 * 1024  # bytes of one upstream message (aiohttp's default, which this leg used)
CLOSE_TIMEOUT = 5.0  # seconds to wait for the upstream's close frame after sending ours
_UNSENDABLE_CLOSE_CODES = frozenset({1004, 1005, 1006, 1015})  # RFC 6455 7.4.1: never in a close frame


def relayable_close_code(code: int | None, *, abnormal: int) -> int:
    """The code to pass on for a close seen on the other leg: a reserved or missing code becomes 1000
    (closed without a code) or ``abnormal`` (the connection dropped without a close frame)."""
    if code is None or code == 1005:
        return 1000
    if code in _UNSENDABLE_CLOSE_CODES or not (1000 <= code <= 4999):
        return abnormal
    return code


class _Handshake(ClientProtocol):
    """The upstream handshake with the client's Host header (the URI names the endpoint dialled)."""

    def __init__(self, uri: WebSocketURI, host: str, **kwargs: Any) -> None:
        super().__init__(uri, **kwargs)
        self.host = host

    def connect(self) -> Request:
        request = super().connect()
        if self.host:
            del request.headers["Host"]
            request.headers["Host"] = self.host
        return request


async def connect_upstream(
    pool: ServicePool, endpoint: Endpoint, target: str, headers: list[tuple[str, str]], subprotocols: list[str]
) -> ClientConnection:
    """Open the upstream WebSocket: a connection from the pool, then the opening handshake.

    ``target`` is sent byte for byte below the endpoint's base path; ``headers`` are the forwarded
    ones (a ``host`` among them is sent as the Host header). The connection holds one of the pool's
    slots until it closes. The handshake must complete within the service's request timeout
    (Envoy's route timeout covers an upgrade until its response). Raises ``UpstreamError`` (connect,
    pool), ``WebSocketException`` (refused handshake), ``OSError`` or ``TimeoutError``.
    """
    host, port, tls = endpoint.address
    path, _, query = endpoint.target_for(target).partition("?")
    client_host = next((v for k, v in headers if k == "host"), "")
    handshake = _Handshake(
        WebSocketURI(tls, host, port, path, query), client_host,
        subprotocols=[Subprotocol(p) for p in subprotocols] or None, max_size=MAX_MESSAGE,
    )
    client = pool.h1
    # No keep-alive pings of our own (the leg never had them): the client's and the upstream's are relayed.
    upstream = await client.open_connection(
        endpoint.address, lambda: ClientConnection(handshake, ping_interval=None, close_timeout=CLOSE_TIMEOUT)
    )
    upstream.connection_lost_waiter.add_done_callback(lambda _: client.release_slot())
    try:
        async with asyncio.timeout(pool.spec.timeouts.request):
            await upstream.handshake([(k, v) for k, v in headers if k != "host"], user_agent_header=None)
    except BaseException:
        upstream.transport.abort()  # connection_lost follows: the slot is freed there
        raise
    return upstream


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
        upstream = await connect_upstream(pool, endpoint, target, up_headers, list(scope.get("subprotocols") or ()))
    except (PoolExhausted, PoolClosed) as exc:
        logger.warning("websocket upstream %s on route %s: %s", backend, route.name, exc)
        await _refuse(scope, send, 503, "no healthy upstream")
        return
    except (TimeoutError, UpstreamError, WebSocketException, OSError) as exc:
        logger.warning("websocket upstream %s failed on route %s: %r", backend, route.name, exc)
        await _refuse(scope, send, 502, "upstream websocket connect failed")
        return
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

    async def client_to_upstream() -> None:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.receive":
                if msg.get("text") is not None:
                    await upstream.send(msg["text"])
                else:
                    await upstream.send(msg.get("bytes") or b"")
            elif msg["type"] == "websocket.disconnect":
                await upstream.close(code=relayable_close_code(msg.get("code"), abnormal=1001))
                return

    async def upstream_to_client() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for data in upstream:
                if isinstance(data, str):
                    await send({"type": "websocket.send", "text": data})
                else:
                    await send({"type": "websocket.send", "bytes": data})
        code = relayable_close_code(upstream.close_code, abnormal=1011)
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
        await upstream.close()
