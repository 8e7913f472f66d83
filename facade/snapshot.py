"""``Snapshot``: everything the hot path reads for one request, immutable, and the one reference to it.

A reload or a migration transition builds a new snapshot (``build_snapshot``: compile first, so a
failure touches nothing) and the runtime's swap assigns ``SnapshotHolder.current``. A request
reads the reference once at its start, so in-flight requests finish on the table they began with
(docs/architecture.md, "The snapshot swap").

This module is what the data plane (proxy, WebSocket, sidecar) imports; it knows nothing of the
process that swaps (``facade.runtime``), so the hot path and the control plane do not import each other.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import Config, Route
from .normalize import canonical_route_path
from .routing import RouteTable
from .split import Decision, Split, WeightedChoice, decide
from .telemetry import Telemetry
from .upstream import Upstreams

if TYPE_CHECKING:
    from .shadow import ShadowSender

__all__ = ["Snapshot", "SnapshotHolder", "build_snapshot"]

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
    telemetry: Telemetry | None = None
    shadow: ShadowSender | None = None
    built_at: float = field(default_factory=time.time)

    def pick_backend(self, route: Route, rand: float) -> str:
        if len(route.backends) == 1:
            return route.backends[0].service
        return self.weighted[route.name].pick(rand)

    def decide(self, split: Split, headers: Sequence[tuple[bytes, bytes]], rand: Callable[[], float]) -> Decision:
        return decide(split, headers=headers, rand=rand())

    def is_trusted(self, ip: str) -> bool:
        if not self.trusted or not ip:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)


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
    telemetry: Telemetry | None = None,
    shadow: ShadowSender | None = None,
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
