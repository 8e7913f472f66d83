"""``facade up``: the whole demo stack on one laptop, in the foreground.

    facade up                      # the shipped sample shop, catalog and orders behind mesh sidecars (mTLS, policy)
    facade up --no-mesh            # the same over plain HTTP
    facade up -c my.yaml --state-dir /tmp/demo

The stack is a list of ``ChildSpec`` values built by a pure function from the config
(``plan_stack``): one child per loopback ``http://`` endpoint of a service the sample shop
knows how to run (``monolith``, ``catalog``, ``orders``), then the facade itself (``facade
serve --state-dir <state-dir>/facade``), then, with a ``mesh:`` section, one sidecar per meshed
service (its config endpoint is the sidecar's inbound listener; the app runs on an internal port).
Ports come from the config, so any config with free ports works; ``Stack`` only knows how to
start, probe and stop specs.

Children start in ``stage`` order (backends, the facade, sidecars) and each stage must be
healthy before the next starts, so the facade's first health checks find live backends and
the sidecars find their control plane. A sidecar's one-use bootstrap token is fetched from the
facade (``POST /mesh/tokens``) just before it starts (``Stack(prepare=...)``).
Every child runs in its own process group; stopping sends SIGTERM to each group, waits up
to ``STOP_GRACE`` seconds, then SIGKILLs what is left, so no process outlives ``facade up``.

The state dir (default ``./.facade-demo``) holds ``logs/``, ``data/`` (the shop's databases),
``facade/<config>-<hash>/`` (the facade's durable state, one per config file, so the mesh and the
plain demo never read each other's migration journal), ``admin-token`` (0600, made once and
reused, read by every command run from this directory) and, while the stack runs, ``up.json``
(the config and URLs, so ``facade routes`` & co. find the running demo without ``-c``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any, TextIO
from urllib.parse import urlsplit

from ..config import Config
from ..errors import ConfigError, FacadeError
from .console import (
    DEMO_DIR,
    EXIT_FAILURE,
    EXIT_INVALID,
    EXIT_OK,
    RUNNING_FILE,
    TOKEN_FILE,
    Progress,
    elapsed,
    render_table,
)

__all__ = [
    "DEFAULT_HEALTH_TIMEOUT",
    "DEFAULT_STATE_DIR",
    "SHOP_APPS",
    "STOP_GRACE",
    "ChildFailed",
    "ChildSpec",
    "Listen",
    "Stack",
    "StackError",
    "StackPlan",
    "default_config_path",
    "describe_exit",
    "facade_state_key",
    "fetch_bootstrap_token",
    "find_taken_ports",
    "free_loopback_ports",
    "has_mesh_sidecar",
    "install_stop_handlers",
    "load_or_create_token",
    "plan_stack",
    "register",
    "render_ready",
    "serve_has_state_dir",
]

DEFAULT_STATE_DIR = DEMO_DIR
DEFAULT_HEALTH_TIMEOUT = 20.0  # seconds, for the whole startup
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
LOG_TAIL_LINES = 20
POLL_INTERVAL = 0.1

# Services of the sample shop that ``facade up`` can run: service name -> ASGI app for uvicorn.
SHOP_APPS = {
    "monolith": "facade.sample_monolith.monolith:app",
    "catalog": "facade.sample_monolith.catalog:app",
    "orders": "facade.sample_monolith.orders:app",
}
# Where the orders service gets its prices: the first of these services the config runs.
ORDERS_PRICE_SOURCES = ("catalog", "monolith")

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# -- the plan: pure values -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listen:
    """One socket a child binds, with the label used in messages and the ready table."""

    label: str
    host: str
    port: int
    scheme: str = "http"  # "https": a sidecar's mTLS inbound listener

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in {"0.0.0.0", ""} else ("::1" if self.host == "::" else self.host)
        return f"{self.scheme}://[{host}]:{self.port}" if ":" in host else f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """A process of the stack. ``env`` is added to the inherited environment; ``listens[0]`` is
    the child's main socket (``port``), further entries are shown as rows of their own."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    health_url: str
    listens: tuple[Listen, ...]
    stage: int = 0
    bootstrap: str | None = None  # a mesh sidecar of this service: needs a bootstrap token when it starts

    def __post_init__(self) -> None:
        assert self.listens, "a child spec needs at least one listen socket"

    @property
    def port(self) -> int:
        return self.listens[0].port

    @property
    def url(self) -> str:
        return self.listens[0].url


@dataclass(frozen=True, slots=True)
class StackPlan:
    specs: tuple[ChildSpec, ...]
    notes: tuple[str, ...] = ()  # what the config names but ``facade up`` does not start, and why
    admin_url: str = ""
    facade_url: str = ""


class StackError(FacadeError):
    """The config cannot be turned into a stack (e.g. two children on one port)."""


def _parse_listen(value: str, *, what: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``"[::1]:8080"`` / ``":8080"`` -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise StackError(f"{what}: expected host:port, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port_text)


def plan_stack(
    config: Config,
    *,
    config_path: str,
    state_dir: str,
    python: str,
    admin_token: str | None,
    pythonpath: str | None = None,
    facade_state_dir: str | None = None,
    sidecars: bool = False,
    internal_ports: Iterator[int] | None = None,
) -> StackPlan:
    """The children ``facade up`` runs for ``config``: the shop apps behind each service's loopback
    ``http://`` endpoints (stage 0), then the facade (stage 1), then mesh sidecars (stage 2).
    Pure: no files, ports or processes.

    ``facade_state_dir`` is passed as ``facade serve --state-dir`` (None: the config's own
    ``state_dir``). ``sidecars`` says whether this build has ``facade mesh sidecar``; without it
    the services talk plain HTTP on loopback and the plan says so in a note.

    With sidecars and a ``mesh:`` section, a shop service whose endpoint is a loopback ``https://``
    URL with an ``identity`` is meshed: the endpoint is its sidecar's inbound listener, the app
    runs on a port from ``internal_ports`` (as do the sidecar's admin and, for ``orders``, its
    outbound listener, through which orders reaches the catalog with ``Host: catalog``).
    """
    common_env: list[tuple[str, str]] = [("PYTHONUNBUFFERED", "1")]
    if pythonpath:
        common_env.append(("PYTHONPATH", pythonpath))
    specs: list[ChildSpec] = []
    notes: list[str] = []
    meshed = _meshed_services(config) if sidecars else {}
    if meshed and internal_ports is None:
        raise StackError("a meshed stack needs internal_ports for the apps behind the sidecars")
    ports = internal_ports or iter(())
    admin_url = Listen("admin", *_parse_listen(config.admin.listen, what="admin.listen")).url
    mesh = _plan_mesh(meshed, ports, python=python, control_plane=admin_url, env=tuple(common_env))
    for service in config.services:
        app = SHOP_APPS.get(service.name)
        endpoints = [e for group in service.groups for e in group.endpoints]
        if app is None:
            notes.append(
                f"service {service.name!r} is not part of the sample shop: start it yourself ({', '.join(endpoints)})"
            )
            continue
        db = os.path.join(state_dir, "data", f"{service.name}.db")
        health_path = service.health_check.path if service.health_check else "/healthz"
        for i, endpoint in enumerate(endpoints):
            name = service.name if len(endpoints) == 1 else f"{service.name}-{i + 1}"
            parts = urlsplit(endpoint)
            if service.name in mesh.app_ports:  # behind its sidecar, on an internal port
                listen = Listen(name, "127.0.0.1", mesh.app_ports[service.name])
            elif parts.scheme == "http" and parts.hostname in _LOOPBACK and parts.port is not None:
                listen = Listen(name, parts.hostname, parts.port)
            else:
                notes.append(f"{service.name}: {endpoint} is not a loopback http:// endpoint with a port; not started")
                continue
            argv = (
                python, "-m", "uvicorn", app,
                "--host", listen.host, "--port", str(listen.port),
                "--http", "httptools", "--no-access-log", "--timeout-graceful-shutdown", "3",
            )  # fmt: skip
            # Replicas of one service share its database (SQLite WAL handles several processes).
            child_env: tuple[tuple[str, str], ...] = (*common_env, ("SHOP_DB", db), ("CATALOG_DB", db))
            if service.name == "orders":
                price_source = mesh.catalog_via or _price_source(config)
                if mesh.catalog_via:
                    child_env = (*child_env, ("ORDERS_CATALOG_HOST", "catalog"))
                if price_source is None:
                    notes.append("orders: no catalog or monolith service with a loopback http:// endpoint to price "
                                 "orders from; its POST /orders will answer 503")  # fmt: skip
                    price_source = "http://127.0.0.1:9"  # discard port: refused at once, reported as 503
                child_env = (*child_env, ("ORDERS_DB", db), ("ORDERS_CATALOG_URL", price_source))
            specs.append(ChildSpec(name, argv, child_env, listen.url + health_path, (listen,), stage=0))

    facade_host, facade_port = _parse_listen(config.listen, what="listen")
    admin_host, admin_port = _parse_listen(config.admin.listen, what="admin.listen")
    facade_listen = Listen("facade", facade_host, facade_port)
    admin_listen = Listen("admin", admin_host, admin_port)
    env = list(common_env)
    if admin_token:
        env.append(("FACADE_ADMIN_TOKEN", admin_token))
    serve_argv: tuple[str, ...] = (python, "-m", "facade", "serve", "-c", config_path)
    if facade_state_dir is not None:
        serve_argv += ("--state-dir", facade_state_dir)
    serve_argv += ("--workers", "auto")  # one per core (docs/workers.md)
    if not sidecars and any(s.name in SHOP_APPS for s in config.services):
        notes.append("mesh: this build has no `facade mesh sidecar`; services talk plain HTTP on loopback "
                     "(no mTLS or policy between them)")  # fmt: skip
    elif sidecars and not meshed and any(s.name in SHOP_APPS for s in config.services):
        notes.append("mesh: no sidecars in this config (no mesh: section or no https:// service with an identity); "
                     "`facade up` without --no-mesh runs the shop behind sidecars")  # fmt: skip
    specs.append(
        ChildSpec(
            "facade",
            serve_argv,
            tuple(env),
            admin_listen.url + "/readyz",
            (facade_listen, admin_listen),
            stage=1,
        )
    )
    specs.extend(mesh.sidecars)
    _check_distinct_ports(specs)
    return StackPlan(tuple(specs), tuple(notes), admin_url=admin_listen.url, facade_url=facade_listen.url)


@dataclass(frozen=True, slots=True)
class _MeshPlan:
    app_ports: dict[str, int]  # meshed service -> the port its app listens on, behind the sidecar
    sidecars: tuple[ChildSpec, ...]
    catalog_via: str | None  # orders' sidecar outbound URL when both orders and catalog are meshed


def _meshed_services(config: Config) -> dict[str, Listen]:
    """Shop services that run behind a sidecar: service -> the sidecar's inbound listener."""
    if config.mesh is None:
        return {}
    meshed = {}
    for service in config.services:
        endpoints = [e for group in service.groups for e in group.endpoints]
        if service.name not in SHOP_APPS or service.identity is None or len(endpoints) != 1:
            continue
        parts = urlsplit(endpoints[0])
        if parts.scheme == "https" and parts.hostname in _LOOPBACK and parts.port is not None:
            meshed[service.name] = Listen(f"{service.name}-sidecar", parts.hostname, parts.port, "https")
    return meshed


def _plan_mesh(
    meshed: dict[str, Listen],
    ports: Iterator[int],
    *,
    python: str,
    control_plane: str,
    env: tuple[tuple[str, str], ...],
) -> _MeshPlan:
    app_ports: dict[str, int] = {}
    sidecars: list[ChildSpec] = []
    catalog_via = None
    for name, inbound in meshed.items():
        app_ports[name] = next(ports)
        admin = Listen(f"{name}-sidecar-admin", "127.0.0.1", next(ports))
        argv: tuple[str, ...] = (
            python, "-m", "facade", "mesh", "sidecar", "--service", name, "--control-plane", control_plane,
            "--inbound", f"{inbound.host}:{inbound.port}", "--app", f"http://127.0.0.1:{app_ports[name]}",
            "--admin", f"{admin.host}:{admin.port}",
        )  # fmt: skip
        listens = [inbound]
        if name == "orders" and "catalog" in meshed:
            # The orders app calls the catalog through its own sidecar: plain HTTP on loopback in,
            # mTLS to the catalog's sidecar out, where the catalog's policy decides.
            outbound = Listen("orders-outbound", "127.0.0.1", next(ports))
            argv += ("--outbound", f"{outbound.host}:{outbound.port}")
            listens.append(outbound)
            catalog_via = outbound.url
        listens.append(admin)
        sidecars.append(ChildSpec(f"{name}-sidecar", argv, env, admin.url + "/healthz", tuple(listens), stage=2,
                                  bootstrap=name))  # fmt: skip
    return _MeshPlan(app_ports, tuple(sidecars), catalog_via)


def _price_source(config: Config) -> str | None:
    for name in ORDERS_PRICE_SOURCES:
        service = config.service(name)
        if service is None:
            continue
        for endpoint in (e for group in service.groups for e in group.endpoints):
            parts = urlsplit(endpoint)
            if parts.scheme == "http" and parts.hostname in _LOOPBACK and parts.port is not None:
                return endpoint.rstrip("/")
    return None


def _check_distinct_ports(specs: Iterable[ChildSpec]) -> None:
    seen: dict[int, str] = {}
    for spec in specs:
        for listen in spec.listens:
            if listen.port in seen:
                raise StackError(f"port {listen.port} is used twice: by {seen[listen.port]} and by {listen.label}")
            seen[listen.port] = listen.label


def render_ready(
    plan: StackPlan, pids: dict[str, int], *, config_path: str, token: str | None, log_dir: str,
    token_file: str | None = None, found_here: bool = True,
) -> str:  # fmt: skip
    """The table (facade first, then admin, then backends) and what to try next.

    ``found_here``: the state dir is ``./.facade-demo``, so commands run from this directory find the
    config and the token by themselves; otherwise the commands shown carry ``-c CONFIG``."""
    facade = next(s for s in plan.specs if s.name == "facade")
    rows = [(listen.label, listen.url, pids.get(facade.name, "")) for listen in facade.listens]
    rows.append(("dashboard", plan.admin_url + "/ui", pids.get(facade.name, "")))  # served by the admin listener
    rows += [
        (listen.label, listen.url, pids.get(spec.name, ""))
        for spec in plan.specs
        if spec.name != "facade"
        for listen in spec.listens
    ]
    url = plan.facade_url
    c = "" if found_here else f" -c {config_path}"
    lines = [
        render_table(("NAME", "URL", "PID"), rows),
        "",
        "try:",
        f"  curl -si {url}/catalog/products/1            # x-served-by tells who answered",
        f"  curl -s '{url}/catalog/products?q=mug'",
        f"  curl -s -X POST {url}/orders -H 'content-type: application/json' \\",
        '       -d \'{"user_id": 1, "items": [{"product_id": 1, "quantity": 2}]}\'',
        f"  facade routes{c}",
        f"  facade validate{c}",
        "",
        "next: rehearse a cutover",
        f"  facade migrate list{c}",
        f"  facade migrate plan extract-catalog{c}",
        f"  facade migrate start extract-catalog{c}",
        f"  facade migrate next extract-catalog{c}      # after the hold, when the gates pass",
        f"  facade compare catalog{c}                   # old vs new, side by side",
        f"  facade loadtest extract-catalog --quick{c}",
    ]
    if found_here:
        lines += ["", "commands run from this directory find this stack's config and admin token by themselves"]
    if token:
        saved = f" (saved in {token_file}, 0600)" if token_file else ""
        lines += ["", f"admin token: {token}{saved}", f"  export FACADE_ADMIN_TOKEN={token}"]
    else:
        lines += ["", "admin token: the config's admin.token (or $FACADE_ADMIN_TOKEN)"]
    lines += [f"logs: {log_dir}"]
    for note in plan.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


# -- the edge: ports, processes, health -------------------------------------------------------


def find_taken_ports(listens: Iterable[Listen]) -> list[str]:
    """Try-bind every socket the stack needs; one message per port already in use."""
    taken = []
    for listen in listens:
        host = "127.0.0.1" if listen.host in {"localhost", ""} else listen.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # uvicorn binds with SO_REUSEADDR too: a port in TIME_WAIT is free, a listening one is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, listen.port))
            except OSError as exc:
                taken.append(f"port {listen.port} ({listen.label}) is already in use: {exc.strerror or exc}")
    return taken


class ChildFailed(FacadeError):
    """A child exited, or never became healthy. ``exit_code`` is None while it still runs."""

    def __init__(self, name: str, reason: str, *, exit_code: int | None, log_path: str, log_tail: str) -> None:
        self.name, self.reason, self.exit_code = name, reason, exit_code
        self.log_path, self.log_tail = log_path, log_tail
        super().__init__(f"{name} {reason}")

    def report(self) -> str:
        tail = "\n".join("    " + line for line in self.log_tail.splitlines()) or "    (empty)"
        return f"{self.name} {self.reason}; last {LOG_TAIL_LINES} lines of {self.log_path}:\n{tail}"


def describe_exit(code: int) -> str:
    """``exited with code 1``, or for a negative Popen code ``was killed by SIGKILL (signal 9)``."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "an unknown signal"
    return f"was killed by {name} (signal {-code})"


class Interrupted(FacadeError):
    """A stop signal arrived while the stack was starting."""


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))  # the tail of a long log is in its last 64 KiB
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Running:
    spec: ChildSpec
    process: subprocess.Popen[bytes]
    log_path: Path


class Stack:
    """Starts specs as process groups, probes their health, supervises and stops them."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        log_dir: Path,
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
        out: TextIO | None = None,
        prepare: Callable[[ChildSpec], ChildSpec] | None = None,
        settled: Callable[[Any], str | None] | None = None,
    ) -> None:
        self.specs = tuple(specs)
        # After every child answers its own health check: what the stack still waits for, given an
        # httpx.Client (None = ready). The facade's own health checks of the services behind the
        # sidecars start failing before the sidecars exist, so "every child is up" is not yet
        # "the facade routes to every service".
        self.settled = settled
        # Called just before a child starts (a sidecar's bootstrap token exists only once the
        # facade runs); raises StackError to stop the startup.
        self.prepare = prepare or (lambda spec: spec)
        self.log_dir = log_dir
        self.health_timeout = health_timeout
        self.out = out or sys.stdout
        self.running: dict[str, _Running] = {}
        self.stop_signal: int | None = None

    def __repr__(self) -> str:
        return f"Stack(specs={[s.name for s in self.specs]}, running={list(self.running)})"

    @property
    def pids(self) -> dict[str, int]:
        return {name: r.process.pid for name, r in self.running.items()}

    def request_stop(self, signum: int) -> None:
        """Called from a signal handler: the loops notice within ``POLL_INTERVAL``."""
        self.stop_signal = signum

    def start(self, *, wait: bool = True) -> None:
        """Start every stage; with ``wait``, each stage must be healthy before the next starts.
        Raises ChildFailed or Interrupted; the caller stops what did start."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.health_timeout
        for stage in sorted({s.stage for s in self.specs}):
            group = [s for s in self.specs if s.stage == stage]
            for spec in group:
                self._spawn(self.prepare(spec))
            if wait:
                self._wait_healthy(group, deadline)
        if wait and self.settled is not None:
            self._wait_settled(self.settled, deadline)

    def _spawn(self, spec: ChildSpec) -> None:
        log_path = self.log_dir / f"{spec.name}.log"
        env = {**os.environ, **dict(spec.env)}
        with open(log_path, "wb") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(
                spec.argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: Ctrl-C reaches only us, we stop the children
            )  # fmt: skip
        self.running[spec.name] = _Running(spec, process, log_path)
        print(f"started {spec.name} (pid {process.pid}) on {spec.url}, log {log_path}", file=self.out, flush=True)

    def _wait_healthy(self, group: Sequence[ChildSpec], deadline: float) -> None:
        import httpx

        pending = {s.name for s in group if s.name in self.running}
        progress = Progress(self.out)  # a live line on a terminal, one line per change in a log
        since = time.monotonic()
        try:
            with httpx.Client(timeout=1.0, trust_env=False) as client:
                while pending:
                    what = "its health check" if len(pending) == 1 else "their health checks"
                    progress.update(f"waiting for {', '.join(sorted(pending))} to answer {what}", elapsed(since))
                    for name in sorted(pending):
                        running = self.running[name]
                        self._raise_if_exited(running, during="startup")
                        try:
                            status = client.get(running.spec.health_url).status_code
                        except httpx.HTTPError:
                            continue
                        if 200 <= status < 400:
                            pending.discard(name)
                    if not pending:
                        break
                    if self.stop_signal is not None:
                        raise Interrupted(f"stopped by signal {self.stop_signal} during startup")
                    if time.monotonic() > deadline:
                        name = min(pending)
                        running = self.running[name]
                        raise ChildFailed(
                            name,
                            f"did not become healthy at {running.spec.health_url} within {self.health_timeout:g} s",
                            exit_code=None, log_path=str(running.log_path), log_tail=log_tail(running.log_path),
                        )  # fmt: skip
                    time.sleep(POLL_INTERVAL)
        finally:
            progress.clear()

    def _wait_settled(self, settled: Callable[[Any], str | None], deadline: float) -> None:
        import httpx

        progress = Progress(self.out)
        since = time.monotonic()
        try:
            with httpx.Client(timeout=1.0, trust_env=False) as client:
                while (pending := settled(client)) is not None:
                    progress.update(pending, elapsed(since))
                    for running in self.running.values():
                        self._raise_if_exited(running, during="startup")
                    if self.stop_signal is not None:
                        raise Interrupted(f"stopped by signal {self.stop_signal} during startup")
                    if time.monotonic() > deadline:
                        facade = self.running.get("facade")
                        raise ChildFailed(
                            "facade", f"still {pending} after {self.health_timeout:g} s", exit_code=None,
                            log_path=str(facade.log_path) if facade else "",
                            log_tail=log_tail(facade.log_path) if facade else "",
                        )  # fmt: skip
                    time.sleep(POLL_INTERVAL)
        finally:
            progress.clear()

    def _raise_if_exited(self, running: _Running, *, during: str) -> None:
        code = running.process.poll()
        if code is not None:
            raise ChildFailed(
                running.spec.name, f"{describe_exit(code)} during {during}", exit_code=code,
                log_path=str(running.log_path), log_tail=log_tail(running.log_path),
            )  # fmt: skip

    def supervise(self) -> ChildFailed | None:
        """Block until a stop signal (-> None) or a child exits (-> its failure)."""
        while self.stop_signal is None:
            for running in self.running.values():
                try:
                    self._raise_if_exited(running, during="operation")
                except ChildFailed as exited:
                    return exited
            time.sleep(POLL_INTERVAL)
        return None

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every process group (the facade first, so it stops sending to the backends),
        wait up to ``grace`` seconds for all of them, then SIGKILL the groups still alive."""
        order = list(reversed(self.running.values()))
        for running in order:
            _signal_group(running.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_group_alive(r) for r in order):
            time.sleep(POLL_INTERVAL / 2)
        for running in order:
            if _group_alive(running):
                print(f"{running.spec.name} did not stop within {grace:g} s; killing it", file=self.out, flush=True)
                _signal_group(running.process.pid, signal.SIGKILL)
        for running in order:
            try:
                running.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
                pass


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(running: _Running) -> bool:
    """Whether any process of the child's group still runs. Zombies do not count: an orphaned
    grandchild's zombie lingers until init reaps it, and it holds no port or file."""
    running.process.poll()  # reap our own child, the group leader
    pgid = running.process.pid
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:  # no procfs (macOS): ask the kernel about the group as a whole
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # exited while we looked
        # "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


# -- the command ----------------------------------------------------------------------------


def default_config_path(*, mesh: bool = False) -> str:
    """The shipped demo config (``mesh``: the one behind sidecars), wherever ``sample_monolith`` is installed."""
    return str(resources.files("facade.sample_monolith").joinpath("facade-mesh.yaml" if mesh else "facade.yaml"))


def register(sub: Any) -> None:
    p = sub.add_parser("up", help="run the demo stack (sample shop + facade) in the foreground; Ctrl-C stops it")
    p.add_argument(
        "-c", "--config", default=None, metavar="FILE",
        help="config file (default: the shipped demo config, see --mesh)",
    )  # fmt: skip
    p.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
        help=f"logs, databases, the facade's state (one per config) and the admin token "
             f"(default: ./{DEFAULT_STATE_DIR})",
    )  # fmt: skip
    p.add_argument(
        "--mesh",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with the shipped config: the shop's carved services behind mTLS sidecars, with the CA and "
        "policy (sample_monolith/facade-mesh.yaml; the default); --no-mesh: plain HTTP "
        "(sample_monolith/facade.yaml)",
    )
    p.add_argument("--no-wait", action="store_true", help="do not wait for health checks before printing the table")
    p.set_defaults(func=cmd_up)


def facade_state_key(config_path: str) -> str:
    """The facade state's folder name for a config: ``facade-mesh-1a2b3c4d``. Two configs (the mesh and
    the plain demo) never share a migration journal, whose applied steps one plan file cannot undo."""
    stem = Path(config_path).stem or "config"
    return f"{stem}-{hashlib.sha256(os.path.abspath(config_path).encode()).hexdigest()[:8]}"


def load_or_create_token(path: Path) -> str:
    """The admin token saved at ``path``, or a new one written there with mode 0600. Reused across runs,
    so an ``export FACADE_ADMIN_TOKEN`` from yesterday still works."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)  # also when the file existed (empty) with a wider mode
    return token


def cmd_up(args: argparse.Namespace) -> int:
    if args.config is not None and not os.path.isfile(args.config):
        print(f"facade up: cannot read the config {args.config} (from -c): no such file", file=sys.stderr)
        return EXIT_INVALID
    config_path = os.path.abspath(args.config or default_config_path(mesh=args.mesh))
    state_dir = Path(args.state_dir).resolve()
    which = ("the shipped demo, " + ("mesh on: catalog and orders behind mTLS sidecars; --no-mesh for plain HTTP"
             if args.mesh else "plain HTTP (--no-mesh); without it the services run behind mesh sidecars")
             if args.config is None else "from -c")  # fmt: skip
    print(f"facade up: config {config_path} ({which})", flush=True)
    try:
        config = load_stack_config(config_path)
        for warning in getattr(config, "warnings", ()):
            print(str(warning), file=sys.stderr)
        # The config's own admin.token wins in the facade; only make (or reuse) one when it has none.
        token = None if config.admin.token else load_or_create_token(state_dir / TOKEN_FILE)
        plan = plan_stack(
            config, config_path=config_path, state_dir=str(state_dir), python=sys.executable, admin_token=token,
            pythonpath=_pythonpath(),
            facade_state_dir=(str(state_dir / "facade" / facade_state_key(config_path)) if serve_has_state_dir()
                              else None),
            sidecars=has_mesh_sidecar(), internal_ports=free_loopback_ports(),
        )  # fmt: skip
    except ConfigError as exc:
        for problem in exc.problems:
            print(str(problem), file=sys.stderr)
        return EXIT_INVALID
    except StackError as exc:
        print(f"facade up: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"facade up: cannot read {config_path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID

    # 1. Every port must be free before anything starts: a half-started stack is worse than none.
    taken = find_taken_ports(listen for spec in plan.specs for listen in spec.listens)
    if taken:
        for message in taken:
            print(f"facade up: {message}", file=sys.stderr)
        return EXIT_FAILURE

    (state_dir / "data").mkdir(parents=True, exist_ok=True)
    admin_token = token or config.admin.token

    def prepare(spec: ChildSpec) -> ChildSpec:
        if spec.bootstrap is None:
            return spec
        bootstrap = fetch_bootstrap_token(plan.admin_url, admin_token, spec.bootstrap)
        return replace(spec, env=(*spec.env, ("FACADE_MESH_TOKEN", bootstrap)))

    stack = Stack(plan.specs, log_dir=state_dir / "logs", prepare=prepare, settled=services_unseen(plan.admin_url))
    restore = install_stop_handlers(stack.request_stop)
    try:
        return _run(stack, plan, args, config_path=config_path, token=token, state_dir=state_dir)
    finally:
        # 5. Whatever happened, nothing we started outlives us (and nothing points at it any more).
        (state_dir / RUNNING_FILE).unlink(missing_ok=True)
        stack.stop()
        restore()


def _write_running(state_dir: Path, plan: StackPlan, config_path: str) -> None:
    """``up.json``: what commands run from this directory read to find the running stack."""
    doc = {"config": config_path, "facade": plan.facade_url, "admin": plan.admin_url, "pid": os.getpid()}
    tmp = state_dir / (RUNNING_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, state_dir / RUNNING_FILE)


def _run(
    stack: Stack, plan: StackPlan, args: argparse.Namespace, *, config_path: str, token: str | None, state_dir: Path
) -> int:
    # 2 + 3. Start the stages, each healthy before the next.
    try:
        stack.start(wait=not args.no_wait)
    except ChildFailed as startup_failure:
        print(f"facade up: {startup_failure.report()}", file=sys.stderr, flush=True)
        print("facade up: stopping the rest", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    except Interrupted:
        print("facade up: interrupted during startup; stopping", file=sys.stderr, flush=True)
        return EXIT_OK
    except StackError as exc:  # a sidecar's bootstrap token could not be had
        print(f"facade up: {exc}; stopping the rest", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    # 4. Tell the user (and the commands they run next) where everything is.
    _write_running(state_dir, plan, config_path)
    found_here = state_dir == Path(DEMO_DIR).resolve()
    print(render_ready(plan, stack.pids, config_path=config_path, token=token, log_dir=str(stack.log_dir),
                       token_file=str(state_dir / TOKEN_FILE) if token else None, found_here=found_here))  # fmt: skip
    print("facade up: ready (Ctrl-C stops everything)", flush=True)
    # 5. Stay in the foreground until a signal, or until a child dies.
    failure = stack.supervise()
    if failure is not None:
        print(f"facade up: {failure.report()}", file=sys.stderr, flush=True)
        print("facade up: stopping the rest", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    print(f"facade up: stopping (signal {stack.stop_signal})", flush=True)
    return EXIT_OK


def install_stop_handlers(on_signal: Callable[[int], None]) -> Callable[[], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        on_signal(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore


def services_unseen(admin_url: str) -> Callable[[Any], str | None]:
    """The stack's last readiness condition: the facade sees an available endpoint in every service
    (``GET /upstreams``). Returns what is still awaited, naming each service and its last health check."""

    def pending(client: Any) -> str | None:
        try:
            services = client.get(admin_url + "/upstreams").json()["services"]
        except Exception as exc:  # noqa: BLE001 - any failure to read it means "not yet"
            return f"waiting for the facade's view of its services ({type(exc).__name__})"
        unseen = []
        for pool in services.values():
            if pool["total"] and not pool["available"]:
                details = {ep.get("last_health_check") for g in pool["groups"] for ep in g["endpoints"]} - {None, ""}
                unseen.append(pool["service"] + (f" ({'; '.join(sorted(details))})" if details else ""))
        return f"waiting for the facade to see {', '.join(unseen)} healthy" if unseen else None

    return pending


def fetch_bootstrap_token(admin_url: str, admin_token: str | None, service: str) -> str:
    """A one-use bootstrap token for ``service``'s sidecar from the facade (``POST /mesh/tokens``)."""
    import httpx

    headers = {"authorization": f"Bearer {admin_token}"} if admin_token else {}
    try:
        response = httpx.post(f"{admin_url}/mesh/tokens", json={"service": service}, headers=headers, timeout=5.0,
                              trust_env=False)  # fmt: skip
    except httpx.HTTPError as exc:
        raise StackError(f"cannot get a bootstrap token for {service}'s sidecar from {admin_url}: {exc}") from None
    if response.status_code != 200:
        try:
            detail = str(response.json().get("error") or response.text[:200])
        except (ValueError, AttributeError):
            detail = response.text[:200] or response.reason_phrase
        raise StackError(f"the facade refused a bootstrap token for {service}'s sidecar: {detail}")
    token = response.json().get("token")
    if not isinstance(token, str):
        raise StackError(f"the facade answered without a bootstrap token for {service}'s sidecar: {response.text[:200]}")
    return token


def free_loopback_ports() -> Iterator[int]:
    """Ports the OS hands out on 127.0.0.1, for the processes behind sidecars (nobody else dials them)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            yield int(sock.getsockname()[1])


def serve_has_state_dir() -> bool:
    """Whether this build's ``facade serve`` takes ``--state-dir`` (older builds only read the config's)."""
    from . import commands

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    _, unknown = parser.parse_known_args(["serve", "--state-dir", "probe"])
    return not unknown


def has_mesh_sidecar() -> bool:
    """Whether this build's CLI has ``facade mesh sidecar`` (the command ``facade up`` would run)."""
    from .main import build_parser

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:  # argparse keeps subparsers only here
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    mesh = subcommands(build_parser()).get("mesh")
    return mesh is not None and "sidecar" in subcommands(mesh)


def _pythonpath() -> str:
    """Children import the same ``facade`` / ``sample_monolith`` as this process, installed or not."""
    root = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return root + (os.pathsep + existing if existing else "")


def load_stack_config(path: str) -> Config:
    """The config, validated by ``facade.config.load_config`` (raises ConfigError, OSError)."""
    from ..config import load_config

    return load_config(path)
