"""facade export gateway-api: schema validity at every step, the facade's first-match decisions kept
under HTTPRoute precedence, and refusals that name the route."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from facade.config import RouteMatch, StringMatch
from facade.export.cli import export_documents
from facade.export.gateway_api import GwMatch, order_by_precedence
from facade.export.model import Destination, ExportError, ExportOptions, Rule, routing_state
from facade.normalize import canonical_route_path
from facade.routing import RouteTable

from .cases import TARGET_CASES, case, validate
from .evaluate import Request, facade_outcome, gateway_outcome
from .requests import requests_for

OPTIONS = ExportOptions()


@functools.cache
def _exports(name: str) -> list[tuple[Any, int, list[dict[str, Any]]]]:
    c = case(name)
    return [(plan, step, export_documents("gateway-api", c.config, plan, step, OPTIONS)[0])
            for plan, step in c.points()]


@pytest.mark.parametrize("name", TARGET_CASES["gateway-api"])
def test_every_httproute_of_every_step_fits_the_crd_schema(name: str) -> None:
    for _plan, _step, docs in _exports(name):
        assert docs and {d["kind"] for d in docs} == {"HTTPRoute"}
        for doc in docs:
            validate(doc)
            assert len(doc["spec"]["rules"]) <= 16


@pytest.mark.parametrize("name", TARGET_CASES["gateway-api"])
def test_routing_is_the_facades_at_every_step_despite_precedence(name: str) -> None:
    c = case(name)
    table = RouteTable.compile(c.config.routes, canonicalize=canonical_route_path)
    services = {OPTIONS.host_of(s.name): s.name for s in c.config.services}
    states = [(plan, step, docs, routing_state(plan, step).splits) for plan, step, docs in _exports(name)]

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(req=requests_for(c.config, c.plans))
    def check(req: Request) -> None:
        for plan, step, docs, splits in states:
            assert gateway_outcome(docs, services, req) == facade_outcome(table, splits, req), (plan and plan.name, step)

    check()


def test_a_header_route_before_a_longer_prefix_keeps_its_requests() -> None:
    # Facade: /catalog/x with x-beta: 1 goes to beta (first match). HTTPRoute precedence alone
    # would prefer PathPrefix /catalog (longer); the export adds /catalog + x-beta -> beta first.
    beta = _rule("beta", RouteMatch(headers=(("x-beta", StringMatch("exact", "1")),)))
    catalog = _rule("catalog", RouteMatch(path="/catalog"))
    out = order_by_precedence([(GwMatch("PathPrefix", "/", headers=(("x-beta", "Exact", "1"),)), beta),
                               (GwMatch("PathPrefix", "/catalog"), catalog)])
    assert out == [
        (GwMatch("PathPrefix", "/catalog", headers=(("x-beta", "Exact", "1"),)), beta),
        (GwMatch("PathPrefix", "/", headers=(("x-beta", "Exact", "1"),)), beta),
        (GwMatch("PathPrefix", "/catalog"), catalog),
    ]


def test_an_intersection_that_cannot_be_written_is_refused_naming_both_routes() -> None:
    a = _rule("tenants", RouteMatch(headers=(("x-tenant", StringMatch("prefix", "acme")),)))
    b = _rule("acme-eu", RouteMatch(path="/eu", headers=(("x-tenant", StringMatch("exact", "acme-eu")),)))
    with pytest.raises(ExportError, match="routes 'tenants' and 'acme-eu': Gateway API precedence would send"):
        order_by_precedence([(GwMatch("PathPrefix", "/", headers=(("x-tenant", "RegularExpression", "acme.*"),)), a),
                             (GwMatch("PathPrefix", "/eu", headers=(("x-tenant", "Exact", "acme-eu"),)), b)])


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("health", "route 'health': direct_response has no Gateway API equivalent"),
        ("images", "route 'images': prefix '/img/' does not match '/img' in the facade"),
        ("reports", "route 'reports': path regex"),
    ],
)
def test_what_has_no_gateway_api_equivalent_is_refused(route: str, message: str) -> None:
    c = case("rich")
    config = type(c.config)(**{**_fields(c.config), "routes": tuple(
        r for r in c.config.routes if r.name == route or r.name not in ("health", "images", "reports", "admin-deny"))})
    with pytest.raises(ExportError, match=message.replace("(", r"\(")):
        export_documents("gateway-api", config, None, 0, OPTIONS)


def _fields(config: Any) -> dict[str, Any]:
    return {f: getattr(config, f) for f in config.__dataclass_fields__}


def _rule(name: str, match: RouteMatch) -> Rule:
    return Rule(route=name, name=name, matches=(match,), destinations=(Destination(name),))
