"""``facade up``: the pure stack plan, the supervisor against real processes, and the command
end to end in a subprocess on free loopback ports."""

from __future__ import annotations

import io
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest

from facade.cli.up import (
    ChildFailed,
    ChildSpec,
    Listen,
    Stack,
    StackError,
    default_config_path,
    fetch_bootstrap_token,
    find_taken_ports,
    install_stop_handlers,
    load_stack_config,
    log_tail,
    plan_stack,
    render_ready,
    serve_has_state_dir,
    services_unseen,
)
from facade.config import AdminSpec, Config, EndpointGroup, HealthCheck, ServiceSpec
from tests.servers import free_ports, refusing_url

PY = sys.executable




def shop_config(ports: list[int], **overrides: object) -> Config:
    facade_port, admin_port, monolith_port, catalog_port = ports
    config = Config(
        source="facade.yaml",
        sha256="0" * 64,
        listen=f"127.0.0.1:{facade_port}",
        admin=AdminSpec(listen=f"127.0.0.1:{admin_port}"),
        services=(
            ServiceSpec("monolith", (EndpointGroup("default", (f"http://127.0.0.1:{monolith_port}",)),),
                        health_check=HealthCheck(path="/healthz")),
            ServiceSpec("catalog", (EndpointGroup("default", (f"http://127.0.0.1:{catalog_port}",)),)),
        ),
    )  # fmt: skip
    return replace(config, **overrides)  # type: ignore[arg-type]


def write_shop_yaml(path: Path, ports: list[int], state_dir: Path) -> Path:
    facade_port, admin_port, monolith_port, catalog_port = ports
    path.write_text(
        textwrap.dedent(f"""\
        listen: 127.0.0.1:{facade_port}
        admin:
          listen: 127.0.0.1:{admin_port}
        state_dir: {state_dir}
        services:
          monolith:
            endpoints: [http://127.0.0.1:{monolith_port}]
            health_check: {{path: /healthz, interval: 2s}}
          catalog:
            endpoints: [http://127.0.0.1:{catalog_port}]
            health_check: {{path: /healthz, interval: 2s}}
        routes:
          - name: catalog
            match: {{path: {{prefix: /catalog}}}}
            backend: monolith
          - name: default
            match: {{path: {{prefix: /}}}}
            backend: monolith
        """)
    )
    return path


def eventually(condition: Callable[[], bool], *, seconds: float) -> bool:
    """Whether ``condition`` holds within ``seconds`` (polled), for what the kernel finishes on its own."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


# -- the plan (pure) ---------------------------------------------------------------------------


def test_plan_derives_children_and_ports_from_the_config() -> None:
    config = shop_config([18080, 19901, 18001, 18002])
    plan = plan_stack(config, config_path="/c/facade.yaml", state_dir="/s", python="/py", admin_token="tok",
                      pythonpath="/src")  # fmt: skip
    assert [(s.name, s.port, s.stage) for s in plan.specs] == [
        ("monolith", 18001, 0),
        ("catalog", 18002, 0),
        ("facade", 18080, 1),
    ]
    monolith, catalog, facade = plan.specs
    assert monolith.argv[:4] == ("/py", "-m", "uvicorn", "facade.sample_monolith.monolith:app")
    assert monolith.argv[monolith.argv.index("--port") + 1] == "18001"
    assert monolith.health_url == "http://127.0.0.1:18001/healthz"
    assert dict(monolith.env)["SHOP_DB"] == "/s/data/monolith.db"
    assert dict(catalog.env)["CATALOG_DB"] == "/s/data/catalog.db"
    assert dict(catalog.env)["PYTHONPATH"] == "/src"
    assert catalog.argv[3] == "facade.sample_monolith.catalog:app"
    # The demo's facade runs one worker per core (docs/workers.md).
    assert facade.argv == ("/py", "-m", "facade", "serve", "-c", "/c/facade.yaml", "--workers", "auto")
    assert dict(facade.env)["FACADE_ADMIN_TOKEN"] == "tok"
    assert facade.health_url == "http://127.0.0.1:19901/readyz"
    assert [(x.label, x.port) for x in facade.listens] == [("facade", 18080), ("admin", 19901)]
    assert (plan.facade_url, plan.admin_url) == ("http://127.0.0.1:18080", "http://127.0.0.1:19901")


def test_plan_runs_one_child_per_endpoint_and_notes_what_it_cannot_run() -> None:
    config = shop_config([1, 2, 3, 4])
    config = replace(
        config,
        services=(
            ServiceSpec("monolith", (EndpointGroup("a", ("http://127.0.0.1:7001",)),
                                     EndpointGroup("b", ("http://127.0.0.1:7002",)))),
            ServiceSpec("catalog", (EndpointGroup("default", ("https://127.0.0.1:15101",)),)),
            ServiceSpec("payments", (EndpointGroup("default", ("http://10.0.0.5:80",)),)),
        ),
    )  # fmt: skip
    plan = plan_stack(config, config_path="c", state_dir="s", python="py", admin_token=None, sidecars=True)
    assert [(s.name, s.port) for s in plan.specs] == [("monolith-1", 7001), ("monolith-2", 7002), ("facade", 1)]
    # Replicas share their service's database.
    assert dict(plan.specs[0].env)["SHOP_DB"] == dict(plan.specs[1].env)["SHOP_DB"]
    assert "FACADE_ADMIN_TOKEN" not in dict(plan.specs[-1].env)
    notes = [n for n in plan.notes if not n.startswith("mesh:")]
    assert len(notes) == 2
    assert "https://127.0.0.1:15101" in notes[0] and "payments" in notes[1]


def test_plan_rejects_two_children_on_one_port() -> None:
    with pytest.raises(StackError, match="port 8001 is used twice: by monolith and by facade"):
        plan_stack(shop_config([8001, 9901, 8001, 8002]), config_path="c", state_dir="s", python="py",
                   admin_token=None)  # fmt: skip
    with pytest.raises(StackError, match="admin.listen: expected host:port"):
        plan_stack(shop_config([1, 2, 3, 4], admin=AdminSpec(listen="localhost")), config_path="c", state_dir="s",
                   python="py", admin_token=None)  # fmt: skip


def test_ready_table_lists_facade_first_then_admin_then_backends() -> None:
    plan = plan_stack(shop_config([18080, 19901, 18001, 18002]), config_path="/c.yaml", state_dir="s", python="py",
                      admin_token="tok")  # fmt: skip
    text = render_ready(plan, {"facade": 30, "monolith": 10, "catalog": 20}, config_path="/c.yaml", token="tok",
                        log_dir="s/logs")  # fmt: skip
    rows = [line.split() for line in text.splitlines()[2:7]]
    assert rows == [
        ["facade", "http://127.0.0.1:18080", "30"],
        ["admin", "http://127.0.0.1:19901", "30"],
        ["dashboard", "http://127.0.0.1:19901/ui", "30"],
        ["monolith", "http://127.0.0.1:18001", "10"],
        ["catalog", "http://127.0.0.1:18002", "20"],
    ]
    assert "curl -si http://127.0.0.1:18080/catalog/products/1" in text
    # Run from the directory of ./.facade-demo, commands find the config and token themselves.
    commands = [line.split("#")[0].strip() for line in text.splitlines() if line.startswith("  facade ")]
    assert commands[:3] == ["facade routes", "facade validate", "facade migrate list"]
    assert "facade loadtest extract-catalog --quick" in commands
    assert "export FACADE_ADMIN_TOKEN=tok" in text
    elsewhere = render_ready(plan, {}, config_path="/c.yaml", token="tok", log_dir="s/logs", found_here=False,
                             token_file="s/admin-token")  # fmt: skip
    commands = [line.split("#")[0].strip() for line in elsewhere.splitlines() if line.startswith("  facade ")]
    assert commands and all(c.endswith(" -c /c.yaml") for c in commands)
    assert "admin token: tok (saved in s/admin-token, 0600)" in elsewhere


def test_listen_urls_for_wildcard_and_ipv6_hosts() -> None:
    assert Listen("x", "0.0.0.0", 80).url == "http://127.0.0.1:80"
    assert Listen("x", "::1", 80).url == "http://[::1]:80"


def test_shipped_config_is_found_from_any_directory_and_names_the_demo_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = default_config_path()
    assert os.path.isabs(path) and path.endswith(os.path.join("sample_monolith", "facade.yaml"))
    config = load_stack_config(path)
    plan = plan_stack(config, config_path=path, state_dir="s", python="py", admin_token=None)
    assert [(s.name, s.port) for s in plan.specs] == [
        ("monolith", 8001),
        ("catalog", 8002),
        ("orders", 8003),
        ("facade", 8080),
    ]
    assert plan.admin_url == "http://127.0.0.1:9901"
    assert [r.name for r in config.routes] == ["catalog", "orders", "default"]
    assert config.mark_responses
    assert config.migrations_dir and os.path.isdir(config.migrations_dir)
    plans = sorted(os.listdir(config.migrations_dir))
    assert plans == ["001-extract-catalog.yaml", "002-extract-orders.yaml"]


def test_orders_prices_from_the_catalog_service_else_the_monolith() -> None:
    ports = [18080, 19901, 18001, 18002]
    orders = ServiceSpec("orders", (EndpointGroup("default", ("http://127.0.0.1:18003",)),))
    config = shop_config(ports)
    config = replace(config, services=(*config.services, orders))
    plan = plan_stack(config, config_path="c", state_dir="/s", python="py", admin_token=None)
    spec = next(s for s in plan.specs if s.name == "orders")
    assert spec.argv[3] == "facade.sample_monolith.orders:app" and spec.stage == 0
    assert dict(spec.env)["ORDERS_CATALOG_URL"] == "http://127.0.0.1:18002"
    assert dict(spec.env)["ORDERS_DB"] == "/s/data/orders.db"
    without_catalog = replace(config, services=tuple(s for s in config.services if s.name != "catalog"))
    plan = plan_stack(without_catalog, config_path="c", state_dir="/s", python="py", admin_token=None)
    spec = next(s for s in plan.specs if s.name == "orders")
    assert dict(spec.env)["ORDERS_CATALOG_URL"] == "http://127.0.0.1:18001"


def test_facade_state_dir_and_the_sidecar_note() -> None:
    config = shop_config([18080, 19901, 18001, 18002])
    plan = plan_stack(config, config_path="c", state_dir="/s", python="py", admin_token=None,
                      facade_state_dir="/s/facade", sidecars=False)  # fmt: skip
    assert plan.specs[-1].argv == (
        "py", "-m", "facade", "serve", "-c", "c", "--state-dir", "/s/facade", "--workers", "auto"
    )
    assert any("no `facade mesh sidecar`" in note for note in plan.notes)
    plan = plan_stack(config, config_path="c", state_dir="/s", python="py", admin_token=None, sidecars=True)
    assert not any("no `facade mesh sidecar`" in note for note in plan.notes)
    assert any("`facade up` without --no-mesh runs the shop behind sidecars" in note for note in plan.notes)
    assert [s.name for s in plan.specs] == ["monolith", "catalog", "facade"]  # no mesh section: no sidecars


def test_mesh_config_puts_apps_behind_sidecars_started_last() -> None:
    path = default_config_path(mesh=True)
    config = load_stack_config(path)
    ports = iter(range(40001, 40100))
    plan = plan_stack(config, config_path=path, state_dir="/s", python="py", admin_token="tok", sidecars=True,
                      internal_ports=ports)  # fmt: skip
    by_name = {s.name: s for s in plan.specs}
    assert [(s.name, s.stage) for s in plan.specs] == [
        ("monolith", 0), ("catalog", 0), ("orders", 0), ("facade", 1), ("catalog-sidecar", 2), ("orders-sidecar", 2),
    ]  # fmt: skip
    catalog_sidecar, orders_sidecar = by_name["catalog-sidecar"], by_name["orders-sidecar"]
    # The config's endpoints are the sidecars' mTLS inbound listeners; the apps run on internal ports.
    assert catalog_sidecar.url == "https://127.0.0.1:15102" and orders_sidecar.url == "https://127.0.0.1:15103"
    assert by_name["catalog"].port == 40001 and by_name["orders"].port == 40003
    argv = catalog_sidecar.argv
    assert argv[:6] == ("py", "-m", "facade", "mesh", "sidecar", "--service")
    assert argv[argv.index("--app") + 1] == "http://127.0.0.1:40001"
    assert argv[argv.index("--control-plane") + 1] == "http://127.0.0.1:9901"
    assert "--outbound" not in argv and catalog_sidecar.bootstrap == "catalog"
    assert catalog_sidecar.health_url == "http://127.0.0.1:40002/healthz"
    # With the mesh too, the facade runs one worker per core (the supervisor keeps the CA; docs/workers.md).
    assert by_name["facade"].argv[-2:] == ("--workers", "auto")
    assert not any(n.startswith("workers:") for n in plan.notes)
    # Orders reaches the catalog through its own sidecar's outbound listener, Host: catalog.
    outbound = orders_sidecar.argv[orders_sidecar.argv.index("--outbound") + 1]
    env = dict(by_name["orders"].env)
    assert env["ORDERS_CATALOG_URL"] == f"http://{outbound}" and env["ORDERS_CATALOG_HOST"] == "catalog"
    assert not any(n.startswith("mesh:") for n in plan.notes)
    with pytest.raises(StackError, match="needs internal_ports"):
        plan_stack(config, config_path=path, state_dir="/s", python="py", admin_token=None, sidecars=True)
    # Without the sidecar command, https:// services are left out with a note, as before.
    plan = plan_stack(config, config_path=path, state_dir="/s", python="py", admin_token=None, sidecars=False)
    assert [s.name for s in plan.specs] == ["monolith", "facade"]


def test_bootstrap_token_failures_are_stack_errors() -> None:
    with pytest.raises(StackError, match="cannot get a bootstrap token for catalog's sidecar"):
        fetch_bootstrap_token(refusing_url(), "tok", "catalog")  # connections are refused


def test_this_build_serve_takes_a_state_dir() -> None:
    assert serve_has_state_dir()


# -- the edge: ports, logs, processes ----------------------------------------------------------


def test_taken_port_is_reported_with_its_label() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        busy_port = busy.getsockname()[1]
        (free_port,) = free_ports(1)
        taken = find_taken_ports(
            [Listen("monolith", "127.0.0.1", busy_port), Listen("catalog", "127.0.0.1", free_port)]
        )
    assert len(taken) == 1
    assert taken[0].startswith(f"port {busy_port} (monolith) is already in use")


def test_log_tail_is_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log).splitlines() == [f"line {i}" for i in range(80, 100)]
    assert log_tail(tmp_path / "missing.log") == ""


def shop_specs(tmp_path: Path) -> list[ChildSpec]:
    plan = plan_stack(shop_config(free_ports(4)), config_path="unused", state_dir=str(tmp_path), python=PY,
                      admin_token=None)  # fmt: skip
    (tmp_path / "data").mkdir(exist_ok=True)
    return [s for s in plan.specs if s.name != "facade"]


@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    started: list[Stack] = []
    yield started
    for stack in started:  # a failing assertion must not leave processes behind
        stack.stop(grace=1.0)


def test_stack_starts_the_shop_healthy_and_stops_every_process(tmp_path: Path, stacks: list[Stack]) -> None:
    specs = shop_specs(tmp_path)
    stack = Stack(specs, log_dir=tmp_path / "logs", out=io.StringIO())
    stacks.append(stack)
    stack.start()
    monolith, catalog = specs
    r = httpx.get(catalog.url + "/catalog/products/1", trust_env=False)
    assert r.headers["x-served-by"] == "catalog" and r.json()["price"] == 19.99
    assert httpx.get(monolith.url + "/users/1", trust_env=False).json()["name"] == "Ada Lovelace"
    assert (tmp_path / "data" / "monolith.db").exists() and (tmp_path / "data" / "catalog.db").exists()
    pids = list(stack.pids.values())
    stack.stop()
    assert all(gone(pid) for pid in pids)
    assert "Application startup complete" in log_tail(tmp_path / "logs" / "monolith.log")


def test_stack_reports_a_child_that_dies_while_running(tmp_path: Path, stacks: list[Stack]) -> None:
    stack = Stack(shop_specs(tmp_path), log_dir=tmp_path / "logs", out=io.StringIO())
    stacks.append(stack)
    stack.start()
    os.kill(stack.pids["catalog"], signal.SIGKILL)
    failure = stack.supervise()  # returns as soon as it sees the exit
    assert isinstance(failure, ChildFailed)
    assert (failure.name, failure.exit_code) == ("catalog", -signal.SIGKILL)
    assert "Uvicorn running on" in failure.report()
    monolith = stack.pids["monolith"]
    stack.stop()
    assert gone(monolith)


def test_stack_reports_a_child_that_never_gets_healthy(tmp_path: Path, stacks: list[Stack]) -> None:
    (port,) = free_ports(1)
    spec = ChildSpec("sleeper", (PY, "-c", "print('warming up', flush=True); import time; time.sleep(60)"), (),
                     f"http://127.0.0.1:{port}/healthz", (Listen("sleeper", "127.0.0.1", port),))  # fmt: skip
    stack = Stack([spec], log_dir=tmp_path / "logs", health_timeout=0.5, out=io.StringIO())
    stacks.append(stack)
    with pytest.raises(ChildFailed) as info:
        stack.start()
    assert info.value.exit_code is None
    assert "did not become healthy" in info.value.report() and "warming up" in info.value.report()


def test_sigint_and_sigterm_end_supervision_without_a_failure(tmp_path: Path, stacks: list[Stack]) -> None:
    stack = Stack(shop_specs(tmp_path)[:1], log_dir=tmp_path / "logs", out=io.StringIO())
    stacks.append(stack)
    stack.start()
    # Whatever pytest was launched with (SIG_IGN for SIGINT in a background job or CI runner,
    # default_int_handler in a terminal) is what must be back afterwards.
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for signum in (signal.SIGINT, signal.SIGTERM):
        stack.stop_signal = None
        restore = install_stop_handlers(stack.request_stop)
        try:
            os.kill(os.getpid(), signum)  # delivered to this (main) thread before supervise's first sleep ends
            assert stack.supervise() is None
        finally:
            restore()
        assert stack.stop_signal == signum
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
    pid = stack.pids["monolith"]
    assert not gone(pid)  # signals reach only `facade up`; it stops the children itself
    stack.stop()
    assert gone(pid)


def test_start_without_wait_returns_before_children_are_healthy(tmp_path: Path, stacks: list[Stack]) -> None:
    (port,) = free_ports(1)
    spec = ChildSpec("sleeper", (PY, "-c", "import time; time.sleep(60)"), (), f"http://127.0.0.1:{port}/healthz",
                     (Listen("sleeper", "127.0.0.1", port),))  # fmt: skip
    stack = Stack([spec], log_dir=tmp_path / "logs", health_timeout=0.1, out=io.StringIO())
    stacks.append(stack)
    stack.start(wait=False)  # would raise ChildFailed (never healthy) with wait=True
    assert not gone(stack.pids["sleeper"])


IGNORES_SIGTERM = """
import http.server, signal, subprocess, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("grandchild", grandchild.pid, flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def test_stop_kills_a_group_that_ignores_sigterm_grandchildren_included(
    tmp_path: Path, stacks: list[Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    (port,) = free_ports(1)
    spec = ChildSpec("stubborn", (PY, "-c", IGNORES_SIGTERM, str(port)), (), f"http://127.0.0.1:{port}/",
                     (Listen("stubborn", "127.0.0.1", port),))  # fmt: skip
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    monkeypatch.chdir(tmp_path)  # SimpleHTTPRequestHandler lists the cwd
    stack = Stack([spec], log_dir=log_dir, out=io.StringIO())
    stacks.append(stack)
    stack.start()
    match = re.search(r"grandchild (\d+)", (log_dir / "stubborn.log").read_text())
    assert match
    child, grandchild = stack.pids["stubborn"], int(match.group(1))
    assert not gone(grandchild)
    stack.stop(grace=0.5)
    # SIGKILL is sent to the group; the kernel ends the grandchild (reparented, reaped by init)
    # a moment later: poll for it rather than look once.
    assert eventually(lambda: gone(child) and gone(grandchild), seconds=2.0)


# -- the command, in a subprocess ---------------------------------------------------------------


def run_up(config: Path, state_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PY, "-m", "facade", "up", "--config", str(config), "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=state_dir.parent,
        env={k: v for k, v in os.environ.items() if k != "FACADE_ADMIN_TOKEN"},  # so `up` generates one
    )


def stop_up(proc: subprocess.Popen[bytes]) -> None:
    """End ``facade up`` however the test went: SIGTERM first, so it stops its children (SIGKILL
    would orphan their process groups, still holding ports, after a failed assertion)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def read_until(proc: subprocess.Popen[bytes], needle: str, timeout: float) -> str:
    """Read the child's stdout until a line contains ``needle`` (or it exits, or time runs out)."""
    assert proc.stdout is not None
    text = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while needle.encode() not in text and time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                text += chunk
    return text.decode()


def started_pids(output: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"started (\S+) \(pid (\d+)\)", output)}


@pytest.mark.slow
def test_up_refuses_to_start_when_a_port_is_taken(tmp_path: Path) -> None:
    ports = free_ports(4)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        ports[2] = busy.getsockname()[1]
        config = write_shop_yaml(tmp_path / "facade.yaml", ports, tmp_path / ".facade")
        proc = subprocess.run(
            [PY, "-m", "facade", "up", "--config", str(config), "--state-dir", str(tmp_path / "st")],
            check=False, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert proc.returncode == 1
    assert f"port {ports[2]} (monolith) is already in use" in proc.stderr
    assert "started" not in proc.stdout and not (tmp_path / "st" / "logs").exists()


@pytest.mark.slow
def test_up_reports_a_child_that_crashes_at_start_and_stops_the_rest(tmp_path: Path) -> None:
    state = tmp_path / "st"
    (state / "data" / "monolith.db").mkdir(parents=True)  # a directory where the database file should be
    config = write_shop_yaml(tmp_path / "facade.yaml", free_ports(4), tmp_path / ".facade")
    with run_up(config, state) as proc:
        try:
            out, err = proc.communicate(timeout=40)
        finally:
            stop_up(proc)
    assert proc.returncode == 1, err
    assert re.search(r"monolith exited with code 1 during startup; last 20 lines of .*monolith\.log", err.decode())
    assert "unable to open database file" in err.decode()
    pids = started_pids(out.decode())
    assert set(pids) == {"monolith", "catalog"}  # the facade's stage never started
    assert eventually(lambda: all(gone(pid) for pid in pids.values()), seconds=2.0)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_up_serves_the_shop_through_the_facade_and_stops_cleanly_on_a_signal(tmp_path: Path, signum: int) -> None:
    ports = free_ports(4)
    state = tmp_path / "st"
    config = write_shop_yaml(tmp_path / "facade.yaml", ports, tmp_path / ".facade")
    with run_up(config, state) as proc:
        try:
            out = read_until(proc, "ready", timeout=40)
            assert proc.stderr is not None
            assert "facade up: ready" in out, out + (proc.stderr.read().decode() if proc.poll() is not None else "")
            pids = started_pids(out)
            assert set(pids) == {"monolith", "catalog", "facade"}
            token = re.search(r"export FACADE_ADMIN_TOKEN=(\S+)", out)
            assert token, out
            r = httpx.get(f"http://127.0.0.1:{ports[0]}/catalog/products/1", trust_env=False, timeout=5)
            assert r.status_code == 200 and r.headers["x-served-by"] == "monolith"
            assert r.json()["price"] == "19.99"
            # The generated token reached the facade: its admin API accepts it, and only it.
            reload_url = f"http://127.0.0.1:{ports[1]}/reload"
            auth = {"authorization": f"Bearer {token.group(1)}"}
            assert httpx.post(reload_url, headers=auth, trust_env=False, timeout=5).status_code == 200
            assert httpx.post(reload_url, trust_env=False, timeout=5).status_code == 401
            proc.send_signal(signum)
            proc.wait(timeout=15)
            assert proc.stdout is not None
            out += proc.stdout.read().decode()
        finally:
            stop_up(proc)
    assert proc.returncode == 0
    assert eventually(lambda: all(gone(pid) for pid in pids.values()), seconds=2.0)
    assert f"facade up: stopping (signal {int(signum)})" in out
    assert "did not stop" not in out  # everything stopped on SIGTERM, nothing needed SIGKILL


@pytest.mark.slow
def test_stack_waits_until_settled_and_names_what_never_settled(tmp_path: Path, stacks: list[Stack]) -> None:
    specs = shop_specs(tmp_path)[:1]
    looks: list[int] = []

    def settles_on_third_look(client: httpx.Client) -> str | None:
        looks.append(1)
        return None if len(looks) >= 3 else "waiting for the facade to see catalog healthy"

    stack = Stack(specs, log_dir=tmp_path / "logs", out=io.StringIO(), settled=settles_on_third_look)
    stacks.append(stack)
    stack.start()
    assert len(looks) == 3
    stack.stop()

    never = Stack(specs, log_dir=tmp_path / "logs2", out=io.StringIO(), health_timeout=3.0,
                  settled=lambda client: "waiting for the facade to see catalog healthy")  # fmt: skip
    stacks.append(never)
    with pytest.raises(ChildFailed) as info:
        never.start()
    assert info.value.name == "facade" and "still waiting for the facade to see catalog healthy" in info.value.reason


async def test_services_unseen_names_each_service_the_facade_finds_no_endpoint_in(tmp_path: Path) -> None:
    import asyncio

    from tests.backends import EchoApp
    from tests.harness import run_facade
    from tests.servers import serve_app

    async def poll(admin_url: str, until: Callable[[str | None], bool]) -> str | None:
        pending = services_unseen(admin_url)

        def look() -> str | None:
            with httpx.Client(trust_env=False, timeout=2.0) as client:
                return pending(client)

        deadline = time.monotonic() + 10
        while not until(seen := await asyncio.to_thread(look)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return seen

    (dead,) = free_ports(1)
    async with serve_app(EchoApp()) as live:
        text = f"""
        services:
          live: {{endpoints: [{live}], health_check: {{path: /, interval: 100ms, timeout: 5s}}}}
          dead: {{endpoints: [http://127.0.0.1:{dead}], health_check: {{path: /, interval: 100ms, timeout: 5s}}}}
        routes:
          - name: all
            backend: live
        """
        async with run_facade(tmp_path, text) as rt:  # `dead` is in no route, as a plan's target is
            seen = await poll(rt.admin_url, lambda s: s is not None and "dead" in s)
            assert seen is not None and seen.startswith("waiting for the facade to see dead ("), seen
            assert "live" not in seen
        async with run_facade(tmp_path, text.replace(f"http://127.0.0.1:{dead}", live)) as rt:
            assert await poll(rt.admin_url, lambda s: s is None) is None


def test_up_mesh_runs_the_shop_behind_sidecars_with_mtls_and_policy(tmp_path: Path) -> None:
    facade, admin, monolith, catalog_in, orders_in = free_ports(5)
    text = Path(default_config_path(mesh=True)).read_text()
    for old, new in (("8080", facade), ("9901", admin), ("8001", monolith), ("15102", catalog_in),
                     ("15103", orders_in)):  # fmt: skip
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    text = text.replace(
        "migrations: migrations-mesh/", f"migrations: {Path(default_config_path()).parent / 'migrations-mesh'}"
    )
    config = tmp_path / "facade-mesh.yaml"
    config.write_text(text.replace("state_dir: .facade", f"state_dir: {tmp_path / '.facade'}"))
    with run_up(config, tmp_path / "st") as proc:
        try:
            out = read_until(proc, "facade up: ready", timeout=60)
            assert "facade up: ready" in out, out
            pids = started_pids(out)
            assert set(pids) == {"monolith", "catalog", "orders", "facade", "catalog-sidecar", "orders-sidecar"}
            urls = dict(re.findall(r"^(\S+)\s+(https?://\S+)\s+\d+$", out, re.MULTILINE))
            assert urls["catalog-sidecar"] == f"https://127.0.0.1:{catalog_in}"
            token = re.search(r"export FACADE_ADMIN_TOKEN=(\S+)", out)
            assert token, out
            auth = {"authorization": f"Bearer {token.group(1)}"}
            with httpx.Client(trust_env=False, timeout=10) as client:
                # orders -> its sidecar's outbound -> mTLS -> catalog's sidecar (policy: orders may read products)
                order = {"user_id": 1, "items": [{"product_id": 1, "quantity": 2}]}
                r = client.post(urls["orders"] + "/orders", json=order)
                assert r.status_code == 201, r.text
                assert r.json()["total"]["amount"] == "39.98"
                denied = client.get(urls["orders-outbound"] + "/catalog/categories", headers={"host": "catalog"})
                assert denied.status_code == 403 and "RBAC" in denied.text
                # The facade -> the catalog's sidecar over mTLS, once the route is moved to the catalog.
                admin_url = f"http://127.0.0.1:{admin}/migrations/extract-catalog"
                assert client.post(admin_url + "/start", headers=auth, json={}).status_code == 200
                for _ in range(8):
                    status = client.post(admin_url + "/next", headers=auth, json={"force": True, "reason": "test"})
                    if status.json().get("state") == "completed":
                        break
                assert status.json()["state"] == "completed", status.text

                # "ready" means the facade itself sees every service healthy (the catalog's sidecar
                # starts after the facade, whose first health checks of it fail): no 503 to wait out.
                r = client.get(f"http://127.0.0.1:{facade}/catalog/products/1")
                assert r.status_code == 200, r.text
                assert r.headers["x-served-by"] == "catalog" and r.headers["x-facade-backend"] == "catalog"
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        finally:
            stop_up(proc)
    assert proc.returncode == 0
    assert eventually(lambda: all(gone(pid) for pid in pids.values()), seconds=2.0)
