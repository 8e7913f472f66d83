"""facade/server.py: the one start-up path of every listener keeps the listener settings."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from facade.server import Server, bind, parse_listen, server_config, socket_url


async def client_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the client address uvicorn put in the scope."""
    body = json.dumps({"client": scope["client"][0]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def test_listen_addresses_parse_and_sockets_name_their_url() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9901") == ("::1", 9901)
    sock = bind("127.0.0.1:0")
    try:
        assert socket_url(sock).startswith("http://127.0.0.1:") and sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_every_listener_gets_httptools_and_distrusts_forwarded_headers() -> None:
    for passthrough in (True, False):
        config = server_config(client_app, passthrough=passthrough)
        assert config.http == "httptools" and config.proxy_headers is False and config.lifespan == "off"
        assert config.server_header is not passthrough and config.date_header is not passthrough


@pytest.mark.parametrize("passthrough", [True, False])
async def test_a_started_server_answers_with_its_settings_and_stops(passthrough: bool) -> None:
    sock = bind("127.0.0.1:0")
    url = socket_url(sock)
    server = await Server.start(server_config(client_app, passthrough=passthrough), sock)
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            r = await client.get("/", headers={"x-forwarded-for": "203.0.113.9"})
        assert r.json() == {"client": "127.0.0.1"}  # X-Forwarded-For from loopback is not trusted
        assert ("server" in r.headers) is not passthrough and ("date" in r.headers) is not passthrough

        # httptools, not h11: Content-Length with Transfer-Encoding is refused (request smuggling).
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 400")
    finally:
        await server.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=url) as client:
            await client.get("/")
