"""Plan pipelines without sockets: hook / notify / prometheus gate validation, verdicts, payloads."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from facade.errors import Problem
from facade.migration.callouts import event_payload, notification_body, sample_value, sign
from facade.migration.cli import gate_value
from facade.migration.engine import Action, MigrationState, Phase, Transition, apply
from facade.migration.gates import (
    GateReport,
    GateStatus,
    HookOutcome,
    QueryResult,
    evaluate_hooks,
    evaluate_queries,
    with_results,
)
from facade.migration.hooks import Notification, PromGate, Webhook
from facade.migration.plan import Plan, parse_plan
from facade.yamlfile import YamlDocument

ENV = {"HOOK_SECRET": "k3y"}

PLAN = """\
name: shop
route: catalog
from: monolith
to: catalog
webhooks:
  - {kind: rollback, url: "http://127.0.0.1:9/rollback", secret_env: HOOK_SECRET}
notify:
  - {url: "http://127.0.0.1:9/events"}
  - {url: "https://hooks.slack.example/T1", format: slack}
steps:
  - weight: 10
    gates:
      prometheus: {url: "http://127.0.0.1:9090", query: "sum(rate(x[1m]))", max: 0.5}
  - weight: 100
    webhooks:
      - {name: approve, kind: confirm, url: "http://127.0.0.1:9/approve", timeout: 2s, retries: 1,
         secret_env: HOOK_SECRET, metadata: {team: catalog}}
"""


def parse(text: str, environ: dict[str, str] | None = None) -> tuple[Plan | None, list[Problem]]:
    doc = YamlDocument.load(text, "plan.yaml")
    return parse_plan(doc, routes={"catalog"}, services={"monolith", "catalog"}, environ=ENV if environ is None
                      else environ)


def errors(text: str, environ: dict[str, str] | None = None) -> list[str]:
    plan, problems = parse(text, environ)
    assert plan is None
    return [str(p) for p in problems if p.severity == "error"]


def test_a_plan_with_hooks_notifications_and_a_prometheus_gate() -> None:
    plan, problems = parse(PLAN)
    assert plan is not None, problems
    assert plan.webhooks == (Webhook("rollback", "http://127.0.0.1:9/rollback", "rollback", "HOOK_SECRET"),)
    assert plan.notify == (Notification("http://127.0.0.1:9/events"),
                           Notification("https://hooks.slack.example/T1", "slack"))
    assert plan.steps[0].gates.prometheus == (PromGate("query", "http://127.0.0.1:9090", "sum(rate(x[1m]))", 0.5),)
    assert not plan.steps[0].gates.empty
    approve = plan.steps[1].webhooks[0]
    assert (approve.name, approve.kind, approve.timeout, approve.retries) == ("approve", "confirm", 2.0, 1)
    assert approve.metadata == (("team", "catalog"),)
    assert plan.hooks("confirm", plan.steps[1]) == (approve,)
    assert plan.hooks("rollback", plan.steps[1]) == plan.webhooks
    # Hooks say who is asked about a step, not where it routes: they are not part of the step's hash.
    bare, _ = parse(PLAN.replace("timeout: 2s", "timeout: 3s"))
    assert bare is not None and bare.step_hashes == plan.step_hashes and bare.content_hash != plan.content_hash


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("kind: confirm", "kind: approve"),
         ("plan.yaml:16:31: steps[1].webhooks[0].kind: must be one of confirm, pre_step, post_step, rollout, "
          "rollback, event, got 'approve'")),
        (('url: "http://127.0.0.1:9/approve"', 'url: "ftp://127.0.0.1/approve"'),
         ("plan.yaml:16:45: steps[1].webhooks[0].url: bad URL 'ftp://127.0.0.1/approve': expected "
         "http://HOST[:PORT]/PATH or https://...")),
        (("timeout: 2s", "timeout: -2s"),
         "plan.yaml:16:84: steps[1].webhooks[0].timeout: must be a positive duration, got -2s"),
        (("retries: 1", "retries: 50"), "plan.yaml:16:97: steps[1].webhooks[0].retries: must be 0-5, got 50"),
        (("         secret_env: HOOK_SECRET, metadata", "         metadata"),
         ("plan.yaml:16:9: steps[1].webhooks[0].secret_env: needs 'secret_env: NAME': the environment variable "
         "holding the HMAC secret the body is signed with")),
        (("secret_env: HOOK_SECRET, metadata", "secret_env: NOT_SET_HERE, metadata"),
         ("plan.yaml:17:22: steps[1].webhooks[0].secret_env: environment variable NOT_SET_HERE is not set (or empty): "
         "the secret it references is missing")),
        (("secret_env: HOOK_SECRET, metadata", "secret: hunter2, metadata"),
         ("plan.yaml:17:18: steps[1].webhooks[0].secret: inline secrets are not accepted in a plan file: put the "
         "secret in an environment variable and name it with 'secret_env: NAME'")),
        ((", max: 0.5}", "}"),
         ("plan.yaml:13:19: steps[0].gates.prometheus: needs 'max' or 'min' (or both): the bound the query's value "
         "must keep")),
        (("format: slack", "format: teams"), "plan.yaml:9:53: notify[1].format: must be one of json, slack, got 'teams'"),
    ],
)
def test_bad_hooks_and_gates_are_reported_with_positions(change: tuple[str, str], expected: str) -> None:
    assert change[0] in PLAN
    assert errors(PLAN.replace(*change)) == [expected]


def test_a_hook_list_must_be_a_list_and_a_secret_variable_must_be_set_at_load() -> None:
    text = PLAN.replace("webhooks:\n  - {kind: rollback", "webhooks: {kind: rollback").replace(
        'secret_env: HOOK_SECRET}\nnotify', 'secret_env: HOOK_SECRET}\nnotify')
    assert any("webhooks: must be a list of webhooks entries, got mapping" in e for e in errors(text))
    assert any("environment variable HOOK_SECRET is not set" in e for e in errors(PLAN, environ={}))


def test_hook_verdicts_follow_flagger() -> None:
    confirm = Webhook("confirm", "http://h/c", "approve", "S")
    pre = Webhook("pre_step", "http://h/p", "smoke", "S")
    results = evaluate_hooks((
        HookOutcome(confirm, 200, 1),
        HookOutcome(confirm, 403, 1),
        HookOutcome(confirm, None, 2, "timed out after 1s"),
        HookOutcome(pre, 204, 1),
        HookOutcome(pre, 500, 3),
        HookOutcome(pre, None, 1, "ConnectError"),
    ))
    assert [r.status for r in results] == [GateStatus.PASS, GateStatus.INCONCLUSIVE, GateStatus.INCONCLUSIVE,
                                           GateStatus.PASS, GateStatus.FAIL, GateStatus.FAIL]
    assert results[1].message == "webhook.confirm.approve: held, answered 403"
    assert results[4].message == "webhook.pre_step.smoke: answered 500 after 3 attempts"
    assert results[5].value is None and "no answer (ConnectError)" in results[5].message
    # A held confirm over passing gates holds the step; a failing hook fails it.
    passing = GateReport(GateStatus.PASS)
    assert with_results(passing, results[:3]).status is GateStatus.INCONCLUSIVE
    assert with_results(passing, results).status is GateStatus.FAIL
    assert with_results(None, results[:1]).status is GateStatus.PASS


def test_prometheus_gates_judge_the_value_and_are_inconclusive_without_one() -> None:
    both = PromGate("checkout", "http://p", "q", max=10.0, min=2.0)
    results = evaluate_queries((both,) * 5, (QueryResult(5.0), QueryResult(1.0), QueryResult(11.0),
                                            QueryResult(None, "the query returned no series")))
    assert [r.status for r in results] == [GateStatus.PASS, GateStatus.FAIL, GateStatus.FAIL,
                                           GateStatus.INCONCLUSIVE, GateStatus.INCONCLUSIVE]
    assert results[1].message == "prometheus.checkout: 1 < min 2"
    assert results[2].message == "prometheus.checkout: 11 > max 10"
    assert results[3].message == "prometheus.checkout: inconclusive, the query returned no series"
    assert results[4].message == "prometheus.checkout: inconclusive, not queried yet"


@pytest.mark.parametrize(
    ("data", "value", "why"),
    [
        ({"resultType": "vector", "result": [{"metric": {}, "value": [1.0, "0.25"]}]}, 0.25, ""),
        ({"resultType": "scalar", "result": [1.0, "3"]}, 3.0, ""),
        ({"resultType": "vector", "result": []}, None, "the query returned no series"),
        ({"resultType": "vector", "result": [{"value": [1, "1"]}, {"value": [1, "2"]}]}, None,
         "the query returned 2 series; aggregate it to one (sum, max, ...)"),
        ({"resultType": "vector", "result": [{"value": [1, "NaN"]}]}, None,
         "the query's value is NaN (e.g. 0/0: no traffic in the window)"),
        ({"resultType": "matrix", "result": []}, None,
         "the query returned a matrix; a gate needs an instant vector or a scalar"),
    ],
)
def test_the_value_of_a_query_answer(data: dict[str, object], value: float | None, why: str) -> None:
    assert sample_value(data) == QueryResult(value, why)


def test_payload_names_plan_route_step_and_gates_and_the_signature_is_an_hmac_of_the_body() -> None:
    plan, _ = parse(PLAN)
    assert plan is not None
    running = MigrationState("shop", Phase.RUNNING, 0, version=1, step_started_at=0.0)
    move = apply(running, Action("next", actor="ann"), plan=plan, now=10.0, gate_report=GateReport(GateStatus.PASS))
    assert isinstance(move, Transition)
    hook = plan.steps[1].webhooks[0]
    payload = event_payload(plan, "confirm", move, GateReport(GateStatus.PASS), now=10.0, hook=hook)
    assert payload["plan"] == "shop" and payload["route"] == "catalog" and payload["routes"] == ["catalog"]
    assert (payload["step"], payload["step_summary"]) == (2, "weight 100")  # the step being entered
    assert payload["transition"] == {"action": "next", "actor": "ann", "reason": "", "from_state": "running",
                                     "from_step": 1, "to_state": "running", "to_step": 2}
    assert payload["gates"] == {"status": "pass", "results": []}
    assert payload["metadata"] == {"team": "catalog"} and payload["hook"] == "approve"
    assert event_payload(plan, "post_step", move, None, now=10.0)["step"] == 1  # the step being left
    body = json.dumps(payload).encode()
    assert sign(body, "k3y") == "sha256=" + hmac.new(b"k3y", body, hashlib.sha256).hexdigest()

    slack = notification_body(plan.notify[1], event_payload(plan, "transition", move, None, now=10.0))
    assert slack == {"text": "facade migration *shop* (catalog): transition: next by ann: running step 1 -> "
                             "running step 2"}
    assert notification_body(plan.notify[0], payload) == payload


def test_the_cli_shows_query_values_and_hook_statuses_without_a_unit() -> None:
    # A gate named after a check ("max") must not borrow that check's unit.
    assert gate_value("prometheus.max", 0.5) == "0.5"
    assert gate_value("prometheus.checkout", 1234.5678) == "1235"
    assert gate_value("webhook.confirm.approve", 403.0) == "403"
