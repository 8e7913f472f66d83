"""``facade serve --workers N``: the supervisor's side, the pool of worker processes (docs/workers.md).

The supervisor runs the ``FacadeRuntime`` with every feature (admin API, migration controller and its
journal, config reload) but serves no clients; N worker processes (``facade.worker``) accept on the
client address with ``SO_REUSEPORT`` and each route by its own copy of the supervisor's snapshot:

- every swap of the supervisor (reload, migration step) is sent to every worker as one message
  ``{version, config, splits}``; a worker builds the same snapshot and acknowledges the version;
- an admin mutation answers only once every live worker acknowledged the current version
  (``settled``); a worker that refuses it or does not answer in time is killed and replaced, and a
  replacement starts on the current snapshot, never the config's initial state;
- workers ship telemetry deltas (bucket counts, counters, diff counts) every ``SHIP_INTERVAL_S``;
  the supervisor adds them to its one ``Telemetry``, which gates, compare and ``/metrics`` read.

The channel is a Unix socketpair per worker carrying length-prefixed pickles: both ends are this
program, started by the supervisor itself. Nothing on the hot path touches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .config import Config
from .feature import Feature
from .server import parse_listen
from .shadow import ShadowFeature

if TYPE_CHECKING:
    from .runtime import FacadeRuntime
    from .snapshot import Snapshot
    from .upstream import Upstreams
    from .upstream.health import HealthState

__all__ = ["SOCKET_ENV", "WorkerPool", "WorkerStartError", "apply_health", "health_states", "read_message", "reserve_port", "snapshot_message", "write_message"]

logger = logging.getLogger("facade.workers")

HEALTH_INTERVAL_S = 0.5  # how often the supervisor's health results go to the workers (when they changed)
SETTLE_TIMEOUT_S = 10.0  # a worker that has not applied a version by then is replaced
# FACADE_WORKERS_SOCKET=shared: one listening socket inherited by every worker instead of one
# SO_REUSEPORT socket each (docs/workers.md, "Spreading the load": measured, not the default).
SOCKET_ENV = "FACADE_WORKERS_SOCKET"
FLUSH_TIMEOUT_S = 1.0  # how long gates, compare and /metrics wait for a worker's pending telemetry
START_TIMEOUT_S = 30.0  # a worker's first acknowledgement (imports, binding) on a loaded machine
STOP_TIMEOUT_S = 35.0  # the proxy listener's graceful shutdown (30 s) plus a margin
_HEADER = struct.Struct("!I")


def reserve_port(listen: str) -> socket.socket:
    """Bind (never listen) ``listen`` with SO_REUSEPORT: it holds the port (port 0: picks one) that the
    workers then bind and listen on. A socket that does not listen takes no connections."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {listen}: {exc.strerror}") from None
    return sock


def snapshot_message(snapshot: Snapshot) -> dict[str, Any]:
    """What a worker needs to build the same snapshot: the version, the config (overrides applied), the splits."""
    # The per-route compare options the migration controller set on this process's shadow sender (a plan's
    # mirroring step: ignore rules, compared headers, noise learning): the workers mirror, so they compare.
    shadow_routes = dict(snapshot.shadow.route_options) if snapshot.shadow is not None else {}
    return {
        "type": "snapshot", "version": snapshot.version, "config": snapshot.config, "splits": dict(snapshot.splits),
        "shadow_routes": shadow_routes,
    }


def health_states(upstreams: Upstreams, services: Iterable[str]) -> dict[str, dict[str, HealthState]]:
    """The supervisor's active health-check results (``Upstreams.health_states``)."""
    return upstreams.health_states(services)


def apply_health(upstreams: Upstreams, states: Mapping[str, Mapping[str, HealthState]]) -> None:
    """A worker takes the supervisor's health results (its own pools run no active checks)."""
    upstreams.apply_health(states)


def write_message(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(data)) + data)


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None when the other end closed."""
    try:
        head = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(head)
        message: dict[str, Any] = pickle.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return message


def served_view(served: Mapping[tuple[str, str, str], int]) -> dict[str, dict[str, dict[str, int]]]:
    """route -> step label -> backend -> requests (a worker's own split, as it reported it)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for (route, step, backend), count in sorted(served.items()):
        out.setdefault(route, {}).setdefault(step, {})[backend] = count
    return out


class WorkerStartError(RuntimeError):
    """A worker did not come up at start (it could not bind, or kept dying): the facade does not start."""


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    started: float = field(default_factory=time.time)
    version: int = 0  # the snapshot version it acknowledged last (0: none yet)
    requests: int = 0  # requests it reported (telemetry absorbed)
    served: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (route, step, backend) -> requests
    batches: int = 0
    shadow: dict[str, int] = field(default_factory=dict)  # its shadow sender's queue gauges, as last shipped
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # flush seq -> what it could not gather itself (its shadow sender process's name, when that did not
    # answer); None: it exited before it answered
    flushes: dict[int, asyncio.Future[tuple[str, ...] | None]] = field(default_factory=dict)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.process.pid,
            "version": self.version,
            "started_at": round(self.started, 3),
            "requests": self.requests,
            "telemetry_batches": self.batches,
            "shadow": self.shadow,
            "served": served_view(self.served),
        }


class WorkerPool(Feature):
    """N worker processes serving clients on ``listen``; the supervisor's runtime stays the one control plane."""

    def __init__(
        self,
        runtime: FacadeRuntime,
        count: int,
        listen: str,
        *,
        log_level: str = "warning",
        spare: bool = True,
        listen_fd: int | None = None,
    ) -> None:
        self.runtime = runtime
        # SOCKET_SHARED: every worker accepts from this one inherited listening socket instead of its own.
        self.listen_fd = listen_fd
        self._configured = runtime.config.workers  # a reload that changes it applies on restart
        self.spare = spare  # keep one idle, imported worker to replace a dead one within a second
        self._spare: _Worker | None = None
        self._refilling: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._health: dict[str, dict[str, HealthState]] = {}  # the last results sent
        self._state: dict[str, Any] = {}  # the features' worker_state() last sent (the mesh's edge SVID)
        self.count = count
        self.listen = listen  # host:port the workers bind (the reserved port)
        self.log_level = log_level
        self.workers: dict[int, _Worker] = {}
        self.restarts = 0
        self._stopping = False
        self._changed = asyncio.Event()  # set on every acknowledgement or worker exit
        self._flush_seq = 0

    def __repr__(self) -> str:
        return f"WorkerPool({self.count} workers on {self.listen})"

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        # All N start side by side (an interpreter's imports take a second or more), not one after another.
        launched = await asyncio.gather(*(self._launch() for _ in range(self.count)))
        for index, worker in enumerate(launched):
            self._activate(worker, index)
        self._refill_spare()
        self._health_task = asyncio.create_task(self._share_health())
        deadline = time.monotonic() + START_TIMEOUT_S
        for worker in list(self.workers.values()):
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(worker.ready.wait(), max(0.1, left))
            except TimeoutError:
                await self.stop()
                raise WorkerStartError(
                    f"worker {worker.index} did not start within {START_TIMEOUT_S:g} s (its log is above)"
                ) from None

    async def stop(self) -> None:
        """SIGTERM every worker (each drains its connections), then wait; SIGKILL what is left."""
        self._stopping = True
        for task in (self._refilling, self._health_task):
            if task is not None:
                task.cancel()
        workers = list(self.workers.values()) + ([self._spare] if self._spare is not None else [])
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                await asyncio.wait_for(worker.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
            for task in worker.tasks:
                task.cancel()

    async def _launch(self) -> _Worker:
        """A worker process with its imports done, waiting for its first snapshot (not serving yet)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        listen = ("--listen", self.listen) if self.listen_fd is None else ("--listen-fd", str(self.listen_fd))
        inherited = () if self.listen_fd is None else (self.listen_fd,)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "facade.worker",
                "--channel-fd", str(child.fileno()), *listen,
                "--parent-pid", str(os.getpid()), "--log-level", self.log_level,
                pass_fds=(child.fileno(), *inherited),
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        worker = _Worker(-1, process, writer)
        worker.tasks.append(asyncio.create_task(self._read(worker, reader)))
        worker.tasks.append(asyncio.create_task(self._watch(worker)))
        return worker

    async def _spawn(self, index: int) -> _Worker:
        """Put a worker in slot ``index``: the warm spare when there is one (it binds and acknowledges in
        milliseconds, where a fresh interpreter needs a second or more), else a new process."""
        worker, self._spare = self._spare, None
        if worker is None or worker.process.returncode is not None:
            worker = await self._launch()
        self._activate(worker, index)
        self._refill_spare()
        return worker

    def _activate(self, worker: _Worker, index: int) -> None:
        worker.index = index
        worker.started = time.time()
        self.workers[index] = worker
        state = self._worker_state()
        if state:  # before the snapshot: its pools are built with it (the mesh's mTLS contexts)
            write_message(worker.writer, {"type": "state", "state": state})
        # The snapshot in force now: a replacement serves the current step, not the config's first state.
        write_message(worker.writer, snapshot_message(self.runtime.holder.current) | {"index": index})
        if self._health:
            write_message(worker.writer, {"type": "health", "states": self._health})
        shadow = self.runtime.feature(ShadowFeature)
        noise = shadow.sender.noise.to_json() if shadow is not None else {}
        if noise:  # the noise every worker learned so far: a replacement diffs as the others do
            write_message(worker.writer, {"type": "noise", "paths": {r: v["paths"] for r, v in noise.items()}})

    def _refill_spare(self) -> None:
        if self.spare and self._spare is None and not self._stopping and self._refilling is None:
            self._refilling = asyncio.create_task(self._launch_spare())

    async def _launch_spare(self) -> None:
        try:
            spare = await self._launch()
            if self._stopping:
                with contextlib.suppress(ProcessLookupError):
                    spare.process.kill()
                return
            self._spare = spare
        finally:
            self._refilling = None

    def _worker_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for feature in self.runtime.features:
            state.update(feature.worker_state())
        return state

    def _share_state(self) -> None:
        """Send the features' worker state to every worker when it changed (an edge SVID rotated, a new CA)."""
        state = self._worker_state()
        if state != self._state:
            self._state = state
            for worker in self.workers.values():
                if not worker.writer.is_closing():
                    write_message(worker.writer, {"type": "state", "state": state})

    async def _share_health(self) -> None:
        """Health checks run once, here; every worker gets their results (when they changed). The
        features' worker state rides on the same beat."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            self._share_state()
            states = health_states(self.runtime.upstreams, (s.name for s in self.runtime.config.services))
            if states != self._health:
                self._health = states
                for worker in self.workers.values():
                    if not worker.writer.is_closing():
                        write_message(worker.writer, {"type": "health", "states": states})

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        while (message := await read_message(reader)) is not None:
            kind = message.get("type")
            if kind == "ack":
                worker.version = int(message["version"])
                worker.ready.set()
                self._changed.set()
            elif kind == "nack":
                logger.error("worker %d could not apply version %s: %s; replacing it",
                             worker.index, message.get("version"), message.get("error"))
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
            elif kind == "flushed":  # everything it recorded before the request is absorbed (read in order)
                seq = int(message["seq"])
                for asked in [s for s in worker.flushes if s <= seq]:
                    future = worker.flushes.pop(asked)
                    if not future.done():
                        future.set_result(tuple(message.get("missing", ())))
            elif kind == "telemetry":
                self._absorb(worker, message)

    def _absorb(self, worker: _Worker, batch: dict[str, Any]) -> None:
        """Add a worker's batch (``facade.worker.take_batch``) to what the admin API reports."""
        runtime = self.runtime
        worker.requests += runtime.telemetry.absorb(batch["delta"])
        worker.batches += 1
        for (route, backend, step, _method, _cls), count, *_ in batch["delta"]["series"]:
            worker.served[(route, step, backend)] += count
        runtime.errors.absorb(batch.get("errors") or [], worker=worker.index)  # GET /errors: every worker's
        head = batch.get("head") or {}
        for reason, n in head.get("dropped", {}).items():
            runtime.head_limits.stats.count_dropped(reason, n)
        for reason, n in head.get("rejected", {}).items():
            runtime.head_limits.stats.count_rejected(reason, n)
        runtime.rate_limits.absorb(batch.get("ratelimit") or {})
        if "ratelimit_keys" in batch and worker.process.returncode is None:  # a gauge: this worker's latest, summed over the live workers
            runtime.rate_limits.report_keys(worker.process.pid, batch["ratelimit_keys"])
        runtime.upstreams.absorb_resilience(batch.get("resilience") or {})
        if "shadow_gauges" in batch:
            worker.shadow = batch["shadow_gauges"]
        shadow = runtime.feature(ShadowFeature)
        if shadow is None:
            return
        for sample in batch.get("diff_samples") or ():  # GET /diffs shows every worker's samples
            shadow.sender.ring.add(sample)
        learned = shadow.sender.absorb(batch.get("shadow") or {})
        if learned:  # noise one worker learned is ignored by every worker, so they diff alike
            message = {"type": "noise", "paths": {route: sorted(paths) for route, paths in learned.items()}}
            for other in self.workers.values():
                if not other.writer.is_closing():
                    write_message(other.writer, message)

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.process.wait()
        self._changed.set()
        self.runtime.rate_limits.report_keys(worker.process.pid, None)  # its buckets went with it
        for future in worker.flushes.values():  # what it had not shipped is lost with it
            if not future.done():
                future.set_result(None)
        worker.flushes.clear()
        if worker is self._spare:
            self._spare = None
            logger.warning("spare worker (pid %d) exited with %s", worker.process.pid, code)
            if time.time() - worker.started > 1.0:
                self._refill_spare()
            return
        if self._stopping or self.workers.get(worker.index) is not worker:
            return
        logger.warning("worker %d (pid %d) exited with %s; starting a replacement",
                       worker.index, worker.process.pid, code)
        self.restarts += 1
        worker.writer.close()
        if time.time() - worker.started < 1.0:
            await asyncio.sleep(1.0)  # a worker that dies at start would otherwise spin
        if not self._stopping:
            await self._spawn(worker.index)

    # -- the runtime's hooks ---------------------------------------------------------------------

    async def config_changed(self, config: Config) -> None:
        if config.workers != self._configured:
            self._configured = config.workers
            logger.warning("reload: workers changed to %s; the number of workers changes on restart "
                           "(%d run now)", config.workers, self.count)

    def swapped(self, snapshot: Snapshot) -> None:
        self._share_state()  # first: a reload that brings a mesh brings the credentials its pools need
        message = snapshot_message(snapshot)
        for worker in self.workers.values():
            if not worker.writer.is_closing():
                write_message(worker.writer, message)
                if self._health:  # pools new in this snapshot start from the supervisor's results too
                    write_message(worker.writer, {"type": "health", "states": self._health})

    async def settled(self) -> None:
        """Return when every worker acknowledged the current version; replace those that do not in time."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        replaced = False
        while True:
            version = self.runtime.version
            behind = [w for w in self.workers.values() if w.version < version]
            if not behind:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                if replaced:
                    logger.error("workers %s still not on version %d", [w.index for w in behind], version)
                    return
                for worker in behind:
                    logger.error("worker %d stuck on version %d (current %d): replacing it",
                                 worker.index, worker.version, version)
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
                replaced = True
                deadline = time.monotonic() + START_TIMEOUT_S
                continue
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    async def gather_telemetry(self) -> tuple[str, ...]:
        """Have every live worker ship what it recorded since its last batch, and wait for it (at most
        ``FLUSH_TIMEOUT_S``): a gate or a report asked right after a burst counts the whole burst. The
        names of the workers that did not answer in time (or exited first): their last batch is missing."""
        self._flush_seq += 1
        seq = self._flush_seq
        loop = asyncio.get_running_loop()
        asked: dict[str, asyncio.Future[tuple[str, ...] | None]] = {}
        for worker in self.workers.values():
            if worker.process.returncode is not None or worker.writer.is_closing() or not worker.ready.is_set():
                continue
            future = worker.flushes[seq] = loop.create_future()
            asked[f"worker {worker.index} (pid {worker.process.pid})"] = future
            write_message(worker.writer, {"type": "flush", "seq": seq})
        if not asked:
            return ()
        await asyncio.wait(asked.values(), timeout=FLUSH_TIMEOUT_S)
        missing: list[str] = []
        for name, future in asked.items():
            answer = future.result() if future.done() else None
            if answer is None:
                missing.append(name)  # no answer in time, or it exited: its last batch is missing
            else:
                missing.extend(f"{name}: {part}" for part in answer)  # e.g. its shadow sender process
        for worker in self.workers.values():
            worker.flushes.pop(seq, None)
        if missing:
            logger.warning("telemetry of %s did not arrive within %g s: what is judged now is partial",
                           ", ".join(missing), FLUSH_TIMEOUT_S)
        return tuple(missing)

    def admin_routes(self) -> list[BaseRoute]:
        async def workers_endpoint(request: Request) -> Response:
            return JSONResponse(self.view())

        return [Route("/workers", workers_endpoint, methods=["GET"])]

    def view(self) -> dict[str, Any]:
        return {
            "version": self.runtime.version,
            "count": self.count,
            "restarts": self.restarts,
            "spare": self._spare.process.pid if self._spare is not None else None,
            "workers": [w.view() for _, w in sorted(self.workers.items())],
        }

    def prometheus_text(self) -> str:
        lines = [
            "# HELP facade_worker_restarts_total Worker processes replaced after they exited or fell behind.",
            "# TYPE facade_worker_restarts_total counter",
            f"facade_worker_restarts_total {self.restarts}",
            "# HELP facade_worker_snapshot_version The snapshot version each worker acknowledged.",
            "# TYPE facade_worker_snapshot_version gauge",
        ]
        lines += [f'facade_worker_snapshot_version{{worker="{i}"}} {w.version}' for i, w in sorted(self.workers.items())]
        return "\n".join(lines) + "\n"
