"""docs/demo.md and the README's quick start, word for word, on the default path (mesh on).

Convention (also described at the end of docs/demo.md): every ```sh block runs, command by command,
from the directory ``facade up`` runs in, and each command must exit 0, or N where its comment says
``exits N``; a ```sh block right after a
``<!-- demo-test: skip (why) -->`` line does not run; ```console blocks are illustrations (output, or
ports that change on each run). The shipped config's fixed ports are the placeholders: the test runs
the shipped mesh config moved to free ports and rewrites the commands' ports the same way.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from facade.up import default_config_path
from tests.facade.test_up import free_ports, gone, read_until, started_pids, stop_up

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "demo.md", ROOT / "README.md")
SKIP = "<!-- demo-test: skip"
FIXED_PORTS = ("8080", "9901", "8001", "15102", "15103")  # the shipped facade-mesh.yaml's


def sh_blocks(text: str) -> list[list[str]]:
    """The lines of every ```sh block not marked to skip, in order."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    previous = ""
    for line in text.splitlines():
        if current is None:
            if line.strip() == "```sh" and not previous.startswith(SKIP):
                current = []
            if line.strip():
                previous = line.strip()
            continue
        if line.strip() == "```":
            blocks.append(current)
            current = None
            previous = "```"
            continue
        current.append(line)
    assert current is None, "an unclosed ```sh block"
    return blocks


def commands(lines: list[str]) -> list[str]:
    """Shell commands: continuation lines joined, comment-only and blank lines dropped."""
    out: list[str] = []
    pending = ""
    for line in lines:
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    assert not pending, f"a continuation line ends the block: {pending!r}"
    return out


def expected_exit(command: str) -> set[int]:
    """{0}, or the codes the command's comment names (``exits 5``, ``exits 5 or 0``): a reader is told
    what to expect, and an outcome that depends on timing says both."""
    match = re.search(r"#.*\bexits (\d+(?: or \d+)*)\b", command)
    return {int(code) for code in match.group(1).split(" or ")} if match else {0}


def test_the_docs_commands_are_found_and_skips_are_honoured() -> None:
    assert expected_exit("facade loadtest x --quick   # (~20 s; exits 5: a gate fails)") == {5}
    assert expected_exit("facade loadtest x --quick   # exits 5 or 0: ...") == {5, 0}
    assert expected_exit("facade migrate plan x   # what each step does") == {0}
    demo = [c for block in sh_blocks(DOCS[0].read_text()) for c in commands(block)]
    assert demo[0].startswith("curl -si http://127.0.0.1:8080/catalog/products/1")
    assert "facade migrate start extract-catalog" in [c.split("#")[0].strip() for c in demo]
    assert not any("CATALOG_FIX_PRICE=1 uvicorn" in c or ":8002/" in c for c in demo)  # skipped blocks
    assert not any("migrate auto" in c for c in demo)
    readme = [c for block in sh_blocks(DOCS[1].read_text()) for c in commands(block)]
    assert readme and not any(c.startswith("python3 -m pip") or c.split()[:2] == ["facade", "up"] for c in readme)
    # Every command a reader is told to run uses only the demo's own names and ports.
    for command in demo + readme:
        assert command.split()[0] in {"curl", "facade", "for"}, command
        assert "--admin" not in command and "FACADE_ADMIN_TOKEN" not in command, command
    assert commands(["a \\", "  b", "# c", "", "d"]) == ["a    b", "d"]


def _shims(bin_dir: Path) -> dict[str, str]:
    """``facade`` and ``python`` on PATH, both this interpreter with this work tree first on sys.path."""
    bin_dir.mkdir()
    for name, target in (("facade", f'exec "{sys.executable}" -m facade "$@"'), ("python", f'exec "{sys.executable}" "$@"')):
        shim = bin_dir / name
        shim.write_text(f"#!/bin/sh\n{target}\n")
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if k not in ("FACADE_ADMIN_TOKEN", "FACADE_CONFIG")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@pytest.mark.slow
def test_demo_doc_and_readme_run_word_for_word_on_the_default_path(tmp_path: Path) -> None:
    ports = dict(zip(FIXED_PORTS, (str(p) for p in free_ports(len(FIXED_PORTS))), strict=True))
    text = Path(default_config_path(mesh=True)).read_text()
    for old, new in ports.items():
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    plans = Path(default_config_path()).parent / "migrations-mesh"
    config = tmp_path / "facade-mesh.yaml"
    config.write_text(text.replace("migrations: migrations-mesh/", f"migrations: {plans}"))
    env = _shims(tmp_path / "bin")
    port = re.compile(r"(127\.0\.0\.1|localhost):(" + "|".join(FIXED_PORTS) + r")\b")
    todo = [(doc.name, c) for doc in DOCS for block in sh_blocks(doc.read_text()) for c in commands(block)]
    assert len(todo) > 20

    # `facade up` on the default path (mesh on, state in ./.facade-demo), with only the config moved.
    up = subprocess.Popen([sys.executable, "-m", "facade", "up", "-c", str(config)], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    with up:
        try:
            out = read_until(up, "facade up: ready", timeout=90)
            assert "facade up: ready" in out, out + (up.stderr.read().decode() if up.poll() is not None else "")
            assert out.startswith(f"facade up: config {config} (from -c)\n")
            assert "waiting for catalog-sidecar, orders-sidecar to answer their health checks\n" in out  # no TTY
            pids = started_pids(out)
            for doc, command in todo:
                runnable = port.sub(lambda m: f"{m.group(1)}:{ports[m.group(2)]}", command)
                proc = subprocess.run(["bash", "-o", "pipefail", "-c", runnable], cwd=tmp_path, env=env,
                                      capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
                expected = expected_exit(command)
                assert proc.returncode in expected, (
                    f"{doc}: `{command}` exited {proc.returncode}, not {expected}\n{proc.stdout}\n{proc.stderr}"
                )
            # Whatever the doc left, end with extract-catalog completed: all 8 mesh steps applied.
            for action in ("rollback extract-catalog --to 0", "start extract-catalog",
                           "promote extract-catalog --force --reason demo-test"):  # fmt: skip
                subprocess.run(["bash", "-c", f"facade migrate {action}"], cwd=tmp_path, env=env, timeout=60,
                               check=False, capture_output=True)  # fmt: skip
            done = subprocess.run(["facade", "migrate", "status", "extract-catalog", "--json"], cwd=tmp_path,
                                  env=env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
            assert json.loads(done.stdout)["state"] == "completed", done.stdout + done.stderr
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=30)
        finally:
            stop_up(up)  # SIGTERM first: a SIGKILLed `facade up` orphans its children
    assert up.returncode == 0
    assert all(gone(pid) for pid in pids.values())
    assert not (tmp_path / ".facade-demo" / "up.json").exists()  # nothing points at a stopped stack

    # The plain demo in the same directory after the mesh run: its plans have one step fewer, which the
    # mesh run's completed journal would refuse ("step 8 was already applied"); its state is its own.
    plain = tmp_path / "facade.yaml"
    text = Path(default_config_path()).read_text()
    for old, new in zip(("8080", "9901", "8001", "8002", "8003"), free_ports(5), strict=True):
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    plans = Path(default_config_path()).parent / "migrations"
    plain.write_text(text.replace("migrations: migrations/", f"migrations: {plans}"))
    with subprocess.Popen([sys.executable, "-m", "facade", "up", "-c", str(plain)], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as up:  # fmt: skip
        try:
            out = read_until(up, "facade up: ready", timeout=60)
            assert "facade up: ready" in out, out + (up.stderr.read().decode() if up.poll() is not None else "")
            status = subprocess.run(["facade", "migrate", "status", "extract-catalog", "--json"], cwd=tmp_path,
                                    env=env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
            assert status.returncode == 0, status.stderr
            assert (json.loads(status.stdout)["state"], json.loads(status.stdout)["steps"]) == ("pending", 7)
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=30)
        finally:
            stop_up(up)  # SIGTERM first: a SIGKILLed `facade up` orphans its children
    assert up.returncode == 0
    assert sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / ".facade-demo" / "facade").iterdir()) == [
        "facade", "facade-mesh"]
