"""Fault injection, CORS and rewrites: the pure decisions as tables, then through a real facade in
front of real upstreams (and a migration step's fault on the candidate's share only)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from facade.cli import main
from facade.cli.commands import validate_all
from facade.cli.console import EXIT_OK
from facade.config import CorsPolicy, FaultAbort, FaultDelay, FaultPolicy, StringMatch
from facade.traffic_policy import CorsRule, Extras, draw_extras, preflight_headers, with_cors
from tests.backends import EchoApp
from tests.harness import run_facade, write_config
from tests.servers import serve_app

from .migration.stack import migration_stack


def draws(*values: float) -> Callable[[], float]:
    it: Iterator[float] = iter(values)
    return lambda: next(it)


# -- the pure decisions --------------------------------------------------------------------------

FAULT = FaultPolicy(FaultDelay(2.0, 10.0), FaultAbort(503, 0.5))


@pytest.mark.parametrize(
    ("delay_draw", "abort_draw", "expected"),
    [
        (0.0999, 0.0049, Extras(2.0, 503, ())),  # both under their percent: delayed, then aborted (Istio order)
        (0.1, 0.0049, Extras(0.0, 503, ())),  # 10 % means draws below 0.1
        (0.05, 0.005, Extras(2.0, 0, ())),  # 0.5 % means draws below 0.005: fractions count
        (0.5, 0.5, None),  # nothing to do: the proxy forwards as usual
    ],
)
def test_fault_draws(delay_draw: float, abort_draw: float, expected: Extras | None) -> None:
    assert draw_extras(FAULT, None, [], draws(delay_draw, abort_draw)) == expected


def test_fault_percent_bounds() -> None:
    always = FaultPolicy(abort=FaultAbort(500, 100.0))
    never = FaultPolicy(abort=FaultAbort(500, 0.0))
    assert draw_extras(always, None, [], draws(0.999999)) == Extras(0.0, 500, ())
    assert draw_extras(never, None, [], draws(0.0)) is None


CORS = CorsRule.compile(CorsPolicy(
    allow_origins=(StringMatch("exact", "https://shop.example"), StringMatch("prefix", "https://preview-"),
                   StringMatch("regex", r"https://[a-z]+\.test")),
    allow_methods=("GET", "POST"),
    allow_headers=("x-token",),
    expose_headers=("x-request-id",),
    max_age=600,
    allow_credentials=True,
))


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://shop.example", True),
        ("https://shop.example.evil", False),  # exact is exact
        ("https://preview-42.shop", True),
        ("https://abc.test", True),
        ("https://abc.test.evil", False),  # a regex is a full match
        ("https://SHOP.example", False),  # case-sensitive, like Istio
    ],
)
def test_cors_origins(origin: str, allowed: bool) -> None:
    assert CORS.allows(origin.encode()) is allowed


def test_cors_preflight_and_actual_headers() -> None:
    pre = [(b"origin", b"https://shop.example"), (b"access-control-request-method", b"POST")]
    assert preflight_headers(CORS, pre) == (
        (b"access-control-allow-origin", b"https://shop.example"),
        (b"vary", b"Origin"),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-allow-methods", b"GET,POST"),
        (b"access-control-allow-headers", b"x-token"),
        (b"access-control-max-age", b"600"),
        (b"content-length", b"0"),
    )
    assert preflight_headers(CORS, pre[:1]) is None  # OPTIONS without Access-Control-Request-Method: not a preflight
    assert preflight_headers(CORS, [(b"origin", b"https://evil"), pre[1]]) is None
    actual = draw_extras(None, CORS, [(b"origin", b"https://shop.example")], draws())
    assert actual == Extras(0.0, 0, (
        (b"access-control-allow-origin", b"https://shop.example"),
        (b"vary", b"Origin"),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", b"x-request-id"),
    ))
    # Another origin, none, or two: nothing echoed, but the answer still varies by Origin (caches).
    vary_only = Extras(0.0, 0, ((b"vary", b"Origin"),))
    assert draw_extras(None, CORS, [(b"origin", b"https://evil")], draws()) == vary_only
    assert draw_extras(None, CORS, [], draws()) == vary_only
    two = [(b"origin", b"https://evil"), (b"origin", b"https://shop.example")]
    assert draw_extras(None, CORS, two, draws()) == vary_only
    assert preflight_headers(CORS, [*two, pre[1]]) is None
    upstream = [(b"access-control-allow-origin", b"*"), (b"vary", b"Accept"), (b"x-a", b"1")]
    assert with_cors(upstream, actual.cors) == [(b"vary", b"Accept"), (b"x-a", b"1"), *actual.cors]
    # An upstream that already varies by Origin (or by everything) gets no second Vary: Origin.
    assert with_cors([(b"vary", b"Accept, origin")], vary_only.cors) == [(b"vary", b"Accept, origin")]
    assert with_cors([(b"vary", b"*")], vary_only.cors) == [(b"vary", b"*")]


# -- through a real facade -----------------------------------------------------------------------


def _cfg(upstream: str, routes: str) -> str:
    return f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0, token: t0ken}}
services:
  app: {{endpoints: [{upstream}]}}
routes:
{routes}
"""


def _faults(metrics: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics):
        if family.name == "facade_faults_injected":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[(sample.labels["route"], sample.labels["kind"])] = sample.value
    return out


async def test_fault_abort_and_delay_through_the_facade(tmp_path: Path) -> None:
    echo = EchoApp("app")
    async with serve_app(echo) as url:
        cfg = _cfg(url, """
  - name: broken
    match: {path: {prefix: /broken}}
    backend: app
    fault: {abort: {status: 503}}
  - name: slow
    match: {path: {prefix: /slow-route}}
    backend: app
    fault: {delay: {fixed: 200ms, percent: 100}}
  - name: never
    match: {path: {prefix: /never}}
    backend: app
    fault: {abort: {status: 500, percent: 0}}
  - name: plain
    backend: app
""")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url, timeout=10) as client:
            for _ in range(3):
                r = await client.get("/broken/x")
                assert (r.status_code, r.text) == (503, "fault filter abort")
            assert not any(req["raw_path"].startswith("/broken") for req in echo.requests)  # never forwarded

            t0 = time.monotonic()
            r = await client.get("/slow-route/x")
            assert r.status_code == 200 and r.json()["raw_path"] == "/slow-route/x"
            assert time.monotonic() - t0 >= 0.2  # the delay happened before the answer (a lower bound only)

            for _ in range(20):
                assert (await client.get("/never/x")).status_code == 200
            assert (await client.get("/other")).status_code == 200

            metrics = (await client.get(rt.admin_url + "/metrics")).text
            assert _faults(metrics) == {("broken", "abort"): 3.0, ("slow", "delay"): 1.0}
            # An aborted request is a request with its status: gates and compare see it.
            assert 'route="broken"' in metrics and 'status_class="5xx"' in metrics


async def test_cors_preflight_is_answered_and_actual_responses_get_headers(tmp_path: Path) -> None:
    class WithOwnCors(EchoApp):
        async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
            async def send_with_cors(message):  # type: ignore[no-untyped-def]
                if message["type"] == "http.response.start":
                    message["headers"] = [*message["headers"], (b"access-control-allow-origin", b"*")]
                await send(message)
            await super().__call__(scope, receive, send_with_cors)

    echo = WithOwnCors("app")
    async with serve_app(echo) as url:
        cfg = _cfg(url, """
  - name: api
    match: {path: {prefix: /api}}
    backend: app
    cors:
      allow_origins: ["https://shop.example", {regex: "https://[a-z]+\\\\.test"}]
      allow_methods: [GET, PUT]
      allow_headers: [x-token]
      expose_headers: [x-served-by]
      max_age: 10m
  - name: plain
    backend: app
""")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url, timeout=10) as client:
            pre = {"origin": "https://abc.test", "access-control-request-method": "PUT"}
            r = await client.options("/api/items", headers=pre)
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == "https://abc.test"
            assert r.headers["access-control-allow-methods"] == "GET,PUT"
            assert r.headers["access-control-allow-headers"] == "x-token"
            assert r.headers["access-control-max-age"] == "600"
            assert "access-control-allow-credentials" not in r.headers
            assert echo.requests == []  # the preflight never went upstream

            # A preflight from another origin goes upstream like any request (Envoy), and the facade adds nothing.
            r = await client.options("/api/items", headers={**pre, "origin": "https://evil.example"})
            assert [q["method"] for q in echo.requests] == ["OPTIONS"]
            assert r.headers.get("access-control-allow-origin") == "*"  # the upstream's own, untouched
            assert "access-control-allow-methods" not in r.headers

            r = await client.get("/api/items", headers={"origin": "https://shop.example"})
            assert r.status_code == 200
            assert r.headers.get_list("access-control-allow-origin") == ["https://shop.example"]  # replaces "*"
            assert r.headers["vary"] == "Origin"
            assert r.headers["access-control-expose-headers"] == "x-served-by"

            r = await client.get("/api/items", headers={"origin": "https://evil.example"})
            assert r.headers.get_list("access-control-allow-origin") == ["*"]
            assert "access-control-expose-headers" not in r.headers
            assert r.headers.get_list("vary") == ["Origin"]  # the answer depends on Origin all the same

            # A route without a policy: an OPTIONS preflight is forwarded, nothing added.
            before = len(echo.requests)
            r = await client.options("/elsewhere", headers=pre)
            assert len(echo.requests) == before + 1 and "access-control-allow-methods" not in r.headers


async def test_rewrites_through_the_facade(tmp_path: Path) -> None:
    echo = EchoApp("app")
    async with serve_app(echo) as url:
        cfg = _cfg(url, """
  - name: exact
    match: {path: {exact: /old}}
    backend: app
    rewrite: {prefix: /new/place}
  - name: by-regex-match
    match: {path: {regex: "/orders/\\\\d+"}}
    backend: app
    rewrite: {prefix: /order}
  - name: users
    match: {path: {prefix: /users}}
    backend: app
    rewrite:
      regex: {pattern: "^/users/(\\\\d+)/profile$", substitution: "/v2/profiles/\\\\1"}
      authority: users.internal:8080
""")
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url, timeout=10) as client:
            r = await client.get("/old", params={"q": "1"})
            assert (r.json()["raw_path"], r.json()["query"]) == ("/new/place", "q=1")
            assert (await client.get("/orders/42")).json()["raw_path"] == "/order"

            r = await client.get("/users/7/profile", headers={"host": "shop.local"})
            body = r.json()
            headers = dict(body["headers"])
            assert body["raw_path"] == "/v2/profiles/7"
            assert headers["host"] == "users.internal:8080"
            assert headers["x-forwarded-host"] == "shop.local"  # the client's Host is kept for the backend
            assert [v for k, v in body["headers"] if k == "host"] == ["users.internal:8080"]  # one Host only
            assert (await client.get("/users/7")).json()["raw_path"] == "/users/7"  # pattern does not match


# -- a migration step's fault, and plans on weighted routes ------------------------------------------

STEP_FAULT_PLAN = """\
name: shop
route: catalog
from: monolith
to: catalog
steps:
  - canary: {header: {x-canary: "1"}}
    fault: {abort: {status: 503, percent: 100}}
  - weight: 100
"""


async def test_step_fault_hits_the_candidate_share_only(tmp_path: Path) -> None:
    async with migration_stack(tmp_path, STEP_FAULT_PLAN) as s:
        assert (await s.act("shop", "start")).status_code == 200
        for _ in range(5):
            r = await s.client.get("/catalog/item", headers={"x-canary": "1"})
            assert (r.status_code, r.text) == (503, "fault filter abort")
            r = await s.client.get("/catalog/item")
            assert (r.status_code, r.headers["x-served-by"]) == (200, "monolith")
        assert s.new.app.requests == []  # the candidate's share was aborted before it was sent
        metrics = (await s.client.get(s.runtime.admin_url + "/metrics")).text
        assert _faults(metrics) == {("catalog", "abort"): 5.0}
        # The next step has no fault: the candidate serves.
        assert (await s.act("shop", "next", force=True, reason="test")).status_code == 200
        assert await s.served_by() == "catalog"


def test_a_fault_on_a_shadow_step_is_refused(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001.yaml").write_text(
        "name: shop\nroute: r\nfrom: a\nto: b\nsteps:\n  - shadow: {percent: 100}\n    fault: {abort: {status: 503}}\n"
    )
    path = write_config(tmp_path, """
        services:
          a: {endpoints: ["http://127.0.0.1:1"]}
          b: {endpoints: ["http://127.0.0.1:2"]}
        routes: [{name: r, backend: a}]
        migrations: migrations/
    """)
    _, problems = validate_all(str(path))
    assert [str(p).replace(str(tmp_path) + "/", "") for p in problems] == [
        (
            "migrations/001.yaml:7:5: steps[0].fault: only a weight or canary step injects faults (into the share "
            "'to' serves), not a shadow step"
        )
    ]


WEIGHTED = """
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0, token: t0ken}}
state_dir: state
services:
  monolith: {{endpoints: [{url}]}}
  catalog: {{endpoints: [{url}]}}
routes:
  - name: catalog
    backends: [{{service: monolith, weight: 90}}, {{service: catalog, weight: 10}}]
migrations: migrations/
"""

WARNING = (
    "migrations/001.yaml:2:8: warning: route: route 'catalog' splits by weight (monolith 90%, catalog 10%); while "
    "plan 'shop' runs, its steps replace those weights (monolith -> catalog), and a completed plan keeps everything "
    "on 'catalog'"
)


async def test_a_plan_on_a_weighted_route_warns_at_validate_and_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve_app(EchoApp("app")) as url:
        for where in ("api", "cli"):
            (tmp_path / where / "migrations").mkdir(parents=True)
            (tmp_path / where / "migrations" / "001.yaml").write_text(
                "name: shop\nroute: catalog\nfrom: monolith\nto: catalog\nsteps:\n  - weight: 50\n  - weight: 100\n"
            )
        path = write_config(tmp_path / "api", WEIGHTED.format(url=url))
        config, problems = validate_all(str(path))
        assert config is not None
        assert [str(p).replace(str(tmp_path / "api") + "/", "") for p in problems] == [WARNING]

        async with (
            run_facade(tmp_path / "api", WEIGHTED.format(url=url), features=True) as rt,
            httpx.AsyncClient(base_url=rt.admin_url, headers={"authorization": "Bearer t0ken"}) as admin,
        ):
            r = await admin.post("/migrations/shop/start", json={})
            assert r.status_code == 200, r.text
            assert [w.replace(str(tmp_path / "api") + "/", "") for w in r.json()["warnings"]] == [WARNING]
            r = await admin.post("/migrations/shop/pause", json={})
            assert "warnings" not in r.json()  # said at start, where it matters

        # `facade migrate start` prints it on stderr, then the new state.
        async with run_facade(tmp_path / "cli", WEIGHTED.format(url=url), features=True) as rt:
            capsys.readouterr()
            argv = ["migrate", "start", "shop", "--admin", rt.admin_url, "--token", "t0ken", "-c", os.devnull]
            assert await asyncio.to_thread(main, argv) == EXIT_OK
            out, err = capsys.readouterr()
            assert err.replace(str(tmp_path / "cli") + "/", "") == WARNING + "\n"
            assert out.startswith("shop: running at")


def test_fault_counts_travel_from_workers_to_the_supervisor() -> None:
    from facade.telemetry import Telemetry

    worker, supervisor = Telemetry(), Telemetry()
    shipped: dict[object, object] = {}
    worker.record_fault(route="r", backend="b", kind="abort")
    worker.record_fault(route="r", backend="b", kind="abort")
    supervisor.absorb(worker.take_delta(shipped))
    worker.record_fault(route="r", backend="b", kind="delay")
    supervisor.absorb(worker.take_delta(shipped))
    assert "faults" not in worker.take_delta(shipped)  # nothing new
    assert _faults(supervisor.prometheus_text()) == {("r", "abort"): 2.0, ("r", "delay"): 1.0}
