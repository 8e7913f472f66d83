"""facade export: a route's fault, CORS policy and rewrites (regex, authority) become Istio's fields; a
step's fault goes on the rule only the candidate serves, and is left out (with a finding) on a weighted split."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from facade.config import load_config
from facade.export.cli import export_documents
from facade.migration.plan import parse_plan
from facade.yamlfile import YamlDocument

from .cases import validate

CONFIG = """
services:
  monolith: {endpoints: ["http://127.0.0.1:8001"]}
  catalog: {endpoints: ["http://127.0.0.1:8002"]}
routes:
  - name: catalog
    match: {path: {prefix: /catalog}}
    backend: monolith
  - name: api
    match: {path: {prefix: /api}}
    backend: monolith
    fault: {delay: {fixed: 1500ms, percent: 12.5}, abort: {status: 503, percent: 1}}
    cors:
      allow_origins: ["https://shop.example", {prefix: "https://preview-"}, {regex: "https://[a-z]+\\\\.test"}]
      allow_methods: [GET, POST]
      expose_headers: [x-request-id]
      max_age: 10m
      allow_credentials: true
    rewrite:
      regex: {pattern: "^/api/(\\\\d+)$", substitution: "/v2/items/\\\\1"}
      authority: api.internal
"""

PLAN = """
name: move
route: catalog
from: monolith
to: catalog
steps:
  - canary: {header: {x-canary: "1"}}
    fault: {abort: {status: 500, percent: 50}}
  - weight: 25
    fault: {delay: {fixed: 2s}}
  - weight: 100
"""


def _http(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for doc in docs:
        validate(doc)
    return {h["name"]: h for d in docs if d["kind"] == "VirtualService" for h in d["spec"]["http"]}


def test_istio_export_of_route_policies_and_step_faults(tmp_path: Path) -> None:
    (tmp_path / "facade.yaml").write_text(textwrap.dedent(CONFIG))
    config = load_config(str(tmp_path / "facade.yaml"))
    (tmp_path / "plan.yaml").write_text(textwrap.dedent(PLAN))
    plan, problems = parse_plan(YamlDocument.read(str(tmp_path / "plan.yaml")), routes=["catalog", "api"],
                                services=["monolith", "catalog"])
    assert plan is not None, problems

    http = _http(export_documents("istio", config, None, 0)[0])
    api = http["api"]
    assert api["fault"] == {"delay": {"fixedDelay": "1500ms", "percentage": {"value": 12.5}},
                            "abort": {"httpStatus": 503, "percentage": {"value": 1.0}}}
    assert api["corsPolicy"] == {
        "allowOrigins": [{"exact": "https://shop.example"}, {"prefix": "https://preview-"},
                         {"regex": "https://[a-z]+\\.test"}],
        "allowMethods": ["GET", "POST"], "exposeHeaders": ["x-request-id"], "maxAge": "10m", "allowCredentials": True,
    }
    assert api["rewrite"] == {"uriRegexRewrite": {"match": "^/api/(\\d+)$", "rewrite": "/v2/items/\\1"},
                              "authority": "api.internal"}
    assert "fault" not in http["catalog"]

    # Canary step: the candidate's rule carries the fault, the primary's does not.
    http = _http(export_documents("istio", config, plan, 1)[0])
    assert http["catalog-canary"]["fault"] == {"abort": {"httpStatus": 500, "percentage": {"value": 50.0}}}
    assert "fault" not in http["catalog"]

    # A weighted split cannot fault one destination in Istio: left out, and said.
    docs, findings = export_documents("istio", config, plan, 2)
    assert "fault" not in _http(docs)["catalog"]
    assert any("fault applies to catalog's 25% share only" in f.message for f in findings)


def test_gateway_api_export_rewrites_the_hostname_and_names_what_it_cannot_export(tmp_path: Path) -> None:
    (tmp_path / "facade.yaml").write_text(textwrap.dedent(CONFIG))
    config = load_config(str(tmp_path / "facade.yaml"))
    docs, findings = export_documents("gateway-api", config, None, 0)
    for doc in docs:
        validate(doc)
    rules = [r for d in docs if d["kind"] == "HTTPRoute" for r in d["spec"]["rules"]]
    filters = [f for r in rules for f in r.get("filters", ())]
    assert {"type": "URLRewrite", "urlRewrite": {"hostname": "api.internal"}} in filters
    assert [f.message for f in findings if f.subject == "route 'api'"] == [
        "fault injection, a CORS policy, a regex rewrite: no Gateway API equivalent, not exported (export istio has them)"
    ]
