"""Retries, retry budgets, rate limits and circuit breaking through a real facade with real upstreams."""

from __future__ import annotations

import asyncio

import httpx

from tests.backends import EchoApp, never_answer, raw_server
from tests.harness import run_facade
from tests.servers import serve_app


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


async def _metric(admin_url: str, line_start: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{admin_url}/metrics")).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start + " ")]
    assert len(values) == 1, f"{line_start} not exposed once"
    return values[0]


async def test_retry_kinds_by_status_and_method(tmp_path):
    app = EchoApp("a")
    async with serve_app(app) as url:
        services = f"""  svc:
    endpoints: [{url}]
    retries: {{attempts: 2, retry_on: [gateway-error, retriable-4xx, retriable-status-codes], retriable_status_codes: [429]}}"""
        async with run_facade(tmp_path, _cfg(services, "  - name: all\n    backend: svc")) as rt:
            async with httpx.AsyncClient(base_url=rt.url) as client:

                async def tries(method: str, path: str, status: int) -> int:
                    before = len(app.requests)
                    r = await client.request(method, path, content=b"x" if method == "POST" else None)
                    assert r.status_code == status
                    return len(app.requests) - before

                assert await tries("GET", "/status/429", 429) == 3  # retriable-status-codes
                assert await tries("GET", "/status/409", 409) == 3  # retriable-4xx
                assert await tries("GET", "/status/502", 502) == 3  # gateway-error
                assert await tries("GET", "/status/500", 500) == 1  # not a gateway error
                assert await tries("GET", "/status/404", 404) == 1
                assert await tries("PUT", "/status/503", 503) == 3  # idempotent
                assert await tries("POST", "/status/503", 503) == 1  # may have been acted on: never retried
            assert await _metric(rt.admin_url, 'facade_upstream_retries_total{service="svc"}') == 8


async def test_5xx_retries_every_server_error(tmp_path):
    app = EchoApp("a")
    async with serve_app(app) as url:
        services = f"  svc: {{endpoints: [{url}], retries: {{attempts: 1, retry_on: [5xx]}}}}"
        async with run_facade(tmp_path, _cfg(services, "  - name: all\n    backend: svc")) as rt:
            async with httpx.AsyncClient(base_url=rt.url) as client:
                assert (await client.get("/status/500")).status_code == 500
                assert (await client.get("/status/429")).status_code == 429
            assert [r["raw_path"] for r in app.requests] == ["/status/500", "/status/500", "/status/429"]


async def test_per_try_timeout_moves_a_silent_try_to_another_endpoint(tmp_path):
    app = EchoApp("live")
    async with raw_server(never_answer) as silent, serve_app(app) as live:
        services = f"""  svc:
    endpoints: [{silent}, {live}]
    timeouts: {{request: 30s}}
    retries: {{attempts: 1, per_try_timeout: 200ms, retry_on: [gateway-error]}}"""
        async with run_facade(tmp_path, _cfg(services, "  - name: all\n    backend: svc")) as rt:
            async with httpx.AsyncClient(base_url=rt.url, timeout=20) as client:
                # Round robin starts at the silent endpoint: its try ends at 200 ms, not at 30 s,
                # and the retry goes to the live one.
                r = await client.get("/x")
                assert r.status_code == 200 and r.json()["name"] == "live"
                # Round robin is back at the silent endpoint; a POST's try may have reached it: 504, not retried.
                r = await client.post("/x", content=b"x")
                assert r.status_code == 504
                assert [q["method"] for q in app.requests] == ["GET"]
            assert await _metric(rt.admin_url, 'facade_upstream_retries_total{service="svc"}') == 1


async def test_retry_budget_refuses_retries_beyond_it(tmp_path):
    app = EchoApp("a")
    async with serve_app(app) as url:
        services = f"""  svc:
    endpoints: [{url}]
    retries: {{attempts: 2, retry_on: [503], retry_budget: {{budget_percent: 0, min_retry_concurrency: 0}}}}
  roomy:
    endpoints: [{url}]
    retries: {{attempts: 2, retry_on: [503], retry_budget: {{budget_percent: 0, min_retry_concurrency: 1}}}}"""
        routes = "  - name: roomy\n    match: {path: {prefix: /roomy}}\n    backend: roomy\n    rewrite: {prefix: /}\n"
        routes += "  - name: all\n    backend: svc"
        async with run_facade(tmp_path, _cfg(services, routes)) as rt:
            async with httpx.AsyncClient(base_url=rt.url) as client:
                assert (await client.get("/status/503")).status_code == 503
                assert len(app.requests) == 1  # the budget allows no retry at all
                # One retry in flight is always allowed by min_retry_concurrency: a lone request retries.
                assert (await client.get("/roomy/status/503")).status_code == 503
                assert len(app.requests) == 4
            assert await _metric(rt.admin_url, 'facade_upstream_retries_budget_refused_total{service="svc"}') == 1
            assert await _metric(rt.admin_url, 'facade_upstream_retries_total{service="svc"}') == 0
            assert await _metric(rt.admin_url, 'facade_upstream_retries_total{service="roomy"}') == 2


async def test_rate_limit_per_route_answers_429_with_retry_after(tmp_path):
    app = EchoApp("a")
    async with serve_app(app) as url:
        routes = """  - name: limited
    match: {path: {prefix: /api}}
    backend: svc
    rate_limit: {requests_per_unit: 2, unit: minute}
  - name: free
    backend: svc"""
        async with run_facade(tmp_path, _cfg(f"  svc: {{endpoints: [{url}]}}", routes)) as rt:
            async with httpx.AsyncClient(base_url=rt.url) as client:
                statuses = [(await client.get("/api/x")).status_code for _ in range(3)]
                assert statuses == [200, 200, 429]
                r = await client.get("/api/y")
                assert r.status_code == 429 and r.json() == {"error": "rate limited"}  # the route is not named
                assert r.headers["retry-after"] == "30"  # 2 a minute: the next token in 30 s
                assert r.headers["x-ratelimit-limit"] == "2, 2;w=60"
                assert r.headers["x-ratelimit-remaining"] == "0"
                assert len(app.requests) == 2  # refused requests never reach the backend
                assert [(await client.get("/other")).status_code for _ in range(5)] == [200] * 5
            prefix = 'facade_ratelimit_requests_total{route="limited",decision='
            assert await _metric(rt.admin_url, prefix + '"allowed"}') == 2
            assert await _metric(rt.admin_url, prefix + '"limited"}') == 2


async def test_rate_limit_by_header_and_by_client_ip(tmp_path):
    async with serve_app(EchoApp("a")) as url:
        routes = """  - name: by-key
    match: {path: {prefix: /key}}
    backend: svc
    rate_limit: {requests_per_unit: 1, unit: hour, key: "header:x-api-key"}
  - name: by-ip
    backend: svc
    rate_limit: {requests_per_unit: 1, unit: hour, key: client_ip}"""
        extra = "trusted_proxies: [127.0.0.0/8]"
        async with run_facade(tmp_path, _cfg(f"  svc: {{endpoints: [{url}]}}", routes, extra)) as rt:
            async with httpx.AsyncClient(base_url=rt.url) as client:

                async def status(path: str, **headers: str) -> int:
                    return (await client.get(path, headers={k.replace("_", "-"): v for k, v in headers.items()})).status_code

                assert [await status("/key", x_api_key="a"), await status("/key", x_api_key="a")] == [200, 429]
                assert await status("/key", x_api_key="b") == 200
                assert [await status("/key"), await status("/key")] == [200, 429]  # no header: one shared bucket
                # The facade's peer (loopback) is a trusted proxy: the client is X-Forwarded-For's last hop.
                assert await status("/ip", x_forwarded_for="198.51.100.1") == 200
                assert await status("/ip", x_forwarded_for="198.51.100.1") == 429
                assert await status("/ip", x_forwarded_for="198.51.100.2") == 200
            assert await _metric(rt.admin_url, 'facade_ratelimit_keys{route="by-ip"}') == 2


async def test_a_full_queue_of_waiters_answers_503_at_once(tmp_path):
    app = EchoApp("a")
    async with serve_app(app) as url:
        services = f"""  svc:
    endpoints: [{url}]
    timeouts: {{connect: 30s}}
    retries: {{attempts: 0}}
    connection_pool: {{max_connections: 1, max_pending_requests: 0}}"""
        async with run_facade(tmp_path, _cfg(services, "  - name: all\n    backend: svc")) as rt:
            async with httpx.AsyncClient(base_url=rt.url, timeout=20) as client:
                slow = asyncio.create_task(client.get("/slow?ms=3000"))
                async with asyncio.timeout(10):
                    while not app.requests:
                        await asyncio.sleep(0.01)
                r = await client.get("/x")
                # Answered while the one connection is still busy, not after the 30 s connect timeout.
                assert r.status_code == 503 and not slow.done()
                assert "overloaded" not in r.text  # the reason is for the log, not the client
                assert (await slow).status_code == 200
                async with httpx.AsyncClient() as admin:
                    errors = (await admin.get(f"{rt.admin_url}/errors")).json()["errors"]
                assert any("upstream_rq_pending_overflow" in e["detail"] for e in errors)
            assert await _metric(rt.admin_url, 'facade_upstream_pending_overflow_total{service="svc"}') == 1
