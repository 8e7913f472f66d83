"""facade.yaml: fault injection, CORS, rewrites (prefix on any match, regex, authority), health check
expected_statuses and the multi-document error, each with its exact positioned messages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from facade.config import (
    Config,
    CorsPolicy,
    FaultAbort,
    FaultDelay,
    FaultPolicy,
    StringMatch,
    check_config,
    parse_config,
)
from facade.errors import ConfigError, Problem
from facade.normalize import canonical_route_path
from facade.routing import RouteTable
from facade.yamlfile import YamlDocument


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def run(text: str) -> tuple[Config | None, list[Problem]]:
    Path("facade.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return parse_config(YamlDocument.read("facade.yaml"), env={})


def messages(text: str) -> list[str]:
    return [str(p) for p in run(text)[1]]


SERVICES = """
services:
  a: {endpoints: [http://127.0.0.1:1]}
routes:
"""


def routes(text: str) -> str:
    return SERVICES + textwrap.indent(textwrap.dedent(text).lstrip("\n"), "  ")


# -- fault ---------------------------------------------------------------------------------------


def test_fault_parses_with_istio_defaults() -> None:
    config, problems = run(routes("""
        - name: slow
          match: {path: {prefix: /slow}}
          backend: a
          fault: {delay: {fixed: 2s, percent: 10}, abort: {status: 503, percent: 0.5}}
        - name: always
          backend: a
          fault: {abort: {status: 418}}
    """))
    assert problems == []
    assert config is not None
    assert config.routes[0].fault == FaultPolicy(FaultDelay(2.0, 10.0), FaultAbort(503, 0.5))
    assert config.routes[1].fault == FaultPolicy(None, FaultAbort(418, 100.0))  # Istio: no percentage = all


def test_fault_errors_are_positioned() -> None:
    assert messages(routes("""
        - name: bad
          backend: a
          fault: {delay: {fixed: -1s, percent: 120}, abort: {status: 150, percent: -5}}
        - name: typo
          backend: a
          fault: {delay: {fixd: 1s}, abrt: {status: 503}}
        - name: empty
          backend: a
          fault: {}
        - name: not-forwarded
          direct_response: {status: 200}
          fault: {abort: {status: 503}}
    """)) == [
        "facade.yaml:6:28: routes[0].fault.delay.fixed: invalid duration '-1s' (expected e.g. 250ms, 5s, 2m, 1h30m)",
        'facade.yaml:6:42: routes[0].fault.delay.percent: must be 0-100, got 120',
        'facade.yaml:6:64: routes[0].fault.abort.status: must be an HTTP status 200-599, got 150',
        'facade.yaml:6:78: routes[0].fault.abort.percent: must be 0-100, got -5',
        'facade.yaml:9:20: routes[1].fault.delay.fixed: is required',
        "facade.yaml:9:21: routes[1].fault.delay.fixd: unknown field 'fixd'; did you mean 'fixed'?",
        "facade.yaml:9:32: routes[1].fault.abrt: unknown field 'abrt'; did you mean 'abort'?",
        'facade.yaml:12:12: routes[2].fault: needs delay, abort or both',
        'facade.yaml:15:5: routes[3].fault: fault only applies to routes with backend or backends',
    ]


# -- cors ----------------------------------------------------------------------------------------


def test_cors_parses() -> None:
    config, problems = run(routes("""
        - name: api
          backend: a
          cors:
            allow_origins: ["https://shop.example", {prefix: "https://dev."}, {regex: "https://.*\\\\.test"}]
            allow_methods: [get, POST]
            allow_headers: [X-Token]
            expose_headers: [X-Request-Id]
            max_age: 24h
            allow_credentials: true
    """))
    assert problems == []
    assert config is not None
    assert config.routes[0].cors == CorsPolicy(
        allow_origins=(
            StringMatch("exact", "https://shop.example"),
            StringMatch("prefix", "https://dev."),
            StringMatch("regex", "https://.*\\.test"),
        ),
        allow_methods=("GET", "POST"),
        allow_headers=("x-token",),
        expose_headers=("x-request-id",),
        max_age=86400,
        allow_credentials=True,
    )


def test_cors_errors_are_positioned() -> None:
    assert messages(routes("""
        - name: api
          backend: a
          cors:
            allow_origins: [{regex: "https://(", exact: x}, {regex: "("}]
            allow_methods: ["GE T"]
            allow_credential: true
        - name: none
          backend: a
          cors: {allow_origins: []}
    """)) == [
        'facade.yaml:7:23: routes[0].cors.allow_origins[0]: needs exactly one of exact, prefix, regex',
        "facade.yaml:7:63: routes[0].cors.allow_origins[1].regex: invalid regex '(': missing ), unterminated subpattern at position 0",
        "facade.yaml:8:23: routes[0].cors.allow_methods[0]: invalid method 'GE T'",
        "facade.yaml:9:7: routes[0].cors.allow_credential: unknown field 'allow_credential'; did you mean 'allow_credentials'?",
        'facade.yaml:12:27: routes[1].cors.allow_origins: must be a non-empty list of origins ("https://shop.example", {prefix: ...}, {regex: ...})',
    ]


# -- rewrites ------------------------------------------------------------------------------------


def test_full_path_rewrite_on_exact_and_regex_matches_is_accepted_as_the_docs_say() -> None:
    config, problems = run(routes("""
        - name: exact
          match: {path: {exact: /old}}
          backend: a
          rewrite: {prefix: /new/place}
        - name: regex
          match: {path: {regex: "/orders/\\\\d+"}}
          backend: a
          rewrite: {prefix: /order}
    """))
    assert problems == []
    assert config is not None
    table = RouteTable.compile(config.routes, canonicalize=canonical_route_path)

    def upstream(path: str) -> str | None:
        hit = table.resolve(host="x", path=path, method="GET", headers=[], query_string=b"")
        return hit.upstream_path if hit else None

    assert upstream("/old") == "/new/place"
    assert upstream("/orders/42") == "/order"


def test_regex_rewrite_and_authority() -> None:
    config, problems = run(routes("""
        - name: users
          match: {path: {prefix: /users}}
          backend: a
          rewrite:
            regex: {pattern: "^/users/(\\\\d+)/profile$", substitution: "/v2/profiles/\\\\1"}
            authority: Users.Internal:8080
    """))
    assert problems == []
    assert config is not None
    route = config.routes[0]
    assert route.rewrite_regex == ("^/users/(\\d+)/profile$", "/v2/profiles/\\1")
    assert route.rewrite_authority == "users.internal:8080"
    table = RouteTable.compile(config.routes, canonicalize=canonical_route_path)
    hit = table.resolve(host="x", path="/users/7/profile", method="GET", headers=[], query_string=b"")
    assert hit is not None and hit.upstream_path == "/v2/profiles/7"
    miss = table.resolve(host="x", path="/users/7", method="GET", headers=[], query_string=b"")
    assert miss is not None and miss.upstream_path == "/users/7"  # no match of the pattern: the path as is


def test_rewrite_errors_are_positioned() -> None:
    assert messages(routes("""
        - name: both
          backend: a
          rewrite: {prefix: /x, regex: {pattern: a, substitution: b}}
        - name: bad-regex
          backend: a
          rewrite: {regex: {pattern: "(", substitution: x}}
        - name: bad-group
          backend: a
          rewrite: {regex: {pattern: "/(a)", substitution: "/\\\\2"}}
        - name: bad-chars
          backend: a
          rewrite: {regex: {pattern: "/a", substitution: "/b c?d"}, authority: "a/b"}
        - name: typo
          backend: a
          rewrite: {prefx: /x}
    """)) == [
        'facade.yaml:6:27: routes[0].rewrite.regex: give either prefix or regex, not both',
        "facade.yaml:9:32: routes[1].rewrite.regex.pattern: invalid regex '(': missing ), unterminated subpattern at position 0",
        "facade.yaml:12:54: routes[2].rewrite.regex.substitution: invalid substitution '/\\\\2': invalid group reference 2 at position 2",
        "facade.yaml:15:52: routes[3].rewrite.regex.substitution: substitution '/b c?d' may hold only path characters and \\N group references",
        "facade.yaml:15:74: routes[3].rewrite.authority: invalid authority 'a/b' (expected a host, e.g. catalog.internal:8080)",
        "facade.yaml:18:15: routes[4].rewrite.prefx: unknown field 'prefx'; did you mean 'prefix'?",
    ]


# -- health check expected_statuses ----------------------------------------------------------------


def test_health_check_expected_statuses() -> None:
    config, problems = run("""
        services:
          a:
            endpoints: [http://127.0.0.1:1]
            health_check: {expected_statuses: [200-299, 404]}
          b:
            endpoints: [http://127.0.0.1:2]
            health_check: {path: /up}
        routes: [{name: r, backend: a}]
    """)
    assert problems == []
    assert config is not None
    a, b = config.service("a"), config.service("b")
    assert a is not None and a.health_check is not None and b is not None and b.health_check is not None
    assert a.health_check.expected_statuses == ((200, 299), (404, 404))
    assert b.health_check.expected_statuses == ((200, 399),)  # the documented default


def test_health_check_expected_statuses_errors() -> None:
    assert messages("""
        services:
          a:
            endpoints: [http://127.0.0.1:1]
            health_check: {expected_statuses: [299-200, 700, ok, "200-650"]}
          b:
            endpoints: [http://127.0.0.1:2]
            health_check: {expected_statuses: []}
        routes: [{name: r, backend: a}]
    """) == [
        "facade.yaml:4:40: services.a.health_check.expected_statuses[0]: range '299-200' is empty: its start is above its end",
        'facade.yaml:4:49: services.a.health_check.expected_statuses[1]: statuses must be 100-599, got 700',
        'facade.yaml:4:54: services.a.health_check.expected_statuses[2]: must be a status (200) or an inclusive range ("200-299"), got \'ok\'',
        'facade.yaml:4:58: services.a.health_check.expected_statuses[3]: statuses must be 100-599, got 200-650',
        'facade.yaml:7:39: services.b.health_check.expected_statuses: must list at least one status or range (e.g. [200-299, 404])',
    ]


# -- the multi-document error ----------------------------------------------------------------------


def test_a_second_document_is_named_plainly() -> None:
    Path("facade.yaml").write_text("listen: 127.0.0.1:8080\nroutes: []\n---\nservices: {}\n")
    with pytest.raises(ConfigError) as caught:
        YamlDocument.read("facade.yaml")
    assert [str(p) for p in caught.value.problems] == [
        (
            "facade.yaml:3:1: facade.yaml holds more than one YAML document (a second '---' at line 3); "
            "put everything in one document"
        )
    ]
    config, problems = check_config("facade.yaml")
    assert config is None and [p.line for p in problems] == [3]
