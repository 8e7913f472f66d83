"""The reference pages name every key the readers accept, sub-keys and plan keys included.

The keys are not listed by hand: every ``Node.fields(allowed)`` call the readers make while reading
documents that use every section is recorded, so a key added to a reader without a line in the docs
fails here (test_config.py's own check covers only the top, service and route levels).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest

from facade.config import parse_config
from facade.migration.plan import parse_plan
from facade.yamlfile import Node, Problems, YamlDocument

REPO = Path(__file__).parents[2]
FIXTURES = Path(__file__).parent / "fixtures"

# What full.yaml does not show (it keeps one value per key): the other forms of the newest sections.
MORE_CONFIG = """\
services:
  a:
    endpoints: [http://127.0.0.1:1]
    load_balancer: {consistent_hash: {cookie: {name: lb, ttl: 1h}}}
    outlier_detection: {interval: 10s, success_rate_stdev_factor: 1900, success_rate_minimum_hosts: 2,
                        success_rate_request_volume: 10, failure_percentage_threshold: 50,
                        failure_percentage_minimum_hosts: 2, failure_percentage_request_volume: 10}
    retries: {retry_on: [retriable-status-codes], retriable_status_codes: [503],
              retry_budget: {budget_percent: 20, min_retry_concurrency: 3}}
    connection_pool: {max_pending_requests: 5}
    health_check: {expected_statuses: [200-299]}
routes:
  - name: r
    match: {path: {prefix: /}, headers: {x-a: {exact: v, case_sensitive: false}}}
    backend: a
    rewrite: {regex: {pattern: "^/(.*)$", substitution: "/v2/\\\\1"}, authority: a.internal}
    fault: {delay: {fixed: 1s, percent: 5}, abort: {status: 503, percent: 1}}
    cors: {allow_origins: ["https://a.test", {prefix: "https://b"}], allow_methods: [GET], allow_headers: [x-a],
           expose_headers: [x-b], max_age: 1h, allow_credentials: true}
  - name: d
    match: {path: {exact: /d}}
    direct_response: {status: 200, body: ok, content_type: text/plain}
limits: {max_request_headers_count: 100}
normalize: {semicolons: keep}
"""

FULL_PLAN = """\
name: full
routes: [catalog]
from: monolith
to: catalog
sticky: {cookie: sid, salt: {shared_with: other}}
canary: {persist: false}
cohort: {baggage: false}
threshold: 3
interval: 30s
shadow: {ignore: ["$.t"], unsafe_methods: false, compare_headers: [etag], learn_noise: true}
webhooks:
  - {name: h, kind: rollback, url: "http://127.0.0.1:9/h", secret_env: S, timeout: 5s, retries: 1, metadata: {a: b}}
notify:
  - {url: "http://127.0.0.1:9/n", format: json, secret_env: S, timeout: 5s}
steps:
  - shadow: {percent: 100, ignore: ["$.u"], unsafe_methods: false, compare_headers: [etag], learn_noise: false}
    hold: 1m
    gates: {diff_rate: {max: 1%}, min_requests: 10}
  - canary: {header: {x-canary: "1"}}
    fault: {abort: {status: 503, percent: 1}}
  - weight: 50
    mirror: 10
    rollback: false
    gates:
      error_rate: {max: 1%, max_delta: 0.5%}
      latency_p50: {max_ms: 100, max_ratio: 1.5}
      latency_p95: {max_ms: 100}
      latency_p99: {max_ratio: 1.25}
      prometheus: [{name: q, url: "http://127.0.0.1:9090", query: up, max: 1, min: 0, timeout: 2s}]
    webhooks: [{kind: confirm, url: "http://127.0.0.1:9/c", secret_env: S}]
  - pause: approve
  - mtls: strict
    service: catalog
    gates: {plaintext_requests: {max: 0}}
"""


@pytest.fixture
def accepted(monkeypatch: pytest.MonkeyPatch) -> set[tuple[str, str]]:
    """(the node path with indexes dropped, key) for every key a reader allowed while the test ran."""
    seen: set[tuple[str, str]] = set()
    original = Node.fields

    def fields(self: Node, problems: Problems, allowed: Iterable[str], *, required: Iterable[str] = ()) -> dict[str, Node]:
        allowed = list(allowed)
        where = re.sub(r"\[\d+\]", "[]", self.path)
        seen.update((where, key) for key in allowed)
        return original(self, problems, allowed, required=required)

    monkeypatch.setattr(Node, "fields", fields)
    return seen


def _documented(text: str, key: str) -> bool:
    # In backticks, as a word of their content: `max_age`, `delay.fixed`, `{budget_percent, ...}`.
    return re.search(rf"`[^`\n]*(?<![\w-]){re.escape(key)}(?![\w-])[^`\n]*`", text) is not None


def test_configuration_md_names_every_key_of_every_section(accepted: set[tuple[str, str]], tmp_path: Path) -> None:
    for name, text in (("full.yaml", (FIXTURES / "full.yaml").read_text()), ("more.yaml", MORE_CONFIG)):
        path = tmp_path / name
        path.write_text(text)
        for pem in ("server.pem", "server.key", "ca.pem", "client.pem", "client.key"):
            (tmp_path / pem).write_bytes((FIXTURES / pem).read_bytes())
        config, problems = parse_config(YamlDocument.read(str(path)), env={})
        assert config is not None, [str(p) for p in problems]
    # The mesh: section is the mesh package's, documented in docs/mesh.md.
    keys = {(where, key) for where, key in accepted if not where.startswith("mesh")}
    assert len(keys) > 150  # the recording saw the sections
    sections = {where.split(".")[-1] for where, _ in keys}
    assert {"rate_limit", "fault", "cors", "retry_budget", "consistent_hash", "cookie", "subsets[]"} <= sections
    text = (REPO / "docs" / "configuration.md").read_text()
    missing = sorted({f"{where}.{key}" for where, key in keys if not _documented(text, key)})
    assert missing == [], missing


def test_migrations_md_names_every_plan_key(accepted: set[tuple[str, str]]) -> None:
    documents = [FULL_PLAN, *(p.read_text() for p in sorted((REPO / "migrations").glob("*.yaml")))]
    for text in documents:
        plan, problems = parse_plan(
            YamlDocument.load(textwrap.dedent(text), "plan.yaml"), routes=["catalog", "orders"],
            services=["monolith", "catalog", "orders"], mesh=True, environ={"S": "x"},
        )
        assert plan is not None, [str(p) for p in problems]
    sections = {where for where, _ in accepted}
    assert {"", "sticky", "sticky.salt", "canary", "cohort", "webhooks[]", "notify[]", "steps[]",
            "steps[].shadow", "steps[].gates", "steps[].gates.prometheus[]", "steps[].fault"} <= sections
    # A step's fault takes a route's fault keys, documented with the route (configuration.md#fault).
    plan_text = (REPO / "docs" / "migrations.md").read_text()
    config_text = (REPO / "docs" / "configuration.md").read_text()
    missing = sorted(
        f"{where}.{key}".lstrip(".") for where, key in accepted
        if not _documented(plan_text, key) and not (".fault" in where and _documented(config_text, key))
    )
    assert missing == [], missing
