"""docs/grafana/facade-migration.json: importable as is, and every series it queries exists on /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.facade.migration.stack import migration_stack

DASHBOARD = Path(__file__).resolve().parents[3] / "docs" / "grafana" / "facade-migration.json"
SHADOW_PLAN = """\
    name: extract-catalog
    route: catalog
    from: monolith
    to: catalog
    steps:
      - shadow: {percent: 100}
      - weight: 50
        gates: {error_rate: {max_delta: 1%}, min_requests: 5}
      - weight: 100
    """


def _exprs(doc: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", ())]
    exprs += [a["expr"] for a in doc["annotations"]["list"]]
    exprs += [v["query"] for v in doc["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_json_is_importable_as_is() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] and doc["schemaVersion"] >= 36
    # One datasource input, used by every panel and target: Grafana asks for it on import.
    assert [i["name"] for i in doc["__inputs"]] == ["DS_PROMETHEUS"]
    for p in doc["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
    variables = {v["name"] for v in doc["templating"]["list"]}
    for expr in _exprs(doc):
        for used in re.findall(r"\$(\w+)", expr):
            assert used in variables or used.startswith("__"), f"{expr}: unknown variable ${used}"


async def test_every_series_the_dashboard_queries_is_on_metrics(tmp_path: Path) -> None:
    doc = json.loads(DASHBOARD.read_text())
    wanted = {name for expr in _exprs(doc) for name in re.findall(r"\b((?:facade|http)_[a-z0-9_]+)\b", expr)}
    assert {"facade_migration_step", "facade_migration_gate", "facade_shadow_diffs_total",
            "http_server_request_duration_seconds_bucket"} <= wanted
    async with migration_stack(tmp_path, SHADOW_PLAN) as s:
        assert (await s.act("extract-catalog", "start")).status_code == 200
        for _ in range(10):
            assert (await s.client.get("/catalog/item")).status_code == 200
        assert (await s.act("extract-catalog", "next", force=True, reason="test")).status_code == 200
        for _ in range(10):
            assert (await s.client.get("/catalog/item")).status_code == 200
        text = (await s.admin.get("/metrics")).text
    exposed = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    assert wanted - exposed == set()
