"""``facade migrate``: the offline dry run, and the action commands against a real HTTP admin stand-in.

The stand-in runs the real engine and store behind the admin routes the CLI calls, so these tests
check the CLI's requests, exit codes and output, not the (lead-owned) admin API itself.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from facade.cli import build_parser, main
from facade.cli.console import EXIT_GATE_FAILED, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE
from facade.migration.cli import gate_value
from facade.migration.engine import Action, MigrationState, Refusal, apply, migration_status
from facade.migration.gates import GateReport, GateResult, GateStatus
from facade.migration.store import MigrationStore
from tests.facade.migration.stack import TOKEN, migration_stack
from tests.facade.migration.test_engine import PLAN
from tests.servers import serve_app

REPO = Path(__file__).resolve().parents[3]
CONFIG = """\
listen: 127.0.0.1:8080
admin: {listen: 127.0.0.1:9901, token: secret}
services:
  monolith: {endpoints: [http://127.0.0.1:8001]}
  catalog: {endpoints: [http://127.0.0.1:8002]}
routes:
  - name: catalog
    match: {path: {prefix: /catalog}}
    backend: monolith
  - name: default
    match: {path: {prefix: /}}
    backend: monolith
migrations: migrations/
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "facade.yaml").write_text(CONFIG)
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-extract-catalog.yaml").write_text(
        (REPO / "migrations" / "001-extract-catalog.yaml").read_text()
    )
    return tmp_path


def test_plan_dry_run_offline(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["migrate", "plan", "extract-catalog", "-c", str(project / "facade.yaml")])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert out.startswith("plan extract-catalog: catalog from monolith to catalog")
    assert ("step 3 weight 5 + mirror 25%: 5 % of catalog -> catalog (sticky by cookie session_id), 95 % -> monolith; "
            "25 % of those mirrored to catalog") in out
    assert "shadow: safe methods only; ignore $.generated_at" in out  # the plan's shadow: block, on mirroring steps
    assert out.rstrip().endswith("completed: 100 % -> catalog")


def test_plan_json_and_by_path(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(project / "migrations" / "001-extract-catalog.yaml")
    assert main(["migrate", "plan", path, "--json", "-c", str(project / "facade.yaml")]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["name"] == "extract-catalog" and len(doc["step_hashes"]) == len(doc["steps"]) == 7
    assert len(doc["content_hash"]) == 64


def test_plan_invalid_and_missing(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(project / "facade.yaml")
    assert main(["migrate", "plan", "nope", "-c", cfg]) == EXIT_NOT_FOUND
    assert "no plan named 'nope'" in capsys.readouterr().err
    bad = project / "migrations" / "001-extract-catalog.yaml"
    bad.write_text(bad.read_text().replace("route: catalog", "route: catalgo"))
    assert main(["migrate", "plan", "extract-catalog", "-c", cfg]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert f"{bad}:4:8: route: unknown route 'catalgo'; did you mean 'catalog'?" in err


# -- against an HTTP admin stand-in ---------------------------------------------------------------------

GATES_FAIL = GateReport(GateStatus.FAIL, (GateResult("error_rate.max", GateStatus.FAIL, 5.0, 1.0, "error_rate.max: 5% > 1%"),))


def admin_app(store: MigrationStore, seen: list[dict[str, Any]]) -> Starlette:
    clock = [2000.0]  # every action happens 100 s after the previous one, so holds have elapsed

    def status(state: MigrationState) -> dict[str, Any]:
        return migration_status(PLAN, state, now=2000.0, journal=[e.to_json() for e in store.journal(PLAN.name)])

    async def list_all(request: Request) -> JSONResponse:
        return JSONResponse({"migrations": [status(store.state("shop") or MigrationState.initial("shop"))]})

    async def one(request: Request) -> JSONResponse:
        if request.path_params["name"] != "shop":
            return JSONResponse({"error": "no such migration", "code": "not_found"}, status_code=404)
        return JSONResponse(status(store.state("shop") or MigrationState.initial("shop")))

    async def act(request: Request) -> JSONResponse:
        if request.headers.get("authorization") != "Bearer secret":
            return JSONResponse({"error": "token required", "code": "refused"}, status_code=401)
        body = await request.json()
        seen.append({"action": request.path_params["action"], **body})
        if request.path_params["name"] != "shop":
            return JSONResponse({"error": "no such migration", "code": "not_found"}, status_code=404)
        state = store.state("shop") or MigrationState.initial("shop")
        action = Action(request.path_params["action"], actor=body["actor"], reason=body["reason"],
                        force=body["force"], to=body["to"])
        clock[0] += 100.0
        result = apply(state, action, plan=PLAN, now=clock[0], gate_report=GATES_FAIL)
        if isinstance(result, Refusal):
            return JSONResponse(result.to_json(), status_code=404 if result.code == "not_found" else 409)
        committed = store.commit(result)
        assert isinstance(committed, MigrationState)
        return JSONResponse(status(committed))

    return Starlette(routes=[
        Route("/migrations", list_all),
        Route("/migrations/{name}", one),
        Route("/migrations/{name}/{action}", act, methods=["POST"]),
    ])


async def run_cli(*argv: str) -> int:
    # The CLI is synchronous (httpx.Client); run it off the loop that serves the admin stand-in.
    return await asyncio.to_thread(main, list(argv))


async def test_actions_exit_codes_and_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACADE_ACTOR", "ann")
    monkeypatch.delenv("FACADE_ADMIN_TOKEN", raising=False)
    store = MigrationStore(str(tmp_path / "m.sqlite3"))
    seen: list[dict[str, Any]] = []
    async with serve_app(admin_app(store, seen)) as url:
        common = ["--admin", url, "--token", "secret", "-c", os.devnull]
        assert await run_cli("migrate", "start", "shop", "--reason", "kick-off", *common) == EXIT_OK
        assert "shop: running at 1/4 shadow 50% -> catalog: 0% -> catalog, shadow 50%" in capsys.readouterr().out
        assert seen[-1] == {"action": "start", "force": False, "reason": "kick-off", "to": None, "actor": "ann",
                            "version": 0}  # the state the CLI saw: a concurrent move is a conflict

        assert await run_cli("migrate", "next", "shop", *common) == EXIT_OK  # step 1 has no gates
        capsys.readouterr()
        assert await run_cli("migrate", "next", "shop", *common) == EXIT_GATE_FAILED  # step 2's gate fails
        err = capsys.readouterr().err
        assert err.startswith("facade migrate next: gates fail: error_rate.max: 5% > 1%")
        assert "error_rate.max  fail    5.00%  1.00%" in err  # values rounded, with their unit

        assert await run_cli("migrate", "next", "shop", "--force", *common) == EXIT_INVALID  # no reason
        capsys.readouterr()
        assert await run_cli("migrate", "next", "shop", "--force", "--reason", "flaky", *common) == EXIT_OK
        assert seen[-1]["force"] is True and seen[-1]["reason"] == "flaky"
        assert "forced past gates that were fail: flaky" in capsys.readouterr().out  # why a failing step was left
        assert await run_cli("migrate", "start", "shop", *common) == EXIT_REFUSED
        assert await run_cli("migrate", "pause", "ghost", *common) == EXIT_NOT_FOUND
        assert await run_cli("migrate", "rollback", "shop", "--to", "0", "--json", *common) == EXIT_OK
        capsys.readouterr()
        assert seen[-1]["to"] == 0
        assert await run_cli("migrate", "auto", "shop", "--off", *common) == EXIT_REFUSED  # not in auto mode
        assert seen[-1]["action"] == "manual"
        capsys.readouterr()

        assert await run_cli("migrate", "list", *common) == EXIT_OK
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["NAME", "STATE", "STEP", "ROUTING", "MODE"]
        assert table[2].split()[:2] == ["shop", "rolled_back"]

        assert await run_cli("migrate", "status", "shop", "--json", *common) == EXIT_OK
        status = json.loads(capsys.readouterr().out)
        assert status["state"] == "rolled_back" and status["step"] == 0
        assert [e["action"] for e in status["journal"]] == ["start", "next", "next", "rollback"]
        assert status["journal"][2]["gates"]["status"] == "fail"  # forced over a failing gate: values kept

        assert await run_cli("migrate", "status", "shop", *common) == EXIT_OK
        text = capsys.readouterr().out
        assert "state:   rolled_back" in text and "journal" in text and "flaky" in text
        # The journal counts steps as the status line and `migrate plan` do: start enters step 1, not 0.
        journal = text[text.index("journal"):].splitlines()
        assert journal[3].split()[:5] == ["1", "start", "ann", "pending", "0"] and journal[3].split()[5:7] == [
            "running", "1"]
        assert [line.split()[6] for line in journal[3:7]] == ["1", "2", "3", "0"]  # rollback --to 0

        assert await run_cli("migrate", "start", "shop", "--admin", url, "--token", "wrong", "-c", os.devnull) == EXIT_REFUSED
    # The listener is gone now: unreachable.
    assert await run_cli("migrate", "list", "--admin", url, "-c", os.devnull) == EXIT_UNREACHABLE


def test_force_is_offered_only_where_it_overrides_something(capsys: pytest.CaptureFixture[str]) -> None:
    for action in ("start", "pause", "rollback", "abort", "auto"):
        assert main(["migrate", action, "shop", "--force", "--reason", "x"]) == EXIT_INVALID
        assert capsys.readouterr().err == (f"facade migrate {action}: unrecognized arguments: --force "
                                           f"(see facade migrate {action} --help)\n")
    for action in ("next", "resume", "promote"):
        parsed = build_parser().parse_args(["migrate", action, "x"])
        assert parsed.force is False


def test_gate_values_are_rounded_with_their_unit() -> None:
    assert gate_value("error_rate.max_delta", 0.181818) == "+0.18%"
    assert gate_value("error_rate.max", 5) == "5.00%"
    assert gate_value("diff_rate.max", 50.1818) == "50.18%"
    assert gate_value("latency_p99.max_ratio", 1.23456) == "1.23x"
    assert gate_value("latency_p99.max_ms", 250.04) == "250.0 ms"
    assert gate_value("min_requests", 37.0) == "37 req"
    assert gate_value("plaintext_requests.max", 0.0) == "0"
    assert gate_value("latency_p99.max_ratio", None) == "-"


def test_plan_with_an_mtls_step_needs_a_mesh_section(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = project / "mtls.yaml"
    plan.write_text("name: m\nroute: catalog\nfrom: monolith\nto: catalog\nsteps:\n  - weight: 100\n  - mtls: strict\n")
    assert main(["migrate", "plan", str(plan), "-c", str(project / "facade.yaml")]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert f"{plan}:7:11: steps[1].mtls: an mtls step needs a 'mesh:' section in the facade config" in err


async def test_auto_wait_follows_the_migration_to_its_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACADE_ADMIN_TOKEN", raising=False)
    plan = """\
        name: shop
        route: catalog
        from: monolith
        to: catalog
        interval: 0.2s
        steps: [{weight: 50}, {weight: 100}]
        """
    async with migration_stack(tmp_path, plan) as s:
        common = ["--admin", s.runtime.admin_url, "--token", TOKEN, "-c", str(tmp_path / "facade.yaml")]
        assert await run_cli("migrate", "start", "shop", *common) == EXIT_OK
        capsys.readouterr()
        assert await run_cli("migrate", "auto", "shop", "--wait", *common) == EXIT_OK
        err = capsys.readouterr().err
        # Not a terminal: one plain progress line per change, ending on the completed state.
        lines = err.splitlines()
        assert lines and lines[-1] == "shop: completed at 2/2 completed", err
        assert all(line.startswith("shop: ") and "\r" not in line for line in lines)
        assert (await s.status("shop"))["state"] == "completed"


def test_a_pause_step_says_what_it_waits_for_instead_of_an_empty_gate_table() -> None:
    from facade.migration.cli import _render_status

    status = {"name": "shop", "routes": ["catalog"], "from": "monolith", "to": "catalog", "state": "running",
              "step": 6, "steps": 8, "step_summary": "pause (approve before full cutover)",
              "gates": {"status": "pass", "results": []}, "routing": {}}  # fmt: skip
    text = _render_status(status, journal=0)
    assert "gates:   none on a pause step: it waits for `facade migrate resume`" in text
    assert "GATE" not in text
    status |= {"step": 2, "step_summary": "canary header x-canary=1"}
    assert "gates:   pass (this step has no gates)" in _render_status(status, journal=0)


def test_status_lists_each_replica_and_says_when_the_store_is_down() -> None:
    from facade.migration.cli import _render_status

    status = {"name": "shop", "routes": ["catalog"], "from": "monolith", "to": "catalog", "state": "running",
              "step": 2, "steps": 4, "version": 3, "routing": {}, "store_error": None,
              "instances": [
                  {"instance": "web-1:10:9901", "admin": "http://10.0.0.1:9901", "version": 3, "state": "running",
                   "step": 1, "seen_ago": 0.4},
                  {"instance": "web-2:11:9901", "admin": "http://10.0.0.2:9901", "version": 2, "state": "running",
                   "step": 0, "seen_ago": 1.9},
              ]}  # fmt: skip
    lines = _render_status(status, journal=0).splitlines()
    one = next(line for line in lines if "web-1" in line)
    two = next(line for line in lines if "web-2" in line)
    assert "running 2" in one and "(behind)" not in one and "0.4s ago" in one  # people's step numbers
    assert "running 1" in two and "2 (behind)" in two
    assert not any(line.startswith("store:") for line in lines)
    status |= {"instances": [], "store_error": "the migration store is unreachable: db:5432: refused"}
    text = _render_status(status, journal=0)
    assert "store:   the migration store is unreachable: db:5432: refused" in text
    assert "instances: none has reported in the last seconds" in text
    del status["instances"], status["store_error"]  # one facade on SQLite: no replica section at all
    assert "instances" not in _render_status(status, journal=0)
