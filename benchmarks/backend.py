"""The benchmark backend: a raw ASGI app answering a small fixed body (as cheap as a Python server gets)."""

from __future__ import annotations

from typing import Any

BODY = b'{"id": 1, "name": "benchmark", "price": "19.99"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
