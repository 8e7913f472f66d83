"""Shadow copies sent from a child process (``shadow: {sender: process}``): the primary's side.

The copy's own work (write it to the candidate, read the answer, decode, compare, learn noise) costs
~80-100 us of CPU per copy; on the primary's event loop it runs in series with the client's next
request. ``ProcessShadowSender`` moves it to a child process (``python -m facade.shadow.child``), on
the machine's other core:

- per copy the primary's loop only serialises one compact frame (``marshal`` of a tuple of str/bytes:
  route, primary/candidate/step, the mirrored request, the primary's answer) and appends it to an
  output buffer written ``HAND_OVER_DELAY_S`` (10 ms) after its first frame (many copies, one ``send``);
- the child runs the same ``ShadowSender`` (its own pools to the services, built from the same config)
  and ships its results back every ``SHIP_INTERVAL_S`` as the deltas a worker of ``--workers N`` ships
  (``take_delta``): this sender ``absorb``s them, so ``/compare``, ``/diffs``, ``/shadow``, ``/metrics``
  and the gates read the same numbers as with copies sent inline. ``flush()`` (admin reads, gates)
  asks the child for what it has not shipped yet, with a bound;
- the child starts on the first copy, gets every change of the services and of the routes' compare
  options, dies with its parent (``PR_SET_PDEATHSIG``, and the channel's end-of-file), and is
  restarted when it dies. While it is starting or dead, copies go the inline way (``ShadowSender``):
  ``copies`` in ``GET /shadow`` counts them by path (``process`` / ``inline``);
- bounded: frames not yet taken by the kernel are at most ``max_queued_bytes``; past that a copy is
  dropped (``capacity``), the primary never blocks. The child's own queue is the sender's (``concurrency
  + queue_size`` slots, ``max_queued_bytes``) and counts its drops the same way.

Frames and control messages share one stream: ``!IB`` (length, kind) then the payload, ``marshal`` for
a copy and ``pickle`` for control; the child answers with control messages. Both ends are this
program, started by this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import os
import pickle
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .sender import ShadowOptions, ShadowSender, ShadowTicket

if TYPE_CHECKING:
    from ..config import ServiceSpec

logger = logging.getLogger("facade.shadow")

SENDER_MODES = ("process", "inline")
FRAME = struct.Struct("!IB")  # payload length, kind
COPY, CONTROL = 0, 1
SHIP_INTERVAL_S = 0.25  # how often the child ships its results (admin reads flush it anyway)
FLUSH_TIMEOUT_S = 0.5  # how long an admin read waits for the child's pending results (a worker's is 1 s)
START_TIMEOUT_S = 30.0  # imports and pools on a loaded machine; copies go inline meanwhile
# Copies wait this long in the buffer before they are written to the child: one write (and one wake-up
# of the child, and of this loop for the timer) per many copies instead of per copy. Measured at one
# connection (benchmarks/RESULTS.md): the primary's p50 with every request mirrored was 1.20x of shadow
# off at 2 ms, 1.07x at 5 ms, 1.01x at 10 ms, 1.02x at 20 ms; a copy reaching the candidate 10 ms later
# is nothing next to the noise a comparison already tolerates. FACADE_SHADOW_HANDOVER_MS=0: every loop turn.
HAND_OVER_DELAY_S = float(os.environ.get("FACADE_SHADOW_HANDOVER_MS", "10")) / 1000
HEALTH_INTERVAL_S = 0.5  # how often this process's health-check results are compared with what the child has
RESTART_BACKOFF_S = 1.0  # a child that dies soon after its start is restarted after this, doubled each time
RESTART_BACKOFF_MAX_S = 60.0  # (a child that cannot start must not burn a core on interpreter start-ups)
HEALTHY_RUN_S = 10.0  # a child that lived this long resets the back-off


def copy_frame(
    ticket: ShadowTicket, target: str, headers: Sequence[tuple[str, str]], request_body: bytes | None,
    status: int, primary_headers: Sequence[tuple[bytes, bytes]], primary_body: bytes, primary_truncated: bool,
) -> bytes:
    """One copy as the child reads it (``child.read_copy``): a length-prefixed ``marshal`` of plain values."""
    split = ticket.split
    # The proxy's headers are lists of tuples; another Sequence makes marshal raise ValueError (sent inline).
    payload = marshal.dumps((  # type: ignore[arg-type]
        ticket.route, split.primary, split.candidate, split.step_label, ticket.method, ticket.max_body,
        target, headers, request_body, status, primary_headers, primary_body, primary_truncated,
    ))
    return FRAME.pack(len(payload), COPY) + payload


def control_frame(message: Mapping[str, Any]) -> bytes:
    """A control message (either way: the child's results and answers are control messages too)."""
    payload = pickle.dumps(dict(message), protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(payload), CONTROL) + payload


async def read_control(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The child's next message, or None when it closed the channel (or sent something else than control)."""
    try:
        size, kind = FRAME.unpack(await reader.readexactly(FRAME.size))
        payload = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    if kind != CONTROL:
        return None
    message: dict[str, Any] = pickle.loads(payload)
    return message


def inline_services(services: Iterable[ServiceSpec], *, mtls: bool) -> frozenset[str]:
    """The services a copy must be sent to from this process: with the mesh's mTLS pools, those with an
    ``identity`` (the child process has no workload identity to present)."""
    return frozenset(s.name for s in services if s.identity) if mtls else frozenset()


def _via_mesh(ticket: ShadowTicket, names: frozenset[str]) -> bool:
    split = ticket.split
    return split.candidate.partition("/")[0] in names or split.primary.partition("/")[0] in names


def restart_delay(lived_s: float, quick_exits: int) -> float:
    """How long to wait before the next child: none after a child that ran ``HEALTHY_RUN_S``; else
    ``RESTART_BACKOFF_S`` doubled for every quick exit in a row before it, at most ``RESTART_BACKOFF_MAX_S``."""
    if lived_s >= HEALTHY_RUN_S:
        return 0.0
    return float(min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** min(quick_exits, 16)))


class ShadowChild:
    """The child process and its channel: spawn, hand frames over, absorb results, flush, restart."""

    def __init__(self, sender: ProcessShadowSender, services: Callable[[], Sequence[ServiceSpec]],
                 options: Mapping[str, Any]) -> None:
        self.sender = sender
        self.services = services  # the services in force now (the runtime's config)
        self.options = dict(options)  # the ShadowSender keyword arguments the child builds its sender with
        self.ready = False
        self.pid: int | None = None
        self.restarts = 0
        self.gauges: dict[str, int] = {}
        # Per route, copies handed to the running child and those it reported a fate for (a result or a
        # drop): what it still held when it died is counted as dropped ("lost"), not silently forgotten.
        self.handed: Counter[str] = Counter()
        self.accounted: Counter[str] = Counter()
        self._buffer = bytearray()
        self._scheduled = False
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._flush_seq = 0
        self._flushes: dict[int, asyncio.Future[bool]] = {}
        self._started_at = 0.0
        self._quick_exits = 0  # children in a row that exited before HEALTHY_RUN_S (the restart back-off)

    def __repr__(self) -> str:
        return f"<ShadowChild pid={self.pid} ready={self.ready} restarts={self.restarts}>"

    # -- the hot path ------------------------------------------------------------------------------

    def hand_over(self, frame: bytes) -> bool:
        """Append ``frame`` to what goes to the child at the end of this loop turn; False when the child
        is not ready or its backlog is full (the caller sends the copy inline, or counts a drop)."""
        writer = self._writer
        if writer is None or not self.ready:
            return False
        backlog = len(self._buffer) + writer.transport.get_write_buffer_size()
        if backlog + len(frame) > self.sender.max_queued_bytes:
            return False
        self._buffer += frame
        if not self._scheduled:
            self._scheduled = True
            if HAND_OVER_DELAY_S > 0:
                asyncio.get_running_loop().call_later(HAND_OVER_DELAY_S, self._write)
            else:
                asyncio.get_running_loop().call_soon(self._write)
        return True

    def _write(self) -> None:
        self._scheduled = False
        writer = self._writer
        if not self._buffer or writer is None:
            return
        data, self._buffer = bytes(self._buffer), bytearray()
        if writer.is_closing():
            return
        try:
            writer.write(data)
        except (ConnectionError, RuntimeError):  # the child died: its watcher restarts it
            self.ready = False

    def control(self, message: Mapping[str, Any]) -> None:
        """A control message, in order with the copies (services changed, route options, noise, flush)."""
        if self._writer is None or self._writer.is_closing():
            return
        self._buffer += control_frame(message)
        self._write()

    # -- lifecycle ---------------------------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start the child (once; the first copy calls this, so a process that mirrors nothing has none)."""
        if self._task is None and not self._stopping:
            self._task = asyncio.create_task(self._run(), name="shadow-child")

    async def _run(self) -> None:
        while not self._stopping:
            self._started_at = time.monotonic()
            try:
                code = await self._serve_one()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("shadow: the sender process failed to start; copies go inline")
                code = None
            self._down()
            if self._stopping:
                return
            self.restarts += 1
            logger.warning("shadow: sender process exited with %s; copies go inline until a new one is ready", code)
            delay = restart_delay(time.monotonic() - self._started_at, self._quick_exits)
            self._quick_exits = self._quick_exits + 1 if delay else 0
            if delay:  # a child that dies at start would otherwise spin
                logger.warning("shadow: next sender process in %.0f s", delay)
                await asyncio.sleep(delay)

    async def _serve_one(self) -> int | None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "facade.shadow.child",
                "--channel-fd", str(child.fileno()), "--parent-pid", str(os.getpid()),
                "--log-level", logging.getLevelName(logging.getLogger("facade").getEffectiveLevel()),
                pass_fds=(child.fileno(),),
            )
        finally:
            child.close()
        self._process = process
        self.pid = process.pid
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        self._writer = writer
        sender = self.sender
        self.control({
            "type": "init", "services": tuple(self.services()), "options": self.options,
            "routes": dict(sender.route_options),
            "noise": {route: sorted(sender.noise.paths(route)) for route in sender.noise.to_json()},
        })
        waiter = asyncio.create_task(process.wait())
        health = asyncio.create_task(self._share_health())
        try:
            while (message := await read_control(reader)) is not None:
                self._receive(message)
        finally:
            health.cancel()
            writer.close()
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(waiter, 5.0)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return await waiter

    async def _share_health(self) -> None:
        """This process's active health-check results, to the child whenever they change: its pools run
        no checks, and a copy must not go to an endpoint the checks took out (as an inline copy would not)."""
        sent: dict[str, Any] | None = None
        while True:
            states = self.sender.upstreams.health_states(s.name for s in self.services())
            if states != sent:
                self.control({"type": "health", "states": states})
                sent = states
            await asyncio.sleep(HEALTH_INTERVAL_S)

    def _receive(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ready":
            self.ready = True
            logger.info("shadow: sender process %d ready; copies leave from it", self.pid)
        elif kind == "batch":
            self.sender.absorb_child(message)
            self.gauges = message.get("gauges", self.gauges)
        elif kind == "flushed":
            seq = int(message["seq"])
            for asked in [s for s in self._flushes if s <= seq]:
                future = self._flushes.pop(asked)
                if not future.done():
                    future.set_result(True)

    def _down(self) -> None:
        self.ready = False
        for route, n in self.handed.items():
            lost = n - self.accounted[route]
            if lost > 0:
                self.sender.dropped[(route, "lost")] += lost
        self.handed.clear()
        self.accounted.clear()
        self._writer = None
        self._buffer = bytearray()
        self.gauges = {}
        for future in self._flushes.values():  # what it had not shipped is lost with it
            if not future.done():
                future.set_result(False)
        self._flushes.clear()

    async def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> tuple[str, ...]:
        """Have the child ship what it has not shipped yet and wait for it (at most ``timeout``); the
        child's name when it did not answer in time (what is read then is partial)."""
        if not self.ready or self._writer is None:
            return ()
        self._flush_seq += 1
        seq = self._flush_seq
        future = self._flushes[seq] = asyncio.get_running_loop().create_future()
        self.control({"type": "flush", "seq": seq})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), timeout)
        self._flushes.pop(seq, None)
        if future.done() and future.result():
            return ()
        return (f"shadow sender process (pid {self.pid})",)

    async def stop(self) -> None:
        """Close the channel (the child exits on its end-of-file), then wait; SIGKILL it if it lingers."""
        self._stopping = True
        process, writer, task = self._process, self._writer, self._task
        self.ready = False
        if writer is not None:
            writer.close()
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def view(self) -> dict[str, Any]:
        return {"pid": self.pid, "ready": self.ready, "restarts": self.restarts, "gauges": self.gauges}


class ProcessShadowSender(ShadowSender):
    """A ``ShadowSender`` that hands each copy to a ``ShadowChild`` when it is ready (inline otherwise).

    ``services``: the services in force now (the child builds its pools from them); ``mtls``: the pools
    originate the mesh's mTLS (``Upstreams.mtls``): copies to a service with an ``identity`` then stay
    inline, since the child has no workload identity to present. The other keyword arguments are
    ``ShadowSender``'s, and the child's sender is built with the same ones.
    """

    def __init__(self, *, services: Callable[[], Sequence[ServiceSpec]], mtls: bool = False, **options: Any) -> None:
        child_options = {k: v for k, v in options.items() if k not in ("upstreams", "telemetry")}
        super().__init__(**options)
        self.child = ShadowChild(self, services, child_options)
        self.mtls = mtls
        self.inline_services = inline_services(services(), mtls=mtls)

    def _submit(
        self,
        ticket: ShadowTicket,
        target: str,
        headers: Sequence[tuple[str, str]],
        request_body: bytes | None,
        request_truncated: bool,
        primary_status: int,
        primary_headers: Sequence[tuple[bytes, bytes]],
        primary_body: bytes,
        primary_truncated: bool,
    ) -> None:
        child = self.child
        if not child.ready or request_truncated or self._stopped or ticket not in self._pending or \
                (self.inline_services and _via_mesh(ticket, self.inline_services)):
            child.ensure_started()
            super()._submit(ticket, target, headers, request_body, request_truncated, primary_status,
                            primary_headers, primary_body, primary_truncated)
            return
        self._pending.discard(ticket)
        try:
            frame = copy_frame(ticket, target, headers, request_body, primary_status, primary_headers,
                               primary_body, primary_truncated)
        except ValueError:  # a value marshal cannot carry: this copy goes the inline way
            self._pending.add(ticket)
            super()._submit(ticket, target, headers, request_body, request_truncated, primary_status,
                            primary_headers, primary_body, primary_truncated)
            return
        if child.hand_over(frame):
            self.copies["process"] += 1
            child.handed[ticket.route] += 1
        else:
            self.dropped[(ticket.route, "capacity")] += 1

    # -- what the child learns and needs ------------------------------------------------------------

    def configure_route(self, route: str, options: ShadowOptions | None) -> None:
        super().configure_route(route, options)
        self.child.control({"type": "route", "route": route, "options": options})

    def add_noise(self, route: str, paths: Iterable[str]) -> None:
        paths = list(paths)
        super().add_noise(route, paths)
        self.child.control({"type": "noise", "route": route, "paths": paths})

    def services_changed(self) -> None:
        services = tuple(self.child.services())
        self.inline_services = inline_services(services, mtls=self.mtls)
        self.child.control({"type": "services", "services": services})

    def absorb_child(self, batch: Mapping[str, Any]) -> None:
        """The child's results: its diff counts into telemetry, its samples into the ring, its counters."""
        if self.telemetry is not None:
            self.telemetry.absorb(batch.get("delta") or {})
        for sample in batch.get("diff_samples") or ():
            self.ring.add(sample)
        shadow = batch.get("shadow") or {}
        for name in ("results", "dropped"):  # every copy handed over ends in one of them
            for (route, _), n in shadow.get("counters", {}).get(name, ()):
                self.child.accounted[route] += n
        self.absorb(shadow)

    async def flush(self) -> tuple[str, ...]:
        return await self.child.flush()

    async def stop(self) -> None:
        await self.child.stop()
        await super().stop()

    def stats(self) -> dict[str, Any]:
        return super().stats() | {"sender": "process", "process": self.child.view()}
