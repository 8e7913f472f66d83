"""The request resolution step (facade/resolve.py) as a table: request head -> decision, no sockets.

Every row is one ASGI head (what uvicorn hands the proxy for an HTTP request or a WebSocket upgrade)
and the decision expected for it: the canonical path and host, the route, the upstream target, the
backend and step, or the refusal's status and reason. The sidecar's gate reads the same path and host
(``read_target``), checked for every row at the end.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from facade.config import Config, parse_config
from facade.resolve import Forward, Reject, Respond, Target, read_target, resolve_request
from facade.runtime import Snapshot, build_snapshot
from facade.split import BUCKETS, CanarySpec, Split, StickySpec, bucket_of
from facade.upstream import Upstreams
from facade.yamlfile import YamlDocument

CONFIG = """
listen: 127.0.0.1:8080
admin: {token: t}
limits: {max_request_body: 1KiB}
services:
  monolith: {endpoints: ["http://127.0.0.1:9001"]}
  catalog: {endpoints: ["http://127.0.0.1:9002"]}
  users: {endpoints: ["http://127.0.0.1:9003"]}
routes:
  - name: shop-catalog
    match: {host: shop.local, path: {prefix: /catalog}}
    backend: monolith
  - name: api-v2
    match: {path: {prefix: /api}, headers: {x-version: {exact: "2"}}}
    backend: catalog
    rewrite: {prefix: /v2}
  - name: users
    match: {path: {prefix: /users}}
    backends: [{service: monolith, weight: 50}, {service: users, weight: 50}]
  - name: live
    match: {path: {prefix: /live}, methods: [GET]}
    backend: users
  - name: canary
    match: {path: {prefix: /orders}}
    backend: monolith
  - name: moved
    match: {path: {prefix: /old}}
    redirect: {prefix: /new, code: 308}
  - name: teapot
    match: {path: {exact: /teapot}}
    direct_response: {status: 418, body: short and stout}
"""

STICKY = Split(
    primary="monolith", candidate="catalog", weight_bps=2500, sticky=StickySpec("cookie", "session_id"),
    step_label="weight-25",
)
CANARY = Split(primary="monolith", candidate="catalog", canary=CanarySpec("header", "x-canary", "1"), step_label="canary")


def _config(text: str = CONFIG) -> Config:
    config, problems = parse_config(YamlDocument.load(textwrap.dedent(text), "/cfg/facade.yaml"), env={})
    assert config is not None, problems
    return config


def _snapshot(splits: dict[str, Split] | None = None, *, services: tuple[str, ...] | None = None) -> Snapshot:
    config = _config()
    specs = [s for s in config.services if services is None or s.name in services]
    return build_snapshot(config, Upstreams(specs), version=1, splits=splits)


def _key(in_cohort: bool) -> str:
    """A sticky key whose bucket is (not) below the split's weight: a fixed search, the same every run."""
    return next(k for i in range(1000) if (bucket_of(k := f"user-{i}") < STICKY.weight_bps) == in_cohort)


def head(target: str, *headers: str, method: str | None = "GET", version: str = "1.1", ws: bool = False) -> dict[str, Any]:
    """An ASGI head as uvicorn builds it: lower-case names, raw target split at "?"."""
    path, _, query = target.partition("?")
    scope: dict[str, Any] = {
        "type": "websocket" if ws else "http",
        "http_version": version,
        "scheme": "ws" if ws else "http",
        "path": path,
        "raw_path": path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "headers": [
            (name.strip().lower().encode("latin-1"), value.strip().encode("latin-1"))
            for name, _, value in (h.partition(":") for h in headers)
        ],
    }
    if method is not None and not ws:
        scope["method"] = method
    return scope


def fwd(path: str, host: str, route: str, target: str, backend: str, step: str = "stable", **more: Any) -> dict[str, Any]:
    return {"path": path, "host": host, "route": route, "target": target, "backend": backend, "step": step, **more}


H = "Host: shop.local"
IN, OUT = _key(True), _key(False)

# (id, head, rand, expected: fwd(...) | Reject | Respond fields)
TABLE: list[tuple[str, dict[str, Any], float, Any]] = [
    ("plain", head("/catalog/items?q=1", "Host: Shop.Local:8080"), 0.5,
     fwd("/catalog/items", "shop.local", "shop-catalog", "/catalog/items?q=1", "monolith", host_header="Shop.Local:8080")),
    ("dot segments and repeated slashes are resolved first", head("/catalog//a/./b/../c", H), 0.5,
     fwd("/catalog/a/c", "shop.local", "shop-catalog", "/catalog/a/c", "monolith")),
    ("an unreserved escape is decoded, a reserved one kept upper-case", head("/catalog/%7euser/a%3fb", H), 0.5,
     fwd("/catalog/~user/a%3Fb", "shop.local", "shop-catalog", "/catalog/~user/a%3Fb", "monolith")),
    ("encoded slash", head("/catalog/a%2Fb", H), 0.5, Reject(400, "bad request: encoded slash in path")),
    ("dot-dot above the root", head("/../catalog", H), 0.5,
     fwd("/catalog", "shop.local", "shop-catalog", "/catalog", "monolith")),
    ("two Host headers", head("/catalog", H, "Host: admin.local"), 0.5,
     Reject(400, "bad request: more than one Host header")),
    ("two identical Host headers", head("/users", H, H), 0.5, Reject(400, "bad request: more than one Host header")),
    ("HTTP/1.1 without Host", head("/users"), 0.5, Reject(400, "bad request: HTTP/1.1 request without a Host header")),
    ("HTTP/1.0 without Host routes as no host", head("/users", version="1.0"), 0.1,
     fwd("/users", "", "users", "/users", "monolith", host_header="")),
    ("HTTP/1.0 without Host matches no host route", head("/catalog", version="1.0"), 0.1,
     Reject(404, "no route matches")),
    ("empty label in Host", head("/users", "Host: shop..local"), 0.5, Reject(400, "bad request: empty label in host")),
    ("bad port in Host", head("/users", "Host: shop.local:99999"), 0.5, Reject(400, "bad request: invalid port in host")),
    ("no route for this host", head("/catalog", "Host: other.local"), 0.5, Reject(404, "no route matches")),
    ("header predicate and prefix rewrite", head("/api/items?x=1", H, "X-Version: 2"), 0.5,
     fwd("/api/items", "shop.local", "api-v2", "/v2/items?x=1", "catalog")),
    ("header predicate not met", head("/api/items", H, "X-Version: 1"), 0.5, Reject(404, "no route matches")),
    ("weights, low draw", head("/users/1", H), 0.2, fwd("/users/1", "shop.local", "users", "/users/1", "monolith")),
    ("weights, high draw", head("/users/1", H), 0.8, fwd("/users/1", "shop.local", "users", "/users/1", "users")),
    ("method predicate", head("/live", H, method="POST"), 0.5, Reject(404, "no route matches")),
    ("a WebSocket head is a GET", head("/live/feed", H, ws=True), 0.5,
     fwd("/live/feed", "shop.local", "live", "/live/feed", "users")),
    ("a WebSocket head gets the same Host rules", head("/live/feed", H, "Host: admin.local", ws=True), 0.5,
     Reject(400, "bad request: more than one Host header")),
    ("redirect keeps the rest of the path and the query", head("/old/thing?q=1", H), 0.5,
     Respond(_config().routes[5], 308, ((b"location", b"http://shop.local/new/thing?q=1"), (b"content-length", b"0")), b"")),
    ("direct response", head("/teapot", H), 0.5,
     Respond(_config().routes[6], 418, ((b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"15")),
             b"short and stout")),
    ("declared body over the limit", head("/users", H, "Content-Length: 2048", method="POST"), 0.2,
     Reject(413, "request body too large", limit=1024)),
    ("declared body within the limit", head("/users", H, "Content-Length: 1024", method="POST"), 0.2,
     fwd("/users", "shop.local", "users", "/users", "monolith", has_body=True)),
    ("chunked body: its size is the proxy's to police", head("/users", H, "Transfer-Encoding: chunked", method="POST"),
     0.2, fwd("/users", "shop.local", "users", "/users", "monolith", has_body=True)),
    ("Content-Length 0 is no body", head("/users", H, "Content-Length: 0", method="POST"), 0.2,
     fwd("/users", "shop.local", "users", "/users", "monolith", has_body=False)),
]


def _check(decision: Any, expected: Any) -> None:
    if isinstance(expected, dict):
        assert isinstance(decision, Forward), decision
        got = {
            "path": decision.path, "host": decision.host, "route": decision.route.name, "target": decision.target,
            "backend": decision.backend, "step": decision.step, "host_header": decision.host_header,
            "has_body": decision.has_body,
        }
        want = {"host_header": "shop.local", "has_body": False, **expected}
        assert got == want
        assert decision.pool.spec.name == decision.backend
        assert (decision.split, decision.set_cookie, decision.shadow) == (None, None, False)
    else:
        assert decision == expected


@pytest.mark.parametrize(("head_", "rand", "expected"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_resolution_table(head_: dict[str, Any], rand: float, expected: Any) -> None:
    _check(resolve_request(_snapshot(), head_, lambda: rand), expected)


@pytest.mark.parametrize(("head_", "expected"), [(row[1], row[3]) for row in TABLE], ids=[row[0] for row in TABLE])
def test_the_gate_reads_the_path_and_host_the_router_matches(head_: dict[str, Any], expected: Any) -> None:
    target = read_target(_config().normalize, head_)
    if isinstance(expected, Reject) and expected.status == 400:
        assert target == expected
    elif isinstance(expected, dict):
        assert target == Target(expected["path"], expected["host"])
    else:  # routed or answered after steps 1-2: the gate gets a canonical target
        assert isinstance(target, Target)


# -- migration splits: the decision carries the step, the sticky cookie and the shadow draw ---------------


MIGRATION = [
    ("sticky key in the cohort", head("/catalog/x", H, f"Cookie: a=b; session_id={IN}"), "catalog", None),
    ("sticky key outside the cohort", head("/catalog/x", H, f"Cookie: session_id={OUT}"), "monolith", None),
    ("a WebSocket upgrade sticks like a request", head("/catalog/x", H, f"Cookie: session_id={IN}", ws=True),
     "catalog", None),
]


@pytest.mark.parametrize(("head_", "backend", "cookie"), [m[1:] for m in MIGRATION], ids=[m[0] for m in MIGRATION])
def test_sticky_split(head_: dict[str, Any], backend: str, cookie: bytes | None) -> None:
    for rand in (0.0, 0.5, 0.99):  # the cohort decides, never the draw
        decision = resolve_request(_snapshot({"shop-catalog": STICKY}), head_, lambda r=rand: r)
        assert isinstance(decision, Forward)
        assert (decision.backend, decision.step, decision.split, decision.set_cookie) == (
            backend, "weight-25", STICKY, cookie
        )


def test_a_newcomer_gets_a_cookie_and_the_side_its_key_belongs_to() -> None:
    for ws in (False, True):
        decision = resolve_request(_snapshot({"shop-catalog": STICKY}), head("/catalog", H, ws=ws), lambda: 0.5)
        assert isinstance(decision, Forward) and decision.set_cookie is not None
        name, _, rest = decision.set_cookie.partition(b"=")
        key = rest.split(b";")[0].decode()
        assert name == b"session_id" and b"Path=/" in decision.set_cookie and b"HttpOnly" in decision.set_cookie
        assert decision.backend == ("catalog" if bucket_of(key) < STICKY.weight_bps else "monolith")


def test_canary_header_and_weight_draw() -> None:
    snap = _snapshot({"canary": CANARY, "users": Split(primary="monolith", candidate="users", weight_bps=BUCKETS // 10,
                                                         step_label="weight-10")})
    canary = resolve_request(snap, head("/orders/1", H, "X-Canary: 1"), lambda: 0.99)
    plain = resolve_request(snap, head("/orders/1", H, "X-Canary: 2"), lambda: 0.0)
    assert isinstance(canary, Forward) and isinstance(plain, Forward)
    assert (canary.backend, canary.step, plain.backend) == ("catalog", "canary", "monolith")
    # A split replaces the route's own weights: 10 % to the candidate, whatever the route says.
    low = resolve_request(snap, head("/users", H), lambda: 0.05)
    high = resolve_request(snap, head("/users", H), lambda: 0.5)
    assert isinstance(low, Forward) and isinstance(high, Forward)
    assert (low.backend, high.backend, low.step) == ("users", "monolith", "weight-10")


def test_shadow_is_drawn_for_primary_requests_only() -> None:
    split = Split(primary="monolith", candidate="catalog", shadow_percent=100.0, step_label="shadow")
    decision = resolve_request(_snapshot({"shop-catalog": split}), head("/catalog", H), lambda: 0.3)
    assert isinstance(decision, Forward) and (decision.backend, decision.shadow) == ("monolith", True)
    moved = Split(primary="monolith", candidate="catalog", weight_bps=BUCKETS, shadow_percent=100.0)
    decision = resolve_request(_snapshot({"shop-catalog": moved}), head("/catalog", H), lambda: 0.3)
    assert isinstance(decision, Forward) and (decision.backend, decision.shadow) == ("catalog", False)


def test_a_backend_without_a_pool_is_503_with_the_detail_for_the_log_only() -> None:
    decision = resolve_request(_snapshot(services=("monolith",)), head("/users", H), lambda: 0.9)
    assert isinstance(decision, Reject)
    assert (decision.status, decision.reason) == (503, "no healthy upstream")
    assert "users" in decision.detail


def test_rejections_name_nothing_of_the_request_to_the_client() -> None:
    decision = resolve_request(_snapshot(), head("/nowhere/secret", "Host: internal.example"), lambda: 0.5)
    assert isinstance(decision, Reject) and decision.status == 404
    assert "secret" not in decision.reason and "internal" not in decision.reason
    assert "/nowhere/secret" in decision.detail and "internal.example" in decision.detail
