"""One worker process of ``facade serve --workers N`` (``python -m facade.worker``, started by ``facade.workers``).

It serves clients only: it binds the client address with SO_REUSEPORT, builds its snapshot from what
the supervisor sends (``{version, config, splits}``), acknowledges the version it runs, and ships its
telemetry as deltas every ``SHIP_INTERVAL_S``. It has no admin listener, no config watch and no
migration controller: what must be single stays in the supervisor (docs/workers.md).

It dies with its supervisor: ``PR_SET_PDEATHSIG`` (Linux) plus the channel's end-of-file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any

from .config import Config
from .diff import DiffRing, DiffSample
from .runtime import FacadeRuntime
from .server import parse_listen
from .shadow import ShadowFeature, ShadowOptions
from .upstream import Upstreams
from .workers import apply_health, read_message, write_message

logger = logging.getLogger("facade.worker")

SHIP_INTERVAL_S = 0.5
_PR_SET_PDEATHSIG = 1


def _edge_client() -> Any | None:
    """A ``facade.mesh.edge.EdgeClient`` when this build has the mesh package, else None."""
    try:
        from .mesh.edge import EdgeClient
    except ModuleNotFoundError as exc:
        if exc.name in ("facade.mesh", "facade.mesh.edge"):
            return None
        raise
    return EdgeClient()


def apply_state(edge: Any | None, state: Mapping[str, Any]) -> None:
    """Take the supervisor's features' worker state (``Feature.worker_state``): today the mesh's edge SVID."""
    credentials = state.get("mesh_edge")
    if credentials is not None and edge is not None:
        edge.update(credentials)
        logger.info("edge identity %s from the supervisor (expires %s)", credentials["spiffe_id"],
                    edge.identity.not_after.isoformat())


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the supervisor dies, even by kill -9 (no orphans holding the port)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os._exit(1)


def bind_shared(listen: str) -> socket.socket:
    """The client listener, bound with SO_REUSEPORT next to the other workers': the kernel spreads connections."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def apply_shadow_routes(runtime: FacadeRuntime, routes: Mapping[str, ShadowOptions]) -> None:
    """Compare each route's mirrored answers as the supervisor's migration controller says (a plan's
    mirroring step sets ignore rules, compared headers and noise learning per route); other routes
    go back to the sender's defaults."""
    shadow = runtime.feature(ShadowFeature)
    if shadow is None:
        return
    sender = shadow.sender
    for route in set(sender.route_options) - set(routes):
        sender.configure_route(route, None)
    for route, options in routes.items():
        if sender.route_options.get(route) != options:
            sender.configure_route(route, options)


async def apply(runtime: FacadeRuntime, message: dict[str, Any]) -> None:
    """Serve the supervisor's snapshot ``message`` (a new config only when its hash changed)."""
    config: Config = message["config"]
    if config.sha256 != runtime.config.sha256:
        await runtime.upstreams.update(config.services)
        limits = runtime.head_limits
        limits.max_head_bytes = config.limits.max_request_headers
        limits.header_timeout = config.limits.header_timeout
        limits.max_headers_count = config.limits.max_request_headers_count
        limits.underscores = config.headers_with_underscores
        apply_shadow_routes(runtime, message.get("shadow_routes", {}))  # before the swap: its first copy uses them
        runtime.swap(config, splits=message["splits"], version=message["version"])
    else:
        apply_shadow_routes(runtime, message.get("shadow_routes", {}))
        runtime.swap(splits=message["splits"], version=message["version"])


async def _ship(runtime: FacadeRuntime, writer: asyncio.StreamWriter, shipped: dict[Any, Any]) -> None:
    while True:
        await asyncio.sleep(SHIP_INTERVAL_S)
        _send_delta(runtime, writer, shipped)


def new_diff_samples(ring: DiffRing, shipped: dict[Any, Any]) -> list[DiffSample]:
    """The diff samples added to ``ring`` since the last call (oldest first; at most what the ring keeps)."""
    out: list[DiffSample] = []
    for route in ring.routes():
        seen = ring.to_json(route, 0)["seen"]
        fresh = seen - shipped.get(("samples", route), 0)
        shipped[("samples", route)] = seen
        if fresh > 0:
            out.extend(reversed(ring.samples(route, fresh)))
    return out


def counter_delta(counts: Mapping[str, int], shipped: dict[str, int]) -> dict[str, int]:
    """What ``counts`` gained since ``shipped`` (updated here to the current counts)."""
    fresh = {key: n - shipped.get(key, 0) for key, n in counts.items() if n != shipped.get(key, 0)}
    shipped.update(counts)
    return fresh


def owned_counters_delta(
    owned: Mapping[str, tuple[object, Mapping[str, int]]], shipped: dict[Any, Any], kind: str
) -> dict[str, dict[str, int]]:
    """What each name's counters gained since the last call (``owned``: name -> (owner, counters)).

    The owner is the object that holds the counters (a service's pool, a route's limiter); a
    reload that replaces it starts new counters at 0, so a new owner counts from 0, not from what
    its predecessor had shipped."""
    out: dict[str, dict[str, int]] = {}
    for name, (owner, counts) in owned.items():
        seen = shipped.get((kind, name))
        if seen is None or seen[0] != id(owner):
            seen = shipped[(kind, name)] = (id(owner), {})
        fresh = counter_delta(counts, seen[1])
        if fresh:
            out[name] = fresh
    return out


def take_batch(runtime: FacadeRuntime, shipped: dict[Any, Any]) -> dict[str, Any] | None:
    """Everything this worker recorded since its last batch that an admin view sums over workers
    (telemetry, diff samples, upstream failure details, the listener's drops and refusals, the shadow
    sender's counters and learned noise, its queue gauges, rate limit decisions and buckets held,
    resilience counters); None when there is nothing new."""
    batch: dict[str, Any] = {"type": "telemetry", "delta": runtime.telemetry.take_delta(shipped)}
    delta = batch["delta"]
    busy = bool(delta["series"] or delta["diffs"] or delta["overflowed"])
    errors = runtime.errors.since(shipped.get("errors", 0))
    shipped["errors"] = runtime.errors.added
    head = runtime.head_limits.stats
    dropped = counter_delta(head.dropped, shipped.setdefault("head-dropped", {}))
    rejected = counter_delta(head.rejected, shipped.setdefault("head-rejected", {}))
    if errors or dropped or rejected:
        batch |= {"errors": errors, "head": {"dropped": dropped, "rejected": rejected}}
        busy = True
    # Rate limit decisions and resilience counters (retries, budget refusals, pending overflows,
    # ejections) are summed by the supervisor; the buckets held are a gauge, sent when they change.
    decisions = owned_counters_delta(runtime.rate_limits.counts(), shipped, "ratelimit")
    resilience = owned_counters_delta(runtime.upstreams.resilience_counts(), shipped, "resilience")
    keys = runtime.rate_limits.keys()
    if decisions or resilience or keys != shipped.get("ratelimit-keys"):
        batch |= {"ratelimit": decisions, "ratelimit_keys": keys, "resilience": resilience}
        shipped["ratelimit-keys"] = keys
        busy = True
    shadow = runtime.feature(ShadowFeature)
    if shadow is not None:
        samples = new_diff_samples(shadow.sender.ring, shipped)
        counts = shadow.sender.take_delta(shipped)
        gauges = shadow.sender.gauges()
        if samples or any(counts.values()) or gauges != shipped.get("shadow-gauges"):
            batch |= {"diff_samples": samples, "shadow": counts, "shadow_gauges": gauges}
            shipped["shadow-gauges"] = gauges
            busy = True
    return batch if busy else None


def _send_delta(runtime: FacadeRuntime, writer: asyncio.StreamWriter, shipped: dict[Any, Any]) -> None:
    batch = take_batch(runtime, shipped)
    if batch is not None:
        write_message(writer, batch)


async def serve(args: argparse.Namespace) -> int:
    _die_with_parent(args.parent_pid)
    loop = asyncio.get_running_loop()
    channel = socket.socket(fileno=args.channel_fd)
    reader, writer = await asyncio.open_unix_connection(sock=channel)
    edge = _edge_client()
    while (first := await read_message(reader)) is not None and first.get("type") == "state":
        apply_state(edge, first["state"])  # the supervisor's features' state comes before the first snapshot
    if first is None or first.get("type") != "snapshot":
        return 1
    runtime = FacadeRuntime(first["config"], watch_interval=None)
    # No active health checks here: the supervisor runs them once per service and sends the results.
    # With the mesh package, the pools originate mTLS with the supervisor's edge SVID (as MeshFeature.attach).
    factory = edge.ssl_context_factory if edge is not None else None
    runtime.install_upstreams(Upstreams(first["config"].services, health_checks=False, ssl_context_factory=factory))
    # Shadow copies leave from the worker that served the request (by default through its own child process).
    ShadowFeature.attach(runtime, sender="process")
    apply_shadow_routes(runtime, first.get("shadow_routes", {}))
    runtime.swap(splits=first["splits"], version=first["version"])  # before start: the starting snapshot
    if args.listen_fd is not None:  # one socket shared by every worker, inherited from the supervisor
        listen_sock = socket.socket(fileno=args.listen_fd)
        listen_sock.setblocking(False)
    else:
        listen_sock = bind_shared(args.listen)
    await runtime.start(listen_sock=listen_sock, serve_admin=False)
    write_message(writer, {"type": "ack", "version": runtime.version, "pid": os.getpid()})
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C reaches the whole process group; the supervisor decides, and sends SIGTERM.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    shipped: dict[Any, Any] = {}  # what was sent so far: every batch is the difference from it
    shipper = asyncio.create_task(_ship(runtime, writer, shipped))

    async def follow() -> None:
        while (message := await read_message(reader)) is not None:
            if message.get("type") == "health":
                apply_health(runtime.upstreams, message["states"])
                continue
            if message.get("type") == "state":
                try:
                    apply_state(edge, message["state"])
                except Exception:  # a worker that cannot present the edge SVID exits; the supervisor replaces it
                    logger.exception("the supervisor's state not applied")
                    break
                continue
            if message.get("type") == "noise":  # paths another worker learned: every worker ignores them
                shadow = runtime.feature(ShadowFeature)
                for route, paths in message["paths"].items():
                    if shadow is not None:
                        shadow.sender.add_noise(route, paths)
                    shipped.setdefault(("shadow-noise", route), set()).update(paths)  # not shipped back
                continue
            if message.get("type") == "flush":  # something is about to judge: ship what is pending now
                await asyncio.sleep(0)  # a request whose response just went out records in this turn
                missing = await runtime.gather_telemetry()  # the shadow sender process's results (bounded)
                _send_delta(runtime, writer, shipped)
                # What this worker could not gather (its sender process did not answer) makes the
                # supervisor's view partial too.
                write_message(writer, {"type": "flushed", "seq": message["seq"], "missing": list(missing)})
                continue
            if message.get("type") != "snapshot":
                continue
            try:
                await apply(runtime, message)
            except Exception as exc:  # the supervisor replaces a worker that cannot follow
                logger.exception("version %s not applied", message.get("version"))
                write_message(writer, {"type": "nack", "version": message.get("version"), "error": str(exc)})
                continue
            write_message(writer, {"type": "ack", "version": runtime.version})
        stop.set()  # the supervisor is gone

    follower = asyncio.create_task(follow())
    await stop.wait()
    follower.cancel()
    await runtime.stop()  # drains this worker's connections
    shipper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await shipper
    with contextlib.suppress(Exception):
        _send_delta(runtime, writer, shipped)  # the requests drained since the last batch
        await writer.drain()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facade.worker", description=__doc__)
    parser.add_argument("--channel-fd", type=int, required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", help="bind this host:port with SO_REUSEPORT")
    where.add_argument("--listen-fd", type=int, help="accept on this inherited listening socket")
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s worker %(process)d: %(message)s")
    from .cli.commands import _run

    return _run(serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
