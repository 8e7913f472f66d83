"""Migrations keep people together: a canary that persists through weight steps, per-plan sticky salts
(stable for migrations already running), and the cohort travelling downstream as W3C baggage."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from facade.migration.engine import Action, MigrationState, Phase, Transition, apply, effective_split
from facade.migration.plan import Plan, load_plans, parse_plan
from facade.split import BUCKETS, CanarySpec, Split, StickySpec, baggage_with_cohort, bucket_of, cohort_of, decide
from facade.yamlfile import YamlDocument
from tests.facade.migration.stack import migration_stack

USER = StickySpec("header", "x-user")
CANARY = CanarySpec("header", "x-canary", "1")
USERS = [f"user-{i}" for i in range(4000)]


def _on_new(split: Split, extra: list[tuple[bytes, bytes]] | None = None) -> set[str]:
    return {u for u in USERS
            if decide(split, headers=[(b"x-user", u.encode()), *(extra or [])], rand=0.5).backend == "catalog"}


# -- the split, pure ------------------------------------------------------------------------------------


def test_a_persistent_canary_keeps_testers_on_the_candidate_at_every_weight() -> None:
    for bps in (500, 2500, 5000):
        split = Split("monolith", "catalog", weight_bps=bps, sticky=USER, canary=CANARY)
        assert _on_new(split, [(b"x-canary", b"1")]) == set(USERS)  # testers: all of them, whatever the weight
        others = _on_new(split)
        assert others == _on_new(Split("monolith", "catalog", weight_bps=bps, sticky=USER))  # the rest: sticky
        assert 0.8 * bps / BUCKETS < len(others) / len(USERS) < 1.2 * bps / BUCKETS
    canary_step = Split("monolith", "catalog", canary=CANARY)
    assert decide(canary_step, headers=[(b"x-user", b"u")], rand=0.0) .backend == "monolith"


def test_salts_move_different_users_first_and_no_salt_is_the_old_bucket() -> None:
    def moved(salt: str) -> set[str]:
        return _on_new(Split("monolith", "catalog", weight_bps=500, sticky=USER, salt=salt))

    a, b = moved("extract-catalog"), moved("extract-orders")
    assert moved("extract-catalog") == a  # stable
    assert len(a & b) < 0.3 * min(len(a), len(b))  # independent draws: ~5 % of 5 % overlap
    assert moved("") == {u for u in USERS if bucket_of(u) < 500}  # unsalted = before salts existed
    # As the weight grows a salted cohort only grows, like an unsalted one.
    assert a <= _on_new(Split("monolith", "catalog", weight_bps=2500, sticky=USER, salt="extract-catalog"))


@pytest.mark.parametrize(
    ("split", "baggage", "expected"),
    [
        (Split("m", "c", weight_bps=500, baggage=True), b"facade-cohort=new", "c"),
        (Split("m", "c", weight_bps=9500, baggage=True), b"k=v, facade-cohort=old;p=1", "m"),
        (Split("m", "c", canary=CANARY, baggage=True), b"facade-cohort=new", "c"),  # a tester's call chain
        (Split("m", "c", weight_bps=9500, baggage=False), b"facade-cohort=old", "c"),  # the plan turned it off
        (Split("m", "c", weight_bps=BUCKETS, baggage=True), b"facade-cohort=old", "c"),  # completed: no way back
        (Split("m", "c", shadow_percent=100.0, baggage=True), b"facade-cohort=new", "m"),  # shadow: c not live
        (Split("m", "c", weight_bps=9500, baggage=True), b"facade-cohort=bogus", "c"),  # not a cohort: ignored
    ],
)
def test_the_cohort_in_baggage_is_honoured_while_both_sides_are_live(split: Split, baggage: bytes, expected: str) -> None:
    assert decide(split, headers=[(b"baggage", baggage)], rand=0.1).backend == expected


def test_baggage_with_cohort_appends_replaces_and_respects_the_limits() -> None:
    assert baggage_with_cohort([], "new") == "facade-cohort=new"
    assert baggage_with_cohort(["a=1, b=2;prop", "c=3"], "old") == "a=1,b=2;prop,c=3,facade-cohort=old"
    assert baggage_with_cohort(["facade-cohort=new,a=1"], "old") == "a=1,facade-cohort=old"
    assert baggage_with_cohort([",".join(f"k{i}=v" for i in range(63))], "new") is not None
    assert baggage_with_cohort([",".join(f"k{i}=v" for i in range(64))], "new") is None  # 65 members
    assert baggage_with_cohort(["big=" + "x" * 8180], "new") is None  # over 8192 bytes
    assert cohort_of([(b"baggage", b"a=1"), (b"baggage", b"facade-cohort = new ")]) == "new"
    assert cohort_of([(b"x-baggage", b"facade-cohort=new")]) is None


# -- plans ----------------------------------------------------------------------------------------------

BASE = """
name: {name}
route: {route}
from: monolith
to: catalog
sticky: {sticky}
{extra}
steps:
  - canary: {{header: {{x-canary: "1"}}}}
  - weight: 5
  - weight: 100
"""


def _plan(text: str, file: str = "plan.yaml") -> tuple[Plan | None, list[str]]:
    plan, problems = parse_plan(YamlDocument.load(textwrap.dedent(text), file),
                                routes={"catalog", "orders"}, services={"monolith", "catalog"})
    return plan, [str(p) for p in problems]


def test_plan_options_and_their_defaults() -> None:
    plan, problems = _plan(BASE.format(name="p", route="catalog", sticky="{header: x-user}", extra=""))
    assert problems == [] and plan is not None
    assert (plan.sticky_salt, plan.canary_persist, plan.baggage) == ("p", True, True)  # auto: the plan's name
    # A plan that writes none of the new options keeps its JSON, so its hash and frame are unchanged.
    assert "salt" not in plan.to_json()["sticky"] and "canary" not in plan.to_json() and "cohort" not in plan.to_json()

    text = BASE.format(name="p", route="catalog", sticky="{header: x-user, salt: beta-first}",
                       extra="canary: {persist: false}\ncohort: {baggage: false}")
    plan, problems = _plan(text)
    assert problems == [] and plan is not None
    assert (plan.sticky_salt, plan.canary_persist, plan.baggage) == ("beta-first", False, False)
    assert plan.to_json()["sticky"]["salt"] == "beta-first"


@pytest.mark.parametrize(
    ("sticky", "extra", "expected"),
    [
        ('{header: x-user, salt: ""}', "", "plan.yaml:6:32: sticky.salt: must not be empty"),
        ("{header: x-user, salt: {shared_with: Bad_Name}}", "",
         "plan.yaml:6:46: sticky.salt.shared_with: must be a plan name ([a-z0-9-]+), got 'Bad_Name'"),
        ("{header: x-user, salt: {shared_with: p}}", "", "plan.yaml:6:32: sticky.salt: a plan cannot share the salt of itself"),
        ("{header: x-user, pepper: x}", "", "plan.yaml:6:26: sticky.pepper: unknown field 'pepper'"),
        ("{header: x-user}", "canary: {persist: maybe}", "plan.yaml:7:19: canary.persist: must be"),
    ],
)
def test_plan_option_errors_are_positioned(sticky: str, extra: str, expected: str) -> None:
    _, problems = _plan(BASE.format(name="p", route="catalog", sticky=sticky, extra=extra))
    assert any(p.startswith(expected) for p in problems), problems


def test_a_plan_shares_the_salt_of_another(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BASE.format(name="first", route="catalog", extra="",
                                                  sticky="{header: x-user, salt: beta}"))
    (tmp_path / "b.yaml").write_text(BASE.format(name="second", route="orders", extra="",
                                                  sticky="{header: x-user, salt: {shared_with: first}}"))
    plans, problems = load_plans(str(tmp_path), routes={"catalog", "orders"}, services={"monolith", "catalog"})
    assert problems == []
    assert plans["second"].sticky_salt == plans["first"].sticky_salt == "beta"

    (tmp_path / "b.yaml").write_text(BASE.format(name="second", route="orders", extra="",
                                                  sticky="{header: x-user, salt: {shared_with: frist}}"))
    plans, problems = load_plans(str(tmp_path), routes={"catalog", "orders"}, services={"monolith", "catalog"})
    assert "second" not in plans
    assert [str(p) for p in problems] == [
        f"{tmp_path / 'b.yaml'}:6:32: sticky.salt.shared_with: unknown plan 'frist'; did you mean 'first'?"
    ]


# -- the engine: which salt a migration uses ------------------------------------------------------------


def test_a_new_start_records_the_plan_salt_and_a_running_migration_keeps_its_own() -> None:
    plan, _ = _plan(BASE.format(name="p", route="catalog", sticky="{header: x-user}", extra=""))
    assert plan is not None
    started = apply(MigrationState("p"), Action("start"), plan=plan, now=1.0)
    assert isinstance(started, Transition) and started.state.salt == "p"
    moved = apply(started.state, Action("next"), plan=plan, now=2.0, gate_report=None)
    assert isinstance(moved, Transition) and moved.state.salt == "p"
    split = effective_split(plan, moved.state)["catalog"]
    assert split is not None and (split.salt, split.weight_bps, split.canary) == ("p", 500, CANARY)

    # A state written before salts existed has no "salt": it stays unsalted, through its next steps too.
    legacy_json = {k: v for k, v in moved.state.to_json().items() if k != "salt"}
    legacy = MigrationState.from_json(json.loads(json.dumps(legacy_json)))
    assert legacy.salt == ""
    assert effective_split(plan, legacy)["catalog"].salt == ""  # type: ignore[union-attr]
    after = apply(legacy, Action("next"), plan=plan, now=3.0, gate_report=None)
    assert isinstance(after, Transition) and after.state.salt == ""
    # Rolled back to nothing and started again: nobody is on the new side, so the plan's salt applies.
    back = apply(legacy, Action("rollback", to=0), plan=plan, now=4.0)
    assert isinstance(back, Transition)
    restarted = apply(back.state, Action("start"), plan=plan, now=5.0)
    assert isinstance(restarted, Transition) and restarted.state.salt == "p"


def test_canary_persist_false_drops_the_canary_on_weight_steps() -> None:
    text = BASE.format(name="p", route="catalog", sticky="{header: x-user}", extra="canary: {persist: false}")
    plan, _ = _plan(text)
    assert plan is not None
    split = effective_split(plan, MigrationState("p", Phase.RUNNING, 1, salt="p"))["catalog"]
    assert split is not None and split.canary is None and split.weight_bps == 500


# -- through a real facade ---------------------------------------------------------------------------------

STACK_PLAN = """
name: shop
route: catalog
from: monolith
to: catalog
sticky: {header: x-user}
steps:
  - canary: {header: {x-canary: "1"}}
  - weight: 5
  - weight: 25
"""


def _baggage(doc: dict[str, object]) -> list[str]:
    headers = doc["headers"]
    assert isinstance(headers, list)
    return [v for k, v in headers if k == "baggage"]


async def test_testers_stay_on_the_new_service_and_the_cohort_travels(tmp_path: Path) -> None:
    async with migration_stack(tmp_path, STACK_PLAN) as s:
        assert (await s.act("shop", "start")).status_code == 200
        tester = {"x-canary": "1", "x-user": "tester", "baggage": "tenant=acme"}
        assert bucket_of("shop\x00tester") >= 2500  # without the canary the tester would stay on monolith at 25 %
        r = await s.client.get("/catalog/item", headers=tester)
        assert r.headers["x-served-by"] == "catalog"
        assert _baggage(r.json()) == ["tenant=acme,facade-cohort=new"]  # appended to the caller's baggage

        for _ in range(2):  # 5 %, then 25 %: the tester is still on the new service every time
            r = await s.act("shop", "next", force=True, reason="test")
            assert r.status_code == 200, r.text
            served = {(await s.client.get("/catalog/item", headers=tester)).headers["x-served-by"] for _ in range(5)}
            assert served == {"catalog"}

        # Someone else: their side is told downstream, and a call that comes back with it stays there.
        sides = {}
        for i in range(40):
            r = await s.client.get("/catalog/item", headers={"x-user": f"user-{i}"})
            sides[r.headers["x-served-by"]] = r.json()
        assert set(sides) == {"monolith", "catalog"}  # 25 % of 40 users: both sides, almost surely
        assert _baggage(sides["monolith"]) == ["facade-cohort=old"]
        for cohort, side in (("old", "monolith"), ("new", "catalog")):
            chain = {
                (await s.client.get("/catalog/item", headers={"baggage": f"facade-cohort={cohort}",
                                                               "x-user": f"u{i}"})).headers["x-served-by"]
                for i in range(10)
            }
            assert chain == {side}
