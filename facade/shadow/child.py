"""The shadow sender process (``python -m facade.shadow.child``, started by ``facade.shadow.process``).

It reads copies (``marshal`` frames) and control messages (``pickle``) from its parent's channel, sends
each copy with a ``ShadowSender`` over its own pools (built from the parent's services), and ships its
results back as deltas (``take_delta``, the shape a worker ships to its supervisor) every
``SHIP_INTERVAL_S`` and on a flush. It dies with its parent: ``PR_SET_PDEATHSIG`` plus the channel's
end-of-file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import marshal
import os
import pickle
import signal
import socket
from typing import Any

from ..split import Split
from ..telemetry import Telemetry
from ..upstream import Upstreams
from ..worker import _die_with_parent, new_diff_samples
from .process import COPY, FRAME, SHIP_INTERVAL_S, control_frame
from .sender import ShadowSender

logger = logging.getLogger("facade.shadow.child")

_READ_SIZE = 1 << 18


class Child:
    """The child's state: its pools, its sender, its telemetry (diff counts only) and what it shipped."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.telemetry = Telemetry()
        self.upstreams: Upstreams | None = None
        self.sender: ShadowSender | None = None
        self.shipped: dict[Any, Any] = {}
        self._splits: dict[tuple[str, str, str], Split] = {}

    def copy(self, frame: tuple[Any, ...]) -> None:
        """Queue one copy (``process.copy_frame``); the sender counts a drop when it is at capacity."""
        sender = self.sender
        if sender is None:
            return
        (route, primary, candidate, step, method, max_body, target, headers, request_body, status,
         primary_headers, primary_body, primary_truncated) = frame
        key = (primary, candidate, step)
        split = self._splits.get(key)
        if split is None:
            # shadow_unsafe: the parent already decided this method may be mirrored.
            split = self._splits[key] = Split(primary=primary, candidate=candidate, step_label=step,
                                              shadow_unsafe=True)
        ticket = sender.begin(route=route, split=split, method=method)
        if ticket is None:
            return
        ticket.max_body = max_body
        sender.submit(
            ticket, target=target, headers=headers, request_body=request_body, request_truncated=False,
            primary_status=status, primary_headers=primary_headers, primary_body=primary_body,
            primary_truncated=primary_truncated,
        )

    async def control(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "init":
            self.upstreams = Upstreams(message["services"], health_checks=False)
            await self.upstreams.start()
            sender = self.sender = ShadowSender(upstreams=self.upstreams, telemetry=self.telemetry,
                                                **message["options"])
            for route, options in message["routes"].items():
                sender.configure_route(route, options)
            for route, paths in message["noise"].items():
                self._known_noise(route, paths)
            await sender.start()
            self.writer.write(control_frame({"type": "ready", "pid": os.getpid()}))
        elif kind == "services" and self.upstreams is not None:
            await self.upstreams.update(message["services"])
            self._splits.clear()
        elif kind == "health" and self.upstreams is not None:
            self.upstreams.apply_health(message["states"])  # the parent's checks (this process runs none)
        elif kind == "route" and self.sender is not None:
            self.sender.configure_route(message["route"], message["options"])
        elif kind == "noise":
            self._known_noise(message["route"], message["paths"])
        elif kind == "flush":
            await asyncio.sleep(0)
            self.ship()
            self.writer.write(control_frame({"type": "flushed", "seq": message["seq"]}))

    def _known_noise(self, route: str, paths: list[str]) -> None:
        """Noise the parent knows (other processes learned it): ignored here, and not shipped back."""
        if self.sender is not None:
            self.sender.noise.add(route, paths)
        self.shipped.setdefault(("shadow-noise", route), set()).update(paths)

    def ship(self) -> None:
        """What the sender recorded since the last batch, when there is anything."""
        sender = self.sender
        if sender is None:
            return
        delta = self.telemetry.take_delta(self.shipped)
        samples = new_diff_samples(sender.ring, self.shipped)
        counts = sender.take_delta(self.shipped)
        counts["counters"].pop("copies", None)  # the parent counted the copy when it handed it over
        gauges = sender.gauges()
        if delta["diffs"] or samples or any(counts.values()) or gauges != self.shipped.get("gauges"):
            self.shipped["gauges"] = gauges
            self.writer.write(control_frame({"type": "batch", "delta": delta, "diff_samples": samples,
                                             "shadow": counts, "gauges": gauges}))


async def _ship(child: Child) -> None:
    while True:
        await asyncio.sleep(SHIP_INTERVAL_S)
        child.ship()


async def read_frames(reader: asyncio.StreamReader, child: Child) -> None:
    """Copies and control messages until the parent closes the channel (many frames per read)."""
    buffer = bytearray()
    while data := await reader.read(_READ_SIZE):
        buffer += data
        pos, end = 0, len(buffer)
        while end - pos >= FRAME.size:
            size, kind = FRAME.unpack_from(buffer, pos)
            start = pos + FRAME.size
            if end - start < size:
                break
            payload = bytes(buffer[start:start + size])
            pos = start + size
            if kind == COPY:
                child.copy(marshal.loads(payload))
            else:
                await child.control(pickle.loads(payload))
        del buffer[:pos]


async def serve(args: argparse.Namespace) -> int:
    _die_with_parent(args.parent_pid)
    channel = socket.socket(fileno=args.channel_fd)
    reader, writer = await asyncio.open_unix_connection(sock=channel)
    child = Child(writer)
    shipper = asyncio.create_task(_ship(child))
    try:
        await read_frames(reader, child)  # returns when the parent is gone or closed the channel
    finally:
        shipper.cancel()
        if child.sender is not None:
            await child.sender.stop()
        if child.upstreams is not None:
            with contextlib.suppress(Exception):
                await child.upstreams.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facade.shadow.child", description=__doc__)
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s shadow sender %(process)d: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the parent decides
    from ..cli.commands import _run

    return _run(serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
