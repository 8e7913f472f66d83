"""What both shop apps share on the HTTP side: JSON errors, query parsing and the
``x-served-by`` header that tells, in every response, which process answered."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "BadRequest",
    "ServedBy",
    "error_response",
    "exception_handlers",
    "path_id",
    "query_int",
    "read_json_object",
]


class BadRequest(Exception):
    """The client sent something unusable; mapped to ``status`` with ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    # Starlette's own 404/405 become JSON like every other error of the API.
    return error_response(exc.status_code, str(exc.detail).lower())


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return error_response(exc.status, exc.message)


def exception_handlers() -> Mapping[Any, Any]:
    return {HTTPException: _http_exception, BadRequest: _bad_request}


def query_int(request: Request, name: str, *, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"query parameter {name!r} must be between {lo} and {hi}, got {value}")
    return value


def path_id(request: Request, name: str, what: str) -> int:
    """An integer id from the path; anything else is simply not found (404, like an unknown id)."""
    raw = request.path_params[name]
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"{what} {raw} not found", status=404)
    return int(raw)


async def read_json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        raise BadRequest("request body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


class ServedBy:
    """ASGI middleware adding ``x-served-by: <name>`` to every HTTP response, errors included."""

    def __init__(self, app: ASGIApp, *, name: str) -> None:
        self.app = app
        self.header = (b"x-served-by", name.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)
