"""What the dashboard's charts plot: a bounded history of per-interval samples of the telemetry.

The telemetry keeps step windows and rolling windows (at most ``max(rolling)`` seconds of
per-second slots), not a time series; the dashboard samples the rolling window every
``interval`` seconds and keeps the last ``points`` samples per route. Sampling reads the
telemetry's public queries (``side_stats`` / ``diff_counts`` with ``window=``) and nothing else.

Carve-out progress is derived from the same samples: the share of a point's requests that a
carved service (the ``to`` of some migration plan) answered instead of the monolith.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..stats import DiffCounts, SideStats

__all__ = ["DEFAULT_INTERVAL", "DEFAULT_POINTS", "History", "Point", "TelemetryReader", "carve_out", "sample"]

DEFAULT_INTERVAL = 2.0  # seconds between samples: "updating every few seconds"
DEFAULT_POINTS = 450  # samples kept per route: 15 minutes at the default interval
DEFAULT_MAX_ROUTES = 256  # routes with a history; a config with more keeps the first ones seen


class TelemetryReader(Protocol):
    """The part of ``facade.telemetry.Telemetry`` the sampler reads."""

    def backends(self, route: str) -> list[str]: ...

    def side_stats(
        self, route: str, backend: str, *, step: str | None = None, window: float | None = None
    ) -> SideStats: ...

    def diff_counts(self, route: str, *, step: str | None = None, window: float | None = None) -> DiffCounts: ...

    def current_step(self, route: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Point:
    """One route over one sampling interval: per backend (requests, errors, p50, p99) and shadow diffs."""

    at: float  # wall-clock seconds (the journal's clock, so step changes line up on the time axis)
    interval: float
    backends: Mapping[str, SideStats]
    compared: int = 0
    differing: int = 0
    step: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 3),
            "step": self.step,
            "backends": {
                name: {
                    "rps": round(s.requests / self.interval, 3),
                    "requests": s.requests,
                    "errors": s.errors,
                    "error_rate": s.error_rate,
                    "p50_ms": s.p50_ms,
                    "p99_ms": s.p99_ms,
                }
                for name, s in sorted(self.backends.items())
            },
            "compared": self.compared,
            "differing": self.differing,
            "diff_rate": self.differing / self.compared if self.compared else None,
        }


def sample(telemetry: TelemetryReader, route: str, *, at: float, interval: float) -> Point:
    """The last ``interval`` seconds of ``route`` as one point."""
    backends = {b: telemetry.side_stats(route, b, window=interval) for b in telemetry.backends(route)}
    diffs = telemetry.diff_counts(route, window=interval)
    return Point(at, interval, backends, diffs.compared, diffs.differing, telemetry.current_step(route))


class History:
    """The last ``points`` samples of each route (oldest first), bounded in routes too."""

    def __init__(self, *, points: int = DEFAULT_POINTS, max_routes: int = DEFAULT_MAX_ROUTES) -> None:
        if points <= 0 or max_routes <= 0:
            raise ValueError("History bounds must be positive")
        self.points = points
        self.max_routes = max_routes
        self._routes: dict[str, deque[Point]] = {}
        self.changes = 0  # bumped by every add / keep: views derived from the history cache on it

    def __repr__(self) -> str:
        return f"History(routes={len(self._routes)}, points={self.points})"

    def add(self, route: str, point: Point) -> None:
        ring = self._routes.get(route)
        if ring is None:
            if len(self._routes) >= self.max_routes:
                return
            ring = self._routes[route] = deque(maxlen=self.points)
        ring.append(point)
        self.changes += 1

    def keep(self, routes: Iterable[str]) -> None:
        """Forget the routes a reload removed."""
        wanted = set(routes)
        for name in [r for r in self._routes if r not in wanted]:
            del self._routes[name]
            self.changes += 1

    def routes(self) -> list[str]:
        return sorted(self._routes)

    def series(self, route: str, *, since: float | None = None) -> list[Point]:
        return [p for p in self._routes.get(route, ()) if since is None or p.at > since]


def carve_out(history: History, carved: frozenset[str]) -> dict[str, Any]:
    """The share of requests served by ``carved`` services, per route and in total, per sample time.

    Samples of different routes taken in the same sampling round share their ``at``; the total at
    a time sums every route's requests of that round. A share is None where no request was seen.
    One pass over the history: the page asks for this on every refresh.
    """
    routes: dict[str, Any] = {}
    rounds: dict[float, list[int]] = {}  # at -> [carved requests, all requests]
    for route in history.routes():
        points = []
        route_total = 0
        for p in history.series(route):
            new = total = 0
            for backend, stats in p.backends.items():
                total += stats.requests
                if backend in carved:
                    new += stats.requests
            route_total += total
            at = round(p.at, 3)
            points.append([at, new / total if total else None])
            both = rounds.get(at)
            if both is None:
                rounds[at] = [new, total]
            else:
                both[0] += new
                both[1] += total
        routes[route] = {"points": points, "requests": route_total}
    overall = [[at, new / whole if whole else None] for at, (new, whole) in sorted(rounds.items())]
    return {"carved_services": sorted(carved), "total": overall, "routes": routes}
