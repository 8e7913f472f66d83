"""WebSocket upgrades, proxied both ways (a monolith's live features keep working behind the facade).

An upgrade is decided like any request (``facade.resolve``: Host rules, route, header rules, the
migration split with its sticky cookie) and its upstream headers are built like an HTTP request's
(``exchange.upstream_request_headers``: hygiene, X-Forwarded-*, route rules, the sidecar's XFCC).
The upgrade is recorded once, when it is answered: telemetry counts it with its status (101, or the
refusal) and the time to that answer, not the session's length (a session's length says nothing
about the backend, and a gate would otherwise wait for it). A refusal is an HTTP response (the
``websocket.http.response`` extension) with the same JSON body as HTTP. The upstream side is the
``websockets`` library (the one uvicorn serves the client side with) over a connection from the
chosen service's pool (``H1Client.open_connection``: its TLS context, the mesh's included, and one
of its ``max_connections`` until it closes). Either side closing closes the other with the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.http11 import Request
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI

from .error_log import RecentErrors
from .errors import ProxyError, UpgradeRefused, UpstreamConnectError, UpstreamTimeout, UpstreamUnavailable
from .exchange import (
    error_refusal,
    injected_fault,
    is_loopback,
    json_answer,
    record_request,
    refusal,
    upstream_request_headers,
)
from .headers import apply_header_ops_bytes
from .resolve import Forward, resolve_request
from .upstream.h1 import PoolClosed, PoolExhausted, UpstreamError

if TYPE_CHECKING:
    from .snapshot import Snapshot
    from .upstream import Endpoint, ServicePool

__all__ = ["proxy_websocket", "refuse_websocket"]

logger = logging.getLogger("facade.websocket")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# The handshake headers the client library generates itself for the upstream leg.
_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                        "sec-websocket-protocol", "upgrade", "connection", "host"})
_DEFAULT_HANDSHAKE_TIMEOUT = 30.0  # when neither route nor service bounds a request


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


async def refuse_websocket(scope: Scope, send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Answer an upgrade with an HTTP response instead of 101 (a server without the extension: close, 403)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008 if status == 403 else 1011})


async def proxy_websocket(
    snap: Snapshot,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    rand: Callable[[], float] = random.random,
    errors: RecentErrors | None = None,
    rate_limited: Callable[[Snapshot, Any, Scope], list[tuple[bytes, bytes]] | None] | None = None,
) -> None:
    """Proxy one WebSocket session. ``rate_limited`` is the proxy's check of a route's rate limit
    (``None`` when the request may pass, else the 429's headers)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    started = time.perf_counter()
    decision = resolve_request(snap, scope, rand)
    if not isinstance(decision, Forward):
        await refuse_websocket(scope, send, *refusal(decision))
        return
    route, backend, pool = decision.route, decision.backend, decision.pool
    up_headers, ids, client_ip = upstream_request_headers(snap, scope, decision)
    if route.rate_limit is not None and rate_limited is not None:
        limited = rate_limited(snap, route, scope)
        if limited is not None:
            await refuse_websocket(scope, send, *json_answer(429, {"error": "rate limited"}, limited))
            record_request(snap, decision, "GET", 429, started, None, 0, 0, ids)
            return
    extras = decision.extras
    if extras is not None and (extras.delay or extras.abort):
        fault = await injected_fault(snap, decision, extras)
        if fault is not None:
            await refuse_websocket(scope, send, *fault)
            record_request(snap, decision, "GET", fault[0], started, None, 0, 0, ids)
            return
    up_headers = [(k, v) for k, v in up_headers if k not in _HANDSHAKE]
    host = route.rewrite_authority or decision.host_header
    if host:
        up_headers.append(("host", host))
    # The handshake is bounded like a request (a backend that accepts and never answers must not hold the client).
    timeout = route.timeout if route.timeout is not None else (pool.spec.timeouts.request or _DEFAULT_HANDSHAKE_TIMEOUT)
    upstream_s: float | None = None
    try:
        endpoint = pool.pick(hash_key=decision.hash_key)  # raises UpstreamUnavailable
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                upstream = await _connect(pool, endpoint, decision.target, up_headers, scope.get("subprotocols") or ())
        except TimeoutError:
            raise UpstreamTimeout(f"no upgrade answer from {endpoint.url} within {timeout:.3g}s") from None
        upstream_s = time.perf_counter() - t0
    except ProxyError as exc:
        if errors is not None:
            errors.add(request_id=ids.request_id, status=exc.status, reason=exc.reason, detail=exc.detail,
                       route=route.name, backend=backend)
        debug = snap.config.debug_error_details and is_loopback(client_ip)
        await refuse_websocket(scope, send, *error_refusal(exc, route.name, backend, ids.request_id, debug=debug))
        record_request(snap, decision, "GET", exc.status, started, upstream_s, 0, 0, ids)
        return
    # The 101 carries what an HTTP response of the route would: its header rules, the sticky cookie, the marks.
    accept_headers: list[tuple[bytes, bytes]] = []
    if not route.response_headers.empty:
        accept_headers = apply_header_ops_bytes(accept_headers, route.response_headers)
    if decision.set_cookie is not None:
        accept_headers.append((b"set-cookie", decision.set_cookie))
    if decision.hash_cookie is not None:
        accept_headers.append((b"set-cookie", decision.hash_cookie))
    if snap.config.mark_responses:
        accept_headers.append((b"x-facade-backend", backend.encode("latin-1")))
        accept_headers.append((b"x-facade-step", decision.step.encode("latin-1")))
    record_request(snap, decision, "GET", 101, started, upstream_s, 0, 0, ids)
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol, "headers": accept_headers})

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


async def _connect(
    pool: ServicePool, endpoint: Endpoint, target: str, headers: list[tuple[str, str]], subprotocols: Any
) -> ClientConnection:
    """Open the upstream leg of an upgrade, errors in the proxy's terms: ``UpgradeRefused`` (the upstream
    answered with a status), ``UpstreamUnavailable`` (the pool is full or was reconfigured),
    ``UpstreamConnectError`` (no answer: connect failure, reset, a broken handshake)."""
    try:
        return await connect_upstream(pool, endpoint, target, headers, list(subprotocols))
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise UpgradeRefused(status, f"{endpoint.url} answered the upgrade with {status}") from None
    except (PoolExhausted, PoolClosed) as exc:
        raise UpstreamUnavailable(f"websocket upstream {endpoint.url}: {exc}") from None
    except (UpstreamError, WebSocketException, OSError) as exc:
        raise UpstreamConnectError(f"websocket connect to {endpoint.url} failed: {exc!r}") from None
