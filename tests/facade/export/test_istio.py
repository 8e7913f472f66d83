"""facade export istio: schema validity at every step, and the same routing decision as the facade."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from facade.export.cli import export_documents
from facade.export.model import ExportOptions, routing_state
from facade.normalize import canonical_route_path
from facade.routing import RouteTable

from .cases import CASES, case, validate
from .evaluate import Request, facade_outcome, istio_outcome
from .requests import requests_for

OPTIONS = ExportOptions()


@functools.cache
def _exports(name: str) -> list[tuple[Any, int, list[dict[str, Any]]]]:
    c = case(name)
    return [(plan, step, export_documents("istio", c.config, plan, step, OPTIONS)[0]) for plan, step in c.points()]


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_document_of_every_step_fits_its_crd_schema(name: str) -> None:
    exports = _exports(name)
    kinds = set()
    for _plan, _step, docs in exports:
        for doc in docs:
            validate(doc)
            kinds.add(doc["kind"])
    assert {"VirtualService", "DestinationRule"} <= kinds
    if case(name).config.mesh is not None:
        assert {"ServiceEntry", "PeerAuthentication", "AuthorizationPolicy"} <= kinds


@pytest.mark.parametrize("name", sorted(CASES))
def test_routing_is_the_facades_at_every_step(name: str) -> None:
    c = case(name)
    table = RouteTable.compile(c.config.routes, canonicalize=canonical_route_path)
    services = {OPTIONS.host_of(s.name): s.name for s in c.config.services}
    exports = _exports(name)

    states = [(plan, step, docs, routing_state(plan, step).splits) for plan, step, docs in exports]

    # Every request against every step: a step that differs only on one route is still probed.
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(req=requests_for(c.config, c.plans))
    def check(req: Request) -> None:
        for plan, step, docs, splits in states:
            assert istio_outcome(docs, services, req) == facade_outcome(table, splits, req), (plan and plan.name, step)

    check()
