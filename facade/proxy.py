"""The hot path: a plain ASGI callable that forwards each request over one immutable Snapshot.

Per request, in order (docs/architecture.md, "The data flow of one request"):

1. read the current Snapshot once (a reload or a migration step swaps the reference; this
   request finishes on the table it started with);
2-4. the resolution step shared with WebSocket upgrades and the sidecar (``facade.resolve``):
   canonical path and Host (400), route (404), redirect / direct response, backend (migration
   split or weights), declared body size (413) -> Forward / Respond / Reject;
5. forward through the service's pool, retrying what is safe to retry;
6. stream the response back, then record telemetry.

Errors are mapped to statuses once, in ``_error_response`` (docs/architecture.md, "Errors"): connect
failure / reset before a response -> 502, no healthy endpoint / pool exhausted -> 503, timeout -> 504.
The client gets the status, a generic reason and the request id; the detail (addresses, identities,
TLS failures) goes to the log and ``RecentErrors`` (admin ``GET /errors``), and to a client only when
``debug_error_details`` is on and the client is on loopback.
A failure after the response started aborts the downstream connection: the client sees a
truncated transfer, never a silently shortened 200.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from . import timers
from .error_log import RecentErrors
from .errors import ProxyError, UpstreamConnectError, UpstreamTimeout, UpstreamUnavailable
from .exchange import (
    error_refusal,
    injected_fault,
    is_loopback,
    json_answer,
    record_request,
    refusal,
    upstream_request_headers,
)
from .headers import (
    apply_header_ops_bytes,
    filter_response_headers,
)
from .ratelimit import RateLimits, client_key
from .resolve import Forward, Reject, Respond, resolve_request
from .traffic_policy import Extras, with_cors
from .upstream import Outcome, retry
from .upstream.h1 import (
    BodyAborted,
    ConnectFailed,
    ConnectTimeout,
    PoolClosed,
    PoolExhausted,
    PoolOverflow,
    ReplayableBody,
    ResponseInvalid,
    UpstreamError,
    UpstreamResponse,
)
from .websocket import proxy_websocket, refuse_websocket

if TYPE_CHECKING:
    from .snapshot import Snapshot, SnapshotHolder
    from .upstream import Endpoint, ServicePool

__all__ = ["DownstreamAborted", "Proxy"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

logger = logging.getLogger("facade.proxy")

_BODYLESS = frozenset({204, 304})
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_RETRY_BACKOFF = 0.025  # Envoy's base retry interval
_STREAM_CHUNK = 64 * 1024


class DownstreamAborted(Exception):
    """Raised after the response started, so uvicorn drops the connection mid-body."""


class _ClientGone(Exception):
    pass


class _BodyTooLarge(Exception):
    pass


class BodyTee:
    """Keeps the first ``limit`` bytes of a streamed body for shadow comparison (never more)."""

    __slots__ = ("chunks", "limit", "size", "truncated")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        room = self.limit - self.size
        if room <= 0:
            self.truncated = self.truncated or bool(chunk)
            return
        if len(chunk) > room:
            chunk = chunk[:room]
            self.truncated = True
        self.chunks.append(chunk)
        self.size += len(chunk)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class RequestBody:
    """The client's request body as an async iterator, bounded by ``limit`` bytes."""

    __slots__ = ("_ended", "_limit", "_receive", "ended", "error", "received", "started", "tee")

    def __init__(self, receive: Receive, limit: int | None, tee: BodyTee | None = None) -> None:
        self._receive = receive
        self._limit = limit
        self.started = False  # reading from ``receive`` began (a retry replays via ReplayableBody)
        self.received = 0
        self.error: Exception | None = None
        self.tee = tee
        self.ended = False  # read to its end, or reading stopped (failed, cancelled)
        self._ended: asyncio.Future[None] | None = None  # made by wait_ended() only: most bodies end first

    def __aiter__(self) -> Any:
        return self._iterate()

    async def wait_ended(self) -> None:
        """Until the body was read to its end, or reading it stopped (failed, cancelled)."""
        if self.ended:
            return
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
        await self._ended

    async def _iterate(self) -> Any:
        self.started = True
        more = True
        try:
            while more:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    self.error = _ClientGone()
                    raise self.error
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                self.received += len(chunk)
                if self._limit is not None and self.received > self._limit:
                    self.error = _BodyTooLarge()
                    raise self.error
                if chunk:
                    if self.tee is not None:
                        self.tee.add(chunk)
                    yield chunk
        finally:
            self.ended = True
            if self._ended is not None and not self._ended.done():
                self._ended.set_result(None)


class Proxy:
    """ASGI application of the client-facing listener."""

    def __init__(
        self, holder: SnapshotHolder, *, errors: RecentErrors | None = None, rate_limits: RateLimits | None = None
    ) -> None:
        self._holder = holder
        self._active = 0
        self._rand = random.random
        self.errors = errors if errors is not None else RecentErrors()
        self.rate_limits = rate_limits if rate_limits is not None else RateLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            snap = self._holder.current  # the one read of the routing state for this request
            if self._active >= snap.config.limits.max_concurrent_requests:
                await _json_response(send, 503, {"error": "too many concurrent requests"})
                return
            self._active += 1
            try:
                await self._handle(snap, scope, receive, send)
            finally:
                self._active -= 1
        elif scope["type"] == "websocket":
            # An upgrade is a request like any other (Envoy's filter chain): the concurrency limit counts
            # it for as long as its session lasts, and its route's rate limit and faults apply.
            snap = self._holder.current
            if self._active >= snap.config.limits.max_concurrent_requests:
                if (await receive())["type"] == "websocket.connect":
                    await refuse_websocket(scope, send, *json_answer(503, {"error": "too many concurrent requests"}))
                return
            self._active += 1
            try:
                await proxy_websocket(
                    snap, scope, receive, send, rand=self._rand, errors=self.errors, rate_limited=self._rate_limited
                )
            finally:
                self._active -= 1
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    async def _handle(self, snap: Snapshot, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        decision = resolve_request(snap, scope, self._rand)
        if not isinstance(decision, Forward):
            await _answer(send, decision)
            return
        route = decision.route
        if route.rate_limit is not None:  # a route without one pays this one check
            limited = self._rate_limited(snap, route, scope)
            if limited is not None:
                if decision.extras is not None:  # a browser reads the 429 only with the route's CORS headers
                    limited.extend(decision.extras.cors)
                await _json_response(send, 429, {"error": "rate limited"}, limited)  # no route name: as errors
                return
        method: str = scope["method"]
        backend = decision.backend
        pool = decision.pool
        target = decision.target
        max_body = snap.config.limits.max_request_body
        has_body = decision.has_body
        # Shadow: the sender decides whether this request is mirrored (safe methods, capacity);
        # if so, the proxy keeps bounded copies of the request and primary response bodies.
        ticket = None
        sender = snap.shadow
        if decision.shadow and sender is not None and decision.split is not None:  # shadow implies a split
            ticket = sender.begin(route=route.name, split=decision.split, method=method)
        req_tee = BodyTee(ticket.max_body) if ticket is not None and has_body else None
        resp_tee = BodyTee(ticket.max_body) if ticket is not None else None
        body = RequestBody(receive, max_body, req_tee) if has_body else None

        up_headers, ids, client_ip = upstream_request_headers(snap, scope, decision)
        extras = decision.extras  # None unless the route or step has a fault or a CORS policy
        if extras is not None and (extras.delay or extras.abort) and await _inject_fault(snap, decision, extras, send):
            if ticket is not None and sender is not None:
                sender.cancel(ticket)  # nothing was forwarded: no answer to compare the copy with
            record_request(snap, decision, method, extras.abort, started, None, 0, 0, ids)
            return

        # The route's timeout also bounds silence mid-body (Envoy's stream idle timeout: 5 min).
        idle_timeout = route.timeout if route.timeout is not None else (pool.spec.timeouts.request or 300.0)
        status = 0
        primary_headers: list[tuple[bytes, bytes]] = []
        upstream_s: float | None = None
        bytes_out = 0
        response_started = False
        try:
            t0 = time.perf_counter()
            resp, first = await self._forward(
                snap, pool, route, method, target, up_headers, body, hash_key=decision.hash_key
            )
            upstream_s = time.perf_counter() - t0
            status = resp.status
            try:
                out_headers = filter_response_headers(resp.raw_headers)
                if status in _BODYLESS:
                    # A 304 may carry the representation's Content-Length (RFC 9110 8.6); no body follows.
                    out_headers = [(k, v) for k, v in out_headers if k not in _FRAMING]
                if ticket is not None:
                    primary_headers = list(out_headers)
                if not route.response_headers.empty:
                    out_headers = apply_header_ops_bytes(out_headers, route.response_headers)
                if extras is not None and extras.cors:
                    out_headers = with_cors(out_headers, extras.cors)
                if decision.set_cookie is not None:
                    out_headers.append((b"set-cookie", decision.set_cookie))
                if decision.hash_cookie is not None:
                    out_headers.append((b"set-cookie", decision.hash_cookie))
                if snap.config.mark_responses:
                    out_headers.append((b"x-facade-backend", backend.encode("latin-1")))
                    out_headers.append((b"x-facade-step", decision.step.encode("latin-1")))
                await send({"type": "http.response.start", "status": status, "headers": out_headers})
                response_started = True
                bytes_out = await _stream_response(
                    resp, first, receive, send, method, resp_tee, idle_timeout, body
                )
            finally:
                resp.release()
        except ProxyError as exc:
            if response_started:
                status = 502  # the client got a truncated response: count it as the failure it is
                if ticket is not None and sender is not None:
                    sender.cancel(ticket)
                raise DownstreamAborted(str(exc)) from None
            status = exc.status
            if body is not None and isinstance(body.error, _BodyTooLarge):
                status = 413
                cors = list(extras.cors) if extras is not None else None  # the browser may read it (as the 429)
                await _json_response(send, 413, {"error": "request body too large", "limit": max_body}, cors)
            elif body is not None and isinstance(body.error, _ClientGone):
                status = 499  # nginx's "client closed request"; nothing to send
            else:
                self.errors.add(
                    request_id=ids.request_id, status=exc.status, reason=exc.reason, detail=exc.detail,
                    route=route.name, backend=backend,
                )
                debug = snap.config.debug_error_details and is_loopback(client_ip)
                await _error_response(
                    send, exc, route.name, backend, ids.request_id, debug=debug, cors=extras.cors if extras else ()
                )
        except (TimeoutError, UpstreamError, OSError) as exc:
            # Failure while streaming the response body: abort, never truncate silently.
            logger.warning("upstream %s failed mid-response on route %s: %r", backend, route.name, exc)
            status = 502  # the client got a truncated response: count it as the failure it is
            if ticket is not None and sender is not None:
                sender.cancel(ticket)
            raise DownstreamAborted(f"upstream {backend} failed mid-response") from None
        finally:
            record_request(
                snap, decision, method, status, started, upstream_s,
                body.received if body is not None else 0, bytes_out, ids,
            )
        if ticket is not None and sender is not None:
            # After the client has its whole response: mirroring never delays the primary.
            if status and status < 600 and resp_tee is not None and upstream_s is not None:
                sender.submit(
                    ticket, target=target, headers=up_headers,
                    request_body=req_tee.data if req_tee is not None else None,
                    request_truncated=req_tee.truncated if req_tee is not None else False,
                    primary_status=status, primary_headers=primary_headers,
                    primary_body=resp_tee.data, primary_truncated=resp_tee.truncated,
                )
            else:
                sender.cancel(ticket)

    def _rate_limited(self, snap: Snapshot, route: Any, scope: Scope) -> list[tuple[bytes, bytes]] | None:
        """None when the route's rate limit lets the request pass, else the 429's headers."""
        limiter = self.rate_limits.limiter(route)
        spec = limiter.spec
        key = ""  # key "route", and requests without the keyed header: one shared bucket
        if spec.key == "client_ip":
            key = (scope.get("client") or ("", 0))[0]
            if snap.is_trusted(key):
                key = client_key(key, [v for k, v in scope["headers"] if k == b"x-forwarded-for"], snap.is_trusted)
        elif spec.key == "header":
            name = spec.header.encode("latin-1")
            for k, v in scope["headers"]:
                if k == name:
                    key = v.decode("latin-1")
                    break
        wait = limiter.check(key, self.rate_limits.clock())
        return limiter.headers(wait) if wait else None

    async def _forward(
        self,
        snap: Snapshot,
        pool: ServicePool,
        route: Any,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: RequestBody | None,
        *,
        hash_key: int | None = None,
    ) -> tuple[UpstreamResponse, bytes]:
        """Send the request, retrying what is safe to retry.

        Returns the response (headers read) and the first chunk of its body, read under the same
        per-try timer: backends often write headers and body separately, and one timer per
        request is cheaper than two.
        """
        spec = pool.spec
        retries = route.retries or spec.retries
        request_timeout = route.timeout if route.timeout is not None else spec.timeouts.request
        per_try = retries.per_try_timeout or request_timeout
        deadline = time.monotonic() + request_timeout if request_timeout else None
        idempotent = method in retry.IDEMPOTENT
        client = pool.h1
        # One replay buffer for every try: what was taken from the client (the first chunk at
        # least, up to 64 KiB) can go out again; a retry needs ``source.replayable``.
        source = ReplayableBody(body) if body is not None else None
        tried: list[Endpoint] = []
        attempt = 0
        cluster = pool.cluster  # a subset's requests count in its service's budget
        cluster.requests_active += 1  # the retry budget's "active requests" (retries counted once, here)
        retrying = False
        try:
            while True:
                endpoint = pool.pick(exclude=tried, hash_key=hash_key)  # raises UpstreamUnavailable
                tried.append(endpoint)
                timeout = per_try
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    timeout = min(timeout, remaining) if timeout else remaining
                outcome: Outcome
                error: ProxyError
                retry_status = False
                endpoint.begin()
                try:  # in flight until this try ends, however it ends (cancellation included)
                    try:
                        with timers.timeout(timeout if timeout and timeout > 0 else None):  # (coarse: 0-10 ms late)
                            resp = await client.request(
                                endpoint.address,
                                method,
                                endpoint.target_for(target),
                                headers,
                                source,
                                idempotent=idempotent,
                            )
                            first = resp.read_nowait()
                            if not first and not resp.at_eof() and resp.content_type != "text/event-stream":
                                # (An event stream may stay silent for long: its headers go out now and the
                                # stream is watched by _stream_response under the idle timeout instead.)
                                try:
                                    first = await resp.readany()
                                except BaseException:
                                    resp.close()  # the connection's state is unknown: never back to the pool
                                    raise
                    except PoolOverflow as exc:
                        # Envoy's x-envoy-overloaded: the queue of waiters is full; answered at once.
                        pool.stats["pending_overflow"] += 1
                        raise UpstreamUnavailable(
                            f"service {spec.name} overloaded (upstream_rq_pending_overflow): {exc}"
                        ) from None
                    except PoolExhausted as exc:
                        # The service is saturated, not this endpoint: no outlier report, no retry.
                        raise UpstreamUnavailable(f"connection pool of service {spec.name} exhausted: {exc}") from None
                    except PoolClosed:
                        # A reload replaced the service while this request waited (between retries, for a
                        # slot): not the endpoint's failure, and this pool will not accept it again.
                        raise UpstreamUnavailable(
                            f"service {spec.name} was reconfigured during the request; retry it"
                        ) from None
                    except ConnectTimeout as exc:
                        outcome, error = Outcome.CONNECT_FAILURE, UpstreamTimeout(str(exc))
                    except ConnectFailed as exc:
                        outcome, error = Outcome.CONNECT_FAILURE, UpstreamConnectError(str(exc))
                    except TimeoutError:
                        outcome = Outcome.TIMEOUT
                        error = UpstreamTimeout(f"no response from {endpoint.url} within {timeout:.3g}s")
                        if client.exhausted:
                            error = UpstreamUnavailable(f"connection pool of service {spec.name} exhausted")
                    except ValueError as exc:
                        # A header the client refuses to serialize (not latin-1, CR/LF): the config refuses
                        # such rules, but an in-process caller's header extension could still carry one.
                        # Nothing was sent; the same request would fail on any endpoint.
                        raise ProxyError(f"request cannot be sent upstream: {exc}") from None
                    except ResponseInvalid as exc:
                        # The upstream answered something that is not valid HTTP: not a reset, not retried.
                        pool.report(endpoint, Outcome.GATEWAY_ERROR)
                        raise UpstreamConnectError(f"invalid response from {endpoint.url}: {exc}") from None
                    except (UpstreamError, OSError) as exc:
                        if isinstance(exc, BodyAborted) or (body is not None and body.error is not None):
                            raise UpstreamConnectError("request body aborted") from None
                        outcome = Outcome.RESET
                        error = UpstreamConnectError(f"{endpoint.url} reset the connection: {exc}")
                    else:
                        status = resp.status
                        pool.report(endpoint, Outcome.from_status(status))
                        if (
                            status >= 400
                            and attempt < retries.attempts
                            and retry.retry_status(status, retries, idempotent=idempotent)
                            and (source is None or source.replayable)
                            and _time_left(deadline)
                            and (retrying or _retry_granted(pool))
                        ):
                            resp.release()
                            retry_status = True
                        else:
                            return resp, first
                finally:
                    endpoint.end()
                if retry_status:  # (the backoff is spent outside the try: not in flight on the endpoint)
                    retrying = True
                    attempt += 1
                    pool.stats["retries"] += 1  # Envoy: upstream_rq_retry
                    await _backoff(attempt)
                    continue
                pool.report(endpoint, outcome)
                retryable = (
                    attempt < retries.attempts
                    and (source is None or source.replayable)
                    and _time_left(deadline)
                    and retry.retry_failure(outcome, retries, idempotent=idempotent)
                    and (retrying or _retry_granted(pool))
                )
                if not retryable:
                    raise error
                retrying = True
                attempt += 1
                pool.stats["retries"] += 1
                await _backoff(attempt)
        finally:
            cluster.requests_active -= 1
            if retrying:
                cluster.retries_active -= 1


def _retry_granted(pool: ServicePool) -> bool:
    """The first retry of a request asks the service's retry budget; once granted, the request keeps
    it (counted as one retry in flight) until it ends, whatever its attempts."""
    cluster = pool.cluster
    if not retry.budget_allows(
        pool.spec.retries.retry_budget, retries_active=cluster.retries_active, requests_active=cluster.requests_active
    ):
        pool.stats["retries_budget_refused"] += 1  # Envoy: upstream_rq_retry_overflow
        return False
    cluster.retries_active += 1
    return True


def _time_left(deadline: float | None) -> bool:
    return deadline is None or deadline - time.monotonic() > 0.001


async def _backoff(attempt: int) -> None:
    # Envoy: exponential from 25 ms with full jitter, capped at 10x the base.
    cap = min(_RETRY_BACKOFF * (2 ** (attempt - 1)), _RETRY_BACKOFF * 10)
    await asyncio.sleep(random.uniform(0, cap))


async def _stream_response(
    resp: UpstreamResponse,
    first: bytes,
    receive: Receive,
    send: Send,
    method: str,
    tee: BodyTee | None = None,
    idle_timeout: float | None = None,
    body: RequestBody | None = None,
) -> int:
    """Copy the upstream body to the client as it arrives (SSE flushes per chunk); return bytes sent.

    ``first`` is the body's first chunk (read by ``_forward``). The common case, a small body
    complete in that chunk, goes out in one message with no task or timer. Anything longer is
    read under watch: a client disconnect stops the upstream read, and an upstream that sends
    nothing for ``idle_timeout`` aborts the response (Envoy's stream idle timeout) instead of
    holding the client forever.
    """
    content = resp
    if method == "HEAD":
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 0
    if tee is not None and first:
        tee.add(first)
    if content.at_eof():
        await send({"type": "http.response.body", "body": first, "more_body": False})
        return len(first)
    sent = 0
    if first:
        await _send_chunk(send, first, idle_timeout)
        sent = len(first)
    watcher = asyncio.ensure_future(_wait_disconnect(receive, body))
    try:
        while True:
            reader = asyncio.ensure_future(content.readany())
            done, _ = await asyncio.wait((reader, watcher), timeout=idle_timeout, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:
                # Checked first: while the upstream sends faster than the proxy forwards, the reader
                # is done on every turn too, and the rest of the body would be read for nobody.
                reader.cancel()
                raise _ClientGone()
            if reader not in done:
                reader.cancel()
                raise TimeoutError(f"upstream sent nothing for {idle_timeout:g}s mid-body")
            chunk = reader.result()
            if not chunk:
                break
            if tee is not None:
                tee.add(chunk)
            await _send_chunk(send, chunk, idle_timeout)
            sent += len(chunk)
    except _ClientGone:
        resp.close()
        return sent
    finally:
        watcher.cancel()
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return sent


async def _send_chunk(send: Send, chunk: bytes, idle_timeout: float | None) -> None:
    # A client that is connected but reads nothing blocks send() (flow control) for as long as it
    # likes, holding an upstream connection: the idle timeout bounds that silence too (Envoy's
    # stream idle timeout counts both directions).
    try:
        with timers.timeout(idle_timeout):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except TimeoutError:
        raise TimeoutError(f"client read nothing for {idle_timeout:g}s mid-body") from None


async def _wait_disconnect(receive: Receive, body: RequestBody | None) -> None:
    if body is not None and body.started:
        # The body writer reads ``receive`` until the body ends; a second reader would take (and
        # drop) body chunks meant for the upstream. Meanwhile the writer sees a disconnect itself.
        await body.wait_ended()
        if isinstance(body.error, _ClientGone):
            return
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _json_response(send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None) -> None:
    status, headers, payload = json_answer(status, body, extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


async def _error_response(
    send: Send, exc: ProxyError, route: str, backend: str, request_id: str, *, debug: bool = False,
    cors: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    status, headers, payload = error_refusal(exc, route, backend, request_id, debug=debug)
    headers.extend(cors)  # like Envoy's cors filter on local replies: the browser may read the 502/503/504
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


async def _inject_fault(snap: Snapshot, decision: Forward, extras: Extras, send: Send) -> bool:
    """The fault's delay, then its abort answered instead of forwarding (True: the request is answered)."""
    answer = await injected_fault(snap, decision, extras)
    if answer is None:
        return False
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
    return True


async def _answer(send: Send, decision: Respond | Reject) -> None:
    status, headers, body = refusal(decision)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
