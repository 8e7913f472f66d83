"""The proxy end to end: real backends, a real facade, a real client, all on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any

import httpx
import pytest

from facade.proxy import Proxy
from tests.backends import EchoApp, close_immediately, never_answer, raw_server
from tests.harness import run_facade
from tests.servers import refusing_url, serve_app


def _cfg(services: str, routes: str, extra: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0, token: t0ken}}
{extra}
services:
{services}
routes:
{routes}
"""


async def test_routes_by_host_and_path_first_match_wins(tmp_path):
    mono, cat = EchoApp("monolith"), EchoApp("catalog")
    async with serve_app(mono) as m, serve_app(cat) as c:
        cfg = _cfg(
            f"  monolith: {{endpoints: [{m}]}}\n  catalog: {{endpoints: [{c}]}}",
            """  - name: catalog
    match: {host: shop.local, path: {prefix: /catalog}}
    backend: catalog
  - name: default
    match: {path: {prefix: /}}
    backend: monolith""",
        )
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            r = await client.get("/catalog/products", headers={"host": "SHOP.local:8080"})
            assert r.status_code == 200 and r.json()["name"] == "catalog"
            r = await client.get("/catalogue", headers={"host": "shop.local"})
            assert r.json()["name"] == "monolith"  # segment-aware prefix
            r = await client.get("/catalog/x", headers={"host": "other.local"})
            assert r.json()["name"] == "monolith"
            r = await client.get("/catalog/x", headers={"host": "shop.local."})
            assert r.json()["name"] == "catalog"  # trailing dot ignored


async def test_no_route_is_404_json(tmp_path):
    async with serve_app(EchoApp()) as m:
        cfg = _cfg(f"  monolith: {{endpoints: [{m}]}}",
                   "  - name: api\n    match: {path: {prefix: /api}}\n    backend: monolith")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            r = await client.get("/other")
            assert r.status_code == 404
            assert r.json()["error"] == "no route matches"


@pytest.mark.parametrize(
    ("sent", "upstream"),
    [
        ("/a/./b", "/a/b"),
        ("/a/x/../b", "/a/b"),
        ("/a/%2e%2E/b", "/b"),
        ("/a//b", "/a/b"),
        ("/%61/b", "/a/b"),
        ("/a/%252e%252e/b", "/a/%252e%252e/b"),  # %25 is "%": a literal "%2e" name upstream
        ("/caf%c3%a9", "/caf%C3%A9"),
    ],
)
async def test_the_path_sent_upstream_is_the_normalized_path(tmp_path, sent, upstream):
    echo = EchoApp()
    async with serve_app(echo) as m:
        cfg = _cfg(f"  monolith: {{endpoints: [{m}]}}", "  - name: all\n    backend: monolith")
        async with run_facade(tmp_path, cfg) as rt:
            # A raw request line: clients (httpx included) would normalize the path themselves.
            status, body = await _raw_get(rt.url, sent)
            assert status == 200
            assert json.loads(body)["raw_path"] == upstream


@pytest.mark.parametrize("sent", ["/a%2Fb", "/a%5cb", "/a\\b", "/a%00b", "/a%zz", "/a;jsessionid=1/b"])
async def test_paths_without_a_canonical_form_get_400(tmp_path, sent):
    echo = EchoApp()
    async with serve_app(echo) as m:
        cfg = _cfg(f"  monolith: {{endpoints: [{m}]}}", "  - name: all\n    backend: monolith")
        async with run_facade(tmp_path, cfg) as rt:
            status, body = await _raw_get(rt.url, sent)
            assert status == 400, body
            assert echo.requests == []  # never reached the backend


async def test_header_hygiene(tmp_path):
    echo = EchoApp()
    async with serve_app(echo) as m:
        cfg = _cfg(f"  monolith: {{endpoints: [{m}]}}", "  - name: all\n    backend: monolith")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            r = await client.get(
                "/x",
                headers={
                    "connection": "keep-alive, x-forwarded-for, x-request-id",
                    "x-forwarded-for": "6.6.6.6",
                    "forwarded": "for=6.6.6.6",
                    "x-forwarded-client-cert": "URI=spiffe://evil/ns/x/sa/admin",
                    "x-facade-internal": "1",
                    "keep-alive": "timeout=5",
                    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                },
            )
            got = {}
            for k, v in r.json()["headers"]:
                got.setdefault(k, []).append(v)
            assert got["x-forwarded-for"] == ["127.0.0.1"]  # spoof replaced; Connection could not strip it
            assert len(got["forwarded"]) == 1 and "6.6.6.6" not in got["forwarded"][0]
            assert "for=127.0.0.1" in got["forwarded"][0]
            assert "x-forwarded-client-cert" not in got and "x-facade-internal" not in got
            assert "keep-alive" not in got
            assert len(got["x-request-id"][0]) >= 16
            trace = got["traceparent"][0].split("-")
            assert trace[1] == "0af7651916cd43dd8448eb211c80319c" and trace[2] != "b7ad6b7169203331"
            # upstream server/date headers pass through exactly once; no hop-by-hop downstream
            assert r.headers.get_list("server") == r.headers.get_list("server")[:1]
            assert len(r.headers.get_list("date")) <= 1


async def test_weighted_backends_split_within_statistical_bounds(tmp_path):
    a, b = EchoApp("a"), EchoApp("b")
    async with serve_app(a) as ua, serve_app(b) as ub:
        cfg = _cfg(
            f"  a: {{endpoints: [{ua}]}}\n  b: {{endpoints: [{ub}]}}",
            "  - name: all\n    backends: [{service: a, weight: 80}, {service: b, weight: 20}]",
        )
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            n = 400
            for _ in range(n):
                await client.get("/")
            # Binomial(400, 0.2): mean 80, sd 8; 5 sd bounds never flake.
            assert 40 <= len(b.requests) <= 120
            assert len(a.requests) + len(b.requests) == n


async def test_connect_failure_is_retried_on_another_endpoint(tmp_path):
    dead = refusing_url().replace("http://", "")  # a bound port nobody listens on: refused
    async with serve_app(EchoApp("live")) as live:
        cfg = _cfg(
            f"  svc: {{endpoints: [http://{dead}, {live}], retries: {{attempts: 2, retry_on: [connect-failure]}}}}",
            "  - name: all\n    backend: svc",
        )
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            for _ in range(6):
                r = await client.get("/")
                assert r.status_code == 200 and r.json()["name"] == "live"


async def test_dead_upstream_is_502_json_whose_details_go_to_the_admin_api_only(tmp_path):
    dead_url = refusing_url()
    cfg = _cfg(f"  svc: {{endpoints: [{dead_url}]}}", "  - name: all\n    backend: svc")
    async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
        r = await client.get("/")
        assert r.status_code == 502
        body = r.json()
        assert set(body) == {"error", "request_id"} and r.headers["x-request-id"] == body["request_id"]
        admin = (await client.get(rt.admin_url + "/errors", params={"request_id": body["request_id"]})).json()
        (entry,) = admin["errors"]
        assert (entry["route"], entry["backend"], entry["status"]) == ("all", "svc", 502)
        assert dead_url.rsplit(":", 1)[1] in entry["detail"]  # the address the client never saw


async def test_reset_before_headers_is_502(tmp_path):
    async with raw_server(close_immediately) as url:
        cfg = _cfg(f"  svc: {{endpoints: [{url}], retries: {{attempts: 0}}}}", "  - name: all\n    backend: svc")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            r = await client.get("/")
            assert r.status_code == 502


async def test_reset_after_headers_aborts_the_downstream_response(tmp_path):
    async with serve_app(EchoApp()) as url:
        cfg = _cfg(f"  svc: {{endpoints: [{url}]}}", "  - name: all\n    backend: svc")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            with pytest.raises(httpx.HTTPError):
                r = await client.get("/reset-after")
                # If headers and a short body came through, the body must not be a "complete" 1000 bytes.
                assert len(r.content) == 1000
            # The facade still serves the next request.
            r = await client.get("/ok")
            assert r.status_code == 200


async def test_upstream_that_never_answers_is_504_after_the_route_timeout(tmp_path):
    async with raw_server(never_answer) as url:
        cfg = _cfg(f"  svc: {{endpoints: [{url}], retries: {{attempts: 0}}}}",
                   "  - name: all\n    backend: svc\n    timeout: 300ms")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url, timeout=10) as client:
            t0 = time.monotonic()
            r = await client.get("/")
            assert r.status_code == 504
            assert time.monotonic() - t0 < 5  # bounded by the 300 ms timeout, not the client's 10 s


async def test_retry_on_503_for_idempotent_requests_only(tmp_path):
    bad, good = EchoApp("bad"), EchoApp("good")
    async with serve_app(bad) as ub, serve_app(good) as ug:
        cfg = _cfg(
            f"  svc: {{endpoints: [{ub}, {ug}], retries: {{attempts: 2, retry_on: [503]}}}}",
            "  - name: all\n    backend: svc",
        )
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            results = [(await client.get("/status/503")).status_code for _ in range(4)]
            # Both endpoints answer 503 for that path, so retries exhaust and 503 comes back...
            assert results == [503] * 4
            # ...and each GET was tried 3 times in total (1 + 2 retries), spread over both endpoints.
            assert len(bad.requests) + len(good.requests) == 12
            before = len(bad.requests) + len(good.requests)
            r = await client.post("/status/503", content=b"x")
            assert r.status_code == 503
            assert len(bad.requests) + len(good.requests) == before + 1  # POST not retried


async def test_server_sent_events_are_flushed_as_they_arrive(tmp_path):
    async with serve_app(EchoApp()) as url:
        cfg = _cfg(f"  svc: {{endpoints: [{url}]}}", "  - name: all\n    backend: svc")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            t0 = time.monotonic()
            arrivals = []
            async with client.stream("GET", "/stream?n=3&ms=700") as r:
                async for chunk in r.aiter_raw():
                    arrivals.append((time.monotonic() - t0, chunk))
            assert b"".join(c for _, c in arrivals) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
            # The first event reached the client long before the stream ended (no buffering).
            assert arrivals[0][0] < arrivals[-1][0] - 0.9


async def test_redirect_direct_response_rewrite_and_header_ops(tmp_path):
    echo = EchoApp()
    async with serve_app(echo) as url:
        cfg = _cfg(
            f"  svc: {{endpoints: [{url}]}}",
            """  - name: old
    match: {path: {prefix: /old}}
    redirect: {prefix: /new, code: 308}
  - name: ping
    match: {path: {exact: /ping}}
    direct_response: {status: 200, body: pong}
  - name: api
    match: {path: {prefix: /api}}
    backend: svc
    rewrite: {prefix: /v2}
    request_headers: {set: {x-env: demo}, remove: [x-drop]}
    response_headers: {add: {x-route: api}, remove: [x-served-by]}""",
        )
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            r = await client.get("/old/thing?q=1")
            assert r.status_code == 308
            assert r.headers["location"].endswith("/new/thing?q=1")
            r = await client.get("/ping")
            assert (r.status_code, r.text) == (200, "pong")
            r = await client.get("/api/items", headers={"x-drop": "1"})
            body = r.json()
            assert body["raw_path"] == "/v2/items"
            sent = dict(body["headers"])
            assert sent["x-env"] == "demo" and "x-drop" not in sent
            assert r.headers["x-route"] == "api" and "x-served-by" not in r.headers


async def test_request_body_limit_is_413(tmp_path):
    echo = EchoApp()
    async with serve_app(echo) as url:
        cfg = _cfg(f"  svc: {{endpoints: [{url}]}}", "  - name: all\n    backend: svc",
                   extra="limits: {max_request_body: 1KiB}")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            r = await client.post("/upload", content=b"x" * 2048)
            assert r.status_code == 413
            assert echo.requests == []  # refused before any upstream contact

            async def chunks():
                for _ in range(4):
                    yield b"y" * 512

            r = await client.post("/upload", content=chunks())  # chunked: no Content-Length
            assert r.status_code == 413
            r = await client.post("/upload", content=b"z" * 1000)
            assert r.status_code == 200 and r.json()["size"] == 1000


async def test_no_healthy_endpoint_is_503(tmp_path):
    echo = EchoApp()
    echo.health_status = 503
    async with serve_app(echo) as url:
        cfg = _cfg(
            f"  svc: {{endpoints: [{url}], health_check: {{path: /healthz, interval: 50ms, unhealthy_threshold: 1}}}}",
            "  - name: all\n    backend: svc",
        )
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            for _ in range(100):
                r = await client.get("/x")
                if r.status_code == 503:
                    break
                await asyncio.sleep(0.02)
            assert r.status_code == 503
            assert rt.errors.view(r.json()["request_id"])[0]["backend"] == "svc"


async def _raw_get(base_url: str, path: str) -> tuple[int, bytes]:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode("latin-1"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


async def test_mark_responses_names_the_backend_and_step(tmp_path):
    async with serve_app(EchoApp("a")) as url:
        cfg = _cfg(f"  svc: {{endpoints: [{url}]}}", "  - name: all\n    backend: svc", extra="mark_responses: true")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            r = await client.get("/x")
            assert r.headers["x-facade-backend"] == "svc" and r.headers["x-facade-step"] == "stable"
        cfg = _cfg(f"  svc: {{endpoints: [{url}]}}", "  - name: all\n    backend: svc")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            assert "x-facade-backend" not in (await client.get("/x")).headers


async def test_an_upstream_silent_mid_body_is_cut_off_after_the_route_timeout(tmp_path):
    async with serve_app(EchoApp()) as url:
        cfg = _cfg(f"  svc: {{endpoints: [{url}]}}", "  - name: all\n    backend: svc\n    timeout: 300ms")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url, timeout=20) as client:
            t0 = time.monotonic()
            with pytest.raises(httpx.HTTPError):
                async with client.stream("GET", "/stall") as r:
                    assert r.status_code == 200
                    async for _ in r.aiter_raw():
                        pass
            assert time.monotonic() - t0 < 10  # the backend would stall for 30 s


async def test_access_log_writes_one_json_line_per_request(tmp_path, caplog):
    import logging

    async with serve_app(EchoApp("a")) as url:
        cfg = _cfg(f"  svc: {{endpoints: [{url}]}}", "  - name: all\n    backend: svc", extra="access_log: true")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            with caplog.at_level(logging.INFO, logger="facade.access"):
                r = await client.get("/items?x=1", headers={"x-request-id": "req-42"})
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "facade.access"]
    assert len(lines) == 1
    line = lines[0]
    assert (line["route"], line["backend"], line["step"], line["status"], line["request_id"]) == (
        "all", "svc", "stable", 200, "req-42")
    assert line["path"] == "/items" and line["latency_ms"] > 0 and len(line["trace_id"]) == 32
    assert dict(r.json()["headers"])["x-request-id"] == "req-42"


async def test_no_access_log_by_default(tmp_path, caplog):
    import logging

    async with serve_app(EchoApp("a")) as url:
        cfg = _cfg(f"  svc: {{endpoints: [{url}]}}", "  - name: all\n    backend: svc")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            with caplog.at_level(logging.INFO, logger="facade.access"):
                await client.get("/items")
    assert [rec for rec in caplog.records if rec.name == "facade.access"] == []


async def _headers_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(3.0)  # the body comes long after the route's 0.3 s timeout
        writer.write(b"x" * 100)


async def test_a_timeout_waiting_for_the_first_body_bytes_gives_the_connection_back(tmp_path):
    # With one connection allowed, a slot kept by the timed-out response would turn every later
    # request into 503 "pool exhausted" instead of the 504 the upstream's silence deserves.
    async with raw_server(_headers_then_silence) as url:
        cfg = _one_route_cfg(url, "    connection_pool: {max_connections: 1}", timeouts="{request: 0.3s}")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url, trust_env=False) as client:
            statuses = [(await client.get("/")).status_code for _ in range(3)]
            assert statuses == [504, 504, 504]
            h1 = rt.holder.current.upstreams.get("svc").live_h1
            assert h1 is not None and h1.in_use == 0


async def test_a_full_connection_pool_answers_503_after_the_connect_timeout(tmp_path):
    async with raw_server(never_answer) as url:
        cfg = _one_route_cfg(url, "    connection_pool: {max_connections: 1}", timeouts="{connect: 0.2s, request: 3s}")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url, trust_env=False) as client:
            holder = asyncio.create_task(client.get("/slow"))  # takes the only connection for 3 s
            h1 = rt.holder.current.upstreams.get("svc").live_h1
            async with asyncio.timeout(5):
                while h1 is None or h1.in_use < 1:
                    await asyncio.sleep(0.01)
                    h1 = rt.holder.current.upstreams.get("svc").live_h1
            t0 = time.monotonic()
            resp = await client.get("/next")
            waited = time.monotonic() - t0
            assert resp.status_code == 503 and "exhausted" in rt.errors.view(resp.json()["request_id"])[0]["detail"]
            assert waited < 2.0  # bounded by the connect timeout, not the 3 s request timeout
            pool = rt.holder.current.upstreams.get("svc")
            assert pool.endpoints[0].outcomes == {}  # a saturated service is not the endpoint's failure
            assert (await holder).status_code == 504


def _one_route_cfg(url: str, service_extra: str = "", *, timeouts: str = "{request: 3s}") -> str:
    return f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0, token: t0ken}}
services:
  svc:
    endpoints: [{url}]
    timeouts: {timeouts}
    retries: {{attempts: 0}}
{service_extra}
routes:
  - name: all
    match: {{path: {{prefix: /}}}}
    backend: svc
"""


class _Sent:
    """An ASGI ``send`` that records the messages (for calling the Proxy app directly)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)


async def _empty_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _http_scope(extensions: dict[str, Any] | None = None) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http", "method": "GET", "path": "/x", "raw_path": b"/x", "query_string": b"",
        "headers": [(b"host", b"test")], "http_version": "1.1", "scheme": "http",
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


async def _answer_early_then_count_the_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Streams its response while the request body is still arriving (a bidirectional stream):
    # headers and a first chunk at once, then the number of body bytes it received.
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nstarted\r\n")
    await writer.drain()
    await asyncio.sleep(0.3)  # a slow reader: the facade's writes to it back up meanwhile
    received = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        received += len(await reader.readexactly(size + 2)) - 2
        if size == 0:
            break
    tail = b"got %d" % received
    writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(tail), tail))
    await writer.drain()
    await reader.read()


CHUNKS = 128  # 8 MiB: more than loopback's socket buffers take while the upstream does not read


async def test_a_response_streamed_while_the_request_body_arrives_loses_no_body_bytes(tmp_path):
    # The disconnect watcher of the response stream must not read the ASGI receive channel while
    # the body writer still does: every chunk it takes is a chunk the upstream never gets.
    async with raw_server(_answer_early_then_count_the_body) as url, run_facade(tmp_path, _one_route_cfg(url)) as rt:
        host, port = rt.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /up HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"400\r\n" + b"a" * 1024 + b"\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        chunk = b"10000\r\n" + b"b" * 65536 + b"\r\n"
        for _ in range(CHUNKS):
            writer.write(chunk)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        data = b""
        async with asyncio.timeout(5):
            while not data.endswith(b"0\r\n\r\n"):
                more = await reader.read(65536)
                assert more, data
                data += more
        writer.close()
        assert _dechunk(data) == b"started" + b"got %d" % (1024 + CHUNKS * 65536)


class _Endless:
    """An upstream streaming a chunked body as fast as it can, until its connection breaks (or 10 s)."""

    def __init__(self) -> None:
        self.sent = 0
        self.broken = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        block = b"%x\r\n%b\r\n" % (65536, b"x" * 65536)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                writer.write(block)
                self.sent += 65536
                await writer.drain()
        except ConnectionError:
            self.broken.set()


async def test_a_client_gone_mid_response_closes_the_upstream_connection_and_frees_its_slot(tmp_path):
    endless = _Endless()
    async with raw_server(endless) as url, run_facade(tmp_path, _one_route_cfg(url)) as rt:
        host, port = rt.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /download HTTP/1.1\r\nHost: test\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.readexactly(1024 * 1024), 5)
        writer.transport.abort()  # the client goes away mid-body
        # The facade must stop reading the upstream: not drain a body nobody will get.
        await asyncio.wait_for(endless.broken.wait(), 3)
        h1 = rt.holder.current.upstreams.get("svc").live_h1
        assert h1 is not None and h1.in_use == 0 and h1._open == 0


async def test_a_request_header_that_cannot_be_sent_is_a_502_and_leaves_no_request_in_flight(tmp_path):
    # The config refuses such values (test_config); headers also reach the upstream request from an
    # in-process caller (the sidecar's XFCC, through the scope extension). One the HTTP/1.1 client
    # refuses (not latin-1, a CR or LF) once escaped _forward as a ValueError: a bare 500 and an
    # endpoint counting one more request in flight forever.
    echo = EchoApp()
    async with serve_app(echo) as url, run_facade(tmp_path, _one_route_cfg(url)) as rt:
        for value in ("日本", "a\r\nx-smuggled: 1"):
            sent = _Sent()
            scope = _http_scope({"facade.upstream_headers": [("x-forwarded-client-cert", value)]})
            proxy = Proxy(rt.holder)
            await proxy(scope, _empty_body, sent)
            assert sent.messages[0]["status"] == 502
            assert proxy.errors.view(json.loads(sent.messages[1]["body"])["request_id"])[0]["backend"] == "svc"
            assert rt.holder.current.upstreams.get("svc").endpoints[0].in_flight == 0
    assert echo.requests == []


async def test_a_client_gone_mid_upload_closes_the_upstream_connection_and_frees_everything(tmp_path):
    closed = asyncio.Event()
    uploading = asyncio.Event()

    async def reads_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                uploading.set()
        closed.set()

    async with raw_server(reads_until_closed) as url, run_facade(tmp_path, _one_route_cfg(url)) as rt:
        host, port = rt.url.removeprefix("http://").rsplit(":", 1)
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"PUT /up HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n\r\n" + b"p" * 100_000)
        await writer.drain()
        await asyncio.wait_for(uploading.wait(), 5)  # the facade is mid-upload: the upstream has bytes
        writer.transport.abort()
        await asyncio.wait_for(closed.wait(), 3)  # the upstream never waits for the rest
        pool = rt.holder.current.upstreams.get("svc")
        assert pool.live_h1 is not None
        # The facade notices the closed upstream in a later turn of the loop: poll, do not look once.
        deadline = asyncio.get_running_loop().time() + 3
        while (pool.live_h1._open, pool.endpoints[0].in_flight) != (0, 0):
            assert asyncio.get_running_loop().time() < deadline, (pool.live_h1._open, pool.endpoints[0].in_flight)
            await asyncio.sleep(0.01)


async def test_a_client_that_stops_reading_mid_response_is_cut_off_after_the_route_timeout(tmp_path):
    # A client that keeps its connection open but reads nothing blocks the proxy's send forever
    # (flow control): each such client held one upstream connection for good, and a handful of
    # them exhausted the service's pool for everyone (Envoy's stream idle timeout counts silence
    # in either direction).
    endless = _Endless()
    async with raw_server(endless) as url:
        cfg = _one_route_cfg(url).replace("    backend: svc\n", "    backend: svc\n    timeout: 300ms\n")
        async with run_facade(tmp_path, cfg) as rt:
            host, port = rt.url.removeprefix("http://").rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port), limit=1024)
            writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            writer.write(b"GET /download HTTP/1.1\r\nHost: test\r\n\r\n")
            await writer.drain()
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.transport.pause_reading()  # connected, reading nothing
            await asyncio.wait_for(endless.broken.wait(), 5)
            h1 = rt.holder.current.upstreams.get("svc").live_h1
            assert h1 is not None and h1._open == 0
            writer.close()


class _SlowBodies:
    """Keep-alive upstream: every response is 10 pieces of 1000 bytes, 50 ms apart."""

    def __init__(self) -> None:
        self.connections = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n")
                for i in range(10):
                    await asyncio.sleep(0.05)
                    writer.write(b"%d" % i * 1000)
                    await writer.drain()


async def test_a_reload_hands_the_client_over_or_lets_the_replaced_one_finish_its_streams(tmp_path):
    slow = _SlowBodies()
    expected = b"".join(b"%d" % i * 1000 for i in range(10))
    async with raw_server(slow) as url, run_facade(tmp_path, _one_route_cfg(url)) as rt:
        path = tmp_path / "facade.yaml"
        async with httpx.AsyncClient(base_url=rt.url, trust_env=False) as client:
            assert (await client.get("/warm")).content == expected
            old = rt.holder.current.upstreams.get("svc").live_h1
            # 1. Retries changed, connections not: the HTTP/1.1 client and its warm connection carry over.
            stream = asyncio.create_task(client.get("/a"))
            await asyncio.sleep(0.1)
            path.write_text(_one_route_cfg(url).replace("attempts: 0", "attempts: 1"))
            assert (await rt.reload()).ok
            assert rt.holder.current.upstreams.get("svc").live_h1 is old
            assert (await stream).content == expected
            assert (await client.get("/b")).content == expected
            assert slow.connections == 1
            # 2. The pool's size changed: a new client; the replaced one finishes its stream, then closes.
            stream = asyncio.create_task(client.get("/c"))
            await asyncio.sleep(0.1)
            path.write_text(_one_route_cfg(url, "    connection_pool: {max_connections: 3}"))
            assert (await rt.reload()).ok
            assert rt.holder.current.upstreams.get("svc").live_h1 is not old
            assert (await stream).content == expected
            assert old is not None and old._closed and old._open == 0
            assert (await client.get("/d")).content == expected
            assert slow.connections == 2


async def test_a_cancelled_request_is_no_longer_in_flight_on_its_endpoint(tmp_path):
    # Server shutdown cancels request tasks: the endpoint's in-flight count (least_request, reload
    # drain) must come back down however the try ends.
    async with raw_server(never_answer) as url:
        cfg = _one_route_cfg(url, timeouts="{request: 30s}")
        async with run_facade(tmp_path, cfg) as rt:
            sent = _Sent()

            async def silent_client() -> dict[str, object]:
                await asyncio.sleep(60)
                return {"type": "http.disconnect"}

            task = asyncio.create_task(Proxy(rt.holder)(_http_scope(), silent_client, sent))
            pool = rt.holder.current.upstreams.get("svc")
            for _ in range(200):
                if pool.endpoints[0].in_flight:
                    break
                await asyncio.sleep(0.01)
            assert pool.endpoints[0].in_flight == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.endpoints[0].in_flight == 0
            assert pool.live_h1 is not None and pool.live_h1.in_use == 0
            assert sent.messages == []


async def test_a_request_left_on_a_closed_pool_gets_503_and_no_outlier_report(tmp_path):
    # What a request sees when a reload closed its service's client between its retries: the
    # endpoint did nothing wrong, so it is not counted against it.
    echo = EchoApp()
    async with serve_app(echo) as url:
        cfg = _one_route_cfg(url)
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url, trust_env=False) as client:
            assert (await client.get("/warm")).status_code == 200
            pool = rt.holder.current.upstreams.get("svc")
            assert pool.live_h1 is not None
            await pool.live_h1.close()
            resp = await client.get("/after")
            assert resp.status_code == 503
            assert "reconfigured" in rt.errors.view(resp.json()["request_id"])[0]["detail"]
            assert dict(pool.endpoints[0].outcomes) == {"success": 1}
