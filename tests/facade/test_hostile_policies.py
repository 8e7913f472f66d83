"""Hostile requests against the newest request-path features, through a real facade on loopback: CORS
(odd, huge, duplicate Origin and Access-Control-Request-*), consistent hashing and sticky cohorts on
tampered keys, rate-limit keys a client chooses, and local replies a browser must be able to read."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.backends import EchoApp
from tests.harness import run_facade
from tests.servers import serve_app

from .migration.stack import migration_stack

ALLOWED = "https://shop.example"


def _config(a: str, b: str, dead: str) -> str:
    return f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0, token: t0ken}}
limits: {{max_request_body: 64KiB}}
services:
  app: {{endpoints: [{a}]}}
  pair:
    endpoints: [{a}, {b}]
    load_balancer: {{consistent_hash: {{header: x-user}}}}
  dead: {{endpoints: [{dead}], retries: {{attempts: 0}}, timeouts: {{connect: 1s}}}}
routes:
  - name: limited
    match: {{path: {{prefix: /limited}}}}
    backend: app
    rate_limit: {{requests_per_unit: 1, unit: hour, key: "header:x-api-key"}}
    cors: {{allow_origins: ["{ALLOWED}"], allow_credentials: true}}
  - name: down
    match: {{path: {{prefix: /down}}}}
    backend: dead
    cors: {{allow_origins: ["{ALLOWED}"]}}
  - name: hashed
    match: {{path: {{prefix: /hashed}}}}
    backend: pair
  - name: api
    backend: app
    cors:
      allow_origins: ["{ALLOWED}", {{regex: "https://[a-z]+\\\\.shop\\\\.test"}}]
      allow_methods: [GET, PUT]
      allow_headers: [x-token]
"""


def _metric(text: str, name: str, route: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("route") == route:
                return sample.value
    raise AssertionError(f"{name}{{route={route}}} not in /metrics")


async def test_cors_never_echoes_what_is_not_allowed_and_always_varies(tmp_path: Path) -> None:
    echo = EchoApp("a")
    async with serve_app(echo) as a, serve_app(EchoApp("b")) as b:
        dead = "http://127.0.0.1:9"  # discard port: nothing listens on loopback
        async with run_facade(tmp_path, _config(a, b, dead)) as rt, httpx.AsyncClient(base_url=rt.url, timeout=10) as c:
            not_allowed: list[list[tuple[bytes, bytes]]] = [
                [(b"origin", b"https://evil.example"), (b"origin", ALLOWED.encode())],  # two Origins
                [(b"origin", ALLOWED.encode()), (b"origin", ALLOWED.encode())],  # even the same one twice
                [(b"origin", b"https://sh\xc3\xb6p.example")],  # not ASCII
                [(b"origin", ALLOWED.encode() + b"/")],  # a path: not the allowed origin
                [(b"origin", ALLOWED.encode() + b", https://evil.example")],  # a list
                [(b"origin", b"null")],
                [(b"origin", b"https://" + b"a" * 7000 + b".evil")],  # huge
                [(b"origin", b"")],
                [],
            ]
            for headers in not_allowed:
                r = await c.get("/x", headers=headers)
                assert r.status_code == 200, headers
                assert "access-control-allow-origin" not in r.headers, headers
                assert r.headers.get_list("vary") == ["Origin"], headers  # caches key on Origin all the same
                before = len(echo.requests)
                pre = await c.options("/x", headers=[*headers, (b"access-control-request-method", b"PUT")])
                assert len(echo.requests) == before + 1, headers  # not a preflight the facade answers: upstream
                assert "access-control-allow-methods" not in pre.headers, headers

            # A huge origin the regex allows is matched (a linear-time pattern) and echoed as sent.
            big = "https://" + "a" * 7000 + ".shop.test"
            r = await c.get("/x", headers={"origin": big})
            assert r.headers["access-control-allow-origin"] == big and r.headers["vary"] == "Origin"

            # A preflight's requested headers and method are never reflected: the answer is the policy's.
            odd = [
                (b"origin", ALLOWED.encode()),
                (b"access-control-request-method", b"DELETE"),
                (b"access-control-request-method", b"PATCH"),
                (b"access-control-request-headers", b"x-evil, " + b"y" * 6000),
                (b"access-control-request-headers", b"authorization"),
            ]
            before = len(echo.requests)
            pre = await c.options("/x", headers=odd)
            assert pre.status_code == 200 and len(echo.requests) == before
            assert pre.headers["access-control-allow-origin"] == ALLOWED
            assert pre.headers["access-control-allow-methods"] == "GET,PUT"
            assert pre.headers["access-control-allow-headers"] == "x-token"

            # Local replies carry the route's CORS headers, so the page can read its 429 or 503.
            first = await c.get("/limited", headers={"origin": ALLOWED, "x-api-key": "k"})
            assert first.status_code == 200
            limited = await c.get("/limited", headers={"origin": ALLOWED, "x-api-key": "k"})
            assert limited.status_code == 429
            assert limited.headers["access-control-allow-origin"] == ALLOWED
            assert limited.headers["access-control-allow-credentials"] == "true"
            assert limited.headers["vary"] == "Origin"
            down = await c.get("/down", headers={"origin": ALLOWED})
            assert down.status_code in (502, 503) and down.headers["access-control-allow-origin"] == ALLOWED
            down = await c.get("/down", headers={"origin": "https://evil.example"})
            assert "access-control-allow-origin" not in down.headers and down.headers["vary"] == "Origin"
            big = await c.put("/x", headers={"origin": ALLOWED}, content=b"x" * (128 * 1024))
            assert big.status_code == 413 and big.headers["access-control-allow-origin"] == ALLOWED


async def test_client_chosen_keys_stay_bounded_and_consistent(tmp_path: Path) -> None:
    a_app, b_app = EchoApp("a"), EchoApp("b")
    async with serve_app(a_app) as a, serve_app(b_app) as b:
        async with (
            run_facade(tmp_path, _config(a, b, "http://127.0.0.1:9")) as rt,
            httpx.AsyncClient(base_url=rt.url, timeout=10) as c,
            httpx.AsyncClient(base_url=rt.admin_url, timeout=10) as admin,
        ):
            # Rate-limit keys from a header: every long value is its own bucket, the same one is limited.
            for i in range(150):
                r = await c.get("/limited", headers={"x-api-key": f"{i}-" + "k" * 16_000})
                assert r.status_code == 200
            r = await c.get("/limited", headers={"x-api-key": "7-" + "k" * 16_000})
            assert r.status_code == 429 and r.headers["retry-after"]
            # Duplicate keyed headers: the first counts, as for any keyed header.
            r = await c.get("/limited", headers=[(b"x-api-key", b"7-" + b"k" * 16_000), (b"x-api-key", b"fresh")])
            assert r.status_code == 429
            metrics = (await admin.get("/metrics")).text
            assert _metric(metrics, "facade_ratelimit_keys", "limited") == 150

            # Consistent hashing on hostile header values: answered, and the same value lands on the same endpoint.
            values: list[list[tuple[bytes, bytes]]] = [
                [(b"x-user", b"u" * 16_000)],
                [(b"x-user", b"\xff\xfe\xc3\xb6")],
                [(b"x-user", b"alice"), (b"x-user", b"bob")],
                [(b"x-user", b"")],
                [(b"x-user", b',;="x')],
            ]
            for headers in values:
                served = set()
                for _ in range(6):
                    r = await c.get("/hashed", headers=headers)
                    assert r.status_code == 200, headers
                    served.add(r.headers["x-served-by"])
                if headers[0][1]:  # an empty value is no key: balanced at random, as Envoy does
                    assert len(served) == 1, headers


STICKY_PLAN = """\
name: shop
route: catalog
from: monolith
to: catalog
sticky: {cookie: sid}
steps:
  - weight: 50
"""


async def test_tampered_sticky_cookies_get_a_side_never_an_error(tmp_path: Path) -> None:
    async with migration_stack(tmp_path, STICKY_PLAN) as s:
        assert (await s.act("shop", "start")).status_code == 200
        cookies = [
            b"sid=" + b"x" * 12_000,
            b"sid=\xff\xfe\xc3\xb6",
            b'sid="quoted"',
            b"sid=a; sid=b",
            b"sid=; other=1",
            b"sid",
            b";;;=;sid==",
        ]
        for cookie in cookies:
            sides = set()
            for _ in range(5):
                r = await s.client.get("/catalog/item", headers=[(b"cookie", cookie)])
                assert r.status_code == 200, cookie
                sides.add(r.headers["x-served-by"])
                if b"sid=" not in cookie or cookie.startswith(b"sid=;"):
                    assert r.headers["set-cookie"].startswith("sid="), cookie  # no usable key: a fresh one
            if b"sid=" in cookie and not cookie.startswith(b"sid=;"):
                assert len(sides) == 1, cookie  # a key, however odd, keeps its side
