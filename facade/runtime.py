"""The running facade: immutable snapshots, the swap that hot reload and migrations share, listeners.

A ``Snapshot`` is everything the hot path reads for one request: config, compiled route table,
the upstream pools, the migration splits in force. It is never mutated; a reload or a
migration transition builds a new one and swaps ``SnapshotHolder.current``. A request reads
the reference once at its start, so in-flight requests finish on the table they began with.

(The upstream pools are the one shared, long-lived part: their health and ejection state
must survive reloads. ``Upstreams.update`` keeps the pools of unchanged services.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import uvicorn

from .config import Config, Route, check_config
from .error_log import RecentErrors
from .errors import ConfigError, Problem
from .listener import HeadLimits, guarded_protocol
from .normalize import canonical_route_path
from .routing import RouteTable
from .split import Split, WeightedChoice, decide
from .telemetry import Telemetry
from .upstream import Upstreams

__all__ = ["FacadeRuntime", "ReloadResult", "Snapshot", "SnapshotHolder", "build_snapshot", "parse_listen"]

logger = logging.getLogger("facade")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """One immutable view of the facade's routing state."""

    config: Config
    table: RouteTable
    upstreams: Upstreams
    version: int
    splits: Mapping[str, Split] = field(default_factory=dict)  # route name -> split in force
    weighted: Mapping[str, WeightedChoice] = field(default_factory=dict)  # route name -> weights (2+ backends)
    trusted: tuple[_Network, ...] = ()
    telemetry: Any = None  # facade.telemetry.Telemetry
    shadow: Any = None  # facade.shadow.ShadowSender
    built_at: float = field(default_factory=time.time)

    def pick_backend(self, route: Route, rand: float) -> str:
        if len(route.backends) == 1:
            return route.backends[0].service
        return self.weighted[route.name].pick(rand)

    def decide(self, split: Split, headers: Sequence[tuple[bytes, bytes]], rand: Callable[[], float]) -> Any:
        return decide(split, headers=headers, rand=rand())

    def is_trusted(self, ip: str) -> bool:
        if not self.trusted or not ip:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)


class _QuietAborts(logging.Filter):
    """uvicorn logs any exception escaping the app with a traceback; an aborted response is expected
    (the upstream failed mid-body, already logged once by the proxy), so keep it to one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "DownstreamAborted":
            record.exc_info = None
            record.msg, record.args = "response aborted: %s", (exc,)
        return True


class SnapshotHolder:
    """The one mutable reference the hot path reads."""

    __slots__ = ("current",)

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot


def build_snapshot(
    config: Config,
    upstreams: Upstreams,
    *,
    version: int,
    splits: Mapping[str, Split] | None = None,
    telemetry: Any = None,
    shadow: Any = None,
) -> Snapshot:
    """Compile a config (and the migration splits in force) into a Snapshot. Pure but for reading ``upstreams``."""
    table = RouteTable.compile(config.routes, canonicalize=canonical_route_path, source=config.source)
    weighted = {
        r.name: WeightedChoice.from_backends([(b.service, b.weight) for b in r.backends])
        for r in config.routes
        if len(r.backends) > 1
    }
    trusted = tuple(ipaddress.ip_network(c, strict=False) for c in config.trusted_proxies)
    return Snapshot(
        config=config,
        table=table,
        upstreams=upstreams,
        version=version,
        splits=dict(splits or {}),
        weighted=weighted,
        trusted=trusted,
        telemetry=telemetry,
        shadow=shadow,
    )


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    version: int
    trigger: str
    at: float
    problems: tuple[Problem, ...] = ()
    changed: bool = True
    config_version: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "version": self.version,
            "config_version": self.config_version,
            "trigger": self.trigger,
            "at": self.at,
            "changed": self.changed,
            "problems": [p.to_json() | {"text": str(p)} for p in self.problems],
        }


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``"[::1]:8080"`` -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def bind(listen: str) -> socket.socket:
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when proto says TCP
    # (with proto 0 every response written in two parts waits ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {listen}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _url(sock: socket.socket, scheme: str) -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class FacadeRuntime:
    """The facade process: listener + admin listener + reload, over one SnapshotHolder.

    ``start()`` binds and serves; ``reload()`` validates, compiles and swaps; ``stop()`` drains.
    """

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        watch_interval: float | None = 1.0,
        overrides: Callable[[Config], Config] | None = None,
    ) -> None:
        self.config_path = config_path or config.source
        # Command-line overrides (--listen, --state-dir, ...) apply to every reloaded config too.
        self.overrides = overrides or (lambda c: c)
        config = self.overrides(config)
        self.watch_interval = watch_interval
        self.upstreams = Upstreams(config.services)
        # Telemetry outlives every snapshot: it holds the history gates and reports read.
        self.telemetry: Any = Telemetry()
        self.shadow: Any = None
        self.extensions: list[Any] = []  # features that add admin routes / react to swaps
        self.holder = SnapshotHolder(build_snapshot(config, self.upstreams, version=1, telemetry=self.telemetry))
        self.errors = RecentErrors()  # upstream failures' details, for GET /errors (clients see none)
        self.head_limits = HeadLimits(
            max_head_bytes=config.limits.max_request_headers,
            header_timeout=config.limits.header_timeout,
            max_headers_count=config.limits.max_request_headers_count,
            underscores=config.headers_with_underscores,
        )
        # Snapshot versions count every swap (reloads and migration steps); config_version counts
        # only configs applied from the file, which is what an operator means by "which config".
        self.config_version = 1
        self.last_reload: ReloadResult = ReloadResult(True, 1, "start", time.time())
        self.splits: dict[str, Split] = {}
        self.draining = False
        self._reload_lock = asyncio.Lock()
        self._servers: list[uvicorn.Server] = []
        self._sockets: list[socket.socket] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = asyncio.Event()
        self.url = ""
        self.admin_url = ""

    def __repr__(self) -> str:
        return f"<FacadeRuntime {self.url or 'not started'} config={self.config_path!r} v{self.version}>"

    @property
    def config(self) -> Config:
        return self.holder.current.config

    @property
    def version(self) -> int:
        return self.holder.current.version

    # -- snapshots -------------------------------------------------------------------------

    def swap(self, config: Config | None = None, *, splits: Mapping[str, Split] | None = None) -> Snapshot:
        """Build a new snapshot from ``config`` (default: the current one) and the splits, and swap it in."""
        current = self.holder.current
        if splits is not None:
            self.splits = dict(splits)
        snapshot = build_snapshot(
            config or current.config,
            self.upstreams,
            version=current.version + 1,
            splits=self.splits,
            telemetry=self.telemetry,
            shadow=self.shadow,
        )
        self.holder.current = snapshot  # the swap: one reference assignment
        return snapshot

    async def reload(self, trigger: str = "api") -> ReloadResult:
        """Validate, compile, swap. An invalid file changes nothing and reports every problem."""
        async with self._reload_lock:
            # 1. Read and validate the whole file; any error keeps the running config.
            config, problems = await asyncio.to_thread(check_config, self.config_path)
            errors = tuple(p for p in problems if p.severity == "error")
            if config is not None and not errors:
                config = self.overrides(config)
            if config is None or errors:
                for p in errors:
                    logger.error("reload (%s) rejected: %s", trigger, p)
                self.last_reload = ReloadResult(
                    False, self.version, trigger, time.time(), errors or tuple(problems), config_version=self.config_version
                )
                return self.last_reload
            current = self.holder.current.config
            if config.sha256 == current.sha256:
                # The config is unchanged, but the files it points at (migration plans) may not be:
                # features re-read their own sources and may refuse them, changing nothing.
                found: list[Problem] = list(problems)
                for ext in self.extensions:
                    reread = getattr(ext, "reload_sources", None)
                    if reread is not None:
                        found.extend(await reread(trigger))
                ok = not any(p.severity == "error" for p in found)
                self.last_reload = ReloadResult(
                    ok, self.version, trigger, time.time(), tuple(found), False, config_version=self.config_version
                )
                return self.last_reload
            # 2. Compile the new table first: if anything fails here nothing was touched yet.
            try:
                build_snapshot(config, self.upstreams, version=0)
                for ext in self.extensions:
                    check = getattr(ext, "check_config", None)
                    if check is not None:
                        check(config)
            except ConfigError as exc:
                self.last_reload = ReloadResult(
                    False, self.version, trigger, time.time(), tuple(exc.problems), config_version=self.config_version
                )
                return self.last_reload
            if config.listen != current.listen or config.admin.listen != current.admin.listen:
                logger.warning("reload: listen addresses changed; they take effect on restart")
            # 3. Bring the upstream pools in line (unchanged services keep their pools and state).
            await self.upstreams.update(config.services)
            # 4. Swap. Requests already running finish on the snapshot they started with.
            self.head_limits.max_head_bytes = config.limits.max_request_headers
            self.head_limits.header_timeout = config.limits.header_timeout
            self.head_limits.max_headers_count = config.limits.max_request_headers_count
            self.head_limits.underscores = config.headers_with_underscores
            for ext in self.extensions:
                hook = getattr(ext, "config_changed", None)
                if hook is not None:
                    await hook(config)
            snapshot = self.swap(config)
            self.config_version += 1
            logger.info(
                "reload (%s): config %s applied as config version %d (snapshot %d)",
                trigger, config.sha256[:12], self.config_version, snapshot.version,
            )
            self.last_reload = ReloadResult(
                True, snapshot.version, trigger, time.time(), tuple(problems), config_version=self.config_version
            )
            return self.last_reload

    # -- serving -----------------------------------------------------------------------------

    async def start(self, *, listen_sock: socket.socket | None = None, admin_sock: socket.socket | None = None) -> None:
        from .admin import build_admin_app
        from .proxy import Proxy

        config = self.config
        logging.getLogger("uvicorn.error").addFilter(_QUIET_ABORTS)
        listen_sock = listen_sock or bind(config.listen)
        admin_sock = admin_sock or bind(config.admin.listen)
        self._sockets = [listen_sock, admin_sock]
        await self.upstreams.start()
        for ext in self.extensions:
            starter = getattr(ext, "start", None)
            if starter is not None:
                await starter()

        tls = config.tls
        proxy_config = uvicorn.Config(
            Proxy(self.holder, errors=self.errors),
            http=guarded_protocol(self.head_limits),
            loop="none",
            lifespan="off",
            proxy_headers=False,  # X-Forwarded-* are the facade's to build, never uvicorn's to trust
            server_header=False,  # upstream Server / Date pass through exactly once
            date_header=False,
            access_log=False,
            log_level="warning",
            timeout_keep_alive=5,
            timeout_graceful_shutdown=30,
            ws_max_size=16 * 1024 * 1024,
            ssl_certfile=tls.cert_file if tls else None,
            ssl_keyfile=tls.key_file if tls else None,
            ssl_ca_certs=tls.client_ca_file if tls else None,
            ssl_cert_reqs=ssl.CERT_OPTIONAL if tls and tls.client_ca_file else ssl.CERT_NONE,
        )
        admin_config = uvicorn.Config(
            build_admin_app(self),
            http="httptools",
            loop="none",
            lifespan="off",
            proxy_headers=False,
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        self._servers = [uvicorn.Server(proxy_config), uvicorn.Server(admin_config)]
        for server, sock in zip(self._servers, self._sockets):
            # uvicorn's Server.serve() minus its signal capture: the facade owns SIGHUP/SIGINT/SIGTERM.
            server.config.load()
            server.lifespan = server.config.lifespan_class(server.config)
            await server.startup(sockets=[sock])
            self._tasks.append(asyncio.create_task(server.main_loop()))
        self.url = _url(listen_sock, "https" if tls else "http")
        self.admin_url = _url(admin_sock, "http")
        if self.watch_interval:
            # Take the first look now, not when the task first runs: a change in between must count.
            self._tasks.append(asyncio.create_task(self._watch_file(_stat(self.config_path))))
        logger.info("facade listening on %s (admin %s), config %s", self.url, self.admin_url, self.config_path)

    async def stop(self) -> None:
        """Drain and stop, in order.

        Stop reporting ready (load balancers in front stop sending).
        Stop accepting new connections; let in-flight requests finish (uvicorn's graceful shutdown).
        Close the upstream pools and the features' background tasks.
        """
        if self._stopped.is_set():
            return
        self.draining = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for server, sock in zip(self._servers, self._sockets):
            server.should_exit = True
            with contextlib.suppress(Exception):
                await server.shutdown(sockets=[sock])
        for ext in self.extensions:
            stopper = getattr(ext, "stop", None)
            if stopper is not None:
                with contextlib.suppress(Exception):
                    await stopper()
        await self.upstreams.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _watch_file(self, seen: tuple[float, int] | None) -> None:
        """Reload when the config file changes (mtime/size poll: no extra dependency, works on every FS)."""
        while True:
            await asyncio.sleep(self.watch_interval or 1.0)
            now = _stat(self.config_path)
            if now is not None and now != seen:
                seen = now
                await self.reload("file-change")

    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGHUP reloads; SIGINT / SIGTERM drain and stop."""
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.stop()))


_QUIET_ABORTS = _QuietAborts()


def _stat(path: str) -> tuple[float, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime, st.st_size)


def replace_config(config: Config, **changes: Any) -> Config:
    return replace(config, **changes)
