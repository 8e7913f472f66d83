"""What every command shares (facade.cli.console): config lookup, token sources, progress, one error
format, quiet exit on a closed pipe, and the README's CLI reference kept in step with the parser."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from facade.cli import build_parser, iter_commands, main, render_reference, update_readme
from facade.cli.console import EXIT_INVALID, EXIT_NOT_FOUND, CliError, Progress, admin_token, find_config
from facade.cli.up import describe_exit, facade_state_key, load_or_create_token

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "sample_monolith"


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("FACADE_CONFIG", "FACADE_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


# -- config lookup ---------------------------------------------------------------------------------


def test_config_lookup_order_flag_env_cwd_running_stack(here: Path) -> None:
    with pytest.raises(CliError) as exc:
        find_config(None, env={})
    assert exc.value.exit_code == EXIT_INVALID
    assert str(exc.value) == ("no config file: tried -c FILE, $FACADE_CONFIG, ./facade.yaml, a `facade up` running "
                              "from this directory; pass -c FILE")  # fmt: skip
    (here / ".facade-demo").mkdir()
    running = here / "running.yaml"
    running.write_text("x: 1\n")
    (here / ".facade-demo" / "up.json").write_text(json.dumps({"config": str(running)}))
    assert find_config(None, env={}) == str(running)
    (here / "facade.yaml").write_text("x: 1\n")
    assert find_config(None, env={}) == "facade.yaml"
    (here / "env.yaml").write_text("x: 1\n")
    assert find_config(None, env={"FACADE_CONFIG": "env.yaml"}) == "env.yaml"
    assert find_config("facade.yaml", env={"FACADE_CONFIG": "env.yaml"}) == "facade.yaml"
    with pytest.raises(CliError, match=r"cannot read the config nope.yaml \(from \$FACADE_CONFIG\): no such file"):
        find_config(None, env={"FACADE_CONFIG": "nope.yaml"})


@pytest.mark.parametrize("argv", [
    ["routes"], ["reload"], ["validate"], ["serve"], ["migrate", "list"], ["migrate", "plan", "x"],
    ["migrate", "next", "x"], ["compare", "catalog"], ["diffs", "catalog"],
])  # fmt: skip
def test_every_command_without_a_config_exits_2_with_one_line(
    here: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err == f"facade {' '.join(a for a in argv if a != 'x' and a != 'catalog')}: no config file: tried " \
                  "-c FILE, $FACADE_CONFIG, ./facade.yaml, a `facade up` running from this directory; pass -c FILE\n"


def test_loadtest_uses_the_same_lookup(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loadtest", "extract-catalog"]) == EXIT_INVALID
    assert capsys.readouterr().err.startswith("facade loadtest: no config file: tried -c FILE")


@pytest.mark.parametrize("target", ["istio", "gateway-api"])
def test_export_uses_the_same_lookup(here: Path, target: str, capsys: pytest.CaptureFixture[str]) -> None:
    # A bare `facade export istio` in a folder without a config was a TypeError traceback.
    assert main(["export", target]) == EXIT_INVALID
    assert capsys.readouterr().err == ("facade export: no config file: tried -c FILE, $FACADE_CONFIG, ./facade.yaml, "
                                       "a `facade up` running from this directory; pass -c FILE\n")


def test_loadtest_checks_config_plans_and_the_name_before_starting_anything(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "facade.yaml").write_text(
        "services: {a: {endpoints: ['http://127.0.0.1:1']}, b: {endpoints: ['http://127.0.0.1:2']}}\n"
        "routes: [{name: r, backend: a}]\nmigrations: plans/\n"
    )
    (here / "plans").mkdir()
    plan = here / "plans" / "001.yaml"
    plan.write_text("name: move-r\nroute: r\nfrom: a\nto: b\nsteps: [{weight: 100}]\n")
    # Before, each of these started a throwaway facade (and left a loadtest-* folder) to fail there.
    assert main(["loadtest", "move-rr", "--quick"]) == EXIT_NOT_FOUND
    assert capsys.readouterr().err == (
        "facade loadtest: no migration named 'move-rr' in plans/ (plans: move-r); did you mean 'move-r'?\n"
    )
    plan.write_text("name: move-r\nroute: r\nfrom: a\nto: ghost\nsteps: [{weight: 100}]\n")
    assert main(["loadtest", "move-r", "--quick"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.startswith("facade loadtest: invalid config or plans (nothing was started):\n")
    assert "plans/001.yaml:4:5: to: unknown service 'ghost'" in err
    assert sorted(p.name for p in here.iterdir()) == ["facade.yaml", "plans"]  # nothing started, nothing written


# -- the admin token -------------------------------------------------------------------------------


def test_token_precedence_flag_env_config_file(here: Path) -> None:
    assert admin_token(None, None, config=None, env={}) == (
        None, "", ["--token", "$FACADE_ADMIN_TOKEN", "admin.token (no config)", ".facade-demo/admin-token"])
    (here / ".facade-demo").mkdir()
    (here / ".facade-demo" / "admin-token").write_text("from-file\n")
    assert admin_token(None, None, config="c.yaml", env={})[:2] == ("from-file", ".facade-demo/admin-token")
    assert admin_token(None, "cfg", config="c.yaml", env={})[:2] == ("cfg", "admin.token in c.yaml")
    assert admin_token(None, "cfg", config="c.yaml", env={"FACADE_ADMIN_TOKEN": "env"})[:2] == (
        "env", "$FACADE_ADMIN_TOKEN")
    assert admin_token("flag", "cfg", config="c.yaml", env={"FACADE_ADMIN_TOKEN": "env"})[:2] == ("flag", "--token")


def test_up_saves_the_token_once_0600_and_reuses_it(tmp_path: Path) -> None:
    path = tmp_path / "st" / "admin-token"
    token = load_or_create_token(path)
    assert len(token) >= 24 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(path) == token


def test_mesh_and_plain_demo_keep_their_facade_state_apart() -> None:
    mesh, plain = SHOP / "facade-mesh.yaml", SHOP / "facade.yaml"
    assert facade_state_key(str(mesh)).startswith("facade-mesh-")
    assert facade_state_key(str(plain)).startswith("facade-")
    assert facade_state_key(str(mesh)) != facade_state_key(str(plain))
    assert facade_state_key(str(plain)) == facade_state_key(str(plain))
    assert facade_state_key("/a/facade.yaml") != facade_state_key("/b/facade.yaml")


def test_a_child_killed_by_a_signal_is_named() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-9) == "was killed by SIGKILL (signal 9)"
    assert describe_exit(-15) == "was killed by SIGTERM (signal 15)"


# -- progress --------------------------------------------------------------------------------------


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.update("waiting for catalog", "1s")
    progress.update("waiting for catalog", "2s")
    progress.update("ok")
    progress.done()
    assert out.getvalue() == "\rwaiting for catalog 1s\rwaiting for catalog 2s\rok" + " " * 20 + "\n"


def test_progress_prints_plain_lines_per_change_elsewhere() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=False)
    for tick in range(3):
        progress.update("waiting for catalog", f"{tick}s")
    progress.update("waiting for orders", "3s")
    progress.done("done")
    assert out.getvalue() == "waiting for catalog\nwaiting for orders\ndone\n"


# -- one error format, a closed pipe -------------------------------------------------------------


def test_validate_json_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Many problems, so the report is larger than the pipe buffer `head -c 1` leaves unread.
    routes = "".join(f"  - {{name: r{i}, backend: nope{i}}}\n" for i in range(3000))
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: 127.0.0.1:8080\nservices: {}\nroutes:\n" + routes)
    proc = subprocess.run(f"{sys.executable} -m facade validate -c {bad} --json | head -c 100", shell=True, check=False,
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert len(proc.stdout) == 100
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_every_command_prefixes_its_errors_with_its_name() -> None:
    progs = {prog for prog, _ in iter_commands(build_parser())}
    assert {"facade migrate next", "facade mesh ca init", "facade compare", "facade up"} <= progs
    for prog, parser in iter_commands(build_parser()):
        if parser.get_default("func") is not None and not any(
            p.startswith(prog + " ") for p in progs
        ):  # a leaf: its errors start with its own name
            assert parser.get_default("cli_prog") == prog


def test_mesh_errors_use_the_command_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mesh", "ca", "show", "--state-dir", str(tmp_path)]) == 3
    assert capsys.readouterr().err.startswith("facade mesh ca show: ")


# -- the README's CLI reference --------------------------------------------------------------------


def test_readme_cli_reference_is_generated_from_the_parser() -> None:
    readme = ROOT / "README.md"
    expected = update_readme(str(readme), render_reference(build_parser()))
    assert readme.read_text() == expected, "README's CLI reference is stale: run `python3 -m facade.cli README.md`"
    reference = render_reference(build_parser())
    for option in ("--reset", "--gate-timeout", "`--old SERVICE`", "`--new SERVICE`", "`--no-wait`", "--wait"):
        assert option in reference


@pytest.mark.parametrize("path", [".facade-demo/up.json", ".facade-demo/admin-token", "loadtest-extract-catalog-1/steps.csv"])
def test_demo_state_and_loadtest_reports_are_ignored_by_git(path: str) -> None:
    proc = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, check=False, timeout=30)
    assert proc.returncode == 0, f"{path} is not in .gitignore"


def test_usage_errors_use_the_same_format_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["migrate", "next"])
    assert exc.value.code == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.startswith("usage: facade migrate next") and err.endswith(
        "\nfacade migrate next: the following arguments are required: name\n")
    assert main(["routes", "--bogus"]) == EXIT_INVALID
    assert capsys.readouterr().err == "facade routes: unrecognized arguments: --bogus (see facade routes --help)\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "nonsense"], "--listen: must be host:port (e.g. 127.0.0.1:8080 or [::1]:8080), got 'nonsense'"),
        (["--listen", "127.0.0.1:99999"], "--listen: port must be 0-65535, got 99999"),
        (["--admin-listen", "[zz]:80"], "--admin-listen: invalid IPv6 address 'zz'"),
    ],
)
def test_serve_refuses_a_bad_listen_override_in_one_line(
    here: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # These were a ValueError / OverflowError traceback when the listener bound.
    (here / "facade.yaml").write_text("routes: []\n")
    assert main(["serve", *argv]) == EXIT_INVALID
    assert capsys.readouterr().err == f"facade serve: {message}\n"
