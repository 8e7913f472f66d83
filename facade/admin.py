"""The admin listener (Starlette, loopback by default).

Reads are open (like Envoy's admin); every mutation needs ``Authorization: Bearer <token>``
(``admin.token`` in the config, or ``$FACADE_ADMIN_TOKEN``). With no token configured,
mutations are refused: deny by default.

Features add their own endpoints: every ``Feature`` of ``runtime.features`` contributes its
``admin_routes()`` (migrations, compare, mesh, ...) and its ``prometheus_text()`` to ``/metrics``.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .config import Config, RouteMatch
from .config import Route as ConfigRoute
from .telemetry import CONTENT_TYPE

if TYPE_CHECKING:
    from .runtime import FacadeRuntime

__all__ = ["build_admin_app", "require_token", "route_view"]


def admin_token(config: Config) -> str | None:
    return config.admin.token or os.environ.get("FACADE_ADMIN_TOKEN") or None


def require_token(runtime: FacadeRuntime, request: Request) -> JSONResponse | None:
    """None when the request carries the admin token; else the 401 response to send."""
    expected = admin_token(runtime.config)
    if not expected:
        return JSONResponse(
            {"error": "no admin token configured: set admin.token in the config or FACADE_ADMIN_TOKEN"},
            status_code=401,
        )
    supplied = request.headers.get("authorization", "")
    scheme, _, token = supplied.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        return JSONResponse(
            {"error": "missing or wrong bearer token"}, status_code=401, headers={"www-authenticate": "Bearer"}
        )
    return None


def mutation(
    runtime: FacadeRuntime, handler: Callable[[Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    async def guarded(request: Request) -> Response:
        denied = require_token(runtime, request)
        if denied is not None:
            return denied
        response = await handler(request)
        # With workers, answer only once every live worker runs the snapshot this mutation made.
        await runtime.settled()
        return response

    return guarded


def _match_view(m: RouteMatch) -> dict[str, Any]:
    view: dict[str, Any] = {"path": {m.path_kind: m.path}}
    if m.hosts:
        view["hosts"] = list(m.hosts)
    if m.methods:
        view["methods"] = list(m.methods)
    if m.headers:
        view["headers"] = {name: {sm.kind: sm.value} for name, sm in m.headers}
    if m.query:
        view["query"] = {name: {sm.kind: sm.value} for name, sm in m.query}
    return view


def route_view(runtime: FacadeRuntime, route: ConfigRoute) -> dict[str, Any]:
    snap = runtime.holder.current
    view: dict[str, Any] = {"name": route.name, "match": [_match_view(m) for m in route.matches]}
    if route.direct_response is not None:
        view["action"] = {"direct_response": route.direct_response.status}
        return view
    if route.redirect is not None:
        view["action"] = {"redirect": route.redirect.code}
        return view
    split = snap.splits.get(route.name)
    if split is not None:
        weight = split.weight_bps / 100
        backends = [
            {"service": split.primary, "weight": 100 - weight},
            {"service": split.candidate, "weight": weight},
        ]
        view["migration"] = {
            "step": split.step_label,
            "shadow_percent": split.shadow_percent,
            "canary": bool(split.canary),
            "sticky": bool(split.sticky),
        }
    else:
        backends = [{"service": b.service, "weight": b.weight} for b in route.backends]
        if len(backends) == 1:
            backends[0]["weight"] = 100
    for b in backends:
        pool = snap.upstreams.get(str(b["service"]))
        b["pool"] = pool.snapshot() if pool is not None else None
    view["backends"] = backends
    if route.rewrite_prefix is not None:
        view["rewrite"] = {"prefix": route.rewrite_prefix}
    return view


def build_admin_app(runtime: FacadeRuntime) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if runtime.draining:
            return JSONResponse({"ready": False, "reason": "draining"}, status_code=503)
        return JSONResponse({"ready": True, "version": runtime.version})

    async def routes(request: Request) -> Response:
        config = runtime.config
        return JSONResponse(
            {"version": runtime.version, "routes": [route_view(runtime, r) for r in config.routes]}
        )

    async def upstreams(request: Request) -> Response:
        # Every service's pool, routed to or not (a migration's target is in no route's backends
        # until the plan starts): health, ejections, connections. `facade up` waits on it.
        snap = runtime.holder.current
        return JSONResponse({"version": snap.version, **snap.upstreams.snapshot()})

    async def config_view(request: Request) -> Response:
        config = runtime.config
        snap = runtime.holder.current
        return JSONResponse(
            {
                "version": snap.version,
                "config_version": runtime.config_version,
                "sha256": config.sha256,
                "source": os.path.abspath(config.source),
                "built_at": snap.built_at,
                "listen": runtime.url,
                "admin": runtime.admin_url,
                "services": [s.name for s in config.services],
                "routes": [r.name for r in config.routes],
                "warnings": [str(w) for w in config.warnings],
                "last_reload": runtime.last_reload.to_json(),
            }
        )

    async def reload(request: Request) -> Response:
        result = await runtime.reload("api")
        return JSONResponse(result.to_json(), status_code=200 if result.ok else 422)

    async def metrics(request: Request) -> Response:
        await runtime.gather_telemetry()  # every worker's latest batch, not up to half a second old
        text = runtime.telemetry.prometheus_text() + runtime.head_limits.stats.prometheus_text()
        text += runtime.upstreams.prometheus_text() + runtime.rate_limits.prometheus_text()
        text += "".join(feature.prometheus_text() for feature in runtime.features)
        return Response(text, media_type=CONTENT_TYPE)

    async def errors(request: Request) -> Response:
        # Details of recent upstream failures (clients got only status, reason and request id).
        await runtime.gather_telemetry()
        return JSONResponse({"errors": runtime.errors.view(request.query_params.get("request_id"))})

    endpoints: list[BaseRoute] = [
        Route("/metrics", metrics),
        Route("/errors", errors),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/routes", routes),
        Route("/upstreams", upstreams),
        Route("/config", config_view),
        Route("/reload", mutation(runtime, reload), methods=["POST"]),
    ]
    for feature in runtime.features:
        endpoints.extend(feature.admin_routes())
    return Starlette(routes=endpoints)
