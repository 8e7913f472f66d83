"""The migrations admin API (Starlette routes on the admin listener), as ``facade migrate`` expects it.

    GET  /migrations                    {"migrations": [status, ...]}        (no journals)
    GET  /migrations/{name}?journal=N   status with gates evaluated now and the last N journal entries
    POST /migrations/{name}/{action}    body {force, reason, to, actor, version?} -> the new status (bearer token)

``version`` (optional) is the status ``version`` the caller decided on: if the plan has moved since,
the action is a ``conflict`` and changes nothing (like Kubernetes' resourceVersion). Without it, the
action applies to the state in force when the request arrived.

Refusals map once, here: ``not_found`` -> 404; ``refused`` / ``conflict`` / ``gate_failed`` -> 409,
``unavailable`` (a shared state store that cannot be reached) -> 503, each with ``Refusal.to_json()``
(``gate_failed`` carries the gate report); a malformed body -> 400.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..admin import mutation
from .engine import ACTIONS, Action, Refusal
from .store import DEFAULT_JOURNAL

if TYPE_CHECKING:
    from .controller import MigrationController

__all__ = ["admin_routes", "parse_action"]

_POST_JOURNAL = 20  # journal entries in the answer to an action: enough to see what just happened


def parse_action(name: str, body: Any) -> tuple[Action, int | None] | str:
    """The ``Action`` a POST body asks for and the version it expects, or what is wrong with the body (pure)."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return "the body must be a JSON object: {force, reason, to, actor, version}"
    unknown = sorted(set(body) - {"force", "reason", "to", "actor", "version"})
    if unknown:
        return f"unknown field {unknown[0]!r} (expected force, reason, to, actor, version)"
    force = body.get("force", False)
    reason = body.get("reason") or ""
    to = body.get("to")
    actor = body.get("actor") or "api"
    if not isinstance(force, bool):
        return f"force must be true or false, got {force!r}"
    if not isinstance(reason, str) or not isinstance(actor, str):
        return "reason and actor must be strings"
    if to is not None and (isinstance(to, bool) or not isinstance(to, int)):
        return f"to must be a step number, got {to!r}"
    version = body.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        return f"version must be the integer version of the status, got {version!r}"
    assert name in ACTIONS
    return Action(name, actor=actor, reason=reason, force=force, to=to), version


_REFUSAL_STATUS = {"not_found": 404, "unavailable": 503}  # everything else: 409


def _refusal(refusal: Refusal) -> JSONResponse:
    return JSONResponse(refusal.to_json(), status_code=_REFUSAL_STATUS.get(refusal.code, 409))


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": "invalid"}, status_code=400)


def admin_routes(controller: MigrationController) -> list[BaseRoute]:
    """The routes the admin app mounts for ``controller`` (mutations behind the admin token)."""

    async def list_migrations(request: Request) -> Response:
        missing = await controller.runtime.gather_telemetry()  # once for every plan's gates
        statuses = [await controller.status(name, journal=0, missing=missing) for name in sorted(controller.plans)]
        return JSONResponse({"migrations": [s for s in statuses if s is not None]})

    async def show(request: Request) -> Response:
        name = request.path_params["name"]
        raw = request.query_params.get("journal", str(DEFAULT_JOURNAL))
        if not raw.isdigit():
            return _bad_request(f"journal must be a number of entries, got {raw!r}")
        status = await controller.status(name, journal=int(raw))
        if status is None:
            known = ", ".join(sorted(controller.plans)) or "none"
            return _refusal(Refusal(f"no migration named {name!r} (known: {known})", "not_found"))
        return JSONResponse(status)

    async def act(request: Request) -> Response:
        name, verb = request.path_params["name"], request.path_params["action"]
        if verb not in ACTIONS:
            return _refusal(Refusal(f"unknown action {verb!r} (expected one of: {', '.join(ACTIONS)})", "not_found"))
        raw = await request.body()
        try:
            body = await request.json() if raw.strip() else {}
        except ValueError:
            return _bad_request("the body is not JSON")
        parsed = parse_action(verb, body)
        if isinstance(parsed, str):
            return _bad_request(parsed)
        action, version = parsed
        result = await controller.act(name, action, expected_version=version)
        if isinstance(result, Refusal):
            return _refusal(result)
        status = await controller.status(name, journal=_POST_JOURNAL)
        if status is None:  # removed by a reload between the commit and now
            return _refusal(Refusal(f"migration {name!r} was removed by a reload", "not_found"))
        plan = controller.plans.get(name)
        if verb == "start" and plan is not None and plan.warnings:
            # Said again when it matters: e.g. the plan's steps now replace a route's weighted backends.
            status["warnings"] = [str(p) for p in plan.warnings]
        return JSONResponse(status)

    return [
        Route("/migrations", list_migrations, methods=["GET"]),
        Route("/migrations/{name}", show, methods=["GET"]),
        Route("/migrations/{name}/{action}", mutation(controller.runtime, act), methods=["POST"]),
    ]
