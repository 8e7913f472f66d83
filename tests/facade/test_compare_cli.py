"""``facade compare`` and ``facade diffs`` against a real facade's admin API (shadow step on the sample shop)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx
import pytest

from facade.cli import main
from facade.cli.console import EXIT_INVALID, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNREACHABLE
from facade.cli.telemetry import format_diffs, render_compare
from facade.sample_monolith import catalog, monolith
from tests.facade.migration.stack import TOKEN, migration_stack
from tests.facade.test_shadow import shadow_facade
from tests.servers import serve_app


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI is synchronous (httpx.Client): run it off the loop that serves the admin API."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_compare_and_diffs_against_the_running_facade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old_app = monolith.create_app(db_path=str(tmp_path / "shop.db"))
    new_app = catalog.create_app(db_path=str(tmp_path / "catalog.db"))
    async with (
        serve_app(old_app) as m,
        serve_app(new_app) as c,
        shadow_facade(tmp_path, m, c, ignore=["$.generated_at"], learn_noise=False) as (rt, sender),
        httpx.AsyncClient(base_url=rt.url) as client,
    ):
        for path in ("/catalog/products", "/catalog/products/1", "/catalog/products/2"):
            assert (await client.get(path)).status_code == 200
        assert await sender.drain(5)
        admin = ("--admin", rt.admin_url, "--config", str(tmp_path / "absent.yaml"))

        code, out, err = await run_cli(capsys, "compare", "catalog", *admin)
        assert code == EXIT_OK, err
        assert out.startswith("route catalog: monolith (old) vs catalog (new), all time")
        assert "diff_rate" in out and "66.67 %" in out
        assert "verdict: new path has different responses for 66.7 % of shadowed requests (2 of 3)" in out
        # The new side served nothing, yet answered 3 copies: the report says why both are true.
        assert "note: 'requests' counts what each side served to clients; the 3 shadow copies" in out

        code, out, err = await run_cli(capsys, "compare", "catalog", "--window", "1m", "--json", *admin)
        assert code == EXIT_OK, err
        report = json.loads(out)
        assert report["window_s"] == 60 and report["diffs"]["differing"] == 2 and report["outcome"] == "worse"

        code, out, err = await run_cli(capsys, "diffs", "catalog", "--limit", "1", *admin)
        assert code == EXIT_OK, err
        lines = out.splitlines()
        assert lines[0] == "route catalog: 2 differing responses kept (2 seen)"
        assert "GET /catalog/products/2  status 200 (old) / 200 (new)" in out  # newest first, only one
        assert "/catalog/products/1" not in out
        assert '  $.price: "' in out

        code, out, err = await run_cli(capsys, "diffs", "catalog", "--json", *admin)
        assert code == EXIT_OK and len(json.loads(out)["samples"]) == 2

        code, out, err = await run_cli(capsys, "compare", "nope", *admin)
        assert code == EXIT_NOT_FOUND and "no route named 'nope' (routes: catalog, " in err  # what to type instead
        code, out, err = await run_cli(capsys, "compare", "catalog", "--window", "soon", *admin)
        assert code == EXIT_INVALID and "window" in err
        code, out, err = await run_cli(capsys, "diffs", "catalog", "--limit", "0", *admin)
        assert code == EXIT_INVALID


async def test_unreachable_admin_is_exit_6(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = await run_cli(capsys, "compare", "catalog", "--admin", f"http://127.0.0.1:{port}")
    assert code == EXIT_UNREACHABLE and "cannot reach" in err


def test_render_compare_of_a_shadow_step_says_insufficient() -> None:
    report = {
        "route": "catalog", "old_backend": "monolith", "new_backend": "catalog", "step": "0:shadow", "window_s": None,
        "alpha": 0.05,
        "old": {"requests": 40, "errors": 0, "error_rate": 0.0, "p50_ms": 2.0, "p95_ms": 3.0, "p99_ms": 4.0},
        "new": {"requests": 0, "errors": 0, "error_rate": None, "p50_ms": None, "p95_ms": None, "p99_ms": None},
        "diffs": {"compared": 40, "differing": 0, "diff_rate": 0.0, "noise_fields": ["$.nonce"]},
    }  # fmt: skip
    text = render_compare(report)
    assert text.splitlines()[0] == "route catalog: monolith (old) vs catalog (new), step 0:shadow"
    assert "noise ignored: $.nonce" in text
    assert text.endswith("verdict: not enough shadow traffic to tell (40 compared, need 100)")


def test_format_diffs_without_samples() -> None:
    text = format_diffs({"route": "catalog", "kept": 0, "seen": 0, "samples": [], "noise_paths": ["$.nonce"]})
    assert text.splitlines() == [
        "route catalog: 0 differing responses kept (0 seen)",
        "learned noise (ignored): $.nonce",
        "no differing shadow responses",
    ]


async def test_compare_after_a_rollback_speaks_in_flags_and_step_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACADE_ADMIN_TOKEN", raising=False)
    plan = """\
        name: shop
        route: catalog
        from: monolith
        to: catalog
        steps: [{weight: 50}, {weight: 100}]
        """
    async with migration_stack(tmp_path, plan) as s:
        admin = ("--admin", s.runtime.admin_url, "--token", TOKEN, "-c", str(tmp_path / "facade.yaml"))
        assert (await s.act("shop", "start")).status_code == 200
        for _ in range(10):
            assert (await s.client.get("/catalog/item")).status_code == 200
        assert (await s.act("shop", "next", force=True, reason="test")).status_code == 200  # step 2: all new
        for _ in range(5):
            assert (await s.client.get("/catalog/item")).status_code == 200
        assert (await s.act("shop", "rollback", to=0)).status_code == 200

        # No split is in force now: the route's plan still says who is old and who is new.
        code, out, err = await run_cli(capsys, "compare", "catalog", "--window", "1m", *admin)
        assert code == EXIT_OK, err
        assert out.startswith("route catalog: monolith (old) vs catalog (new), last 60 s")
        # Step 2 is no longer in force but its window is known; it is numbered as `migrate plan` numbers it.
        code, out, err = await run_cli(capsys, "compare", "catalog", "--step", "2", "--json", *admin)
        assert code == EXIT_OK, err
        report = json.loads(out)
        assert report["step"] == "shop step 2: weight 100" and report["new"]["requests"] == 5
        code, out, err = await run_cli(capsys, "compare", "catalog", "--step", "2", *admin)
        assert code == EXIT_OK and out.startswith("route catalog: monolith (old) vs catalog (new), step 2 of shop "
                                                  "(weight 100)\n"), out  # fmt: skip
        code, out, err = await run_cli(capsys, "compare", "catalog", "--step", "7", *admin)
        assert code == EXIT_INVALID and err.startswith("facade compare: no step 7 known on this route")
        # A route no plan moves: the error names the CLI's flags, not the API's parameters.
        code, out, err = await run_cli(capsys, "compare", "default", *admin)
        assert code == EXIT_INVALID and "give --old and --new" in err and "old=" not in err, err
        # A mistyped service compared nothing with nothing ("not enough traffic"); now it is named.
        code, out, err = await run_cli(capsys, "compare", "catalog", "--old", "monolit", *admin)
        assert code == EXIT_INVALID and err.startswith("facade compare: old: unknown service 'monolit' (services: ")
