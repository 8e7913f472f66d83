"""``facade import istio``: the imported config decides like the VirtualServices it came from.

``_istio_decide`` is a small first-match evaluator of VirtualService http routes (Istio semantics:
character prefixes, RE2 full-match regexes, matches ORed, conditions ANDed), with destinations
resolved to endpoints through ServiceEntries and DestinationRule subsets; the facade's decision is
its RouteTable on the imported config, with services resolved to their endpoints."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
import yaml

from facade.cli import main
from facade.config import Config, load_config
from facade.importers import emit, format_finding, import_istio
from facade.routing import RouteTable

FIXTURES = Path(__file__).parent / "fixtures"
FILES = [FIXTURES / "istio-routes.yaml", FIXTURES / "istio-destinations.yaml"]  # routes first: order must not matter

Decision = tuple[Any, ...]


def _resources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in FILES:
        for doc in yaml.safe_load_all(f.read_text()):
            out.extend(doc["items"] if doc["kind"] == "List" else [doc])
    return out


def _string_match(m: dict[str, str] | None, value: str | None) -> bool:
    if value is None:
        return False
    if not m:  # a header name alone: present
        return True
    if "exact" in m:
        return value == m["exact"]
    if "prefix" in m:
        return value.startswith(m["prefix"])
    return re.fullmatch(m["regex"], value) is not None


def _endpoints(resources: list[dict[str, Any]], host: str, subset: str | None, port: int | None) -> frozenset[str]:
    entry = next(r["spec"] for r in resources if r["kind"] == "ServiceEntry" and host in r["spec"]["hosts"])
    p = next((p for p in entry["ports"] if p["number"] == port), entry["ports"][0])
    if not entry.get("endpoints"):
        return frozenset({f"{host}:{p['number']}"})
    labels: dict[str, str] = {}
    if subset:
        rule = next(r["spec"] for r in resources if r["kind"] == "DestinationRule" and r["spec"]["host"] == host)
        labels = next(s["labels"] for s in rule["subsets"] if s["name"] == subset)
    return frozenset(
        f"{e['address']}:{e.get('ports', {}).get(p['name'], p['number'])}"
        for e in entry["endpoints"]
        if all(e.get("labels", {}).get(k) == v for k, v in labels.items())
    )


def _istio_decide(
    resources: list[dict[str, Any]], host: str, path: str, method: str, headers: dict[str, str], query: str
) -> Decision | None:
    params = dict(parse_qsl(query))
    for vs in (r for r in resources if r["kind"] == "VirtualService"):
        hosts = vs["spec"]["hosts"]
        if not any(h == host or (h.startswith("*.") and host.endswith(h[1:])) or h == "*" for h in hosts):
            continue
        for entry in vs["spec"].get("http", []):
            matches = entry.get("match") or [{}]
            if not any(_istio_match(m, path, method, headers, params) for m in matches):
                continue
            if "redirect" in entry:
                return ("redirect", entry["redirect"].get("redirectCode", 301), entry["redirect"].get("uri"))
            if "directResponse" in entry:
                return ("direct", entry["directResponse"]["status"])
            dests = entry["route"]
            return (
                "route",
                frozenset(
                    (
                        _endpoints(
                            resources,
                            d["destination"]["host"],
                            d["destination"].get("subset"),
                            d["destination"].get("port", {}).get("number"),
                        ),
                        d.get("weight", 100),
                    )
                    for d in dests
                ),
            )
    return None


def _istio_match(m: dict[str, Any], path: str, method: str, headers: dict[str, str], params: dict[str, str]) -> bool:
    uri = m.get("uri")
    if uri is not None:
        if m.get("ignoreUriCase"):
            uri = {k: v.lower() for k, v in uri.items()}
            path = path.lower()
        if not _string_match(uri, path):
            return False
    if "method" in m and not _string_match(m["method"], method):
        return False
    if any(not _string_match(v, headers.get(k)) for k, v in m.get("headers", {}).items()):
        return False
    if any(not _string_match(v, params.get(k)) for k, v in m.get("queryParams", {}).items()):
        return False
    return all(k not in headers for k in m.get("withoutHeaders", {}))


def _facade_decide(
    config: Config, host: str, path: str, method: str, headers: dict[str, str], query: str
) -> Decision | None:
    table = RouteTable.compile(config.routes)
    hit = table.resolve(
        host=host,
        path=path,
        method=method,
        query_string=query.encode(),
        headers=[(k.encode(), v.encode()) for k, v in headers.items()],
    )
    if hit is None:
        return None
    r = hit.route
    if r.redirect is not None:
        return ("redirect", r.redirect.code, r.redirect.path)
    if r.direct_response is not None:
        return ("direct", r.direct_response.status)

    def endpoints(name: str) -> frozenset[str]:
        base, _, subset = name.partition("/")  # a facade subset: service/subset
        service = config.service(base)
        assert service is not None
        if subset:
            service = service.subset_spec(next(s for s in service.subsets if s.name == subset))
        return frozenset(e.split("://", 1)[1] for g in service.groups for e in g.endpoints)

    return ("route", frozenset((endpoints(b.service), b.weight) for b in r.backends))


REQUESTS = [
    ("shop.example.com", "/catalog/1", "GET", {}, ""),
    ("shop.example.com", "/catalog/1", "GET", {"x-canary": "1"}, ""),
    ("shop.example.com", "/catalog/1", "GET", {"x-canary": "2"}, ""),
    ("shop.example.com", "/catalogue", "GET", {}, ""),  # an Istio prefix compares characters
    ("shop.example.com", "/products/42", "GET", {}, ""),
    ("shop.example.com", "/products/42/x", "GET", {}, ""),  # a regex is a full match
    ("shop.example.com", "/old", "GET", {}, ""),
    ("shop.example.com", "/old/x", "GET", {}, ""),
    ("shop.example.com", "/healthz", "GET", {}, ""),
    ("shop.example.com", "/healthz", "POST", {}, ""),
    ("shop.example.com", "/api/x", "GET", {}, "v=2"),
    ("shop.example.com", "/api/x", "GET", {}, "v=1"),
    ("shop.example.com", "/Api/x", "GET", {}, ""),  # ignoreUriCase
    ("shop.example.com", "/beta/x", "GET", {}, ""),
    ("shop.example.com", "/beta/x", "GET", {"x-internal": "yes"}, ""),
    ("m.shop.example.com", "/catalog", "GET", {}, ""),
    ("shop.example.org", "/catalog", "GET", {}, ""),  # no VirtualService for this host
    ("admin.example.com", "/reports/1", "GET", {"x-role": "auditor"}, ""),
    ("admin.example.com", "/reports/1", "GET", {"x-role": "auditors"}, ""),
    ("admin.example.com", "/x", "GET", {}, ""),
]


@pytest.fixture
def imported_config(tmp_path: Path) -> tuple[Any, Config]:
    imported = import_istio([str(f) for f in FILES])
    assert imported.errors == [], [format_finding(f) for f in imported.errors]
    out = tmp_path / "facade.yaml"
    out.write_text(emit(imported, header="test"))
    return imported, load_config(str(out))


def test_the_imported_routes_decide_like_the_virtual_services(imported_config: tuple[Any, Config]) -> None:
    _, config = imported_config
    resources = _resources()
    decisions = set()
    for request in REQUESTS:
        istio, facade = _istio_decide(resources, *request), _facade_decide(config, *request)
        assert facade == istio, request
        decisions.add(repr(istio))
    # The table exercises different outcomes (split, subsets, redirect, direct response, no route, ...).
    assert len(decisions) >= 7


def test_services_subsets_and_policies(imported_config: tuple[Any, Config]) -> None:
    imported, config = imported_config
    catalog = config.service("catalog")
    v2 = config.service("catalog-v2")
    monolith = config.service("monolith")
    assert catalog is not None and v2 is not None and monolith is not None
    # The ServiceEntry's endpoints carry labels: subset v1 (no policy of its own) is a facade subset of
    # the host's service, whose endpoints keep their labels; weights 3 and 1 become groups.
    assert [s.name for s in catalog.subsets] == ["v1"] and catalog.subsets[0].labels == (("version", "v1"),)
    v1 = catalog.subset_spec(catalog.subsets[0])
    assert [(g.endpoints, g.weight) for g in v1.groups] == [
        (("http://10.0.0.2:8080",), 3),
        (("http://10.0.0.1:8080",), 1),  # a group per weight and label set: the subset keeps Istio's 3:1
    ]
    assert catalog.load_balancer == "least_request"
    # Subset v2 has a traffic policy of its own: a service of its own, as before (its policy wins).
    assert v2.load_balancer == "random" and v2.groups[0].endpoints == ("http://10.0.0.3:9090",)
    assert catalog.outlier_detection is not None and catalog.outlier_detection.consecutive_5xx == 3
    assert monolith.groups[0].endpoints == ("http://monolith.shop.internal:80",)  # DNS resolution: the host itself
    routes = {r.name: r for r in config.routes}
    route = routes["shop-catalog"]
    assert [b.service for b in route.backends] == ["catalog/v1", "catalog-v2"]
    assert route.timeout == 5.0 and route.retries is not None
    assert (route.retries.attempts, route.retries.retry_on) == (3, ("gateway-error", "connect-failure"))
    assert route.request_headers.set == (("x-route", "catalog"),) and route.request_headers.remove == ("x-debug",)
    assert route.response_headers.add == (("x-served-via", "facade"),)
    assert routes["shop-beta"].rewrite_prefix == "/v2/"
    # fault and corsPolicy are imported: the facade has both now.
    fault = routes["shop-api"].fault
    assert fault is not None and fault.delay is not None and (fault.delay.fixed, fault.delay.percent) == (5.0, 10.0)
    cors = routes["shop-beta"].cors
    assert cors is not None and [(m.kind, m.value) for m in cors.allow_origins] == [("exact", "https://example.com")]
    lost = {format_finding(f).split(": warning: ", 1)[1] for f in imported.warnings}
    assert lost == {"tcp routes: not imported (the facade routes HTTP)"}  # gateways are the facade's listener


def test_losses_are_positioned_in_their_file(imported_config: tuple[Any, Config]) -> None:
    imported, _ = imported_config
    where = {f.message: (Path(f.file).name, f.line, f.col) for f in imported.warnings}
    assert where["tcp routes: not imported (the facade routes HTTP)"] == ("istio-routes.yaml", 74, 3)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("kind: [VirtualService\n", ":2:1", "invalid YAML"),
        ("server {\n  listen 80;\n}\n", ":1:1", "a resource must be a mapping"),  # nginx, not YAML resources
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n", ":2:7", "unknown kind 'Deployment'"),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  http: []\n",
            ":5:3",
            "VirtualService 'x' has no hosts",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  hosts: [a.test]\n"
            + "  http:\n  - match:\n    - uri: {regex: '/(?<id>[0-9]+)'}\n    directResponse: {status: 204}\n",
            ":8:12",
            "not supported by Python's re",
        ),
        (
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n"
            + "  hosts: [a.test]\n  http:\n  - route:\n    - destination: {host: b.test, subset: v9}\n",
            ":9:20",
            "unknown subset 'v9'",
        ),
    ],
)
def test_bad_input_is_a_positioned_error_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str, message: str
) -> None:
    source = tmp_path / "in.yaml"
    source.write_text(text)
    out = tmp_path / "facade.yaml"
    assert main(["import", "istio", str(source), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{source}{where}: error: " in err and message in err, err
    assert "nothing written" in err
    assert not out.exists()


def test_the_cli_writes_a_valid_config_and_strict_refuses_losses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = []
    for f in FILES:
        shutil.copy(f, tmp_path / f.name)
        files.append(str(tmp_path / f.name))
    out = tmp_path / "facade.yaml"
    assert main(["import", "istio", *files, "-o", str(out), "--strict"]) == 2
    assert "tcp routes: not imported" in capsys.readouterr().err and not out.exists()
    assert main(["import", "istio", *files, "-o", str(out)]) == 0
    assert main(["validate", "-c", str(out)]) == 0
    assert "valid (4 services, 9 routes)" in capsys.readouterr().out


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "in.yaml"
    path.write_text(text)
    return path


def test_kubernetes_services_rewrites_weights_and_other_kinds(tmp_path: Path) -> None:
    source = _write(
        tmp_path,
        """\
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: shop-gateway, namespace: shop}
spec: {selector: {istio: ingressgateway}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {prefix: /reviews}
    rewrite: {uri: /v2}
    timeout: 0s
    route:
    - destination: {host: reviews, subset: v1}
      weight: 1
    - destination: {host: reviews, subset: v2}
      weight: 2
""",
    )
    imported = import_istio([str(source)])
    assert imported.errors == []
    out = tmp_path / "facade.yaml"
    out.write_text(emit(imported, header="test"))
    config = load_config(str(out))
    route = config.routes[0]
    # The short name resolves in the namespace; a Kubernetes Service is reached by its cluster name.
    assert [(b.service, b.weight) for b in route.backends] == [("reviews-v1", 33), ("reviews-v2", 67)]
    service = config.service("reviews-v1")
    assert service is not None and service.groups[0].endpoints == ("http://reviews.shop.svc.cluster.local:80",)
    assert (route.matches[0].path_kind, route.matches[0].path, route.rewrite_prefix) == ("prefix", "/reviews", "/v2")
    lost = [(f.line, f.message) for f in imported.warnings]
    assert (2, "Gateway: not imported (only VirtualService, DestinationRule and ServiceEntry are)") in lost
    assert any(line == 22 and "matched by segments" in m for line, m in lost)
    assert (24, "timeout 0s: Istio's 'no timeout'; the facade's default applies") in lost and route.timeout is None
    assert any(line == 26 and m.startswith("destination weights sum to 3: scaled to [33, 67]") for line, m in lost)
    assert any("has no ServiceEntry" in m for _, m in lost)


def test_a_rewrite_with_a_match_the_facade_cannot_keep_is_what_is_lost(tmp_path: Path) -> None:
    source = _write(
        tmp_path,
        """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [a.test]
  http:
  - match:
    - uri: {prefix: /api}
      ignoreUriCase: true
    - uri: {exact: /v1}
    rewrite: {uri: /v2}
    route:
    - destination: {host: b.test}
  - match:
    - uri: {prefix: /old/}
    - uri: {exact: /legacy}
    rewrite: {uri: /new/}
    route:
    - destination: {host: b.test}
  - match:
    - uri: {exact: /gone}
    rewrite: {authority: c.test}
    directResponse: {status: 204}
""",
    )
    imported = import_istio([str(source)])
    assert imported.errors == []
    first, second, third = (r for _, r in imported.routes)
    # A case-insensitive prefix is a regex here (its whole path would be replaced): the rewrite is lost.
    assert first["match"][0]["path"] == {"regex": "(?i:/api.*)"} and "rewrite" not in first
    # Prefix and exact matches keep their kind, and rewrite.uri means the same on both (Istio and facade).
    assert [m["path"] for m in second["match"]] == [{"prefix": "/old/"}, {"exact": "/legacy"}]
    assert second["rewrite"] == {"prefix": "/new/"}
    assert "rewrite" not in third
    assert [(f.line, f.message) for f in imported.warnings if "rewrite" in f.message] == [
        (11, ("rewrite.uri: not imported (the facade rewrites only routes whose every match is a uri prefix, "
              "exact or regex, a prefix case-sensitive)")),
        (22, "rewrite.authority: not imported (a route that does not forward rewrites nothing)"),
    ]


def test_faults_cors_rewrites_retry_kinds_and_consistent_hashing_are_imported(tmp_path: Path) -> None:
    source = _write(
        tmp_path,
        """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpCookie: {name: lb, ttl: 1h}, minimumRingSize: 1024}
  subsets:
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: user}
spec:
  host: user.test
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: X-User}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: user}
spec:
  hosts: [user.test]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.test]
  http:
  - name: cart
    match:
    - uri: {prefix: /cart/}
    route:
    - destination: {host: cart, subset: v2}
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 12.5}}
      abort: {httpStatus: 503, percentage: {value: 5}}
    corsPolicy:
      allowOrigins: [{exact: "https://shop.test"}, {prefix: "https://preview-"}, {regex: "https://.*[.]shop[.]dev"}]
      allowMethods: [GET, POST]
      allowHeaders: [content-type]
      exposeHeaders: [x-request-id]
      maxAge: 24h
      allowCredentials: true
    retries: {attempts: 2, retryOn: "5xx,retriable-4xx,429,503,refused-stream,cancelled"}
  - name: users
    match:
    - uri: {regex: "/users/[0-9]+/.*"}
    rewrite:
      authority: users.internal
      uriRegexRewrite: {match: '^/users/([0-9]+)/(.*)$', rewrite: '/v2/\\2/by/\\1'}
    route:
    - destination: {host: user.test}
    fault:
      abort: {grpcStatus: UNAVAILABLE}
  - name: teapot
    directResponse: {status: 418}
    fault: {abort: {httpStatus: 503}}
""",
    )
    imported = import_istio([str(source)])
    assert imported.errors == [], [format_finding(f) for f in imported.errors]
    out = tmp_path / "facade.yaml"
    out.write_text(emit(imported, header="test"))
    config = load_config(str(out))  # the facade's own reader accepts every imported key
    routes = {r.name: r for r in config.routes}
    cart = routes["shop-cart"]
    assert cart.fault is not None and cart.fault.delay is not None and cart.fault.abort is not None
    assert (cart.fault.delay.fixed, cart.fault.delay.percent) == (2.0, 12.5)
    assert (cart.fault.abort.status, cart.fault.abort.percent) == (503, 5.0)
    assert cart.cors is not None
    assert [(m.kind, m.value) for m in cart.cors.allow_origins] == [
        ("exact", "https://shop.test"), ("prefix", "https://preview-"), ("regex", "https://.*[.]shop[.]dev")
    ]
    assert (cart.cors.allow_methods, cart.cors.allow_headers, cart.cors.expose_headers) == (
        ("GET", "POST"), ("content-type",), ("x-request-id",)
    )
    assert (cart.cors.max_age, cart.cors.allow_credentials) == (86400, True)
    assert cart.retries is not None
    assert cart.retries.retry_on == ("5xx", "retriable-4xx", "503", "reset", "retriable-status-codes")
    assert cart.retries.retriable_status_codes == (429,)
    users = routes["shop-users"]
    assert users.rewrite_authority == "users.internal"
    assert users.rewrite_regex == ("^/users/([0-9]+)/(.*)$", "/v2/\\2/by/\\1")
    assert users.fault is None and routes["shop-teapot"].fault is None
    # A Kubernetes Service (no ServiceEntry): endpoint labels are unknown, so subset v2 is a service of
    # its own pointing at the host, as before (reported); the hash policy goes with it.
    cart_v2 = config.service("cart-v2")
    assert cart.backends[0].service == "cart-v2" and cart_v2 is not None and not cart_v2.subsets
    assert cart_v2.hash_policy is not None and (cart_v2.hash_policy.cookie, cart_v2.hash_policy.cookie_ttl) == (
        "lb", 3600.0
    )
    user = config.service("user")
    assert user is not None and user.hash_policy is not None and user.hash_policy.header == "x-user"
    lost = {(f.line, f.message) for f in imported.warnings}
    assert (8, "consistentHash.minimumRingSize: not imported (the facade's ring: docs/upstreams.md)") in lost
    assert (48, "retryOn 'cancelled': not imported") in lost
    assert (58, "fault.abort.grpcStatus: not imported (the facade injects httpStatus only)") in lost
    assert (61, "http[2].fault: not imported (the facade applies it to routes that forward only)") in lost
    assert any("subset 'v2' of 'cart.shop.svc.cluster.local'" in m for _, m in lost)


def test_a_subset_over_labelled_endpoints_is_a_facade_subset_and_a_0s_cookie_a_session_cookie(tmp_path: Path) -> None:
    source = _write(
        tmp_path,
        """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a}
spec:
  hosts: [a.test]
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.1, labels: {v: "1"}}, {address: 10.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a}
spec:
  host: a.test
  trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: lb, ttl: 0s}}}}
  subsets: [{name: one, labels: {v: "1"}}, {name: unused, labels: {v: "9"}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [a.test]
  http:
  - match: [{uri: {prefix: /one/}}]
    route: [{destination: {host: a.test, subset: one}}]
  - route: [{destination: {host: a.test}}]
""",
    )
    imported = import_istio([str(source)])
    assert imported.errors == [] and imported.warnings == []
    out = tmp_path / "facade.yaml"
    out.write_text(emit(imported, header="test"))
    config = load_config(str(out))
    assert [r.backends[0].service for r in config.routes] == ["a/one", "a"]
    (service,) = config.services
    # Only the subset a route uses is declared (one selecting no endpoint would not validate).
    assert [s.name for s in service.subsets] == ["one"]
    assert [g.endpoints for g in service.subset_spec(service.subsets[0]).groups] == [("http://10.0.0.1:80",)]
    assert service.hash_policy is not None and (service.hash_policy.cookie, service.hash_policy.cookie_ttl) == (
        "lb", None
    )


def test_a_missing_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "istio", str(tmp_path / "nope.yaml")]) == 2
    assert f"{tmp_path / 'nope.yaml'}:1: error: cannot read file" in capsys.readouterr().err


# -- random VirtualServices: the imported routes against the first-match evaluator ------------------

_URIS = [
    {"prefix": "/"},
    {"prefix": "/a"},
    {"prefix": "/a/"},
    {"exact": "/a"},
    {"exact": "/a/b"},
    {"regex": "/a/[0-9]+"},
    {"prefix": "/b/c"},
    {"regex": ".*[.]php"},
]
_HEADERS = [{}, {"x-v": {"exact": "1"}}, {"x-v": {"prefix": "2"}}, {"x-t": {"regex": "a|b"}}, {"x-t": {}}]
_PATHS = ["/", "/a", "/a/", "/ab", "/a/b", "/a/12", "/a/12/x", "/b/c", "/b/cd", "/b/c/x.php", "/x.php"]
_HEADER_SETS = [{}, {"x-v": "1"}, {"x-v": "23"}, {"x-t": "b"}, {"x-t": "ab"}]


def _random_virtual_service(rng: random.Random) -> list[dict[str, Any]]:
    entries = [{"address": f"10.0.0.{i}", "labels": {"v": f"v{i}"}} for i in range(1, 4)]
    resources: list[dict[str, Any]] = [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "app"},
            "spec": {
                "hosts": ["app.internal"],
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "endpoints": entries,
            },
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "app"},
            "spec": {
                "host": "app.internal",
                "subsets": [{"name": f"v{i}", "labels": {"v": f"v{i}"}} for i in range(1, 4)],
            },
        },
    ]
    http = []
    for _ in range(rng.randint(1, 7)):
        matches = []
        for _ in range(rng.randint(0, 2)):
            m: dict[str, Any] = {"uri": rng.choice(_URIS)}
            headers = rng.choice(_HEADERS)
            if headers:
                m["headers"] = headers
            matches.append(m)
        entry: dict[str, Any] = {
            "route": [{"destination": {"host": "app.internal", "subset": rng.choice(["v1", "v2", "v3"])}}]
        }
        if matches:
            entry["match"] = matches
        http.append(entry)
    resources.append(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "r"},
            "spec": {"hosts": ["app.test"], "http": http},
        }
    )
    return resources


@pytest.mark.parametrize("seed", range(40))
def test_random_virtual_services_decide_like_the_evaluator(tmp_path: Path, seed: int) -> None:
    resources = _random_virtual_service(random.Random(seed))
    source = _write(tmp_path, yaml.safe_dump_all(resources))
    imported = import_istio([str(source)])
    assert imported.errors == []
    out = tmp_path / "facade.yaml"
    out.write_text(emit(imported, header="test"))
    config = load_config(str(out))
    for path in _PATHS:
        for headers in _HEADER_SETS:
            request = ("app.test", path, "GET", headers, "")
            assert _facade_decide(config, *request) == _istio_decide(resources, *request), (request, resources)
