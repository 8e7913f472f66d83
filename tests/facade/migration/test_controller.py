"""MigrationController on a real facade: real backends on loopback, real traffic, the real admin API."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from facade.cli import main
from facade.cli.console import EXIT_GATE_FAILED, EXIT_OK
from facade.config import load_config
from facade.errors import ConfigError
from facade.features import attach_features
from facade.migration.controller import MigrationController
from facade.migration.engine import Phase
from facade.migration.gates import GateStatus
from facade.runtime import FacadeRuntime
from tests.facade.migration.stack import TOKEN, Stack, config_text, migration_stack

GATED = """\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    steps:
      - weight: 50
        gates: {error_rate: {max_delta: 1%}, latency_p99: {max_ms: 5000}, min_requests: 20}
      - weight: 100
    """


async def _traffic(s: Stack, n: int, path: str = "/catalog/item") -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        r = await s.client.get(path)
        seen[r.headers.get("x-served-by", str(r.status_code))] += 1
    return seen


async def test_gates_inconclusive_pass_and_fail_on_real_traffic(tmp_path: Path) -> None:
    async with migration_stack(tmp_path, GATED) as s:
        assert (await s.act("shop", "start", actor="ann")).status_code == 200

        # No traffic yet: too few requests is inconclusive, and `next` is refused as a gate result.
        status = await s.status("shop")
        assert status["gates"]["status"] == "inconclusive"
        assert status["routing"] == {"catalog": {"to_percent": 50.0, "shadow_percent": 0.0, "canary": None,
                                                 "sticky": None}}
        refused = await s.act("shop", "next")
        assert refused.status_code == 409 and refused.json()["code"] == "gate_failed"
        assert refused.json()["gates"]["status"] == "inconclusive"

        # Both sides healthy: the gates pass, with the measured values in the status.
        seen = await _traffic(s, 120)
        assert seen["monolith"] > 20 and seen["catalog"] > 20
        status = await s.status("shop")
        gates = {g["name"]: g for g in status["gates"]["results"]}
        assert status["gates"]["status"] == "pass"
        assert gates["min_requests"]["value"] == seen["catalog"]
        assert gates["error_rate.max_delta"]["value"] == 0.0 and gates["error_rate.max_delta"]["status"] == "pass"
        assert gates["latency_p99.max_ms"]["new"] is not None and gates["latency_p99.max_ms"]["old"] is not None

        # The candidate starts answering 500: its error rate over the step's window breaks the gate.
        s.new.fail = True
        await _traffic(s, 120)
        status = await s.status("shop")
        gates = {g["name"]: g for g in status["gates"]["results"]}
        assert status["gates"]["status"] == "fail"
        assert gates["error_rate.max_delta"]["status"] == "fail" and gates["error_rate.max_delta"]["value"] > 20
        assert gates["error_rate.max_delta"]["old"] == 0.0

        # The CLI against the real admin API: refused with the gate exit code, then forced with a reason.
        cli = ["--admin", s.runtime.admin_url, "--token", TOKEN]
        assert await asyncio.to_thread(main, ["migrate", "next", "shop", *cli]) == EXIT_GATE_FAILED
        assert (await s.status("shop"))["step"] == 1
        code = await asyncio.to_thread(main, ["migrate", "next", "shop", "--force", "--reason", "known flake", *cli])
        assert code == EXIT_OK
        status = await s.status("shop")
        assert (status["step"], status["routing"]["catalog"]["to_percent"]) == (2, 100.0)
        last = status["journal"][-1]
        assert (last["action"], last["reason"], last["gates"]["status"]) == ("next", "known flake", "fail")
        # The journal row keeps the telemetry of the step that was left.
        left = last["summary"]["catalog"]
        assert left["step"] == "shop step 1: weight 50"
        assert left["backends"]["catalog"]["errors"] > 0 and left["backends"]["monolith"]["errors"] == 0
        # status and list render what the real API answers.
        assert await asyncio.to_thread(main, ["migrate", "status", "shop", *cli]) == EXIT_OK
        assert await asyncio.to_thread(main, ["migrate", "list", *cli]) == EXIT_OK
        # A mistyped name says which names exist, as every other refusal of the controller does.
        missing = await s.admin.get("/migrations/shpo")
        assert missing.status_code == 404 and missing.json()["error"] == "no migration named 'shpo' (known: shop)"


async def test_shadow_step_diff_rate_gate_on_mirrored_traffic(tmp_path: Path) -> None:
    plan = """\
        name: shop
        route: catalog
        from: monolith
        to: catalog
        steps:
          - shadow: {percent: 100}
            gates: {diff_rate: {max: 10%}, min_requests: 10}
          - weight: 100
        """

    async def wait_for_comparisons(n: int) -> dict[str, Any]:
        for _ in range(100):  # bounded: mirroring is asynchronous, after each primary response
            status = await s.status("shop", journal=0)
            compared = [g for g in status["gates"]["results"] if g["name"] == "diff_rate.max"]
            if s.runtime.telemetry.diff_counts("catalog").compared >= n:
                return dict(compared[0])
            await asyncio.sleep(0.05)
        raise AssertionError(f"fewer than {n} shadow comparisons arrived")

    async with migration_stack(tmp_path, plan) as s:
        await s.act("shop", "start")
        # Every client answer still comes from the monolith; copies go to the candidate.
        assert await _traffic(s, 20, "/catalog/same/x") == Counter({"monolith": 20})
        await wait_for_comparisons(20)
        status = await s.status("shop", journal=0)
        gate = next(g for g in status["gates"]["results"] if g["name"] == "diff_rate.max")
        assert (status["gates"]["status"], gate["value"]) == ("pass", 0.0)

        # The candidate answers differently (its echo names itself): the diff rate breaks the gate.
        await _traffic(s, 20)
        await wait_for_comparisons(40)
        status = await s.status("shop", journal=0)
        gate = next(g for g in status["gates"]["results"] if g["name"] == "diff_rate.max")
        assert status["gates"]["status"] == "fail" and gate["value"] >= 40.0
        refused = await s.act("shop", "next")
        assert (refused.status_code, refused.json()["code"]) == (409, "gate_failed")


async def test_admin_api_contract(tmp_path: Path) -> None:
    async with migration_stack(tmp_path, GATED) as s:
        listing = (await s.admin.get("/migrations")).json()["migrations"]
        assert [(m["name"], m["state"], m["step"], m["journal"]) for m in listing] == [("shop", "pending", 0, [])]
        assert (await s.admin.get("/migrations/nope")).status_code == 404
        r = await s.act("nope", "start")
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
        r = await s.act("shop", "explode")
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
        r = await s.admin.post("/migrations/shop/start", content=b"[1]")
        assert r.status_code == 400
        r = await s.act("shop", "start", force="yes")
        assert r.status_code == 400 and "force" in r.json()["error"]
        async with httpx.AsyncClient(base_url=s.runtime.admin_url) as no_token:
            assert (await no_token.post("/migrations/shop/start", json={})).status_code == 401
        assert (await s.status("shop"))["state"] == "pending"
        r = await s.act("shop", "pause")
        assert (r.status_code, r.json()["code"]) == (409, "refused")
        r = await s.act("shop", "start", actor="ann", reason="go")
        body = r.json()
        assert r.status_code == 200 and body["state"] == "running" and body["step"] == 1
        assert [(e["action"], e["actor"], e["reason"]) for e in body["journal"]] == [("start", "ann", "go")]
        routes = (await s.admin.get("/routes")).json()["routes"]
        catalog = next(route for route in routes if route["name"] == "catalog")
        assert catalog["migration"]["step"] == "shop step 1: weight 50"
        assert [(b["service"], b["weight"]) for b in catalog["backends"]] == [("monolith", 50.0), ("catalog", 50.0)]
        assert (await s.admin.get("/migrations/shop", params={"journal": "x"})).status_code == 400


async def test_concurrent_next_advances_one_step(tmp_path: Path) -> None:
    plan = """\
        name: shop
        route: catalog
        from: monolith
        to: catalog
        steps: [{weight: 10}, {weight: 20}, {weight: 30}]
        """
    async with migration_stack(tmp_path, plan) as s:
        await s.act("shop", "start")
        for _ in range(5):  # every round: two simultaneous `next` decided on the same status
            before = (await s.status("shop"))["step"]
            if before == 3:
                await s.act("shop", "rollback", to=1)
                before = 1
            version = (await s.status("shop", journal=0))["version"]
            first, second = await asyncio.gather(
                s.act("shop", "next", version=version), s.act("shop", "next", version=version)
            )
            codes = sorted([first.status_code, second.status_code])
            assert codes == [200, 409], (first.text, second.text)
            loser = first if first.status_code == 409 else second
            assert loser.json()["code"] == "conflict"
            assert (await s.status("shop"))["step"] == before + 1
        journal = (await s.status("shop"))["journal"]
        assert [e["version"] for e in journal] == list(range(1, len(journal) + 1))
        stale = await s.act("shop", "next", version=1)
        assert (stale.status_code, stale.json()["code"]) == (409, "conflict")
        assert (await s.status("shop", journal=0))["version"] == len(journal)


async def test_sticky_cohort_only_grows(tmp_path: Path) -> None:
    plan = """\
        name: shop
        route: catalog
        from: monolith
        to: catalog
        sticky: {cookie: session_id}
        steps: [{weight: 5}, {weight: 25}, {weight: 50}]
        """
    async with migration_stack(tmp_path, plan) as s:
        # A first visit without the cookie is given one, so the next visits stick.
        await s.act("shop", "start")
        r = await s.client.get("/catalog/item")
        assert r.headers["set-cookie"].startswith("session_id=") and "Max-Age=2592000" in r.headers["set-cookie"]
        s.client.cookies.clear()  # from here on each user sends its own cookie

        users = [f"user-{i}" for i in range(200)]
        moved: set[str] = set()
        shares = []
        for step in (1, 2, 3):
            if step > 1:
                assert (await s.act("shop", "next")).status_code == 200
            on_new = set()
            for user in users:
                side = await s.served_by(headers={"cookie": f"session_id={user}"})
                if side == "catalog":
                    on_new.add(user)
            assert moved <= on_new, f"users went back to the monolith at step {step}: {moved - on_new}"
            moved = on_new
            shares.append(len(on_new) / len(users))
        assert shares[0] < shares[1] < shares[2]
        assert 0.3 < shares[2] < 0.7
        # The same user within a step always sees the same side.
        sides = {await s.served_by(headers={"cookie": "session_id=user-7"}) for _ in range(10)}
        assert len(sides) == 1


async def test_auto_mode_advances_then_rolls_back_when_the_new_service_fails(tmp_path: Path) -> None:
    plan = """\
        name: shop
        route: catalog
        from: monolith
        to: catalog
        interval: 200ms
        threshold: 2
        steps:
          - weight: 50
            gates: {error_rate: {max: 5%}, min_requests: 5}
          - weight: 80
            hold: 10m
            gates: {error_rate: {max: 5%}, min_requests: 5}
          - weight: 100
        """
    async with migration_stack(tmp_path, plan) as s:
        r = await s.act("shop", "auto", actor="ann")
        assert r.status_code == 200 and r.json()["auto"] is True and r.json()["state"] == "running"

        # Healthy: once enough requests passed the gates, auto mode advances by itself.
        deadline = time.monotonic() + 10
        while (await s.status("shop", journal=0))["step"] == 1 and time.monotonic() < deadline:
            await _traffic(s, 10)
        status = await s.status("shop")
        assert status["step"] == 2 and status["journal"][-1]["action"] == "advance"

        # Then the new service breaks: `threshold` failed checks in a row roll everything back.
        s.new.fail = True
        deadline = time.monotonic() + 10
        while (await s.status("shop", journal=0))["state"] == "running" and time.monotonic() < deadline:
            await _traffic(s, 10)
        status = await s.status("shop")
        assert status["state"] == "rolled_back" and status["auto"] is False
        actions = [e["action"] for e in status["journal"]]
        assert actions[-2:] == ["tick", "auto_rollback"]
        assert status["journal"][-1]["reason"].startswith("automatic rollback: 2 failed checks in a row at step 2")
        assert status["journal"][-1]["gates"]["status"] == "fail"
        # Everything is back on the monolith.
        assert (await _traffic(s, 20)) == Counter({"monolith": 20})
        assert s.controller._auto == {}


async def test_zero_failed_requests_across_every_transition(tmp_path: Path) -> None:
    plan = """\
        name: shop
        route: catalog
        from: monolith
        to: catalog
        sticky: {cookie: session_id}
        steps:
          - shadow: {percent: 100}
          - canary: {header: {x-canary: "1"}}
          - weight: 5
          - weight: 25
          - weight: 50
          - weight: 100
        """
    async with migration_stack(tmp_path, plan) as s:
        stop = asyncio.Event()
        statuses: Counter[int] = Counter()
        sides: Counter[str] = Counter()

        async def worker(n: int) -> None:
            for i in range(2000):  # bounded, whatever happens
                if stop.is_set():
                    return
                headers = {"cookie": f"session_id=u{n}-{i % 50}"}
                if i % 4 == 0:
                    headers["x-canary"] = "1"
                r = await s.client.get(f"/catalog/item/{i}", headers=headers)
                statuses[r.status_code] += 1
                sides[r.headers.get("x-served-by", "?")] += 1

        workers = [asyncio.create_task(worker(n)) for n in range(4)]
        await asyncio.sleep(0.1)
        for action in ["start", "next", "next", "next", "next", "next", "next"]:
            assert (await s.act("shop", action)).status_code == 200
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*workers)
        assert (await s.status("shop"))["state"] == "completed"
        assert set(statuses) == {200}, statuses
        assert sides["monolith"] > 0 and sides["catalog"] > 0
        # Traffic really flowed on every step (telemetry counts each step's requests under its label).
        journal = (await s.status("shop"))["journal"]
        labels = [e["summary"]["catalog"]["step"] for e in journal[1:]]
        assert labels == ["shop step 1: shadow 100%", "shop step 2: canary header x-canary=1", "shop step 3: weight 5",
                          "shop step 4: weight 25", "shop step 5: weight 50", "shop step 6: weight 100"]
        for entry in journal[1:]:
            served = entry["summary"]["catalog"]["backends"]
            assert sum(b["requests"] for b in served.values()) > 0, entry["summary"]
        assert await _traffic(s, 10) == Counter({"catalog": 10})


async def test_reload_that_edits_an_applied_step_is_rejected(tmp_path: Path) -> None:
    plan = """\
        name: shop
        route: catalog
        from: monolith
        to: catalog
        steps: [{weight: 10}, {weight: 20}, {weight: 30}]
        """
    async with migration_stack(tmp_path, plan) as s:
        await s.act("shop", "start")
        await s.act("shop", "next")
        before = s.runtime.holder.current.splits["catalog"]

        s.write_plan(plan.replace("{weight: 10}", "{weight: 15}"))
        s.touch_config("edit 1")
        result = await s.runtime.reload("test")
        assert not result.ok
        assert any("step 1 was already applied" in p.message for p in result.problems), result.problems
        assert s.runtime.holder.current.splits["catalog"] == before
        assert s.controller.plans["shop"].steps[0].weight == 10
        assert (await s.status("shop"))["step"] == 2

        # A step not applied yet may change.
        s.write_plan(plan.replace("{weight: 30}", "{weight: 40}"))
        s.touch_config("edit 2")
        result = await s.runtime.reload("test")
        assert result.ok, result.problems
        assert s.controller.plans["shop"].steps[2].weight == 40
        assert s.runtime.holder.current.splits["catalog"] == before
        await s.act("shop", "next")
        assert s.runtime.holder.current.splits["catalog"].weight_bps == 4000

        # Removing the file of a running plan would drop its routing mid-migration: rejected too.
        (s.tmp_path / "migrations" / "001-plan.yaml").unlink()
        s.touch_config("edit 3")
        result = await s.runtime.reload("test")
        assert not result.ok and "its file is gone" in result.problems[0].message
        assert s.runtime.holder.current.splits["catalog"].weight_bps == 4000


async def test_plan_file_edits_are_picked_up_without_a_config_change(tmp_path: Path) -> None:
    plan = """\
        name: shop
        route: catalog
        from: monolith
        to: catalog
        steps: [{weight: 10}, {weight: 20}, {weight: 30}]
        """
    async with migration_stack(tmp_path, plan, watch_interval=0.05) as s:
        await s.act("shop", "start")

        async def settle(condition: Any) -> bool:
            for _ in range(100):  # bounded: the watcher polls every 50 ms
                if condition():
                    return True
                await asyncio.sleep(0.05)
            return False

        s.write_plan(plan.replace("{weight: 30}", "{weight: 35}"))
        assert await settle(lambda: s.controller.plans["shop"].steps[2].weight == 35)
        # An edit of the applied step is rejected by the watcher's reload too: the old plan stays.
        assert await s.controller.reload_plans("test") == []
        s.write_plan(plan.replace("{weight: 10}", "{weight: 15}"))
        problems = await s.controller.reload_plans("test")
        assert any("step 1 was already applied" in p.message for p in problems), problems
        await asyncio.sleep(0.2)  # the watcher sees the same edit and rejects it as well
        assert s.controller.plans["shop"].steps[0].weight == 10
        assert s.runtime.holder.current.splits["catalog"].weight_bps == 1000


def _runtime(tmp_path: Path, old: str = "http://127.0.0.1:9", new: str = "http://127.0.0.1:9") -> FacadeRuntime:
    path = tmp_path / "facade.yaml"
    path.write_text(config_text(old, new))
    runtime = FacadeRuntime(load_config(str(path)), config_path=str(path), watch_interval=None)
    attach_features(runtime)
    return runtime


def _controller(runtime: FacadeRuntime) -> MigrationController:
    return runtime.feature(MigrationController)


async def test_an_invalid_plan_refuses_start_with_positions(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001.yaml").write_text(
        "name: shop\nroute: catalgo\nfrom: monolith\nto: catalog\nsteps: [{weight: 150}]\n"
    )
    runtime = _runtime(tmp_path)
    with pytest.raises(ConfigError) as info:
        await _controller(runtime).start()
    text = str(info.value)
    assert "001.yaml:2:8: route: unknown route 'catalgo'; did you mean 'catalog'?" in text
    assert "001.yaml:5:18: steps[0].weight" in text
    assert runtime.splits == {}


async def test_restart_serves_the_committed_step_and_refuses_a_rewritten_one(tmp_path: Path) -> None:
    from facade.migration.engine import Action

    (tmp_path / "migrations").mkdir()
    plan = tmp_path / "migrations" / "001.yaml"
    plan.write_text("name: shop\nroute: catalog\nfrom: monolith\nto: catalog\nsteps: [{weight: 10}, {weight: 60}]\n")
    first = _runtime(tmp_path)
    controller = _controller(first)
    await controller.start()
    for name in ("start", "next"):
        result = await controller.act("shop", Action(name, actor="t"))
        assert not hasattr(result, "code"), result
    await controller.stop()

    again = _runtime(tmp_path)
    await _controller(again).start()
    assert again.holder.current.splits["catalog"].weight_bps == 6000
    assert again.telemetry.current_step("catalog") == "shop step 2: weight 60"
    state = _controller(again).states["shop"]
    assert (state.phase, state.step, state.version) == (Phase.RUNNING, 1, 2)

    plan.write_text(plan.read_text().replace("{weight: 10}", "{weight: 20}"))
    with pytest.raises(ConfigError, match="step 1 was already applied"):
        await _controller(_runtime(tmp_path)).start()


# -- pure parts ----------------------------------------------------------------------------------------


def test_combine_reports_takes_the_worst_route() -> None:
    from facade.migration.controller import combine_reports
    from facade.migration.gates import GateReport, GateResult, GateStatus

    ok = GateReport(GateStatus.PASS, (GateResult("min_requests", GateStatus.PASS, 50.0, 20.0, "min_requests: 50"),))
    thin = GateReport(GateStatus.INCONCLUSIVE,
                      (GateResult("min_requests", GateStatus.INCONCLUSIVE, 3.0, 20.0, "min_requests: 3"),))
    bad = GateReport(GateStatus.FAIL, (GateResult("error_rate.max", GateStatus.FAIL, 9.0, 1.0, "error_rate.max: 9%"),))
    assert combine_reports([("a", thin)]) is thin
    both = combine_reports([("a", ok), ("b", thin)])
    assert both.status is GateStatus.INCONCLUSIVE
    assert [(r.name, r.message) for r in both.results] == [("a:min_requests", "a: min_requests: 50"),
                                                           ("b:min_requests", "b: min_requests: 3")]
    assert combine_reports([("a", bad), ("b", thin), ("c", ok)]).status is GateStatus.FAIL
    assert combine_reports([("a", ok), ("b", ok)]).status is GateStatus.PASS


def test_check_plans_guards_running_and_completed_plans() -> None:
    from dataclasses import replace

    from facade.migration.controller import check_plans
    from facade.migration.engine import MigrationState, frame_hash
    from tests.facade.migration.test_engine import PLAN

    running = MigrationState(PLAN.name, Phase.RUNNING, 1, 2, step_hashes=PLAN.step_hashes, frame_hash=frame_hash(PLAN))
    backends = {"catalog": ("monolith",)}
    assert check_plans({PLAN.name: PLAN}, {PLAN.name: running}, previous={}, route_backends=backends, where="m/") == []
    # An applied step rewritten: refused with the step's position.
    edited = replace(PLAN, steps=(replace(PLAN.steps[0], hold=1.0), *PLAN.steps[1:]))
    problems = check_plans({PLAN.name: edited}, {PLAN.name: running}, previous={}, route_backends=backends, where="m/")
    assert len(problems) == 1 and "step 1 was already applied" in problems[0].message
    # The file of a running plan is gone: refused.
    problems = check_plans({}, {PLAN.name: running}, previous={}, route_backends=backends, where="m/")
    assert "is running at step 2 but its file is gone" in problems[0].message and problems[0].file == "m/"
    # A completed plan's file may go once its routes point at the new service, not before.
    done = replace(running, phase=Phase.COMPLETED, step=len(PLAN.steps))
    previous = {PLAN.name: PLAN}
    problems = check_plans({}, {PLAN.name: done}, previous=previous, route_backends=backends, where="m/")
    assert "would move its traffic back" in problems[0].message
    moved = {route: (PLAN.to_service,) for route in PLAN.routes}
    assert check_plans({}, {PLAN.name: done}, previous=previous, route_backends=moved, where="m/") == []
    # Pending, rolled back and aborted plans may disappear.
    for phase in (Phase.PENDING, Phase.ROLLED_BACK, Phase.ABORTED):
        assert check_plans({}, {PLAN.name: replace(running, phase=phase)}, previous=previous,
                           route_backends=backends, where="m/") == []


def test_shadow_min_requests_counts_comparisons() -> None:
    from facade.migration.controller import shadow_min_requests
    from facade.migration.gates import evaluate_gates
    from facade.migration.plan import Gate, Gates
    from facade.stats import DiffCounts, SideStats

    gates = Gates((Gate("diff_rate", "max", 1.0),), min_requests=10)
    agree = DiffCounts(compared=12, differing=0)
    plain = evaluate_gates(gates, SideStats(requests=50), SideStats(), agree)
    assert plain.status is GateStatus.INCONCLUSIVE  # the candidate served no client
    counted = shadow_min_requests(plain, 10, agree.compared)
    assert counted.status is GateStatus.PASS
    assert (counted.results[0].name, counted.results[0].status, counted.results[0].value) == ("min_requests", GateStatus.PASS, 12.0)
    few = shadow_min_requests(evaluate_gates(gates, SideStats(), SideStats(), DiffCounts(3, 0)), 10, 3)
    assert few.status is GateStatus.INCONCLUSIVE and "3 of 10 shadow comparisons" in few.results[0].message


async def test_plan_shadow_options_reach_the_sender_and_decide_what_counts_as_a_diff(tmp_path: Path) -> None:
    # The echo backends differ in $.name and in the echoed request $.headers (the copy's marker and Host).
    plan = """\
        name: shop
        route: catalog
        from: monolith
        to: catalog
        shadow: {ignore: ["$.headers"], learn_noise: false}
        steps:
          - shadow: {percent: 100, ignore: ["$.headers", "$.name"], unsafe_methods: true}
          - shadow: {percent: 100}
          - weight: 50
            mirror: 100
        """

    async def compared(n: int) -> tuple[int, int]:
        for _ in range(200):  # bounded: copies are sent after each primary response
            counts = s.runtime.telemetry.diff_counts("catalog")
            if counts.compared >= n:
                return counts.compared, counts.differing
            await asyncio.sleep(0.02)
        raise AssertionError(f"fewer than {n} comparisons")

    async with migration_stack(tmp_path, plan) as s:
        sender = s.runtime.shadow
        assert sender is not None
        await s.act("shop", "start")
        split = s.runtime.splits["catalog"]
        assert split.shadow_unsafe and split.shadow_percent == 100.0
        assert sender.options_for("catalog").ignore.texts == ("$.headers", "$.name")
        assert sender.options_for("catalog").learn_noise is False
        await _traffic(s, 10)
        assert (await s.client.post("/catalog/item", content=b"{}")).status_code == 200  # unsafe, but allowed
        # $.name differs but is ignored: nothing counts as a diff.
        assert await compared(11) == (11, 0)

        # The next step ignores only $.headers (the plan's default): the same $.name now differs.
        await s.act("shop", "next", force=True, reason="test")
        assert not s.runtime.splits["catalog"].shadow_unsafe
        assert sender.options_for("catalog").ignore.texts == ("$.headers",)
        skipped = sender.skipped_unsafe["catalog"]
        assert (await s.client.post("/catalog/item", content=b"{}")).status_code == 200
        assert sender.skipped_unsafe["catalog"] == skipped + 1  # unsafe methods are not mirrored here
        await _traffic(s, 10)
        assert await compared(10) == (10, 10)
        diffs = (await s.admin.get("/diffs", params={"route": "catalog"})).json()
        assert "$.name" in json.dumps(diffs)

        # A weight step with `mirror`: the monolith's share is mirrored too, with the plan's defaults.
        await s.act("shop", "next", force=True, reason="test")
        split = s.runtime.splits["catalog"]
        assert (split.weight_bps, split.shadow_percent) == (5000, 100.0)
        assert sender.options_for("catalog").ignore.texts == ("$.headers",)
        seen = await _traffic(s, 20)
        await compared(seen["monolith"])

        # Rolled back: the route compares with the sender's defaults again.
        await s.act("shop", "rollback", to=0)
        assert sender.options_for("catalog") is sender.options


async def test_compare_stays_local_with_the_sqlite_store(tmp_path: Path) -> None:
    """Without a shared store there is no other instance: compare reports this facade's window, and says so."""
    text = """\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    steps:
      - weight: 100
    """
    async with migration_stack(tmp_path, text) as s:
        assert (await s.act("shop", "start")).status_code == 200
        for _ in range(7):
            assert await s.served_by() == "catalog"
        assert await s.controller.fleet_window("catalog") is None
        doc = (await s.admin.get("/compare", params={"route": "catalog"})).json()
        assert doc["scope"] == "local" and "instances" not in doc
        assert (doc["old"]["requests"], doc["new"]["requests"]) == (0, 7)
