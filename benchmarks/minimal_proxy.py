"""The floor: the least a raw-ASGI + aiohttp proxy can do (no routing, no hygiene, no telemetry).

bench_proxy.py runs it beside the facade so the cost of the facade's own work is visible:
facade vs minimal is what routing, normalization, header hygiene, retries and telemetry cost.
Backend from $BACKEND (e.g. http://127.0.0.1:8001).
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

BACKEND = os.environ.get("BACKEND", "")
_HOP = (b"transfer-encoding", b"connection", b"keep-alive")
_session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _session
    if scope["type"] != "http":
        return
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024), auto_decompress=False)
    async with _session.request(scope["method"], BACKEND + scope["path"], allow_redirects=False) as r:
        body = await r.read()
        headers = [(k, v) for k, v in r.raw_headers if k.lower() not in _HOP]
        await send({"type": "http.response.start", "status": r.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
