"""A non-editable install (``pip install .``): the wheel holds mesh, the demo and the locustfile in the
facade namespace, nothing at the top of site-packages but ``facade``, and its ``facade up`` runs the demo
with no source checkout in sight (another directory, no PYTHONPATH)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
import venv
import zipfile
from pathlib import Path

import pytest

from tests.facade.test_up import free_ports, gone, read_until, started_pids, stop_up

ROOT = Path(__file__).resolve().parent.parent
FIXED_PORTS = ("8080", "9901", "8001", "15102", "15103")  # the shipped mesh demo's fixed ports


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (path,) = out.glob("facade-*.whl")
    return path


def test_the_wheel_installs_everything_under_the_facade_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"facade"}
    for expected in ("facade/mesh/controlplane.py", "facade/sample_monolith/facade-mesh.yaml",
                     "facade/sample_monolith/migrations-mesh/001-extract-catalog.yaml",
                     "facade/sample_monolith/seed.json", "facade/loadtests/locustfile.py",
                     "facade/cli/main.py", "facade/config/model.py", "facade/shadow/sender.py",
                     "facade/dashboard/dashboard.js", "facade/py.typed"):  # fmt: skip
        assert expected in names, expected
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["facade"]


@pytest.mark.slow
def test_facade_up_runs_from_a_non_editable_install(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)  # the deps come from here
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FACADE_CONFIG", "FACADE_ADMIN_TOKEN")}
    # --force-reinstall: the system site (seen through the venv) may hold facade 0.1.0 as an editable install.
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--force-reinstall", "-q", str(wheel)],
                             env=env, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    where = subprocess.run([str(python), "-c", ("import facade.mesh.ca as m, facade.sample_monolith as s; "
                            "print(m.__file__); print(s.__file__)")],
                           cwd=run_dir, env=env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(env_dir)) for line in where.stdout.split()), where.stdout

    # The shipped mesh demo, read from the installed package, moved to free ports.
    shipped = Path(where.stdout.split()[1]).parent
    text = (shipped / "facade-mesh.yaml").read_text()
    for old, new in zip(FIXED_PORTS, free_ports(len(FIXED_PORTS)), strict=True):
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    config = run_dir / "facade-mesh.yaml"
    config.write_text(text.replace("migrations: migrations-mesh/", f"migrations: {shipped / 'migrations-mesh'}"))
    facade = env_dir / "bin" / "facade"
    with subprocess.Popen([str(facade), "up", "-c", str(config)], cwd=run_dir, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as up:  # fmt: skip
        try:
            out = read_until(up, "facade up: ready", timeout=90)
            assert "facade up: ready" in out, out + (up.stderr.read().decode() if up.poll() is not None else "")
            pids = started_pids(out)
            edge = re.search(r"^facade\s+(http://\S+)", out, re.MULTILINE)
            assert edge is not None, out
            with urllib.request.urlopen(edge.group(1) + "/catalog/products/1", timeout=10) as response:
                assert response.status == 200
                assert response.headers["x-served-by"]
        finally:
            stop_up(up)
    assert up.returncode == 0
    assert all(gone(pid) for pid in pids.values())
