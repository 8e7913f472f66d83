"""facade.yaml -> Config: the full surface, every error class with its exact position, warnings."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import textwrap
from pathlib import Path
from typing import Literal, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.config import (
    ENV_ADMIN_TOKEN,
    Config,
    Route,
    RouteMatch,
    StringMatch,
    WeightedBackend,
    check_config,
    load_config,
    parse_config,
    unreachable_routes,
)
from facade.errors import ConfigError, Problem
from facade.routing import RouteTable
from facade.yamlfile import YamlDocument

FIXTURES = Path(__file__).parent / "fixtures"
DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Work in tmp_path so the config is "facade.yaml" and messages read exactly as a user sees them.
    monkeypatch.chdir(tmp_path)


def run(text: str, env: dict[str, str] | None = None) -> tuple[Config | None, list[Problem]]:
    Path("facade.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return parse_config(YamlDocument.read("facade.yaml"), env={} if env is None else env)


def messages(text: str) -> list[str]:
    return [str(p) for p in run(text)[1]]


# -- the valid surface ---------------------------------------------------------------------------


def test_full_fixture_parses_to_expected_frozen_values() -> None:
    path = str(FIXTURES / "full.yaml")
    config = load_config(path)
    here = str(FIXTURES)

    assert config.source == path
    assert config.sha256 == hashlib.sha256((FIXTURES / "full.yaml").read_bytes()).hexdigest()
    assert config.warnings == ()
    assert config.listen == "[::1]:8443"
    assert config.tls is not None and config.tls.cert_file == os.path.join(here, "server.pem")
    assert config.tls.client_ca_file == os.path.join(here, "ca.pem")
    assert (config.admin.listen, config.admin.token) == ("127.0.0.1:9901", "s3cret")
    assert config.state_dir == os.path.join(here, "state")
    assert config.migrations_dir == os.path.join(here, "migrations/")
    assert config.trusted_proxies == ("10.0.0.0/8", "127.0.0.1/32", "192.168.1.0/24")
    assert config.access_log is True
    assert (config.limits.max_request_headers, config.limits.max_request_body) == (32 * 1024, 1024**3)
    assert (config.limits.max_concurrent_requests, config.limits.header_timeout) == (512, 5.0)
    assert (config.normalize.merge_slashes, config.normalize.reject_encoded_slash) == (False, False)

    monolith = config.service("monolith")
    assert monolith is not None and monolith.groups[0].name == "default"
    assert monolith.groups[0].endpoints == ("http://127.0.0.1:8001", "http://localhost:8003")
    catalog = config.service("catalog")
    assert catalog is not None
    assert [(g.name, g.endpoints, g.weight, g.priority) for g in catalog.groups] == [
        ("east", ("https://127.0.0.1:15101",), 80, 0),
        ("west", ("https://[::1]:15102",), 20, 1),
    ]
    assert catalog.load_balancer == "least_request"
    assert catalog.health_check is not None
    assert (catalog.health_check.interval, catalog.health_check.timeout) == (2.0, 0.5)
    assert (catalog.health_check.healthy_threshold, catalog.health_check.unhealthy_threshold) == (2, 3)
    od = catalog.outlier_detection
    assert od is not None and (od.consecutive_5xx, od.consecutive_gateway_errors) == (3, 4)
    assert (od.base_ejection, od.max_ejection, od.max_ejection_percent) == (10.0, 120.0, 50.0)
    assert (catalog.timeouts.connect, catalog.timeouts.request) == (1.0, None)
    assert catalog.retries.attempts == 3 and catalog.retries.per_try_timeout == 0.25
    assert catalog.retries.retry_on == ("connect-failure", "reset", "502", "503", "504")
    assert (catalog.connection_pool.max_connections, catalog.connection_pool.idle_timeout) == (64, 3.0)
    assert catalog.tls is not None and catalog.tls.key_file == os.path.join(here, "client.key")
    assert (catalog.tls.server_name, catalog.tls.verify) == ("catalog", True)
    assert catalog.identity == "spiffe://shop.local/ns/shop/sa/catalog"

    names = [r.name for r in config.routes]
    assert names == ["old-shop", "legacy-api", "ping", "catalog", "product-page", "default"]
    old, legacy, ping, route, product, default = config.routes
    assert old.matches == (RouteMatch(hosts=("old.shop.local",), path_kind="exact", path="/"),)
    assert old.redirect is not None and (old.redirect.scheme, old.redirect.port, old.redirect.code) == (
        "https",
        443,
        308,
    )
    assert legacy.redirect is not None and legacy.redirect.prefix == "/api/v2" and legacy.redirect.path is None
    assert ping.matches[0].methods == ("GET", "HEAD")
    assert ping.direct_response is not None and ping.direct_response.body == "pong"
    first, second = route.matches
    assert first.hosts == ("shop.local", "*.shop.local")
    assert dict(first.headers) == {
        "x-canary": StringMatch("exact", "1"),
        "x-tenant": StringMatch("prefix", "acme-"),
        "x-version": StringMatch("regex", "^v[0-9]+$"),
        "x-debug": StringMatch("present"),
        "x-legacy": StringMatch("absent"),
        "x-plain": StringMatch("exact", "yes-please"),
    }
    assert dict(first.query) == {"debug": StringMatch("exact", "1"), "lang": StringMatch("prefix", "en")}
    assert second == RouteMatch(path="/products/")
    assert route.backends == (WeightedBackend("monolith", 90), WeightedBackend("catalog", 10))
    assert route.rewrite_prefix == "/v2/catalog"
    assert route.request_headers.set == (("x-env", "demo"),) and route.request_headers.remove == ("x-internal",)
    assert route.response_headers.add == (("x-route", "catalog"),)
    assert route.timeout == 5.0 and route.retries is not None and route.retries.attempts == 1
    assert (route.line, product.line, default.line) == (53, 76, 79)
    assert route.rate_limit is not None and (route.rate_limit.requests_per_unit, route.rate_limit.capacity) == (100, 200)
    assert route.rate_limit.key == "client_ip"
    assert route.fault is not None and route.fault.delay is not None and route.fault.abort is not None
    assert (route.fault.delay.fixed, route.fault.delay.percent) == (2.0, 10.0)
    assert (route.fault.abort.status, route.fault.abort.percent) == (503, 5.0)
    assert route.cors is not None and route.cors.allow_origins[1] == StringMatch("prefix", "https://preview-")
    assert (route.cors.allow_methods, route.cors.max_age) == (("GET",), 3600)
    assert product.matches[0].path_kind == "regex" and product.backends == (WeightedBackend("catalog/v2", 100),)
    assert [(s.name, s.labels) for s in catalog.subsets] == [("v2", (("version", "v2"),))]
    assert (config.mark_responses, config.headers_with_underscores, config.debug_error_details) == (True, "reject", True)
    assert config.workers == 2
    assert default.backends == (WeightedBackend("monolith", 100),) and default.matches == (RouteMatch(),)

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listen = "0.0.0.0:80"  # type: ignore[misc]


def test_minimal_config_gets_the_documented_defaults() -> None:
    config, problems = run(
        """
        services:
          app: {endpoints: [http://127.0.0.1:8001]}
        routes:
          - name: all
            backend: app
        """
    )
    assert problems == [] and config is not None
    assert (config.listen, config.admin.listen, config.admin.token) == ("127.0.0.1:8080", "127.0.0.1:9901", None)
    assert (config.state_dir, config.migrations_dir, config.tls, config.access_log) == (".facade", None, None, False)
    app = config.services[0]
    assert (app.timeouts.connect, app.timeouts.request) == (5.0, 15.0)
    assert (app.retries.attempts, app.retries.retry_on) == (2, ("connect-failure",))
    assert app.health_check is None and app.outlier_detection is None
    assert config.routes[0].matches == (RouteMatch(hosts=(), path_kind="prefix", path="/"),)


def test_admin_short_form_and_listen_forms() -> None:
    config, problems = run(
        """
        listen: "[::1]:0"
        admin: 127.0.0.1:9999
        routes: [{name: hello, direct_response: {body: hi}}]
        """
    )
    assert problems == [] and config is not None
    assert (config.listen, config.admin.listen) == ("[::1]:0", "127.0.0.1:9999")


def test_hosts_are_lower_cased_without_port_or_trailing_dot() -> None:
    config, _ = run(
        """
        routes:
          - name: r
            match: {host: [Shop.Local., "API.shop.local:8080", "*.Shop.local", "[::1]:80"]}
            direct_response: {}
        """
    )
    assert config is not None
    assert config.routes[0].matches[0].hosts == ("shop.local", "api.shop.local", "*.shop.local", "[::1]")


# -- errors, each with its exact position -------------------------------------------------------


def test_unknown_keys_get_a_did_you_mean() -> None:
    assert messages(
        """
        listn: 127.0.0.1:8080
        routes:
          - name: r
            direct_respons: {status: 200}
        """
    ) == [
        "facade.yaml:1:1: listn: unknown field 'listn'; did you mean 'listen'?",
        "facade.yaml:3:5: routes[0]: needs one action: backend, backends, redirect or direct_response",
        "facade.yaml:4:5: routes[0].direct_respons: unknown field 'direct_respons'; did you mean 'direct_response'?",
    ]


def test_types_and_durations_need_units() -> None:
    assert messages(
        """
        access_log: "yes"
        limits: {header_timeout: 10, max_concurrent_requests: many}
        routes: [{name: r, direct_response: {}, timeout: 1.5}]
        """
    ) == [
        "facade.yaml:1:13: access_log: must be true or false, got 'yes'",
        "facade.yaml:2:26: limits.header_timeout: duration needs a unit, e.g. 10s",
        "facade.yaml:2:55: limits.max_concurrent_requests: must be an integer, got 'many'",
        "facade.yaml:3:50: routes[0].timeout: duration needs a unit, e.g. 1.5s",
    ]


def test_unknown_backend_names_suggest_a_service() -> None:
    assert messages(
        """
        services:
          catalog: {endpoints: [http://127.0.0.1:8002]}
          monolith: {endpoints: [http://127.0.0.1:8001]}
        routes:
          - name: a
            backend: catalgo
          - name: b
            backends: [{service: monolith, weight: 50}, {service: orders, weight: 50}]
        """
    ) == [
        "facade.yaml:6:14: routes[0].backend: unknown service 'catalgo'; did you mean 'catalog'?",
        "facade.yaml:8:59: routes[1].backends[1].service: unknown service 'orders' (services: catalog, monolith)",
    ]


def test_route_names_are_unique_and_required() -> None:
    assert messages(
        """
        routes:
          - name: home
            direct_response: {}
          - name: home
            direct_response: {}
          - direct_response: {}
        """
    ) == [
        "facade.yaml:4:11: routes[1].name: duplicate route name 'home' (first at line 2)",
        "facade.yaml:6:5: routes[2].name: is required",
    ]


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("ftp://127.0.0.1:21", "endpoint must be http://host:port or https://host:port, got 'ftp://127.0.0.1:21'"),
        ("127.0.0.1:8001", "endpoint must be http://host:port or https://host:port, got '127.0.0.1:8001'"),
        ("http://127.0.0.1:8001/v1", "endpoint must not have a path or query, got 'http://127.0.0.1:8001/v1'"),
        ("http://127.0.0.1:8001?x=1", "endpoint must not have a path or query, got 'http://127.0.0.1:8001?x=1'"),
        ("http://user:pw@127.0.0.1:8001", "endpoint must not carry credentials, got 'http://user:pw@127.0.0.1:8001'"),
        ("http://127.0.0.1:99999", "endpoint port must be 1-65535, got 'http://127.0.0.1:99999'"),
        ("http://:8001", "endpoint has no host: 'http://:8001'"),
    ],
)
def test_endpoint_urls_are_checked(endpoint: str, message: str) -> None:
    assert messages(
        f"""
        services:
          app:
            endpoints: ["{endpoint}"]
        routes: []
        """
    ) == [
        f"facade.yaml:3:17: services.app.endpoints[0]: {message}",
        "facade.yaml:4:9: warning: routes: no routes: every request gets 404",
    ]


def test_endpoint_urls_are_canonical() -> None:
    config, problems = run(
        """
        services:
          app: {endpoints: ["HTTP://Example.Local", "https://example.local:8443/", "http://[::1]:80"]}
        routes: [{name: r, backend: app}]
        """
    )
    assert problems == [] and config is not None
    assert config.services[0].groups[0].endpoints == (
        "http://example.local",
        "https://example.local:8443",
        "http://[::1]:80",
    )


def test_service_shape_errors() -> None:
    assert messages(
        """
        services:
          Catalog: {endpoints: [http://127.0.0.1:1]}
          both:
            endpoints: [http://127.0.0.1:2]
            groups: [{name: a, endpoints: [http://127.0.0.1:3]}]
          none: {load_balancer: fastest}
          plain:
            endpoints: [http://127.0.0.1:4]
            tls: {verify: false}
            identity: catalog
        routes: [{name: r, backend: plain}]
        """
    ) == [
        (
            "facade.yaml:2:3: services.Catalog: invalid service name 'Catalog': use at most 63 lower-case letters, "
            "digits, '-' and '_', starting and ending with a letter or digit"
        ),
        "facade.yaml:5:5: services.both.groups: give either endpoints or groups, not both",
        "facade.yaml:6:9: services.none.endpoints: needs endpoints (or groups)",
        (
            "facade.yaml:6:25: services.none.load_balancer: must be one of round_robin, least_request, random, "
            "got 'fastest'; did you mean 'least_request'?"
        ),
        "facade.yaml:9:5: services.plain.tls: tls applies to https:// endpoints; this service has none",
        (
            "facade.yaml:10:15: services.plain.identity: must be a SPIFFE ID like spiffe://shop.local/ns/shop/sa/catalog, "
            "got 'catalog'"
        ),
    ]


def test_tls_files_must_exist_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "server.pem").write_text("placeholder: only existence is checked here")
    assert messages(
        """
        tls: {cert: server.pem, key: missing.key}
        routes: [{name: r, direct_response: {}}]
        """
    ) == ["facade.yaml:1:30: tls.key: file not found: missing.key"]

    # A config in another directory resolves its files against that directory, not the cwd.
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "facade.yaml").write_text("tls: {cert: server.pem, key: server.pem}\nroutes: []\n")
    config, problems = check_config(str(conf / "facade.yaml"))
    assert config is None
    assert [str(p) for p in problems if p.severity == "error"] == [
        f"{conf / 'facade.yaml'}:1:13: tls.cert: file not found: {conf / 'server.pem'}",
        f"{conf / 'facade.yaml'}:1:30: tls.key: file not found: {conf / 'server.pem'}",
    ]
    (conf / "server.pem").write_text("placeholder")
    config, _ = check_config(str(conf / "facade.yaml"))
    assert config is not None and config.tls is not None
    assert config.tls.cert_file == str(conf / "server.pem")


def test_weighted_backends_must_sum_to_100() -> None:
    assert messages(
        """
        services:
          a: {endpoints: [http://127.0.0.1:1]}
          b: {endpoints: [http://127.0.0.1:2]}
        routes:
          - name: split
            backends:
              - {service: a, weight: 80}
              - {service: b, weight: 10}
          - name: negative
            backends: [{service: a, weight: -5}, {service: b, weight: 105}]
          - name: lone
            backends: [{service: a, weight: 7}]
        """
    ) == [
        "facade.yaml:7:7: routes[0].backends: backend weights must sum to 100, got 90",
        "facade.yaml:10:37: routes[1].backends[0].weight: must be at least 0, got -5",
    ]


def test_group_weights_are_relative_and_all_zero_only_warns() -> None:
    config, problems = run(
        """
        services:
          app:
            groups:
              - {name: a, endpoints: [http://127.0.0.1:1], weight: 0}
              - {name: b, endpoints: [http://127.0.0.1:2], weight: 0}
        routes: [{name: r, backend: app}]
        """
    )
    assert config is not None
    assert [str(p) for p in problems] == [
        "facade.yaml:4:7: warning: services.app.groups: every group has weight 0: no endpoint gets traffic"
    ]
    assert config.warnings == tuple(problems)
    assert messages(
        """
        services:
          app:
            groups:
              - {name: a, endpoints: [http://127.0.0.1:1], weight: -1}
              - {name: a, endpoints: [http://127.0.0.1:2]}
        routes: [{name: r, backend: app}]
        """
    ) == [
        "facade.yaml:4:60: services.app.groups[0].weight: must be at least 0, got -1",
        "facade.yaml:5:16: services.app.groups[1].name: duplicate group name 'a' (first at line 4)",
    ]


def test_match_errors_regex_header_name_method_and_path() -> None:
    assert messages(
        """
        routes:
          - name: r
            match:
              path: {regex: "(unclosed"}
              methods: [GET, "BAD METHOD"]
              headers: {"x bad": "1", x-ok: {regex: "[a-"}}
            direct_response: {}
          - name: s
            match: [{path: {prefix: catalog}}, {path: {exact: /a, prefix: /a}}]
            direct_response: {}
        """
    ) == [
        (
            "facade.yaml:4:21: routes[0].match.path.regex: invalid regex '(unclosed': "
            "missing ), unterminated subpattern at position 0"
        ),
        "facade.yaml:5:22: routes[0].match.methods[1]: invalid method 'BAD METHOD'",
        "facade.yaml:6:17: routes[0].match.headers.x bad: invalid header name 'x bad'",
        (
            "facade.yaml:6:45: routes[0].match.headers.x-ok.regex: invalid regex '[a-': "
            "unterminated character set at position 0"
        ),
        "facade.yaml:9:29: routes[1].match[0].path.prefix: must start with '/', got 'catalog'",
        (
            "facade.yaml:9:59: routes[1].match[1].path.prefix: give only one of prefix, exact, regex "
            "('exact' is already given)"
        ),
    ]


def test_header_and_query_matchers() -> None:
    assert messages(
        """
        routes:
          - name: r
            match:
              headers: {x-a: {prefix: v, exact: v1}, x-b: {present: false}, x-c: {}, X-D: "1", x-d: "2"}
              query: {q: {regex: "("}}
            direct_response: {}
        """
    ) == [
        "facade.yaml:4:34: routes[0].match.headers.x-a.exact: give only one matcher ('prefix' is already given)",
        "facade.yaml:4:61: routes[0].match.headers.x-b.present: must be true (write absent: true for the opposite)",
        "facade.yaml:4:74: routes[0].match.headers.x-c: needs exactly one of exact, prefix, regex, present, absent",
        "facade.yaml:4:88: routes[0].match.headers.x-d: header 'x-d' is matched twice",
        (
            "facade.yaml:5:26: routes[0].match.query.q.regex: invalid regex '(': "
            "missing ), unterminated subpattern at position 0"
        ),
    ]


def test_value_matchers_may_ignore_case_except_regex() -> None:
    config, problems = run(
        """
        routes:
          - name: r
            match: {headers: {x-env: {exact: Demo, case_sensitive: false}}, query: {q: {prefix: A}}}
            direct_response: {}
        """
    )
    assert problems == [] and config is not None
    assert config.routes[0].matches[0].headers == (("x-env", StringMatch("exact", "Demo", case_sensitive=False)),)
    assert config.routes[0].matches[0].query == (("q", StringMatch("prefix", "A", case_sensitive=True)),)
    assert messages(
        """
        routes:
          - name: r
            match: {headers: {x-env: {regex: "^d", case_sensitive: false}}}
            direct_response: {}
        """
    ) == [
        (
            "facade.yaml:3:44: routes[0].match.headers.x-env.case_sensitive: applies to exact and prefix only, "
            "not regex (use (?i) in the regex)"
        )
    ]


def test_action_errors_redirect_direct_response_rewrite_retries() -> None:
    assert messages(
        """
        services:
          a: {endpoints: [http://127.0.0.1:1]}
        routes:
          - name: two-actions
            backend: a
            redirect: {code: 302, path: /x}
          - name: status
            direct_response: {status: 600}
            rewrite: {prefix: /x}
          - name: exact-rewrite
            match: {path: {exact: /e}}
            backend: a
            rewrite: {prefix: v2}
            retries: {attempts: 11, retry_on: [connect-failure, 500, gateway-error]}
          - name: both-paths
            redirect: {path: /a, prefix: /b, code: 300}
          - name: nothing
            redirect: {}
            request_headers: {set: {"bad header": x}}
        """
    ) == [
        "facade.yaml:6:5: routes[0].redirect: only one action per route: 'backend' is already given",
        "facade.yaml:8:31: routes[1].direct_response.status: must be 100-599, got 600",
        "facade.yaml:9:5: routes[1].rewrite: rewrite only applies to routes with backend or backends",
        "facade.yaml:13:23: routes[2].rewrite.prefix: must start with '/', got 'v2'",
        "facade.yaml:14:25: routes[2].retries.attempts: must be 0-10, got 11",
        (
            "facade.yaml:14:57: routes[2].retries.retry_on[1]: must be one of connect-failure, reset, 5xx, "
            "gateway-error, retriable-4xx, retriable-status-codes, 502, 503, 504, got '500'; "
            "for other statuses use retriable-status-codes with retriable_status_codes: [500]"
        ),
        "facade.yaml:16:26: routes[3].redirect.prefix: give either path or prefix, not both",
        "facade.yaml:16:44: routes[3].redirect.code: must be one of 301, 302, 303, 307, 308, got 300",
        "facade.yaml:18:15: routes[4].redirect: redirect needs at least one of scheme, host, port, path, prefix",
        "facade.yaml:19:29: routes[4].request_headers.set.bad header: invalid header name 'bad header'",
    ]


def test_ranges_of_percentages_thresholds_and_durations() -> None:
    assert messages(
        """
        services:
          a:
            endpoints: [http://127.0.0.1:1]
            outlier_detection: {max_ejection_percent: 150, consecutive_5xx: 0, base_ejection: 1m, max_ejection: 10s}
            health_check: {unhealthy_threshold: 0, path: healthz, interval: 0s}
            timeouts: {request: nope}
        routes: [{name: r, backend: a}]
        """
    ) == [
        "facade.yaml:4:47: services.a.outlier_detection.max_ejection_percent: must be 0-100, got 150",
        "facade.yaml:4:69: services.a.outlier_detection.consecutive_5xx: must be at least 1, got 0",
        "facade.yaml:4:105: services.a.outlier_detection.max_ejection: must be at least base_ejection (60s)",
        "facade.yaml:5:41: services.a.health_check.unhealthy_threshold: must be at least 1, got 0",
        "facade.yaml:5:50: services.a.health_check.path: must start with '/', got 'healthz'",
        "facade.yaml:5:69: services.a.health_check.interval: must be greater than 0, got 0s",
        "facade.yaml:6:25: services.a.timeouts.request: invalid duration 'nope' (expected e.g. 250ms, 5s, 2m, 1h30m)",
    ]


def test_listen_admin_and_trusted_proxies_errors() -> None:
    assert messages(
        """
        listen: localhost
        admin: {listen: "127.0.0.1:70000", tokn: x}
        trusted_proxies: [10.0.0.0/8, 10.0.0.0/33, nope]
        routes: [{name: r, direct_response: {}}]
        """
    ) == [
        "facade.yaml:1:9: listen: must be host:port (e.g. 127.0.0.1:8080 or [::1]:8080), got 'localhost'",
        "facade.yaml:2:17: admin.listen: port must be 0-65535, got 70000",
        "facade.yaml:2:36: admin.tokn: unknown field 'tokn'; did you mean 'token'?",
        "facade.yaml:3:31: trusted_proxies[1]: invalid CIDR '10.0.0.0/33' (expected e.g. 10.0.0.0/8 or 127.0.0.1/32)",
        "facade.yaml:3:44: trusted_proxies[2]: invalid CIDR 'nope' (expected e.g. 10.0.0.0/8 or 127.0.0.1/32)",
    ]


def test_multiple_errors_are_reported_together_in_file_order() -> None:
    config, problems = run(
        """
        routes:
          - name: late
            backend: nowhere
        services:
          app: {endpoints: [http://127.0.0.1:1], timeouts: {connect: 5}}
        listen: nope
        """
    )
    assert config is None
    assert [str(p) for p in problems] == [
        "facade.yaml:3:14: routes[0].backend: unknown service 'nowhere' (services: app)",
        "facade.yaml:5:62: services.app.timeouts.connect: duration needs a unit, e.g. 5s",
        "facade.yaml:6:9: listen: must be host:port (e.g. 127.0.0.1:8080 or [::1]:8080), got 'nope'",
    ]


# -- warnings ---------------------------------------------------------------------------------------


def test_empty_routes_is_valid_but_warns() -> None:
    config, problems = run("routes: []\n")
    assert config is not None and config.routes == ()
    assert [str(p) for p in problems] == ["facade.yaml:1:9: warning: routes: no routes: every request gets 404"]
    assert config.warnings == tuple(problems)


def test_shadowed_routes_warn_with_the_route_that_matches_first() -> None:
    config, problems = run(
        """
        services:
          monolith: {endpoints: [http://127.0.0.1:8001]}
          catalog: {endpoints: [http://127.0.0.1:8002]}
        routes:
          - name: canary
            match: {path: {prefix: /catalog}, headers: {x-canary: "1"}}
            backend: catalog
          - name: catalog
            match: {host: "*.shop.local", path: {prefix: /catalog}}
            backend: monolith
          - name: catalog-api
            match: {host: api.shop.local, path: {exact: /catalog/items}, methods: [GET]}
            backend: monolith
          - name: catalogue
            match: {path: {prefix: /catalogue}}
            backend: monolith
          - name: everything
            backend: monolith
          - name: too-late
            match: {path: {regex: "^/x$"}}
            backend: catalog
        """
    )
    assert config is not None  # warnings never make a config invalid
    # "canary" is narrower than "catalog" (a header condition), so "catalog" stays reachable;
    # "/catalogue" is not under the "/catalog" prefix (prefixes match whole segments).
    assert [str(p) for p in problems] == [
        (
            "facade.yaml:11:5: warning: routes[2]: route 'catalog-api' can never match: "
            "route 'catalog' (line 8) matches first"
        ),
        (
            "facade.yaml:19:5: warning: routes[5]: route 'too-late' can never match: "
            "route 'everything' (line 17) matches first"
        ),
    ]
    assert config.warnings == tuple(problems)


R = Route  # brevity in the table below


def _r(name: str, *matches: RouteMatch) -> Route:
    return R(name=name, matches=matches or (RouteMatch(),), backends=(WeightedBackend("a"),))


@pytest.mark.parametrize(
    ("earlier", "later", "shadowed"),
    [
        (RouteMatch(), RouteMatch(path_kind="regex", path="^/x"), True),
        (RouteMatch(path="/a"), RouteMatch(path_kind="exact", path="/a"), True),
        (RouteMatch(path="/a"), RouteMatch(path="/a/b"), True),
        (RouteMatch(path="/a"), RouteMatch(path_kind="exact", path="/a/b/c"), True),
        (RouteMatch(path="/a"), RouteMatch(path="/ab"), False),
        (RouteMatch(path="/a/"), RouteMatch(path="/a"), False),
        (RouteMatch(path="/a/"), RouteMatch(path="/a/b"), True),
        (RouteMatch(path_kind="exact", path="/a"), RouteMatch(path_kind="exact", path="/a"), True),
        (RouteMatch(path_kind="exact", path="/a"), RouteMatch(path="/a"), False),
        (RouteMatch(path_kind="regex", path=".*"), RouteMatch(path="/a"), False),
        (RouteMatch(hosts=("*.x",)), RouteMatch(hosts=("a.x", "b.c.x", "*.d.x")), True),
        (RouteMatch(hosts=("*.x",)), RouteMatch(hosts=("x",)), False),
        (RouteMatch(hosts=("a.x",)), RouteMatch(), False),
        (RouteMatch(hosts=("a.x",)), RouteMatch(hosts=("a.x", "b.x")), False),
        (RouteMatch(hosts=("*",)), RouteMatch(hosts=("a.x",)), True),
        (RouteMatch(methods=("GET", "HEAD")), RouteMatch(methods=("GET",)), True),
        (RouteMatch(methods=("GET",)), RouteMatch(methods=("GET", "POST")), False),
        (RouteMatch(methods=("GET",)), RouteMatch(), False),
        (RouteMatch(headers=(("x", StringMatch("exact", "1")),)), RouteMatch(), False),
        (
            RouteMatch(headers=(("x", StringMatch("exact", "1")),)),
            RouteMatch(headers=(("x", StringMatch("exact", "1")), ("y", StringMatch("present")))),
            True,
        ),
        (RouteMatch(query=(("q", StringMatch("present")),)), RouteMatch(), False),
    ],
)
def test_unreachable_routes_is_conservative(earlier: RouteMatch, later: RouteMatch, shadowed: bool) -> None:
    routes = [_r("earlier", earlier), _r("later", later)]
    assert unreachable_routes(routes) == ([(1, 0)] if shadowed else [])


def test_unreachable_routes_with_ored_matches_needs_one_earlier_route_covering_all() -> None:
    a = _r("a", RouteMatch(path="/a"))
    b = _r("b", RouteMatch(path="/b"))
    ab = _r("ab", RouteMatch(path="/a/x"), RouteMatch(path="/b/y"))
    both = _r("both", RouteMatch(path="/a"), RouteMatch(path="/b"))
    assert unreachable_routes([a, b, ab]) == []  # each covers only half; not certain from one route
    assert unreachable_routes([both, ab, a]) == [(1, 0), (2, 0)]


def test_unreachable_routes_scales_to_thousands_of_routes() -> None:
    # Distinct hosts: nothing shadows anything, and the check must not compare every pair.
    routes = [_r(f"r{i}", RouteMatch(hosts=(f"h{i}.shop.local",), path=f"/p{i % 7}")) for i in range(5000)]
    routes.append(_r("dup", RouteMatch(hosts=("h42.shop.local",), path="/p0/deeper")))
    assert unreachable_routes(routes) == [(5000, 42)]


# -- admin token, load_config, check_config ------------------------------------------------------


def test_admin_token_from_env_fills_in_but_the_file_wins() -> None:
    env = {ENV_ADMIN_TOKEN: "from-env"}
    config, _ = run("admin: 127.0.0.1:0\nroutes: []\n", env=env)
    assert config is not None and config.admin.token == "from-env"
    config, _ = run("admin: {listen: 127.0.0.1:0, token: from-file}\nroutes: []\n", env=env)
    assert config is not None and config.admin.token == "from-file"
    config, _ = run("routes: []\n", env={})
    assert config is not None and config.admin.token is None


def test_load_config_raises_config_error_with_every_problem() -> None:
    Path("facade.yaml").write_text("listen: nope\nroutes: [{name: r, backend: ghost}]\n")
    with pytest.raises(ConfigError) as caught:
        load_config("facade.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "facade.yaml:1:9: listen: must be host:port (e.g. 127.0.0.1:8080 or [::1]:8080), got 'nope'",
        "facade.yaml:2:29: routes[0].backend: unknown service 'ghost' (no services are defined)",
    ]
    assert str(caught.value).count("\n") == 1


def test_load_config_keeps_warnings_on_the_config() -> None:
    Path("facade.yaml").write_text("routes: []\n")
    config = load_config("facade.yaml")
    assert [p.message for p in config.warnings] == ["no routes: every request gets 404"]


def test_check_config_turns_file_and_yaml_errors_into_problems() -> None:
    config, problems = check_config("missing.yaml")
    assert config is None and [str(p) for p in problems] == [
        "missing.yaml:1:1: cannot read file: No such file or directory"
    ]
    Path("facade.yaml").write_text("routes:\n  - name: [unclosed\n")
    config, problems = check_config("facade.yaml")
    assert config is None and len(problems) == 1 and problems[0].line == 3
    assert problems[0].message.startswith("invalid YAML")
    Path("facade.yaml").write_bytes(b"listen: \xff\n")
    config, problems = check_config("facade.yaml")
    assert config is None and problems[0].message.startswith("file is not UTF-8")


def test_sha256_is_of_the_file_bytes() -> None:
    raw = b"# comment\r\nroutes: []\r\n"
    Path("facade.yaml").write_bytes(raw)
    config, _ = check_config("facade.yaml")
    assert config is not None and config.sha256 == hashlib.sha256(raw).hexdigest()
    assert config.source == "facade.yaml"


# -- the reference stays complete ------------------------------------------------------------------


def test_docs_name_every_key() -> None:
    text = DOCS.read_text()
    from facade.config import reading as module

    keys = set(module._TOP_FIELDS) | set(module._SERVICE_FIELDS) | set(module._ROUTE_FIELDS)
    missing = sorted(k for k in keys if not re.search(rf"`{re.escape(k)}`", text))
    assert missing == []


def test_docs_full_example_is_the_tested_fixture() -> None:
    text = DOCS.read_text()
    example = text.split("## Full example", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    fixture = (FIXTURES / "full.yaml").read_text()
    assert example == fixture.split("\n", 1)[1]  # the fixture's first line is a comment


def test_facade_validate_command_reports_problems_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    from facade.cli import main

    assert main(["validate", "-c", str(FIXTURES / "full.yaml")]) == 0
    assert "valid (2 services, 6 routes)" in capsys.readouterr().out

    Path("facade.yaml").write_text("routes:\n  - name: all\n    backend: ghost\n  - {name: x, direct_response: {}}\n")
    assert main(["validate", "-c", "facade.yaml"]) == 2
    err = capsys.readouterr().err
    assert "facade.yaml:3:14: routes[0].backend: unknown service 'ghost' (no services are defined)" in err


# -- unreachable_routes agrees with the router -------------------------------------------------------

_HOSTS = ("a.x", "b.x", "*.x", "x", "*")
_PATHS = (("prefix", "/"), ("prefix", "/a"), ("prefix", "/a/"), ("prefix", "/a/b"), ("prefix", "/ab"),
          ("exact", "/a"), ("exact", "/a/b"), ("exact", "/"), ("regex", "/a.*"))  # fmt: skip
_HEADER_CONDITIONS = ((), (("x-h", StringMatch("exact", "1")),), (("x-h", StringMatch("present")),))
_REQUESTS = [
    (host, path, method, header)
    for host in ("a.x", "b.x", "c.a.x", "x", "y")
    for path in ("/", "/a", "/a/", "/a/b", "/a/b/c", "/ab", "/abc")
    for method in ("GET", "POST", "PUT")
    for header in (None, "1", "2")
]


@st.composite
def _route_match(draw: st.DrawFn) -> RouteMatch:
    kind, path = draw(st.sampled_from(_PATHS))
    return RouteMatch(
        hosts=tuple(draw(st.lists(st.sampled_from(_HOSTS), max_size=2, unique=True))),
        path_kind=cast(Literal["exact", "prefix", "regex"], kind),
        path=path,
        methods=tuple(draw(st.lists(st.sampled_from(("GET", "POST")), max_size=2, unique=True))),
        headers=draw(st.sampled_from(_HEADER_CONDITIONS)),
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_route_match(), min_size=1, max_size=2), min_size=2, max_size=4))
def test_every_reported_shadow_is_real_for_the_router(entries: list[list[RouteMatch]]) -> None:
    routes = [_r(f"r{i}", *matches) for i, matches in enumerate(entries)]
    for later, earlier in unreachable_routes(routes):
        alone = RouteTable.compile([routes[later]])
        first = RouteTable.compile([routes[earlier]])
        for host, path, method, header in _REQUESTS:
            headers = [(b"x-h", header.encode())] if header is not None else []
            hit = alone.resolve(host=host, path=path, method=method, headers=headers, query_string=b"")
            if hit is not None:
                shadow = first.resolve(host=host, path=path, method=method, headers=headers, query_string=b"")
                assert shadow is not None, (routes[earlier], routes[later], host, path, method, header)


def _assert_shadows_are_real(routes: list[Route]) -> int:
    reported = unreachable_routes(routes)
    for later, earlier in reported:
        alone = RouteTable.compile([routes[later]])
        first = RouteTable.compile([routes[earlier]])
        for host, path, method, header in _REQUESTS:
            headers = [(b"x-h", header.encode())] if header is not None else []
            if alone.resolve(host=host, path=path, method=method, headers=headers, query_string=b"") is not None:
                hit = first.resolve(host=host, path=path, method=method, headers=headers, query_string=b"")
                assert hit is not None, (routes[earlier], routes[later], host, path, method, header)
    return len(reported)


def test_every_reported_shadow_is_real_for_each_condition_alone() -> None:
    # Coverage is a conjunction over hosts, path, methods and headers, so checking every pair of
    # values of each condition on its own (all else "any") covers each rule exhaustively.
    host_sets = [()] + [(h,) for h in _HOSTS] + [(a, b) for a in _HOSTS for b in _HOSTS if a < b]
    dimensions: list[list[RouteMatch]] = [
        [RouteMatch(path_kind=cast(Literal["exact", "prefix", "regex"], k), path=p) for k, p in _PATHS],
        [RouteMatch(hosts=hs) for hs in host_sets],
        [RouteMatch(methods=ms) for ms in ((), ("GET",), ("POST",), ("GET", "POST"))],
        [RouteMatch(headers=hs) for hs in _HEADER_CONDITIONS],
    ]
    reported = 0
    for options in dimensions:
        for a in options:
            for b in options:
                reported += _assert_shadows_are_real([_r("earlier", a), _r("later", b)])
    assert reported > 50  # the rules do fire; this is not a vacuous pass


def test_header_rules_cannot_touch_framing_or_host_nor_smuggle_control_characters() -> None:
    # A Content-Length set by a rule would make the tail of a body a second request upstream.
    got = messages(
        """
        routes:
          - name: r
            request_headers: {set: {Content-Length: "0", x-ok: "a\\r\\nx-evil: 1"}, remove: [host], add: {x-u: "ü€"}}
            response_headers: {set: {transfer-encoding: chunked, x-nul: "a\\u0000b"}, add: {x-tab: "a\\tb"}}
            direct_response: {}
        """
    )
    reserved = "frames or addresses the message: the facade sets it, rules cannot"
    control = "header value contains a control character (CR, LF, NUL...)"
    assert got == [
        f"facade.yaml:3:29: routes[0].request_headers.set.Content-Length: header 'content-length' {reserved}",
        f"facade.yaml:3:56: routes[0].request_headers.set.x-ok: {control}",
        f"facade.yaml:3:84: routes[0].request_headers.remove[0]: header 'host' {reserved}",
        "facade.yaml:3:102: routes[0].request_headers.add.x-u: header value must be ASCII (or latin-1): percent-encode other text",
        f"facade.yaml:4:30: routes[0].response_headers.set.transfer-encoding: header 'transfer-encoding' {reserved}",
        f"facade.yaml:4:65: routes[0].response_headers.set.x-nul: {control}",
    ]


# -- request-head settings (issue 10) ---------------------------------------------------------------


def test_request_head_settings_default_like_envoy_and_nginx() -> None:
    config, problems = run("services: {a: {endpoints: [http://127.0.0.1:1]}}\nroutes: [{name: r, backend: a}]\n")
    assert config is not None and problems == []
    assert config.headers_with_underscores == "drop"
    assert config.limits.max_request_headers_count == 100
    assert config.debug_error_details is False


def test_request_head_settings_are_read_and_validated() -> None:
    base = "services: {a: {endpoints: [http://127.0.0.1:1]}}\nroutes: [{name: r, backend: a}]\n"
    config, _ = run(
        base + "headers_with_underscores: reject\ndebug_error_details: true\nlimits: {max_request_headers_count: 7}\n"
    )
    assert config is not None
    assert (config.headers_with_underscores, config.debug_error_details) == ("reject", True)
    assert config.limits.max_request_headers_count == 7
    errors = messages(base + "headers_with_underscores: keep\nlimits: {max_request_headers_count: 0}\n")
    assert any("headers_with_underscores" in e and "keep" in e for e in errors), errors
    assert any("limits.max_request_headers_count: must be 1-10000, got 0" in e for e in errors), errors
