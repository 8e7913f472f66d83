"""Migration state as Prometheus series: the rendering as a table, then on /metrics of a real facade."""

from __future__ import annotations

import math
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from facade.migration.metrics import render_migration_metrics
from tests.facade.migration.stack import migration_stack

GATED = """\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    steps:
      - weight: 50
        gates: {error_rate: {max_delta: 1%}, min_requests: 10}
      - weight: 100
    """


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_render_states_steps_gates_and_transitions() -> None:
    status = {"name": 'we"ird', "state": "paused", "step": 2, "steps": 4,
              "routing": {"catalog": {"to_percent": 25.0}},
              "gates": {"status": "inconclusive", "results": [
                  {"name": "error_rate.max_delta", "status": "pass", "value": 0.2, "threshold": 1.0},
                  {"name": "min_requests", "status": "inconclusive", "value": None, "threshold": 200}]}}
    text = render_migration_metrics([status], {('we"ird', "pause"): 1, ('we"ird', "start"): 1},
                                    {('we"ird', "catalog"): 0.24})
    got = _samples(text)
    plan = ("plan", 'we"ird')
    assert got[("facade_migration_step", (plan, ("route", "catalog")))] == 2
    assert got[("facade_migration_steps", (plan,))] == 4
    assert got[("facade_migration_state", (plan, ("state", "paused")))] == 1
    assert got[("facade_migration_state", (plan, ("state", "running")))] == 0
    assert got[("facade_migration_gate", (("gate", "error_rate.max_delta"), plan, ("result", "pass")))] == 0.2
    assert math.isnan(got[("facade_migration_gate", (("gate", "min_requests"), plan, ("result", "inconclusive")))])
    assert got[("facade_migration_gate_threshold", (("gate", "min_requests"), plan))] == 200
    assert got[("facade_migration_transitions_total", (("action", "pause"), plan))] == 1
    assert got[("facade_migration_weight", (plan, ("route", "catalog")))] == 0.25
    assert got[("facade_migration_new_share", (plan, ("route", "catalog")))] == 0.24
    # Every family is declared once, even with no plan.
    empty = render_migration_metrics([], {}, {})
    assert [f.name for f in text_string_to_metric_families(empty)] == [
        "facade_migration_step", "facade_migration_steps", "facade_migration_state", "facade_migration_gate",
        "facade_migration_gate_threshold", "facade_migration_transitions", "facade_migration_weight",
        "facade_migration_new_share"]


async def test_metrics_endpoint_follows_the_migration(tmp_path: Path) -> None:
    async with migration_stack(tmp_path, GATED) as s:
        got = _samples((await s.admin.get("/metrics")).text)
        assert got[("facade_migration_state", (("plan", "shop"), ("state", "pending")))] == 1
        assert got[("facade_migration_step", (("plan", "shop"), ("route", "catalog")))] == 0

        assert (await s.act("shop", "start")).status_code == 200
        for _ in range(60):  # a 50 % split: fewer than 10 of 60 on the new side has odds of about 1e-6
            assert (await s.client.get("/catalog/item")).status_code == 200
        text = (await s.admin.get("/metrics")).text
        got = _samples(text)
        assert len({f.name for f in text_string_to_metric_families(text)}) == len(
            list(text_string_to_metric_families(text)))  # no family twice on /metrics
        assert got[("facade_migration_state", (("plan", "shop"), ("state", "running")))] == 1
        assert got[("facade_migration_step", (("plan", "shop"), ("route", "catalog")))] == 1
        assert got[("facade_migration_weight", (("plan", "shop"), ("route", "catalog")))] == 0.5
        assert 0 < got[("facade_migration_new_share", (("plan", "shop"), ("route", "catalog")))] < 1
        assert got[("facade_migration_gate", (("gate", "min_requests"), ("plan", "shop"), ("result", "pass")))] >= 10
        assert got[("facade_migration_gate_threshold", (("gate", "error_rate.max_delta"), ("plan", "shop")))] == 1
        assert got[("facade_migration_transitions_total", (("action", "start"), ("plan", "shop")))] == 1

        assert (await s.act("shop", "next")).status_code == 200
        got = _samples((await s.admin.get("/metrics")).text)
        assert got[("facade_migration_step", (("plan", "shop"), ("route", "catalog")))] == 2
        assert got[("facade_migration_transitions_total", (("action", "next"), ("plan", "shop")))] == 1
