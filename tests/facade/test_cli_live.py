"""``facade routes / reload / validate`` against a live facade (in-process, real admin listener on loopback).

The CLI is synchronous (httpx.Client), so each call runs in a thread while the test's loop serves the facade.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from facade.cli import main
from facade.cli.console import EXIT_INVALID, EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE
from tests.backends import EchoApp
from tests.harness import run_facade
from tests.servers import refusing_url, serve_app

TOKEN = "t0ken"


def _cfg(a: str, b: str, *, backend: str = "b", token: str | None = TOKEN) -> str:
    admin = f"{{listen: 127.0.0.1:0, token: {token}}}" if token else "{listen: 127.0.0.1:0}"
    return f"""
listen: 127.0.0.1:0
admin: {admin}
services:
  a: {{endpoints: [{a}]}}
  b: {{endpoints: [{b}]}}
routes:
  - name: catalog
    match: {{host: shop.local, path: {{prefix: /catalog}}, methods: [GET]}}
    backends: [{{service: a, weight: 70}}, {{service: b, weight: 30}}]
  - name: rest
    backend: {backend}
"""


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``facade ARGV`` off the loop that serves the admin API; (exit code, stdout, stderr)."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FACADE_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("FACADE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./facade.yaml or ./.facade-demo of whoever runs the suite


def _admin(url: str, tmp_path: Path) -> tuple[str, ...]:
    # An absent config file: URL and token come only from the command line (or the environment).
    return ("--admin", url, "--config", str(tmp_path / "absent.yaml"))


async def test_routes_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with serve_app(EchoApp("a")) as a, serve_app(EchoApp("b")) as b, run_facade(tmp_path, _cfg(a, b)) as rt:
        code, out, err = await run_cli(capsys, "routes", *_admin(rt.admin_url, tmp_path))
        assert code == EXIT_OK, err
        header, rule, catalog, rest = out.splitlines()
        assert header.split() == ["ROUTE", "MATCH", "BACKENDS", "STEP", "ENDPOINTS"]
        assert set(rule.replace(" ", "")) == {"-"}
        assert catalog.startswith("catalog") and "shop.local /catalog* [GET]" in catalog
        assert "a 70%, b 30%" in catalog and "a 1/1 up, b 1/1 up" in catalog
        assert rest.split()[:3] == ["rest", "/*", "b"] and "b 100%" in rest and "b 1/1 up" in rest

        code, out, err = await run_cli(capsys, "routes", "--json", *_admin(rt.admin_url, tmp_path))
        assert code == EXIT_OK, err
        data = json.loads(out)
        async with httpx.AsyncClient(base_url=rt.admin_url) as admin:
            direct = (await admin.get("/routes")).json()
        assert data["version"] == direct["version"] == 1
        assert [r["name"] for r in data["routes"]] == ["catalog", "rest"]
        for cli_route, api_route in zip(data["routes"], direct["routes"], strict=True):
            assert cli_route["match"] == api_route["match"]
            assert [(x["service"], x["weight"]) for x in cli_route["backends"]] == [
                (x["service"], x["weight"]) for x in api_route["backends"]
            ]
        assert data["routes"][0]["backends"][0]["pool"]["groups"][0]["endpoints"][0]["url"] == a


async def test_reload_needs_the_token_and_reports_the_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve_app(EchoApp("a")) as a, serve_app(EchoApp("b")) as b, run_facade(tmp_path, _cfg(a, b)) as rt:
        admin = _admin(rt.admin_url, tmp_path)

        code, out, err = await run_cli(capsys, "reload", *admin)
        assert code == EXIT_REFUSED and out == ""
        # No HTTP status in the message; it names every place a token was looked for.
        assert err.startswith("facade reload: the admin API needs a token and none was found") and "401" not in err
        assert "--token, $FACADE_ADMIN_TOKEN" in err and ".facade-demo/admin-token" in err
        code, _, err = await run_cli(capsys, "reload", "--token", "wrong", *admin)
        assert code == EXIT_REFUSED and "401" not in err
        assert err.startswith("facade reload: the admin API refused the token from --token (sources, first wins:")
        assert rt.version == 1  # nothing was reloaded

        code, out, err = await run_cli(capsys, "reload", "--token", TOKEN, *admin)
        assert code == EXIT_OK, err
        assert out.strip() == "reload unchanged: config version 1"

        (tmp_path / "facade.yaml").write_text(_cfg(a, b, backend="a"))
        code, out, err = await run_cli(capsys, "reload", "--token", TOKEN, *admin)
        assert code == EXIT_OK, err
        assert out.strip() == "reload applied: config version 2"
        async with httpx.AsyncClient(base_url=rt.url) as client:
            assert (await client.get("/x")).json()["name"] == "a"

        # The token may come from the environment instead.
        monkeypatch.setenv("FACADE_ADMIN_TOKEN", TOKEN)
        (tmp_path / "facade.yaml").write_text(_cfg(a, b, backend="b"))
        code, out, err = await run_cli(capsys, "reload", "--json", *admin)
        assert code == EXIT_OK, err
        result = json.loads(out)
        assert result["ok"] is True and result["changed"] is True and result["version"] == 3
        assert result["trigger"] == "api"


async def test_reload_of_an_invalid_file_exits_2_with_the_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve_app(EchoApp("a")) as a, serve_app(EchoApp("b")) as b, run_facade(tmp_path, _cfg(a, b)) as rt:
        admin = (*_admin(rt.admin_url, tmp_path), "--token", TOKEN)
        path = tmp_path / "facade.yaml"
        path.write_text(_cfg(a, b, backend="nope").replace("weight: 30", "wieght: 30"))

        code, out, err = await run_cli(capsys, "reload", *admin)
        assert code == EXIT_INVALID
        lines = err.splitlines()
        assert lines[0] == "facade reload: the new config was rejected; the running config is unchanged:"
        assert any(f"{path}:" in line and "unknown service 'nope'" in line for line in lines[1:]), err
        assert any("wieght" in line and "did you mean" in line for line in lines[1:]), err

        code, out, err = await run_cli(capsys, "reload", "--json", *admin)
        assert code == EXIT_INVALID
        rejected = json.loads(out)
        assert rejected["ok"] is False and rejected["version"] == 1
        assert all(p["file"] == str(path) and p["line"] > 0 and p["col"] > 0 for p in rejected["problems"])

        assert rt.version == 1 and rt.last_reload.ok is False
        async with httpx.AsyncClient(base_url=rt.url) as client:
            assert (await client.get("/x")).json()["name"] == "b"  # still the running config


async def test_reload_is_refused_when_the_facade_has_no_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        serve_app(EchoApp("a")) as a,
        serve_app(EchoApp("b")) as b,
        run_facade(tmp_path, _cfg(a, b, token=None)) as rt,
    ):
        code, _, err = await run_cli(capsys, "reload", "--token", "anything", *_admin(rt.admin_url, tmp_path))
        assert code == EXIT_REFUSED
        assert "no admin token configured" in err


async def test_admin_url_and_token_come_from_the_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve_app(EchoApp("a")) as a, serve_app(EchoApp("b")) as b, run_facade(tmp_path, _cfg(a, b)) as rt:
        # What an operator's facade.yaml says: the address the facade listens on and its token.
        client_cfg = tmp_path / "client.yaml"
        client_cfg.write_text(f"admin: {{listen: {rt.admin_url.removeprefix('http://')}, token: {TOKEN}}}\n")
        code, out, err = await run_cli(capsys, "routes", "-c", str(client_cfg))
        assert code == EXIT_OK, err
        assert out.splitlines()[2].startswith("catalog")
        code, out, err = await run_cli(capsys, "reload", "-c", str(client_cfg))
        assert code == EXIT_OK, err
        assert out.strip() == "reload unchanged: config version 1"


async def test_unreachable_admin_exits_6(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    closed = refusing_url()  # connections are refused
    for command in (("routes",), ("routes", "--json"), ("reload", "--token", TOKEN)):
        code, out, err = await run_cli(capsys, *command, *_admin(closed, tmp_path))
        assert code == EXIT_UNREACHABLE, (command, err)
        assert out == "" and err.startswith(f"facade {command[0]}: cannot reach the facade's admin API at {closed} ")


def test_validate_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(_cfg("http://127.0.0.1:8001", "http://127.0.0.1:8002"))
    assert main(["validate", "-c", str(good)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert out.strip() == f"{good}: valid (2 services, 2 routes)" and err == ""
    assert main(["validate", "-c", str(good), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"valid": True, "problems": []}

    # A shadowed route is a warning: still valid (exit 0), reported on stdout.
    shadowed = tmp_path / "shadowed.yaml"
    shadowed.write_text(
        "services:\n  a: {endpoints: ['http://127.0.0.1:8001']}\n"
        "routes:\n  - {name: all, backend: a}\n  - {name: never, match: {path: {prefix: /x}}, backend: a}\n"
    )
    assert main(["validate", "-c", str(shadowed), "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is True
    assert [(p["severity"], p["line"]) for p in report["problems"]] == [("warning", 5)]

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "services:\n  a: {endpoints: ['http://127.0.0.1:8001'], timeouts: {request: 5}}\n"
        "routes:\n  - {name: all, backend: ghost}\n"
    )
    assert main(["validate", "-c", str(bad)]) == EXIT_INVALID
    out, err = capsys.readouterr()
    assert "valid (" not in out
    errors = err.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"{bad}:2:") and "services.a.timeouts.request" in errors[0]
    assert errors[1].startswith(f"{bad}:4:") and "unknown service 'ghost'" in errors[1]
    assert main(["validate", "-c", str(bad), "--json"]) == EXIT_INVALID
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    assert [p["line"] for p in report["problems"]] == [2, 4]
    assert all(p["severity"] == "error" and p["text"].startswith(f"{bad}:") for p in report["problems"])

    missing = tmp_path / "missing.yaml"
    assert main(["validate", "-c", str(missing)]) == EXIT_INVALID
    assert capsys.readouterr().err == f"facade validate: cannot read the config {missing} (from -c): no such file\n"
