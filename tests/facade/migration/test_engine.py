from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.migration.engine import (
    Action,
    MigrationState,
    Phase,
    Refusal,
    Transition,
    apply,
    auto_tick,
    check_plan_edit,
    effective_split,
    migration_status,
)
from facade.migration.gates import GateReport, GateResult, GateStatus
from facade.migration.plan import Plan, parse_plan
from facade.split import CanarySpec, Split, StickySpec
from facade.yamlfile import YamlDocument

PLAN_TEXT = """\
name: shop
routes: [catalog, search]
from: monolith
to: catalog
sticky: {header: x-user}
threshold: 3
steps:
  - shadow: {percent: 50}
  - weight: 25
    hold: 1m
    gates: {error_rate: {max: 1%}}
  - pause: approve
  - weight: 100
"""
NOW = 1_000_000.0


def make_plan(text: str = PLAN_TEXT) -> Plan:
    plan, problems = parse_plan(YamlDocument.load(text, "shop.yaml"), routes={"catalog", "search"},
                                services={"monolith", "catalog"})
    assert plan is not None, [str(p) for p in problems]
    return plan


PLAN = make_plan()
PASS = GateReport(GateStatus.PASS)
FAIL = GateReport(GateStatus.FAIL, (GateResult("error_rate.max", GateStatus.FAIL, 5.0, 1.0, "error_rate.max: 5% > 1%"),))
INCONCLUSIVE = GateReport(GateStatus.INCONCLUSIVE)
LONG_AGO = NOW - 3600

STATES = {
    "pending": MigrationState("shop"),
    "running": MigrationState("shop", Phase.RUNNING, 1, version=2, step_started_at=LONG_AGO),
    "paused": MigrationState("shop", Phase.PAUSED, 1, version=3, step_started_at=LONG_AGO),
    "on_pause": MigrationState("shop", Phase.RUNNING, 2, version=3, step_started_at=LONG_AGO),
    "completed": MigrationState("shop", Phase.COMPLETED, 4, version=5, step_started_at=LONG_AGO),
    "rolled_back": MigrationState("shop", Phase.ROLLED_BACK, 0, version=4, step_started_at=LONG_AGO),
    "aborted": MigrationState("shop", Phase.ABORTED, 0, version=4, step_started_at=LONG_AGO),
}
ORDER = ["pending", "running", "paused", "on_pause", "completed", "rolled_back", "aborted"]
# action -> expected outcome from each state in ORDER ("phase:step-index", "phase+auto", or "refused")
TABLE = {
    "start": ["running:0", "refused", "refused", "refused", "refused", "running:0", "refused"],
    "next": ["refused", "running:2", "refused", "running:3", "refused", "refused", "refused"],
    "pause": ["refused", "paused:1", "refused", "paused:2", "refused", "refused", "refused"],
    "resume": ["refused", "refused", "running:1", "running:3", "refused", "refused", "refused"],
    "rollback": ["refused", "running:0", "running:0", "running:1", "running:3", "refused", "refused"],
    "abort": ["aborted:0", "aborted:0", "aborted:0", "aborted:0", "refused", "aborted:0", "refused"],
    "promote": ["refused", "completed:4", "completed:4", "completed:4", "refused", "refused", "refused"],
    "auto": ["running:0+auto", "running:1+auto", "paused:1+auto", "running:2+auto", "refused", "refused", "refused"],
    "manual": ["refused"] * 7,
}
CASES = [(action, state, TABLE[action][i]) for action in TABLE for i, state in enumerate(ORDER)]


@pytest.mark.parametrize(("action", "state_name", "expected"), CASES, ids=[f"{a}-{s}" for a, s, _ in CASES])
def test_each_action_from_each_state(action: str, state_name: str, expected: str) -> None:
    state = STATES[state_name]
    result = apply(state, Action(action, actor="ann", reason="because", force=action == "promote"),  # type: ignore[arg-type]
                   plan=PLAN, now=NOW, gate_report=PASS)
    if expected == "refused":
        assert isinstance(result, Refusal), result
        assert result.code == "refused" and result.reason
        return
    assert isinstance(result, Transition), result.reason
    where, _, auto = expected.partition("+")
    phase, _, step = where.partition(":")
    new = result.state
    assert (new.phase.value, new.step, new.auto) == (phase, int(step), auto == "auto")
    assert new.version == state.version + 1 and result.expected_version == state.version
    assert (result.from_phase, result.to_phase, result.from_step, result.to_step) == (
        state.phase, new.phase, state.step, new.step)
    assert (result.action, result.actor, result.reason, result.at) == (action, "ann", "because", NOW)
    assert result.plan == "shop" and result.plan_hash == PLAN.content_hash == new.plan_hash
    assert new.step_hashes == PLAN.step_hashes


def test_manual_turns_auto_off() -> None:
    state = MigrationState("shop", Phase.RUNNING, 1, version=2, auto=True)
    result = apply(state, Action("manual"), plan=PLAN, now=NOW)
    assert isinstance(result, Transition) and not result.state.auto
    again = apply(STATES["running"].__class__("shop", Phase.RUNNING, 1, auto=True), Action("auto"), plan=PLAN, now=NOW)
    assert isinstance(again, Refusal) and "already in auto mode" in again.reason


def test_next_needs_passing_gates_unless_forced() -> None:
    running = STATES["running"]
    for report, status in ((FAIL, "fail"), (INCONCLUSIVE, "inconclusive")):
        refused = apply(running, Action("next"), plan=PLAN, now=NOW, gate_report=report)
        assert isinstance(refused, Refusal) and refused.code == "gate_failed" and refused.gates is report
        assert refused.to_json()["code"] == "gate_failed" and refused.to_json()["gates"]["status"] == status
    missing = apply(running, Action("next"), plan=PLAN, now=NOW, gate_report=None)
    assert isinstance(missing, Refusal) and missing.code == "gate_failed"
    no_reason = apply(running, Action("next", force=True), plan=PLAN, now=NOW, gate_report=FAIL)
    assert isinstance(no_reason, Refusal) and "--reason" in no_reason.reason
    forced = apply(running, Action("next", force=True, reason="known flake"), plan=PLAN, now=NOW, gate_report=FAIL)
    assert isinstance(forced, Transition) and forced.state.step == 2
    assert json.loads(forced.gates_json)["results"][0]["value"] == 5.0  # the values at that moment are recorded


def test_next_waits_for_hold() -> None:
    entered = MigrationState("shop", Phase.RUNNING, 1, version=2, step_started_at=NOW - 59)
    refused = apply(entered, Action("next"), plan=PLAN, now=NOW, gate_report=PASS)
    assert isinstance(refused, Refusal) and "1s left" in refused.reason
    assert isinstance(apply(entered, Action("next"), plan=PLAN, now=NOW + 1, gate_report=PASS), Transition)


def test_next_on_a_step_without_gates_needs_no_report() -> None:
    result = apply(MigrationState("shop", Phase.RUNNING, 0, step_started_at=NOW), Action("next"), plan=PLAN, now=NOW)
    assert isinstance(result, Transition) and result.state.step == 1 and result.state.step_started_at == NOW


def test_last_step_next_completes() -> None:
    last = MigrationState("shop", Phase.RUNNING, 3, version=7, step_started_at=NOW)
    result = apply(last, Action("next"), plan=PLAN, now=NOW)
    assert isinstance(result, Transition) and result.state.phase is Phase.COMPLETED and result.state.step == 4


def test_rollback_to_step_numbers() -> None:
    on_pause = STATES["on_pause"]  # step 3 of 4 (1-based)
    to_zero = apply(on_pause, Action("rollback", to=0), plan=PLAN, now=NOW)
    assert isinstance(to_zero, Transition) and to_zero.state.phase is Phase.ROLLED_BACK
    to_one = apply(on_pause, Action("rollback", to=1), plan=PLAN, now=NOW)
    assert isinstance(to_one, Transition) and (to_one.state.phase, to_one.state.step) == (Phase.RUNNING, 0)
    for bad in (3, 4, -1):
        refused = apply(on_pause, Action("rollback", to=bad), plan=PLAN, now=NOW)
        assert isinstance(refused, Refusal) and "--to must be" in refused.reason
    first = apply(MigrationState("shop", Phase.RUNNING, 0), Action("rollback"), plan=PLAN, now=NOW)
    assert isinstance(first, Transition) and first.state.phase is Phase.ROLLED_BACK
    auto = apply(MigrationState("shop", Phase.RUNNING, 1, auto=True), Action("rollback"), plan=PLAN, now=NOW)
    assert isinstance(auto, Transition) and not auto.state.auto


def test_promote_needs_force_and_reason() -> None:
    refused = apply(STATES["running"], Action("promote"), plan=PLAN, now=NOW)
    assert isinstance(refused, Refusal) and "--force" in refused.reason
    refused = apply(STATES["running"], Action("promote", force=True), plan=PLAN, now=NOW)
    assert isinstance(refused, Refusal) and "--reason" in refused.reason


def test_unknown_action_and_missing_step() -> None:
    refused = apply(STATES["running"], Action("jump"), plan=PLAN, now=NOW)  # type: ignore[arg-type]
    assert isinstance(refused, Refusal) and refused.code == "not_found"
    beyond = apply(MigrationState("shop", Phase.RUNNING, 9), Action("next"), plan=PLAN, now=NOW)
    assert isinstance(beyond, Refusal) and "no longer has step 10" in beyond.reason


# -- auto mode ---------------------------------------------------------------------------------------


def test_auto_tick_advances_after_hold_when_gates_pass() -> None:
    state = MigrationState("shop", Phase.RUNNING, 1, version=2, auto=True, step_started_at=NOW)
    assert auto_tick(state, plan=PLAN, now=NOW + 30, gate_report=PASS) is None  # hold 1m not elapsed
    assert auto_tick(state, plan=PLAN, now=NOW + 60, gate_report=INCONCLUSIVE) is None
    advanced = auto_tick(state, plan=PLAN, now=NOW + 60, gate_report=PASS)
    assert advanced is not None and advanced.action == "advance" and advanced.actor == "auto"
    assert (advanced.state.phase, advanced.state.step, advanced.state.auto) == (Phase.RUNNING, 2, True)
    assert advanced.state.step_started_at == NOW + 60 and "gates passed" in advanced.reason


def test_auto_tick_waits_at_pause_steps_and_does_nothing_unless_auto_running() -> None:
    at_pause = MigrationState("shop", Phase.RUNNING, 2, auto=True, step_started_at=LONG_AGO)
    assert auto_tick(at_pause, plan=PLAN, now=NOW, gate_report=PASS) is None
    manual = MigrationState("shop", Phase.RUNNING, 1, auto=False, step_started_at=LONG_AGO)
    assert auto_tick(manual, plan=PLAN, now=NOW, gate_report=FAIL) is None
    paused = MigrationState("shop", Phase.PAUSED, 1, auto=True, step_started_at=LONG_AGO)
    assert auto_tick(paused, plan=PLAN, now=NOW, gate_report=FAIL) is None


def test_auto_tick_rolls_back_after_threshold_consecutive_failures() -> None:
    state = MigrationState("shop", Phase.RUNNING, 1, version=2, auto=True, step_started_at=NOW)
    journal = []
    for i in range(1, 4):
        if i == 2:  # an inconclusive window between failures neither resets nor counts
            assert auto_tick(state, plan=PLAN, now=NOW + i, gate_report=INCONCLUSIVE) is None
        t = auto_tick(state, plan=PLAN, now=NOW + i, gate_report=FAIL)
        assert t is not None
        journal.append(t)
        state = t.state
    assert [t.action for t in journal] == ["tick", "tick", "auto_rollback"]
    assert [t.state.failures for t in journal] == [1, 2, 3]
    assert state.phase is Phase.ROLLED_BACK and not state.auto and state.version == 5
    assert "3 failed checks in a row at step 2 (weight 25)" in state.reason and "error_rate.max: 5% > 1%" in state.reason
    assert json.loads(journal[-1].gates_json)["status"] == "fail"
    assert effective_split(PLAN, state) == {"catalog": None, "search": None}


def test_auto_tick_pass_resets_the_failure_count() -> None:
    state = MigrationState("shop", Phase.RUNNING, 1, version=2, auto=True, failures=2, step_started_at=NOW)
    t = auto_tick(state, plan=PLAN, now=NOW + 1, gate_report=PASS)
    assert t is not None and t.action == "tick" and t.state.failures == 0 and t.state.step == 1
    t2 = auto_tick(t.state, plan=PLAN, now=NOW + 2, gate_report=FAIL)
    assert t2 is not None and t2.state.failures == 1 and t2.state.phase is Phase.RUNNING


# -- routing --------------------------------------------------------------------------------------------


def test_effective_split_per_phase_and_step() -> None:
    def split_at(phase: Phase, step: int = 0) -> Split | None:
        splits = effective_split(PLAN, MigrationState("shop", phase, step))
        assert set(splits) == {"catalog", "search"} and splits["catalog"] == splits["search"]
        return splits["catalog"]

    for phase in (Phase.PENDING, Phase.ROLLED_BACK, Phase.ABORTED):
        assert split_at(phase) is None
    shadow = split_at(Phase.RUNNING, 0)
    assert shadow is not None and (shadow.weight_bps, shadow.shadow_percent) == (0, 50.0)
    weight = split_at(Phase.PAUSED, 1)
    assert weight == Split("monolith", "catalog", weight_bps=2500, sticky=StickySpec("header", "x-user"),
                           step_label="shop step 2: weight 25", baggage=True)
    on_pause = split_at(Phase.RUNNING, 2)
    assert on_pause is not None and on_pause.weight_bps == 2500  # a pause keeps the previous step's routing
    done = split_at(Phase.COMPLETED, 4)
    assert done is not None and done.weight_bps == 10_000 and done.sticky is None


def test_effective_split_canary_and_leading_pause() -> None:
    text = PLAN_TEXT.replace("  - shadow: {percent: 50}\n", "  - pause: first\n  - canary: {cookie: {beta: on}}\n")
    _, problems = parse_plan(YamlDocument.load(text, "p.yaml"), routes={"catalog", "search"}, services={"monolith", "catalog"})
    assert [str(p) for p in problems] == ['p.yaml:9:29: steps[1].canary.cookie.beta: must be a string; quote it (e.g. "on", "1")']
    plan = make_plan(text.replace("beta: on", 'beta: "on"'))
    assert effective_split(plan, MigrationState("shop", Phase.RUNNING, 0))["catalog"] is None
    canary = effective_split(plan, MigrationState("shop", Phase.RUNNING, 1))["catalog"]
    assert canary is not None and canary.canary == CanarySpec("cookie", "beta", "on") and canary.weight_bps == 0


# -- plan edits ---------------------------------------------------------------------------------------


def _state_after(phase: Phase, step: int) -> MigrationState:
    t = apply(MigrationState("shop"), Action("start"), plan=PLAN, now=NOW)
    assert isinstance(t, Transition)
    return MigrationState("shop", phase, step, step_hashes=t.state.step_hashes, frame_hash=t.state.frame_hash)


def test_check_plan_edit_rejects_changes_to_applied_steps_only() -> None:
    running = _state_after(Phase.RUNNING, 1)
    future_edit = make_plan(PLAN_TEXT.replace("  - weight: 100\n", "  - weight: 50\n  - weight: 100\n"))
    assert check_plan_edit(running, PLAN.step_hashes, future_edit) is None
    past_edit = make_plan(PLAN_TEXT.replace("percent: 50", "percent: 10"))
    problem = check_plan_edit(running, PLAN.step_hashes, past_edit)
    assert problem is not None
    assert str(problem).startswith("shop.yaml:8:5: steps[0]: plan 'shop' is running: step 1 was already applied")
    current_edit = make_plan(PLAN_TEXT.replace("max: 1%", "max: 2%"))
    assert check_plan_edit(running, PLAN.step_hashes, current_edit) is not None
    frame_edit = make_plan(PLAN_TEXT.replace("{header: x-user}", "{cookie: sid}"))
    frame_problem = check_plan_edit(running, PLAN.step_hashes, frame_edit)
    assert frame_problem is not None and "sticky cannot change" in frame_problem.message
    assert check_plan_edit(_state_after(Phase.PENDING, 0), PLAN.step_hashes, past_edit) is None
    assert check_plan_edit(_state_after(Phase.COMPLETED, 4), PLAN.step_hashes, future_edit) is not None


def test_migration_status_document() -> None:
    state = MigrationState("shop", Phase.RUNNING, 1, version=2, step_started_at=NOW - 20, reason="go")
    doc = migration_status(PLAN, state, now=NOW, gate_report=FAIL, journal=[{"version": 1}])
    assert (doc["state"], doc["step"], doc["steps"], doc["step_summary"]) == ("running", 2, 4, "weight 25")
    assert doc["hold_left"] == 40.0 and doc["reason"] == "go" and doc["threshold"] == 3
    assert doc["routing"]["catalog"] == {"to_percent": 25.0, "shadow_percent": 0.0, "canary": None,
                                         "sticky": "header x-user"}
    assert doc["gates"]["status"] == "fail" and doc["journal"] == [{"version": 1}]
    json.dumps(doc)  # serialisable as is
    done = migration_status(PLAN, MigrationState("shop", Phase.COMPLETED, 4))
    assert done["step"] == 4 and done["routing"]["search"]["to_percent"] == 100.0 and done["hold_left"] is None
    pending = migration_status(PLAN, MigrationState("shop"))
    assert pending["step"] == 0 and pending["routing"]["catalog"]["to_percent"] == 0.0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["start", "next", "pause", "resume", "rollback", "abort", "promote",
                                           "auto", "manual", "tick"]),
                          st.sampled_from([PASS, FAIL, INCONCLUSIVE]),
                          st.booleans(),
                          st.one_of(st.none(), st.integers(min_value=-1, max_value=5))),
                max_size=40))
def test_any_sequence_keeps_the_state_consistent(ops: list[tuple[str, GateReport, bool, int | None]]) -> None:
    state = MigrationState.initial("shop")
    now = NOW
    for name, report, force, to in ops:
        now += 45.0
        result: Transition | Refusal | None
        if name == "tick":
            result = auto_tick(state, plan=PLAN, now=now, gate_report=report)
        else:
            action = Action(name, reason="r" if force else "", force=force, to=to)  # type: ignore[arg-type]
            result = apply(state, action, plan=PLAN, now=now, gate_report=report)
        if not isinstance(result, Transition):
            continue
        new = result.state
        assert new.version == state.version + 1 and result.from_step == state.step
        assert 0 <= new.step <= len(PLAN.steps)
        assert (new.step == len(PLAN.steps)) == (new.phase is Phase.COMPLETED)
        if new.phase in (Phase.ROLLED_BACK, Phase.ABORTED):
            assert not new.auto and effective_split(PLAN, new)["catalog"] is None
        if result.action in ("next", "advance") and not force:
            assert report is PASS or PLAN.steps[state.step].gates.empty
        if state.phase is Phase.ABORTED:
            raise AssertionError("aborted is terminal")
        effective_split(PLAN, new)
        state = new
