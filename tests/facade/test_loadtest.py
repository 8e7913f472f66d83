"""``facade loadtest``: the pure per-step report, and rehearsals end to end against a ``facade up``
style stack (monolith, catalog, orders, ``facade serve`` as processes on free loopback ports) with
locust in its subprocess."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from facade.loadtest import (
    Phase,
    Sample,
    aggregate,
    failing_gates,
    find_locustfile,
    hold_problem,
    locust_command,
    locust_environment,
    parse_samples,
    percentile,
    plan_name,
    render_steps,
    rows_to_csv,
    settings_from_args,
)
from facade.up import Stack, default_config_path, load_stack_config, plan_stack
from tests.facade.test_up import free_ports, read_until, run_up, stop_up

PY = sys.executable
TOKEN = "loadtest-token"
ROOT = Path(__file__).resolve().parents[2]


# -- pure ----------------------------------------------------------------------------------------


def sample(phase: int, backend: str, migrating: bool, group: str, latency: dict[int, int], failures: int = 0) -> Sample:
    return Sample(t=0.0, phase=phase, backend=backend, migrating=migrating, group=group,
                  requests=sum(latency.values()), failures=failures, latency_ms=latency, errors={})  # fmt: skip


def test_percentile_is_nearest_rank_over_the_histogram() -> None:
    hist = {1: 50, 2: 45, 10: 4, 100: 1}
    assert [percentile(hist, q) for q in (0.5, 0.95, 0.99, 1.0)] == [1.0, 2.0, 10.0, 100.0]
    assert percentile({5: 1}, 0.99) == 5.0
    assert percentile({}, 0.5) is None


def test_parse_samples_skips_a_torn_line() -> None:
    good = json.dumps({"t": 1.5, "phase": 2, "backend": "catalog", "migrating": True, "group": "catalog",
                       "requests": 3, "failures": 1, "latency_ms": {"4": 3}, "errors": {"GET /x: 502": 1}})  # fmt: skip
    parsed = parse_samples([good, "", '{"t": 2, "phase": 3, "back'])
    assert parsed == [Sample(1.5, 2, "catalog", True, "catalog", 3, 1, {4: 3}, {"GET /x: 502": 1})]


def test_aggregate_splits_old_and_new_on_the_migrated_route_only() -> None:
    phases = [Phase(0, "baseline", 0, 0.0, 1.0), Phase(1, "step 1/2: weight 50", 1, 1.0, 2.0, {"status": "pass"})]
    samples = [
        sample(0, "monolith", False, "catalog", {3: 10}),  # baseline: no split marks it, its path group does
        sample(0, "monolith", False, "users", {50: 10}),  # never migrated: totals only
        sample(1, "monolith", True, "catalog", {2: 8, 9: 2}),
        sample(1, "catalog", True, "catalog", {4: 9, 40: 1}, failures=1),
        sample(1, "monolith", False, "users", {50: 5}),
    ]
    base, step = aggregate(samples, phases, old="monolith", new="catalog")
    assert (base.requests, base.failures, base.old.requests, base.old.p99, base.new.requests) == (20, 0, 10, 3.0, 0)
    assert (step.requests, step.failures) == (25, 1)
    assert (step.old.requests, step.old.p50, step.old.p95) == (10, 2.0, 9.0)
    assert (step.new.requests, step.new.failures, step.new.p50, step.new.p99) == (10, 1, 4.0, 40.0)
    table = render_steps([base, step], old="monolith", new="catalog")
    assert "OLD (monolith) p50/p95/p99" in table and "10 @ 4/40/40" in table and "pass" in table
    lines = rows_to_csv([base, step]).splitlines()
    assert lines[0].startswith("phase,label,step,started,ended,outcome,requests,failures,gates,old_requests")
    assert lines[2].split(",")[6:9] == ["25", "1", "pass"]


def test_plan_is_a_name_or_a_plan_file(tmp_path: Path) -> None:
    assert plan_name("extract-catalog") == "extract-catalog"
    assert plan_name(str(ROOT / "migrations" / "002-extract-orders.yaml")) == "extract-orders"
    nameless = tmp_path / "x.yaml"
    nameless.write_text("steps: []\n")
    with pytest.raises(Exception, match="no 'name' field"):
        plan_name(str(nameless))


def test_locustfile_is_found_and_quick_settings_are_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # from any directory
    monkeypatch.delenv("FACADE_CONFIG", raising=False)
    assert find_locustfile().name == "locustfile.py" and (find_locustfile().parent / "shape.py").is_file()
    from facade.cli import build_parser
    from facade.up import default_config_path

    # The config comes by the lookup every command shares; here: the `facade up` running from this directory.
    (tmp_path / ".facade-demo").mkdir()
    (tmp_path / ".facade-demo" / "up.json").write_text(json.dumps({"config": default_config_path()}))

    args = build_parser().parse_args(["loadtest", "extract-catalog", "--quick", "--out", "o"])
    s = settings_from_args(args)
    assert (s.users, s.step_duration, s.gates, s.live) == (6, 2.0, False, False)  # a throwaway facade by default
    assert 7 * s.step_duration + s.users / s.spawn_rate + 2 < 30
    args = build_parser().parse_args(["loadtest", "x", "--step-duration", "1m", "--gates", "--live"])
    s = settings_from_args(args)
    assert (s.step_duration, s.gate_timeout, s.host, s.users) == (60.0, 180.0, "http://127.0.0.1:8080", 20)  # shipped
    args = build_parser().parse_args(["loadtest", "x", "--live", "--host", "http://h:1/"])
    assert settings_from_args(args).host == "http://h:1"
    bad = build_parser().parse_args(["loadtest", "x", "--step-duration", "soon"])
    with pytest.raises(Exception, match="--step-duration: expected a duration"):
        settings_from_args(bad)


# -- end to end ----------------------------------------------------------------------------------

QUICK_PLAN = """\
name: extract-catalog
route: catalog
from: monolith
to: catalog
sticky: {cookie: session_id}
steps:
  - shadow: {percent: 100}
    gates: {diff_rate: {max: 0.5%}, min_requests: 20}
  - canary: {header: {x-canary: "1"}}
  - weight: 25
  - weight: 50
  - pause: approve
  - weight: 100
"""


@dataclass
class Shop:
    stack: Stack
    config: Path
    url: str
    admin: str
    tmp: Path


def write_config(tmp: Path, ports: list[int]) -> Path:
    facade, admin, monolith, catalog, orders = ports
    (tmp / "migrations").mkdir(parents=True, exist_ok=True)
    (tmp / "migrations" / "001-extract-catalog.yaml").write_text(QUICK_PLAN)
    shutil.copy(ROOT / "sample_monolith" / "migrations" / "002-extract-orders.yaml", tmp / "migrations")
    config = tmp / "facade.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        listen: 127.0.0.1:{facade}
        admin: {{listen: 127.0.0.1:{admin}, token: {TOKEN}}}
        state_dir: {tmp / "state"}
        migrations: migrations/
        mark_responses: true
        services:
          monolith: {{endpoints: [http://127.0.0.1:{monolith}], health_check: {{path: /healthz, interval: 1s}}}}
          catalog: {{endpoints: [http://127.0.0.1:{catalog}], health_check: {{path: /healthz, interval: 1s}}}}
          orders: {{endpoints: [http://127.0.0.1:{orders}], health_check: {{path: /healthz, interval: 1s}}}}
        routes:
          - {{name: catalog, match: {{path: {{prefix: /catalog}}}}, backend: monolith}}
          - {{name: orders, match: {{path: {{prefix: /orders}}}}, backend: monolith}}
          - {{name: default, match: {{path: {{prefix: /}}}}, backend: monolith}}
        """)
    )
    return config


def start_shop(tmp: Path, *, fix_price: bool = False) -> Shop:
    config = write_config(tmp, free_ports(5))
    plan = plan_stack(load_stack_config(str(config)), config_path=str(config), state_dir=str(tmp / "st"),
                      python=PY, admin_token=None, pythonpath=str(ROOT))  # fmt: skip
    specs = [
        replace(s, env=(*s.env, ("CATALOG_FIX_PRICE", "1"))) if s.name == "catalog" and fix_price else s
        for s in plan.specs
    ]
    (tmp / "st" / "data").mkdir(parents=True)
    stack = Stack(specs, log_dir=tmp / "st" / "logs", out=io.StringIO())
    try:
        stack.start()
    except BaseException:
        stack.stop(grace=1.0)
        raise
    return Shop(stack, config, plan.facade_url, plan.admin_url, tmp)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    running = start_shop(tmp_path_factory.mktemp("shop"))
    pids = list(running.stack.pids.values())
    yield running
    running.stack.stop()
    assert all(gone(pid) for pid in pids)  # no orphan of the stack


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def loadtest(shop: Shop, out: Path, *extra: str, timeout: float = 90,
             env: dict[str, str] | None = None) -> tuple[int, str, dict[str, Any]]:  # fmt: skip
    proc = subprocess.run(
        [PY, "-m", "facade", "loadtest", *extra, "-c", str(shop.config), "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=timeout, cwd=shop.tmp,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip
    report = json.loads((out / "steps.json").read_text()) if (out / "steps.json").exists() else {}
    return proc.returncode, proc.stdout + proc.stderr, report


def locust_processes(out: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if str(out / "locust") in cmdline:  # locust's --csv prefix
            found.append(p)
    return found


def live_status(shop: Shop, name: str = "extract-catalog") -> dict[str, Any]:
    response = httpx.get(f"{shop.admin}/migrations/{name}", params={"journal": 200}, trust_env=False, timeout=5)
    response.raise_for_status()
    status: dict[str, Any] = response.json()
    return status


def same_migration(now: dict[str, Any], before: dict[str, Any]) -> bool:
    """Nothing was written: same state, step, version and journal."""
    keys = ("state", "step", "version", "journal")
    return all(now[k] == before[k] for k in keys)


def assert_restored(shop: Shop) -> dict[str, Any]:
    """The live migration is back on step 0 with everything on ``from``, and the journal's last
    entry is the rehearsal's durable restore."""
    status = live_status(shop)
    assert (status["state"], status["step"]) == ("rolled_back", 0), status
    last = max(status["journal"], key=lambda entry: entry["seq"])
    assert last["action"] == "rollback" and last["actor"] == "facade loadtest", last
    assert last["reason"].startswith("rehearsal restore: back to step 0 (all on monolith)"), last
    return last


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def shadow_is_wired(shop: Shop) -> bool:
    return httpx.get(shop.admin + "/shadow", trust_env=False, timeout=5).status_code == 200


@pytest.mark.slow
def test_quick_rehearsal_through_every_step_loses_no_request(shop: Shop, tmp_path: Path) -> None:
    before = live_status(shop)
    code, output, report = loadtest(shop, tmp_path / "out", "extract-catalog", "--quick")
    # The shop's catalog has the price bug: when enough shadow copies were diffed in 2 s, the diff
    # gate fails and the forced run says the plan would not have passed.
    assert code == (5 if report["forced_past_failing"] else 0), output
    assert same_migration(live_status(shop), before)  # a throwaway rehearsal: the live migration untouched
    assert report["final_state"] == "completed" and report["failures"] == 0 and report["requests"] > 100
    labels = [s["label"] for s in report["steps"]]
    assert labels[0].startswith("baseline") and labels[-1].startswith("completed")
    assert [s["step"] for s in report["steps"][1:-1]] == [1, 2, 3, 4, 5, 6]
    by_step = {s["step"]: s for s in report["steps"]}
    assert by_step[1]["old"]["requests"] > 0 and by_step[1]["new"]["requests"] == 0  # shadow: all on old
    assert by_step[6]["new"]["requests"] > 0 and by_step[6]["old"]["requests"] == 0  # weight 100
    assert by_step[6]["new"]["p99_ms"] is not None
    for name in ("steps.csv", "locust.html", "locust_stats.csv", "samples.jsonl"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    # locust's own stats are split by the backend that answered
    stats = (tmp_path / "out" / "locust_stats.csv").read_text()
    assert "GET /catalog/products/[id] [catalog]" in stats and "GET /catalog/products/[id] [monolith]" in stats
    assert "PHASE" in output and "0 failed" in output
    # progress on stderr while it ran: phase, elapsed, requests, failures
    assert re.search(r"\[\s*\d+\.\ds\] step \d/6: .* \| \d+ requests \| 0 failures", output), output
    assert locust_processes(tmp_path / "out") == []


@pytest.mark.slow
def test_rollback_at_a_step_loses_no_request(shop: Shop, tmp_path: Path) -> None:
    plan_file = str(shop.tmp / "migrations" / "001-extract-catalog.yaml")  # a plan file works as well as a name
    # Sticky cohorts: each user keeps one cookie, so whether anyone moved is a draw per user.
    # 16 users at weight 50: P(nobody moved) = 0.5**16 ~ 1.5e-5 (6 users at 25 % was 18 %: flaky).
    before = live_status(shop)
    code, output, report = loadtest(shop, tmp_path / "out", plan_file, "--quick", "--users", "16", "--rollback-at", "4")
    assert code == (5 if report["forced_past_failing"] else 0), output
    assert report["final_state"] == "rolled_back" and report["failures"] == 0
    *_, at_rollback, after = report["steps"]
    assert at_rollback["step"] == 4 and at_rollback["outcome"] == "rolled back"
    assert at_rollback["new"]["requests"] > 0  # weight 50 had moved some users
    assert after["label"].startswith("after rollback") and after["requests"] > 0
    assert after["new"]["requests"] == 0 and after["old"]["requests"] > 0
    assert same_migration(live_status(shop), before)


@pytest.mark.slow
def test_orders_rehearsal_through_the_carved_orders_service(shop: Shop, tmp_path: Path) -> None:
    code, output, report = loadtest(shop, tmp_path / "out", "extract-orders", "--quick", "--users", "8")
    assert code == 0, output  # its plan has no diff gate: nothing to force past
    assert report["failures"] == 0 and report["to"] == "orders"
    assert report["steps"][-1]["new"]["requests"] > 0


@pytest.mark.slow
def test_locust_killed_mid_run_is_reported(shop: Shop, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [PY, "-m", "facade", "loadtest", "extract-catalog", "--quick", "--live", "-c", str(shop.config), "--out",
         str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=shop.tmp,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not locust_processes(out) and time.monotonic() < deadline:
            time.sleep(0.2)
        (victim,) = locust_processes(out)
        wait_for(lambda: live_status(shop)["state"] == "running", "the rehearsal to start the live migration")
        victim.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert f"locust exited early with code {-signal.SIGKILL}; see {out}/locust.log" in err
    assert json.loads((out / "steps.json").read_text())["error"].startswith("locust exited early")
    assert_restored(shop)  # --live: put back where it was found, locust's crash notwithstanding


@pytest.mark.slow
@pytest.mark.parametrize("fix_price", [False, True], ids=["faulty-catalog", "fixed-catalog"])
def test_diff_gate_stops_the_faulty_catalog_and_passes_the_fixed_one(tmp_path: Path, fix_price: bool) -> None:
    running = start_shop(tmp_path / "shop", fix_price=fix_price)
    try:
        if not shadow_is_wired(running):
            pytest.skip("the running facade has no shadow feature (admin /shadow): diff gates cannot be evaluated")
        code, output, report = loadtest(running, tmp_path / "out", "extract-catalog", "--quick", "--gates",
                                        "--gate-timeout", "15s")  # fmt: skip
    finally:
        running.stack.stop()
    assert report["failures"] == 0, output
    shadow = report["steps"][1]
    if fix_price:
        assert code == 0, output
        assert shadow["gates"]["status"] == "pass" and report["final_state"] == "completed"
        # A step left by its gates shows the report that let it go, not the next step's first look.
        advanced = [s for s in report["steps"] if s["outcome"] == "advanced"]
        assert advanced and all((s["gates"] or {}).get("status") in (None, "pass") for s in advanced), advanced
    else:
        assert code == 5, output
        assert shadow["outcome"] == "gate failed" and shadow["gates"]["status"] == "fail"
        assert report["final_state"] == "running" and report["final_step"] == 1
        assert "diff_rate" in report["gate_failure"]


def test_cli_parses_every_documented_option() -> None:
    from facade.cli import build_parser

    args = build_parser().parse_args(
        ["loadtest", "p.yaml", "--users", "3", "--spawn-rate", "2", "--step-duration", "5s", "--rollback-at", "2",
         "--out", "d", "--quick", "--host", "http://x:1", "-c", "c.yaml", "--admin", "http://y:2", "--gates",
         "--live", "--keep", "--reset"]
    )  # fmt: skip
    assert isinstance(args, argparse.Namespace)
    assert (args.users, args.spawn_rate, args.rollback_at, args.admin) == (3, 2.0, 2, "http://y:2")
    assert (args.live, args.keep, args.reset) == (True, True, True)


@pytest.mark.slow
def test_bad_rollback_step_and_unknown_plan_are_refused_before_any_load(shop: Shop, tmp_path: Path) -> None:
    code, output, _ = loadtest(shop, tmp_path / "a", "extract-catalog", "--quick", "--rollback-at", "9")
    assert code == 2 and "--rollback-at 9: extract-catalog has steps 1-6" in output
    code, output, _ = loadtest(shop, tmp_path / "b", "extract-nothing", "--quick")
    assert code == 3 and "extract-nothing" in output
    assert not (tmp_path / "a" / "locust.log").exists() and not (tmp_path / "b" / "locust.log").exists()


# -- the rehearsal leaves no dangerous state behind ------------------------------------------------


def test_failing_gates_names_what_failed_and_only_a_fail_counts() -> None:
    report = {"status": "fail", "results": [
        {"name": "min_requests", "status": "pass", "message": "min_requests: 53 of 20 requests on the new service"},
        {"name": "diff_rate.max", "status": "fail", "message": "diff_rate.max: 35.8% (19/53 differ) > 0.5%"},
    ]}  # fmt: skip
    assert failing_gates(report) == "diff_rate.max: 35.8% (19/53 differ) > 0.5%"
    assert failing_gates({"status": "inconclusive", "results": []}) is None
    assert failing_gates({"status": "pass"}) is None and failing_gates(None) is None


def test_a_hold_longer_than_the_wait_is_refused_for_gates() -> None:
    holds = [20.0, 10.0, 15.0, 0.0, 300.0]  # the last step is never left: its hold does not matter
    problem = hold_problem(holds, step_duration=2.0, gate_timeout=6.0, rollback_at=None, quick=True)
    assert problem == (
        "--gates: step 1 holds 20 s, but the rehearsal waits at most 8 s on a step (--step-duration 2s + "
        "--gate-timeout 6s (--quick)), so it could never advance; pass --gate-timeout 20s or more, or drop --quick"
    )
    assert hold_problem(holds, step_duration=2.0, gate_timeout=18.0, rollback_at=None, quick=True) is None
    # --rollback-at 2: step 2 is rolled back, not left, so only step 1's hold counts
    assert hold_problem([5.0, 60.0, 0.0], step_duration=2.0, gate_timeout=6.0, rollback_at=2, quick=False) is None
    assert "step 2 holds 60 s" in str(hold_problem([5.0, 60.0, 0.0], step_duration=2.0, gate_timeout=6.0,
                                                   rollback_at=None, quick=False))  # fmt: skip


def rehearsal_facade_pid(output: str) -> int:
    match = re.search(r"rehearsing on a throwaway facade at \S+ \(pid (\d+), state (\S+);", output)
    assert match, output
    return int(match.group(1))


def rehearsal_state_dir(output: str) -> Path:
    match = re.search(r"rehearsing on a throwaway facade at \S+ \(pid \d+, state (\S+);", output)
    assert match, output
    return Path(match.group(1))


@pytest.mark.slow
def test_forcing_past_a_failing_gate_is_loud_fails_the_run_and_leaves_the_live_migration_alone(
    shop: Shop, tmp_path: Path
) -> None:
    before = live_status(shop)
    # 12 users for 4 s on the shadow step: well over the plan's min_requests 20, so the diff gate
    # has its verdict on the catalog's price bug; roll back at step 2 to keep the run short.
    code, output, report = loadtest(shop, tmp_path / "out", "extract-catalog", "--quick", "--users", "12",
                                    "--step-duration", "4s", "--rollback-at", "2")  # fmt: skip
    assert code == 5, output
    shadow = report["steps"][1]
    assert shadow["gates"]["status"] == "fail"
    assert shadow["outcome"].startswith("FORCED past FAILING gate diff_rate.max: ") and "> 0.5%" in shadow["outcome"]
    assert report["forced_past_failing"][0].startswith("step 1: forced past FAILING gate diff_rate.max")
    assert "FORCED past FAILING gate diff_rate.max" in output  # in the table
    assert "WARNING: step 1: forced past FAILING gate diff_rate.max" in output  # and in the verdict
    assert "verdict: this plan would NOT have passed its gates" in output
    assert "the plan would not have passed" in output.splitlines()[-1]
    assert report["failures"] == 0 and report["live"] is False
    assert same_migration(live_status(shop), before)  # the live journal was never written
    assert gone(rehearsal_facade_pid(output)) and not rehearsal_state_dir(output).exists()


# As a terminal starts a command: SIGINT deliverable (SIG_DFL survives the exec), even when pytest
# itself runs with it ignored (a background job, CI), which the child would otherwise inherit.
WITH_CTRL_C = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


def start_loadtest(shop: Shop, out: Path, *extra: str, ctrl_c: bool = False) -> subprocess.Popen[str]:
    launcher = [PY, "-c", WITH_CTRL_C] if ctrl_c else []
    return subprocess.Popen(
        [*launcher, PY, "-m", "facade", "loadtest", "extract-catalog", "--quick", *extra, "-c", str(shop.config),
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=shop.tmp,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, out + err


def rehearsal_facade(out: Path) -> psutil.Process | None:
    """The throwaway facade of the rehearsal writing to ``out`` (its log lives there)."""
    log = str(out / "facade.log")
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(f.path) == log for f in p.open_files()) and "serve" in (p.info["cmdline"] or []):
                return p
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    return None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("live", "signum"),
    [(False, signal.SIGTERM), (True, signal.SIGTERM), (False, signal.SIGINT), (True, signal.SIGINT)],
    ids=["throwaway-sigterm", "live-sigterm", "throwaway-ctrl-c", "live-ctrl-c"],
)
def test_a_signal_mid_run_leaves_the_live_migration_as_found(
    shop: Shop, tmp_path: Path, live: bool, signum: int
) -> None:
    before = live_status(shop)
    out = tmp_path / "out"
    proc = start_loadtest(shop, out, *(["--live"] if live else []), ctrl_c=signum == signal.SIGINT)
    try:
        wait_for(lambda: len(locust_processes(out)) == 1, "locust to start")
        if live:
            wait_for(lambda: live_status(shop)["step"] >= 2, "the rehearsal to move the live migration")
        else:
            wait_for(lambda: (out / "control.json").exists() and '"phase": 2' in (out / "control.json").read_text(),
                     "the rehearsal to reach step 2")  # fmt: skip
        proc.send_signal(signum)
        code, output = finish(proc)
    finally:
        proc.kill()
    assert code == 130, output
    assert "facade loadtest: interrupted" in output
    wait_for(lambda: locust_processes(out) == [], "locust to be gone", timeout=10)
    if live:
        last = assert_restored(shop)
        assert "live migration extract-catalog restored: running at step " in output
        assert all(last["seq"] > entry["seq"] for entry in before["journal"])  # a new, durable entry
    else:
        assert same_migration(live_status(shop), before)
        assert gone(rehearsal_facade_pid(output)) and not rehearsal_state_dir(output).exists()


@pytest.mark.slow
def test_the_rehearsal_facade_dying_ends_the_run_and_touches_nothing(shop: Shop, tmp_path: Path) -> None:
    before = live_status(shop)
    out = tmp_path / "out"
    proc = start_loadtest(shop, out)
    try:
        wait_for(lambda: len(locust_processes(out)) == 1, "locust to start")
        wait_for(lambda: rehearsal_facade(out) is not None, "the throwaway facade")
        victim = rehearsal_facade(out)
        assert victim is not None
        victim.kill()
        code, output = finish(proc)
    finally:
        proc.kill()
    assert code == 1, output
    assert "the rehearsal's facade exited with code -9; see" in output
    wait_for(lambda: locust_processes(out) == [], "locust to be gone", timeout=10)
    assert same_migration(live_status(shop), before)


@pytest.mark.slow
def test_live_rehearsal_is_put_back_with_a_journal_entry_unless_keep(shop: Shop, tmp_path: Path) -> None:
    code, output, report = loadtest(shop, tmp_path / "a", "extract-catalog", "--live", "--quick")
    assert code == (5 if report["forced_past_failing"] else 0), output
    assert report["final_state"] == "rolled_back" and report["live"] is True
    assert report["restore"]["done"].startswith("live migration extract-catalog restored: completed at step 6")
    assert_restored(shop)
    # --keep: the user asked for the live migration to stay where the rehearsal ends
    code, output, report = loadtest(shop, tmp_path / "b", "extract-catalog", "--live", "--keep", "--quick",
                                    "--rollback-at", "3")  # fmt: skip
    assert report["restore"] is None and "--keep: the live migration extract-catalog stays" in output
    status = live_status(shop)
    assert (status["state"], status["step"]) == ("rolled_back", 0)
    last = max(status["journal"], key=lambda entry: entry["seq"])
    assert (last["action"], last["reason"]) == ("rollback", "rehearsal")  # the rehearsal's --rollback-at, no restore


@pytest.mark.slow
def test_live_facade_restarting_mid_run_is_still_put_back(tmp_path: Path) -> None:
    running = start_shop(tmp_path / "shop")
    restarted: subprocess.Popen[bytes] | None = None
    try:
        out = tmp_path / "out"
        proc = start_loadtest(running, out, "--live", "--step-duration", "3s")
        try:
            wait_for(lambda: live_status(running)["step"] >= 1, "the rehearsal to start the live migration")
            facade_spec = next(s for s in running.stack.specs if s.name == "facade")
            os.killpg(running.stack.pids["facade"], signal.SIGKILL)
            time.sleep(4.0)  # down past the next step boundary: the driver's admin call fails
            restarted = subprocess.Popen(facade_spec.argv, env={**os.environ, **dict(facade_spec.env)},
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)  # fmt: skip
            code, output = finish(proc, timeout=90)
        finally:
            proc.kill()
        assert code != 0, output  # requests failed while the facade was down
        errors = [e for step in json.loads((out / "steps.json").read_text())["steps"] for e in step["errors"]]
        assert any(e.startswith("GET /catalog/") for e in errors), errors  # named once: method, path
        assert not any(e.startswith(("GET GET", "POST POST")) for e in errors), errors
        wait_for(lambda: _answers(running), "the restarted facade")
        assert_restored(running)
    finally:
        if restarted is not None:
            os.killpg(restarted.pid, signal.SIGTERM)
            restarted.wait(timeout=20)
        running.stack.stop()


def _answers(shop: Shop) -> bool:
    try:
        live_status(shop)
    except httpx.HTTPError:
        return False
    return True


# -- refused before anything starts ---------------------------------------------------------------


def run_cli(config: Path, out: Path, *args: str, pythonpath: str = str(ROOT)) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "facade", "loadtest", *args, "-c", str(config), "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=60, cwd=config.parent,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )  # fmt: skip


def test_gates_with_quick_on_a_shipped_plan_is_refused_up_front(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_ports(5))  # nothing runs on these ports
    result = run_cli(config, tmp_path / "out", "extract-orders", "--quick", "--gates")  # the shipped orders plan
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "facade loadtest: --gates: step 1 holds 20 s, but the rehearsal waits at most 8 s on a step "
        "(--step-duration 2s + --gate-timeout 6s (--quick)), so it could never advance; pass --gate-timeout 20s "
        "or more, or drop --quick"
    )
    assert not (tmp_path / "out").exists()  # nothing started


def test_options_for_the_live_facade_need_live(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_ports(5))
    result = run_cli(config, tmp_path / "out", "extract-catalog", "--quick", "--keep", "--reset")
    assert result.returncode == 2
    assert result.stderr.startswith("facade loadtest: --keep, --reset: only with --live.")
    # --admin names the live facade, which a throwaway rehearsal does not use: a note, not an error
    # (here the --gates hold check refuses the run right after it)
    result = run_cli(config, tmp_path / "out", "extract-orders", "--quick", "--gates", "--admin", "http://127.0.0.1:9")
    assert result.returncode == 2
    note, refusal = result.stderr.strip().splitlines()
    assert note.startswith("loadtest: note: --admin not used: the rehearsal runs on a throwaway facade")
    assert refusal.startswith("facade loadtest: --gates: step 1 holds 20 s")
    result = run_cli(config, tmp_path / "out", "extract-catalog", "--live", "--reset")
    assert result.returncode == 2
    assert "--reset changes the live migration for good: add --keep" in result.stderr
    assert not (tmp_path / "out").exists()


BLOCK_LOCUST = """\
import sys


class NoLocust:
    \"\"\"This interpreter has no locust, as after a plain `pip install` of an older facade.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name == "locust" or name.startswith("locust."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoLocust())
"""


def test_without_locust_it_says_how_to_install_it_before_starting_anything(tmp_path: Path) -> None:
    blocker = tmp_path / "no-locust"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_LOCUST)
    config = write_config(tmp_path, free_ports(5))
    result = run_cli(config, tmp_path / "out", "extract-catalog", "--quick",
                     pythonpath=os.pathsep.join([str(blocker), str(ROOT)]))  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"facade loadtest: locust is not installed for {PY}: pip install 'facade[load]' (or pip install locust)"
    )
    assert not (tmp_path / "out").exists()  # no throwaway facade, no locust, no report
    # the same interpreter without the blocker has it: the check looked at the real thing
    assert subprocess.run([PY, "-c", "import locust"], check=False, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode == 0  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("shim", [True, False], ids=["locust_command", "plain-python-m-locust"])
def test_locust_started_with_sigint_ignored_is_interruptible_only_through_locust_command(
    shop: Shop, tmp_path: Path, shim: bool
) -> None:
    """A background job or CI runner starts the driver with SIGINT ignored, and children inherit
    that: the driver's SIGINT fallback (locust writes its HTML report on it) needs locust_command."""
    locustfile = find_locustfile()
    command = locust_command(PY) if shim else [PY, "-m", "locust"]
    argv = [*command, "-f", str(locustfile), "--headless", "--host", shop.url, "--html", str(tmp_path / "locust.html"),
            "--only-summary", "--loglevel", "WARNING"]  # fmt: skip
    env = {**locust_environment(locustfile), "LOADTEST_USERS": "2", "LOADTEST_SPAWN_RATE": "10",
           "LOADTEST_SAMPLES": str(tmp_path / "samples.jsonl"), "LOADTEST_CONTROL": str(tmp_path / "control.json"),
           "LOADTEST_MAX_SECONDS": "60"}  # fmt: skip
    proc = subprocess.Popen(["sh", "-c", "trap '' INT; exec \"$@\"", "sh", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        samples = tmp_path / "samples.jsonl"
        wait_for(lambda: samples.exists() and samples.stat().st_size > 0, "locust to send requests")
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15 if shim else 5)
        except subprocess.TimeoutExpired:
            assert not shim, "locust_command's locust ignored SIGINT"
            return  # python -m locust inherited SIG_IGN: the reason locust_command exists
        assert shim, "plain python -m locust stopped on SIGINT: the shim would be unneeded"
        assert (tmp_path / "locust.html").stat().st_size > 0  # the report is written on SIGINT
    finally:
        proc.kill()
        proc.wait()


def mesh_config(tmp: Path) -> tuple[Path, int]:
    """The shipped mesh demo config on free ports (as tests/facade/test_up.py runs it); the admin port."""
    facade, admin, monolith, catalog_in, orders_in = free_ports(5)
    text = Path(default_config_path(mesh=True)).read_text()
    for old, new in (("8080", facade), ("9901", admin), ("8001", monolith), ("15102", catalog_in),
                     ("15103", orders_in)):  # fmt: skip
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    migrations = Path(default_config_path()).parent / "migrations-mesh"
    text = text.replace("migrations: migrations-mesh/", f"migrations: {migrations}")
    config = tmp / "facade-mesh.yaml"
    config.write_text(text.replace("state_dir: .facade", f"state_dir: {tmp / '.facade'}"))
    return config, admin


@pytest.mark.slow
def test_a_rehearsal_of_the_mesh_demo_talks_mtls_with_the_live_ca(tmp_path: Path) -> None:
    config, admin = mesh_config(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # `facade up`'s default --state-dir, in the directory the rehearsal is started from
    with run_up(config, tmp_path / ".facade-demo") as up:
        try:
            ready = read_until(up, "facade up: ready", timeout=60)
            assert "facade up: ready" in ready, ready
            token = re.search(r"export FACADE_ADMIN_TOKEN=(\S+)", ready)
            assert token
            # `facade up` supervises this stack: the helpers need only its config and admin URL.
            admin_url = f"http://127.0.0.1:{admin}"
            live = Shop(stack=None, config=config, url="", admin=admin_url, tmp=tmp_path)  # type: ignore[arg-type]
            before = live_status(live)
            # Without the live CA the sidecars would refuse the rehearsal's facade: refused up front.
            refused = subprocess.run(
                [PY, "-m", "facade", "loadtest", "extract-catalog", "--quick", "-c", str(config), "--out",
                 str(elsewhere / "out")],
                check=False, capture_output=True, text=True, timeout=60, cwd=elsewhere,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            assert refused.returncode == 4, refused.stderr
            assert "needs the live facade's CA to talk mTLS to the sidecars" in refused.stderr
            assert not (elsewhere / "out" / "locust.log").exists()
            code, output, report = loadtest(live, tmp_path / "out", "extract-catalog", "--quick", "--users", "8")
            assert same_migration(live_status(live), before), output
        finally:
            stop_up(up)
    assert code == (5 if report["forced_past_failing"] else 0), output
    assert report["failures"] == 0 and report["final_state"] == "completed", output
    assert report["steps"][-1]["new"]["requests"] > 0  # the catalog answered through its sidecar, over mTLS


@pytest.mark.slow
def test_the_driver_killed_with_sigkill_leaves_no_process_and_the_live_migration_alone(
    shop: Shop, tmp_path: Path
) -> None:
    before = live_status(shop)
    out = tmp_path / "out"
    proc = start_loadtest(shop, out)
    try:
        wait_for(lambda: len(locust_processes(out)) == 1 and rehearsal_facade(out) is not None, "locust and facade")
        wait_for(lambda: '"phase": 2' in (out / "control.json").read_text(), "the rehearsal to reach step 2")
        (locust,) = locust_processes(out)
        facade = rehearsal_facade(out)
        assert facade is not None
        proc.kill()  # SIGKILL: no clean-up runs in the driver
        proc.communicate(timeout=10)
        # Their parent-death signal ends both children (Linux); nothing to restore anywhere.
        wait_for(lambda: gone(locust.pid) and gone(facade.pid), "the rehearsal's children to end", timeout=15)
    finally:
        proc.kill()
    assert same_migration(live_status(shop), before)
