from __future__ import annotations

import os
from pathlib import Path

import pytest

from facade.errors import Problem
from facade.migration.plan import Gate, Plan, ShadowSettings, load_plans, parse_plan, render_plan
from facade.split import CanarySpec, StickySpec
from facade.yamlfile import YamlDocument

ROUTES = {"catalog", "orders", "default"}
SERVICES = {"monolith", "catalog", "orders"}
REPO = Path(__file__).resolve().parents[3]

GOOD = """\
name: extract-catalog
routes: [catalog]
from: monolith
to: catalog
sticky: {cookie: session_id}
threshold: 3
interval: 30s
steps:
  - shadow: {percent: 100}
    hold: 2m
    gates: {diff_rate: {max: 0.5%}, min_requests: 200}
  - canary: {header: {X-Canary: "1"}}
  - weight: 5
    hold: 5m
    gates: {error_rate: {max_delta: 0.5%}, latency_p99: {max_ratio: 1.25}}
  - weight: 25
  - pause: approve before full cutover
  - weight: 100
"""


def parse(text: str, file: str = "plan.yaml") -> tuple[Plan | None, list[Problem]]:
    return parse_plan(YamlDocument.load(text, file), routes=ROUTES, services=SERVICES)


def errors(text: str) -> list[str]:
    plan, problems = parse(text)
    found = [str(p) for p in problems if p.severity == "error"]
    assert plan is None if found else plan is not None
    return found


def test_good_plan_parses_into_values() -> None:
    plan, problems = parse(GOOD)
    assert problems == []
    assert plan is not None
    assert plan.name == "extract-catalog" and plan.routes == ("catalog",)
    assert (plan.from_service, plan.to_service) == ("monolith", "catalog")
    assert plan.sticky == StickySpec("cookie", "session_id")
    assert plan.threshold == 3 and plan.interval == 30.0
    kinds = [s.kind for s in plan.steps]
    assert kinds == ["shadow", "canary", "weight", "weight", "pause", "weight"]
    shadow, canary, five = plan.steps[0], plan.steps[1], plan.steps[2]
    assert shadow.shadow_percent == 100.0 and shadow.hold == 120.0
    assert shadow.gates.min_requests == 200 and shadow.gates.checks == (Gate("diff_rate", "max", 0.5),)
    assert canary.canary == CanarySpec("header", "x-canary", "1")
    assert five.gates.checks == (Gate("error_rate", "max_delta", 0.5), Gate("latency_p99", "max_ratio", 1.25))
    assert plan.steps[4].pause_reason == "approve before full cutover"
    assert (shadow.line, shadow.col) == (9, 5)


def test_single_route_key_and_defaults() -> None:
    plan, problems = parse("name: a\nroute: orders\nfrom: monolith\nto: orders\nsteps: [{weight: 100}]\n")
    assert problems == [] and plan is not None
    assert plan.routes == ("orders",) and plan.sticky is None
    assert plan.threshold == 5 and plan.interval == 60.0


def test_unknown_route_with_position_and_hint() -> None:
    text = GOOD.replace("routes: [catalog]", "routes: [catalgo]")
    assert errors(text) == ["plan.yaml:2:10: routes[0]: unknown route 'catalgo'; did you mean 'catalog'?"]


def test_unknown_service() -> None:
    text = GOOD.replace("to: catalog", "to: inventory")
    assert errors(text) == [
        "plan.yaml:4:5: to: unknown service 'inventory' (known: catalog, monolith, orders)"
    ]


def test_weight_out_of_range() -> None:
    text = GOOD.replace("  - weight: 25\n", "  - weight: 150\n")
    assert errors(text) == ["plan.yaml:16:13: steps[3].weight: must be 0-100, got 150"]


def test_decreasing_weight_needs_rollback_marker() -> None:
    text = GOOD.replace("  - weight: 100\n", "  - weight: 10\n")
    found = errors(text)
    assert len(found) == 1
    assert found[0].startswith("plan.yaml:18:13: steps[5].weight: weight 10 moves traffic back from 25% to 10%")
    ok = GOOD.replace("  - weight: 100\n", "  - weight: 10\n    rollback: true\n")
    plan, problems = parse(ok)
    assert plan is not None and plan.steps[5].rollback
    assert [p.severity for p in problems] == ["warning"]  # last step is not 100 %


def test_shadow_after_weight_is_a_decrease() -> None:
    text = "name: a\nroute: orders\nfrom: monolith\nto: orders\nsteps:\n  - weight: 50\n  - shadow: {percent: 10}\n"
    found = errors(text)
    assert len(found) == 1 and found[0].startswith("plan.yaml:7:13: steps[1].shadow: shadow 10% moves traffic back")


def test_unknown_gate_metric_did_you_mean() -> None:
    text = GOOD.replace("latency_p99: {max_ratio", "latency_p999: {max_ratio")
    assert errors(text) == [
        "plan.yaml:15:44: steps[2].gates.latency_p999: unknown field 'latency_p999'; did you mean 'latency_p99'?"
    ]


def test_gate_check_that_does_not_fit_the_metric() -> None:
    text = GOOD.replace("diff_rate: {max: 0.5%}", "diff_rate: {max_ms: 5}")
    found = errors(text)
    assert found == ["plan.yaml:11:25: steps[0].gates.diff_rate.max_ms: unknown field 'max_ms'; did you mean 'max'?"]


def test_step_needs_exactly_one_kind() -> None:
    text = GOOD.replace("  - weight: 25\n", "  - weight: 25\n    pause: both\n")
    found = errors(text)
    assert found == [
        "plan.yaml:16:5: steps[3]: needs exactly one of shadow, canary, weight, pause, mtls (found: weight, pause)"
    ]
    none = GOOD.replace("  - weight: 25\n", "  - hold: 1m\n")
    assert errors(none) == [
        "plan.yaml:16:5: steps[3]: needs exactly one of shadow, canary, weight, pause, mtls (found: none)"
    ]


def test_misc_field_errors_all_reported_at_once() -> None:
    text = (
        "name: Bad_Name\nroute: catalog\nfrom: monolith\nto: monolith\nsticky: {cokie: s}\nstepz: []\n"
        "steps:\n  - shadow: {percent: 101}\n    hold: 5\n"
    )
    found = errors(text)
    assert "plan.yaml:1:7: name: must match [a-z0-9-]+ (lower-case letters, digits, dashes), got 'Bad_Name'" in found
    assert "plan.yaml:4:5: to: must differ from 'from' ('monolith')" in found
    assert "plan.yaml:5:10: sticky.cokie: unknown field 'cokie'; did you mean 'cookie'?" in found
    assert "plan.yaml:6:1: stepz: unknown field 'stepz'; did you mean 'steps'?" in found
    assert "plan.yaml:8:23: steps[0].shadow.percent: must be 0-100, got 101" in found
    assert "plan.yaml:9:11: steps[0].hold: duration needs a unit, e.g. 5s" in found


def test_content_hash_ignores_formatting_and_step_hashes_localize_edits() -> None:
    a, _ = parse(GOOD)
    b, _ = parse("# comment\n" + GOOD.replace("routes: [catalog]", "routes:\n  - catalog"))
    c, _ = parse(GOOD.replace("  - weight: 25\n", "  - weight: 30\n"))
    assert a is not None and b is not None and c is not None
    assert a.content_hash == b.content_hash and a.step_hashes == b.step_hashes
    assert a.content_hash != c.content_hash
    changed = [i for i, (x, y) in enumerate(zip(a.step_hashes, c.step_hashes, strict=True)) if x != y]
    assert changed == [3]


def test_render_plan() -> None:
    plan, _ = parse(GOOD)
    assert plan is not None
    out = render_plan(plan)
    assert out.splitlines() == [
        "plan extract-catalog: catalog from monolith to catalog  (plan.yaml)",
        "auto mode: evaluate every 30s, roll back after 3 failed checks in a row",
        "",
        "step 0 (before start): 100 % -> monolith",
        "step 1 shadow 100%: 100 % of catalog -> monolith; 100 % mirrored to catalog (responses diffed, discarded)",
        "    hold 2m; gates: diff_rate <= 0.5%, min 200 requests",
        "step 2 canary header x-canary=1: requests with header x-canary=1 -> catalog; all other traffic -> monolith",
        ("step 3 weight 5: 5 % of catalog -> catalog (sticky by cookie session_id), 95 % -> monolith; "
        "requests with header x-canary=1 -> catalog (the canary persists)"),
        "    hold 5m; gates: error_rate <= old + 0.5%, latency_p99 <= 1.25x old",
        ("step 4 weight 25: 25 % of catalog -> catalog (sticky by cookie session_id), 75 % -> monolith; "
        "requests with header x-canary=1 -> catalog (the canary persists)"),
        (
            "step 5 pause (approve before full cutover): waits for a human 'next' or 'resume'; "
            "routing stays as before (25 % -> catalog)"
        ),
        "step 6 weight 100: 100 % of catalog -> catalog (sticky by cookie session_id), 0 % -> monolith",
        "completed: 100 % -> catalog",
    ]


def test_load_plans_sorted_duplicates_and_broken_files(tmp_path: Path) -> None:
    (tmp_path / "001-a.yaml").write_text(GOOD)
    (tmp_path / "002-b.yml").write_text(GOOD.replace("routes: [catalog]", "routes: [orders]"))
    (tmp_path / "003-c.yaml").write_text("name: [unclosed\n")
    (tmp_path / "004-d.yaml").write_text(GOOD.replace("name: extract-catalog", "name: other").replace("weight: 5\n", "weight: 500\n"))
    (tmp_path / "notes.txt").write_text("ignored")
    plans, problems = load_plans(str(tmp_path), routes=ROUTES, services=SERVICES)
    assert list(plans) == ["extract-catalog"]
    assert plans["extract-catalog"].source == os.path.join(str(tmp_path), "001-a.yaml")
    messages = [str(p) for p in problems]
    assert any(m.startswith(f"{tmp_path}/002-b.yml:1:7: name: plan name 'extract-catalog' is already used") for m in messages)
    assert any(m.startswith(f"{tmp_path}/003-c.yaml:") and "invalid YAML" in m for m in messages)
    assert any(m.startswith(f"{tmp_path}/004-d.yaml:13:13: steps[2].weight: must be 0-100") for m in messages)


def test_load_plans_missing_folder(tmp_path: Path) -> None:
    plans, problems = load_plans(str(tmp_path / "nope"), routes=ROUTES, services=SERVICES)
    assert plans == {} and "cannot read migrations folder" in str(problems[0])


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "migrations").glob("*.yaml")))
def test_shipped_plans_are_valid(name: str) -> None:
    doc = YamlDocument.read(str(REPO / "migrations" / name))
    plan, problems = parse_plan(doc, routes={"catalog", "orders", "users", "default"},
                                services={"monolith", "catalog", "orders", "users"})
    assert plan is not None, [str(p) for p in problems]
    assert [p for p in problems if p.severity == "error"] == []


def test_load_plans_one_plan_per_route(tmp_path: Path) -> None:
    (tmp_path / "001-a.yaml").write_text(GOOD)
    (tmp_path / "002-b.yaml").write_text(GOOD.replace("name: extract-catalog", "name: again")
                                         .replace("routes: [catalog]", "routes: [orders, catalog]"))
    plans, problems = load_plans(str(tmp_path), routes=ROUTES, services=SERVICES)
    assert list(plans) == ["extract-catalog"]
    assert [str(p) for p in problems] == [
        (f"{tmp_path}/002-b.yaml:2:9: routes: route 'catalog' is already migrated by plan 'extract-catalog' "
        f"({tmp_path}/001-a.yaml); one plan per route")
    ]


# -- mtls steps ---------------------------------------------------------------------------------

MTLS = """\
name: mesh-it
route: catalog
from: monolith
to: catalog
steps:
  - weight: 100
  - mtls: strict
    hold: 10m
  - mtls: strict
    service: orders
    gates: {plaintext_requests: {max: 3}, error_rate: {max: 1%}}
"""


def parse_mesh(text: str, mesh: bool | None = True) -> tuple[Plan | None, list[Problem]]:
    return parse_plan(YamlDocument.load(text, "plan.yaml"), routes=ROUTES, services=SERVICES, mesh=mesh)


def mesh_errors(text: str, mesh: bool | None = True) -> list[str]:
    plan, problems = parse_mesh(text, mesh)
    found = [str(p) for p in problems if p.severity == "error"]
    assert plan is None if found else plan is not None
    return found


def test_mtls_step_defaults_service_to_the_plans_to_and_gate_to_zero_plaintext() -> None:
    plan, problems = parse_mesh(MTLS)
    assert problems == [] and plan is not None
    first, second = plan.steps[1], plan.steps[2]
    assert (first.kind, first.mtls_service, first.hold) == ("mtls", "catalog", 600.0)
    assert first.gates.checks == (Gate("plaintext_requests", "max", 0.0),)
    assert second.mtls_service == "orders"
    assert second.gates.checks == (Gate("error_rate", "max", 1.0), Gate("plaintext_requests", "max", 3.0))
    rendered = render_plan(plan)
    assert ("step 2 mtls strict (catalog): catalog's sidecars refuse plaintext (STRICT mTLS); routing stays as "
            "before (100 % -> catalog)") in rendered
    assert "gates: plaintext_requests <= 0" in rendered
    assert plan.steps[1].to_json()["service"] == "catalog"


def test_mtls_step_errors_with_positions() -> None:
    assert mesh_errors(MTLS.replace("  - mtls: strict\n    hold", "  - mtls: permissive\n    hold")) == [
        ("plan.yaml:7:11: steps[1].mtls: must be 'strict' (PERMISSIVE -> STRICT is the migration step), "
         "got 'permissive'")
    ]
    assert mesh_errors(MTLS.replace("service: orders", "service: ordres")) == [
        "plan.yaml:10:14: steps[2].service: unknown service 'ordres'; did you mean 'orders'?"
    ]
    assert mesh_errors(MTLS.replace("  - weight: 100\n", "  - weight: 100\n    service: orders\n")) == [
        "plan.yaml:7:14: steps[0].service: only an 'mtls' step names a service"
    ]
    assert mesh_errors(MTLS.replace("{max: 3}", "{max: -1}")) == [
        "plan.yaml:11:39: steps[2].gates.plaintext_requests.max: must be at least 0, got -1"
    ]
    text = MTLS.replace("  - weight: 100\n", "  - weight: 100\n    gates: {plaintext_requests: {max: 0}}\n")
    assert mesh_errors(text) == [
        "plan.yaml:7:33: steps[0].gates.plaintext_requests: plaintext_requests is measured on an 'mtls' step only"
    ]


def test_mtls_step_needs_a_mesh_section() -> None:
    why = "an mtls step needs a 'mesh:' section in the facade config (sidecars to switch)"
    assert mesh_errors(MTLS, mesh=False) == [f"plan.yaml:7:11: steps[1].mtls: {why}", f"plan.yaml:9:11: steps[2].mtls: {why}"]
    assert mesh_errors(MTLS, mesh=None) == []  # a caller that does not know the config does not check


# -- shadow options -----------------------------------------------------------------------------

SHADOWED = """\
name: a
route: catalog
from: monolith
to: catalog
shadow: {ignore: ["$.generated_at"], learn_noise: false}
steps:
  - shadow:
      percent: 100
      unsafe_methods: true
      ignore: ["$.generated_at", "$.items[*].etag"]
      compare_headers: [Content-Type]
  - shadow: {percent: 50}
  - weight: 5
    mirror: 25
  - weight: 100
"""


def test_shadow_options_step_over_plan_defaults() -> None:
    plan, problems = parse(SHADOWED)
    assert problems == [] and plan is not None
    first, second, five, full = plan.steps
    assert first.shadow == ShadowSettings(True, ("$.generated_at", "$.items[*].etag"), ("content-type",), False)
    assert second.shadow == ShadowSettings(False, ("$.generated_at",), None, False)
    assert (five.mirror_percent, five.shadow) == (25.0, second.shadow)
    assert full.shadow is None and full.mirror_percent == 0.0
    out = render_plan(plan)
    assert ("shadow: unsafe methods mirrored; ignore $.generated_at, $.items[*].etag; compare headers content-type; "
            "noise learning off") in out
    assert "95 % -> monolith; 25 % of those mirrored to catalog" in out


def test_comparison_options_do_not_change_a_step_hash_but_unsafe_and_mirror_do() -> None:
    plan, _ = parse(SHADOWED)
    bare, _ = parse(SHADOWED.replace('shadow: {ignore: ["$.generated_at"], learn_noise: false}\n', ""))
    assert plan is not None and bare is not None
    assert plan.steps[1].hash == bare.steps[1].hash  # only comparison options differ
    assert plan.content_hash != bare.content_hash
    safe, _ = parse(SHADOWED.replace("unsafe_methods: true", "unsafe_methods: false"))
    assert safe is not None and safe.steps[0].hash != plan.steps[0].hash
    less, _ = parse(SHADOWED.replace("mirror: 25", "mirror: 20"))
    assert less is not None and less.steps[2].hash != plan.steps[2].hash
    # Plans written before these keys existed keep their hashes (durable state compares them).
    old, _ = parse("name: a\nroute: catalog\nfrom: monolith\nto: catalog\nsteps: [{shadow: {percent: 100}}]\n")
    assert old is not None and "shadow" not in old.steps[0].to_json()


def test_shadow_option_errors_with_positions() -> None:
    text = SHADOWED.replace('"$.items[*].etag"', '"$.items["').replace("compare_headers: [Content-Type]",
                                                                     "compare_headers: text/plain")
    assert errors(text) == [
        "plan.yaml:10:34: steps[0].shadow.ignore[1]: bad rule '$.items[': unclosed '[' at column 8",
        "plan.yaml:11:24: steps[0].shadow.compare_headers: must be a list of strings, got scalar",
    ]
    assert errors(SHADOWED.replace("learn_noise: false}", "learn_noise: false, percent: 5}")) == [
        ("plan.yaml:5:58: shadow.percent: unknown field 'percent' (expected one of: compare_headers, ignore, "
         "learn_noise, unsafe_methods)")
    ]
    assert errors(SHADOWED.replace("  - shadow: {percent: 50}", "  - shadow: {percent: 50}\n    mirror: 5")) == [
        "plan.yaml:13:13: steps[1].mirror: only a 'weight' step mirrors (a shadow step has its own percent)"
    ]
    assert errors(SHADOWED.replace("mirror: 25", "mirror: 250")) == [
        "plan.yaml:14:13: steps[2].mirror: must be 0-100, got 250"
    ]
