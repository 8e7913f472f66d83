"""WebSocket upgrades, proxied both ways (a monolith's live features keep working behind the facade).

An upgrade is decided like any request (``facade.resolve``: Host rules, route, header rules, the
migration split with its sticky cookie) and its upstream headers are built like an HTTP request's
(``proxy.upstream_request_headers``: hygiene, X-Forwarded-*, route rules, the sidecar's XFCC).
The upgrade is recorded once, when it is answered: telemetry counts it with its status (101, or the
refusal) and the time to that answer, not the session's length (a session's length says nothing
about the backend, and a gate would otherwise wait for it). A refusal is an HTTP response (the
``websocket.http.response`` extension) with the same JSON body as HTTP. The upstream side is
``_connect`` on the chosen service's pool; either side closing closes the other with the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import aiohttp

from .error_log import RecentErrors
from .errors import ProxyError, UpgradeRefused, UpstreamConnectError, UpstreamTimeout
from .exchange import error_refusal, is_loopback, record_request, refusal, upstream_request_headers
from .headers import apply_header_ops_bytes
from .resolve import Forward, resolve_request

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
) -> None:
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
    up_headers = [(k, v) for k, v in up_headers if k not in _HANDSHAKE]
    if decision.host_header:
        up_headers.append(("host", decision.host_header))
    # The handshake is bounded like a request (a backend that accepts and never answers must not hold the client).
    timeout = route.timeout if route.timeout is not None else (pool.spec.timeouts.request or _DEFAULT_HANDSHAKE_TIMEOUT)
    upstream_s: float | None = None
    try:
        endpoint = pool.pick()  # raises UpstreamUnavailable
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
    if snap.config.mark_responses:
        accept_headers.append((b"x-facade-backend", backend.encode("latin-1")))
        accept_headers.append((b"x-facade-step", decision.step.encode("latin-1")))
    record_request(snap, decision, "GET", 101, started, upstream_s, 0, 0, ids)
    await send({"type": "websocket.accept", "subprotocol": upstream.protocol, "headers": accept_headers})

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


async def _connect(
    pool: ServicePool, endpoint: Endpoint, target: str, headers: list[tuple[str, str]], subprotocols: Any
) -> aiohttp.ClientWebSocketResponse:
    """Open the upstream leg of an upgrade. Raises ``UpgradeRefused`` (the upstream answered with a status)
    or ``UpstreamConnectError`` (no answer: connect failure, reset)."""
    try:
        return await pool.session.ws_connect(
            endpoint.url_for(target), headers=headers, protocols=tuple(subprotocols),
            autoclose=False, autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise UpgradeRefused(exc.status, f"{endpoint.url} answered the upgrade with {exc.status}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamConnectError(f"websocket connect to {endpoint.url} failed: {exc!r}") from None
