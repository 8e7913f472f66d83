"""What an HTTP request and a WebSocket upgrade share once the resolution step decided
(``facade/resolve.py``): the headers sent upstream, the answer to a request that is not forwarded
or could not be, and the telemetry and access-log record of one exchange. ``facade/proxy.py`` and
``facade/websocket.py`` both build on it, so neither imports the other."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from .errors import ProxyError
from .headers import ForwardContext, RequestIds, apply_header_ops, build_upstream_headers, new_request_id
from .resolve import Forward, Reject, Respond
from .split import baggage_with_cohort

if TYPE_CHECKING:
    from .snapshot import Snapshot
    from .traffic_policy import Extras

__all__ = [
    "error_refusal", "injected_fault", "is_loopback", "json_answer", "record_request", "refusal",
    "upstream_request_headers",
]

Scope = MutableMapping[str, Any]

# The proxy's loggers: what operators filter on already.
logger = logging.getLogger("facade.proxy")
access_logger = logging.getLogger("facade.access")

JSON_HEADERS = [(b"content-type", b"application/json")]
_HTTP_SCHEME = {"http": "http", "https": "https", "ws": "http", "wss": "https"}  # as X-Forwarded-Proto says it


def record_request(
    snap: Snapshot,
    forward: Forward,
    method: str,
    status: int,
    started: float,
    upstream_s: float | None,
    bytes_in: int,
    bytes_out: int,
    ids: RequestIds,
) -> None:
    """Telemetry and the access log line of one forwarded request (an upgrade counts as one)."""
    duration = time.perf_counter() - started
    if snap.telemetry is not None:
        snap.telemetry.record(
            route=forward.route.name, backend=forward.backend, step=forward.step, method=method, status=status,
            duration_s=duration, upstream_s=upstream_s, bytes_in=bytes_in, bytes_out=bytes_out,
        )
    if snap.config.access_log:
        access_logger.info(json.dumps({
            "time": time.time(), "route": forward.route.name, "backend": forward.backend, "step": forward.step,
            "method": method, "path": forward.path, "status": status, "latency_ms": round(duration * 1000, 3),
            "request_id": ids.request_id, "trace_id": ids.trace_id,
        }))


def error_refusal(
    exc: ProxyError, route: str, backend: str, request_id: str, *, debug: bool = False
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Log a request that could not be forwarded; the status, headers and body its client gets."""
    logger.warning(
        "request %s route %s backend %s: %d %s", request_id, route, backend, exc.status, exc.detail or exc.reason
    )
    body: dict[str, Any] = {"error": exc.reason, "request_id": request_id}
    if debug:  # debug_error_details, loopback client only: the operator's own curl
        body.update(detail=exc.detail, route=route, backend=backend)
    payload = json.dumps(body).encode()
    headers = [*JSON_HEADERS, (b"content-length", str(len(payload)).encode()), (b"x-request-id", request_id.encode("latin-1"))]
    return exc.status, headers, payload


def json_answer(
    status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A small JSON answer the facade gives itself (HTTP and WebSocket refusals alike)."""
    payload = json.dumps(body).encode()
    return status, [*JSON_HEADERS, (b"content-length", str(len(payload)).encode()), *(extra or [])], payload


async def injected_fault(
    snap: Snapshot, decision: Forward, extras: Extras
) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """Istio's fault injection, decided in ``resolve``: wait the delay, then the abort's answer instead of
    forwarding (``None``: forward). Counted in /metrics either way. A WebSocket upgrade is a request
    like any other here, as in Envoy's filter chain."""
    telemetry = snap.telemetry
    route = decision.route.name
    if extras.delay:
        if telemetry is not None:
            telemetry.record_fault(route=route, backend=decision.backend, kind="delay")
        await asyncio.sleep(extras.delay)
    if not extras.abort:
        return None
    if telemetry is not None:
        telemetry.record_fault(route=route, backend=decision.backend, kind="abort")
    body = b"fault filter abort"  # Envoy's body for an injected abort
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()), *extras.cors]
    return extras.abort, headers, body


def is_loopback(ip: str) -> bool:
    return ip.startswith(("127.", "::ffff:127.")) or ip in ("::1", "[::1]")


def upstream_request_headers(
    snap: Snapshot, scope: Scope, forward: Forward
) -> tuple[list[tuple[str, str]], RequestIds, str]:
    """The headers to send upstream for a forwarded request (HTTP or WebSocket), its ids, the client's IP.

    Hygiene and X-Forwarded-* (``headers.build_upstream_headers``), then the route's request header
    rules, then what a trusted in-process caller (the mesh sidecar: X-Forwarded-Client-Cert) adds
    through the ``facade.upstream_headers`` scope extension: clients cannot reach that, it is ASGI
    scope, not a header.
    """
    client = scope.get("client") or ("", 0)
    ctx = ForwardContext(
        client_ip=client[0],
        client_port=client[1],
        scheme=_HTTP_SCHEME.get(scope.get("scheme", "http"), "http"),
        host_header=forward.host_header,
        trusted_peer=snap.is_trusted(client[0]),
        listener_by=None,
    )
    up_headers, ids = build_upstream_headers(scope["headers"], ctx)
    route = forward.route
    if route.rewrite_authority is not None:  # Istio rewrite.authority; X-Forwarded-Host keeps the client's
        up_headers = [("host", route.rewrite_authority), *(h for h in up_headers if h[0] != "host")]
    if not route.request_headers.empty:
        up_headers = apply_header_ops(up_headers, route.request_headers)
    split = forward.split
    if split is not None and split.baggage:  # a migrating route whose plan lets the cohort travel
        up_headers = _with_cohort(up_headers, "new" if forward.backend == split.candidate else "old")
    extensions = scope.get("extensions")
    if extensions:
        extra = extensions.get("facade.upstream_headers")
        if extra:
            up_headers.extend(extra)
    return up_headers, ids, client[0]


def _with_cohort(headers: list[tuple[str, str]], cohort: str) -> list[tuple[str, str]]:
    """The request's ``baggage`` headers folded into one, with ``facade-cohort`` set (unless over W3C's limits)."""
    values = [v for k, v in headers if k == "baggage"]
    merged = baggage_with_cohort(values, cohort)
    if merged is None:
        return headers
    return [(k, v) for k, v in headers if k != "baggage"] + [("baggage", merged)]


def refusal(decision: Respond | Reject) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body for a request the resolution step did not forward (HTTP and WebSocket alike)."""
    if type(decision) is Respond:
        return decision.status, list(decision.headers), decision.body
    assert isinstance(decision, Reject)
    body: dict[str, Any] = {"error": decision.reason}
    extra: list[tuple[bytes, bytes]] = []
    if decision.status == 404:
        # Like every error body: a generic reason and an id to quote (the log line carries the rest).
        rid = new_request_id()
        logger.debug("request %s: %s", rid, decision.detail)
        body["request_id"] = rid
        extra.append((b"x-request-id", rid.encode()))
    elif decision.detail:
        logger.error("%s", decision.detail)
    if decision.limit is not None:
        body["limit"] = decision.limit
    extra.extend(decision.headers)
    payload = json.dumps(body).encode()
    return decision.status, [*JSON_HEADERS, (b"content-length", str(len(payload)).encode()), *extra], payload

