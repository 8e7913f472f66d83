"""The running facade: the swap that hot reload, migrations and features share; reload; listeners.

A ``Snapshot`` (``facade.snapshot``) is everything the hot path reads for one request: config,
compiled route table, the upstream pools, the migration splits in force, the shadow sender. It is
never mutated; ``FacadeRuntime.swap`` builds a new one and assigns ``SnapshotHolder.current``, and
every change of what the hot path reads goes through it (features too: ``facade.feature``).

(The upstream pools are the one shared, long-lived part: their health and ejection state
must survive reloads. ``Upstreams.update`` keeps the pools of unchanged services.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .admin import build_admin_app
from .config import Config, check_config
from .error_log import RecentErrors
from .errors import ConfigError, Problem
from .feature import Feature, MeshControl
from .listener import HeadLimits, guarded_protocol
from .proxy import DownstreamAborted, Proxy
from .ratelimit import RateLimits
from .server import Server, bind, parse_listen, server_config, socket_url
from .snapshot import Snapshot, SnapshotHolder, build_snapshot
from .split import Split
from .telemetry import Telemetry
from .upstream import Upstreams

if TYPE_CHECKING:
    from .shadow import ShadowSender

# Snapshot, SnapshotHolder, build_snapshot live in facade.snapshot, bind and parse_listen in facade.server;
# named here too for older imports.
__all__ = ["FacadeRuntime", "ReloadResult", "Snapshot", "SnapshotHolder", "bind", "build_snapshot", "parse_listen"]

logger = logging.getLogger("facade")
_F = TypeVar("_F", bound=Feature)


class _QuietAborts(logging.Filter):
    """uvicorn logs any exception escaping the app with a traceback; an aborted response is expected
    (the upstream failed mid-body, already logged once by the proxy), so keep it to one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, DownstreamAborted):
            record.exc_info = None
            record.msg, record.args = "response aborted: %s", (exc,)
        return True


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
        self.telemetry = Telemetry()
        self.shadow: ShadowSender | None = None  # install_shadow(); every later snapshot carries it
        self.mesh: MeshControl | None = None  # install_mesh(): what migration steps switch in the mesh
        self._features: list[Feature] = []  # add_feature(); hooks called in this order (facade.feature)
        self.holder = SnapshotHolder(build_snapshot(config, self.upstreams, version=1, telemetry=self.telemetry))
        self._staged_splits: Mapping[str, Split] | None = None  # stage(): taken by the next swap
        self._started = False
        self.errors = RecentErrors()  # upstream failures' details, for GET /errors (clients see none)
        self.rate_limits = RateLimits()  # routes' token buckets, kept across snapshots (facade.ratelimit)
        self.head_limits = HeadLimits(
            max_head_bytes=config.limits.max_request_headers,
            header_timeout=config.limits.header_timeout,
            max_headers_count=config.limits.max_request_headers_count,
            underscores=config.headers_with_underscores,
        )
        # Snapshot versions count the snapshots served (every swap after start: reloads, migration
        # steps); config_version counts only configs applied from the file, which is what an
        # operator means by "which config".
        self.config_version = 1
        self.last_reload: ReloadResult = ReloadResult(True, 1, "start", time.time())
        self.draining = False
        self._reload_lock = asyncio.Lock()
        self._servers: list[Server] = []
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

    @property
    def splits(self) -> Mapping[str, Split]:
        """The migration splits in force (route name -> split)."""
        return self.holder.current.splits

    # -- features ----------------------------------------------------------------------------

    @property
    def features(self) -> tuple[Feature, ...]:
        """The features plugged in, in the order their hooks run."""
        return tuple(self._features)

    def add_feature(self, feature: _F) -> _F:
        """Plug ``feature`` in (before ``start()``): its hooks run from now on, after those added before."""
        if self._started:
            raise RuntimeError(f"add {feature!r} before the runtime starts: its admin routes are built at start")
        self._features.append(feature)
        return feature

    def feature(self, kind: type[_F]) -> _F | None:
        """The feature of type ``kind`` plugged into this runtime, or None."""
        return next((f for f in self.features if isinstance(f, kind)), None)

    # -- snapshots: every change goes through swap() -------------------------------------------

    def swap(
        self, config: Config | None = None, *, splits: Mapping[str, Split] | None = None, version: int | None = None
    ) -> Snapshot:
        """Build a new snapshot and put it in force with one reference assignment (the only one).

        ``config`` and ``splits`` replace the current ones; left out, the current ones stay (splits
        staged with ``stage()`` since the last swap come in now). Raises ``ConfigError`` (nothing
        changed) when the config does not compile. Before ``start()`` nothing has been served yet:
        the snapshot the facade will start on is rebuilt and keeps its version. ``version``: a worker
        takes the supervisor's version number (``facade.worker``), so every process names a snapshot alike.
        """
        current = self.holder.current
        staged, self._staged_splits = self._staged_splits, None
        chosen = splits if splits is not None else staged if staged is not None else current.splits
        snapshot = build_snapshot(
            config or current.config,
            self.upstreams,
            version=version if version is not None else current.version + 1 if self._started else current.version,
            splits=chosen,
            telemetry=self.telemetry,
            shadow=self.shadow,
        )
        self.holder.current = snapshot  # the swap: one reference assignment
        if self._started:
            for feature in self.features:
                feature.swapped(snapshot)
        return snapshot

    async def settled(self) -> None:
        """Return when every process serving clients runs the current snapshot (features' ``settled``)."""
        for feature in self.features:
            await feature.settled()

    async def gather_telemetry(self) -> tuple[str, ...]:
        """Fetch the evidence other processes recorded and not yet shipped (features' ``gather_telemetry``);
        the names of those that did not answer in time: what judges then judges on partial evidence."""
        missing: list[str] = []
        for feature in self.features:
            missing.extend(await feature.gather_telemetry())
        return tuple(missing)

    def stage(self, *, splits: Mapping[str, Split]) -> None:
        """Have the next ``swap()`` put ``splits`` in force: a feature's part of a reload's snapshot,
        staged in ``config_changed`` so the new config and its splits are served together."""
        self._staged_splits = dict(splits)

    def install_upstreams(self, upstreams: Upstreams) -> Snapshot:
        """Serve through ``upstreams`` instead of the pools built from the config (the mesh's mTLS pools).

        Only before ``start()``: the pools start with the runtime and keep health state across reloads.
        """
        if self._started:
            raise RuntimeError("upstream pools can be replaced only before the runtime starts")
        self.upstreams = upstreams
        return self.swap()

    def install_shadow(self, sender: ShadowSender) -> Snapshot:
        """Mirror through ``sender`` from the next request on (every later snapshot carries it)."""
        self.shadow = sender
        return self.swap()

    def install_mesh(self, control: MeshControl) -> None:
        """The mesh control plane migration steps switch (``mtls`` steps); not part of the snapshot."""
        self.mesh = control

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
                for feature in self.features:
                    found.extend(await feature.reload_sources(trigger))
                ok = not any(p.severity == "error" for p in found)
                self.last_reload = ReloadResult(
                    ok, self.version, trigger, time.time(), tuple(found), False, config_version=self.config_version
                )
                return self.last_reload
            # 2. Compile the new table first: if anything fails here nothing was touched yet.
            try:
                build_snapshot(config, self.upstreams, version=0)
                for feature in self.features:
                    feature.check_config(config)
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
            self._staged_splits = None
            for feature in self.features:
                await feature.config_changed(config)  # may stage its part of the new snapshot
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

    async def start(
        self,
        *,
        listen_sock: socket.socket | None = None,
        admin_sock: socket.socket | None = None,
        serve_clients: bool = True,
        serve_admin: bool = True,
    ) -> None:
        """Bind (unless given sockets) and serve. With workers (docs/workers.md) the supervisor serves the
        admin API only (``serve_clients=False``; ``listen_sock`` is the workers' address) and each worker
        the clients only (``serve_admin=False``)."""
        config = self.config
        logging.getLogger("uvicorn.error").addFilter(_QUIET_ABORTS)
        listen_sock = listen_sock or bind(config.listen)
        admin_sock = admin_sock or (bind(config.admin.listen) if serve_admin else None)
        await self.upstreams.start()
        for feature in self.features:
            await feature.start()
        self._started = True

        tls = config.tls
        proxy_config = server_config(
            Proxy(self.holder, errors=self.errors, rate_limits=self.rate_limits),
            protocol=guarded_protocol(self.head_limits),
            passthrough=True,
            graceful_shutdown=30,
            ws_max_size=16 * 1024 * 1024,
            ssl_certfile=tls.cert_file if tls else None,
            ssl_keyfile=tls.key_file if tls else None,
            ssl_ca_certs=tls.client_ca_file if tls else None,
            ssl_cert_reqs=ssl.CERT_OPTIONAL if tls and tls.client_ca_file else ssl.CERT_NONE,
        )
        # The facade owns SIGHUP/SIGINT/SIGTERM (install_signal_handlers), never uvicorn.
        if serve_clients:
            self._servers.append(await Server.start(proxy_config, listen_sock))
        if admin_sock is not None:
            self._servers.append(await Server.start(server_config(build_admin_app(self)), admin_sock))
            self.admin_url = socket_url(admin_sock, "http")
        self.url = socket_url(listen_sock, "https" if tls else "http")
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
        for server in self._servers:
            await server.stop()
        for feature in self.features:
            with contextlib.suppress(Exception):
                await feature.stop()
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
