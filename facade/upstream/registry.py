"""All services' pools, and the hot reload that swaps them without dropping a request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..config import ServiceSpec
from .health import HealthState
from .pool import ServicePool
from .tls import client_ssl_context

__all__ = ["DEFAULT_DRAIN_GRACE", "Upstreams"]

logger = logging.getLogger("facade.upstream")

DEFAULT_DRAIN_GRACE = 30.0  # seconds a replaced pool may keep serving requests already in flight
_DRAIN_POLL = 0.05

SSLContextFactory = Callable[[ServiceSpec], "ssl.SSLContext | None"]


def _client_key(spec: ServiceSpec) -> tuple[Any, ...]:
    """What the HTTP/1.1 client depends on: a reload that leaves these alone keeps its warm connections."""
    return (spec.tls, spec.identity, spec.connection_pool, spec.timeouts.connect)


def _with_subsets(pools: dict[str, ServicePool]) -> dict[str, ServicePool]:
    """Every pool by name, plus one per subset (``service/subset``) over its service's endpoints.

    Subset pools hold no state of their own (the endpoints are the service pool's objects), so
    they are rebuilt whenever the map changes and always point at the current service pool.
    """
    out = dict(pools)
    for pool in pools.values():
        for subset in pool.spec.subsets:
            sub = pool.subset(pool.spec.subset_spec(subset))
            out[sub.spec.name] = sub
    return out


class Upstreams:
    """The pool of every service, by name. ``ssl_context_factory`` (the mesh's) replaces the
    contexts built from each service's ``tls:`` block."""

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        *,
        ssl_context_factory: SSLContextFactory | None = None,
        drain_grace: float = DEFAULT_DRAIN_GRACE,
        health_checks: bool = True,
    ) -> None:
        # False in a worker of `--workers N`: the supervisor checks once and sends the results (docs/workers.md).
        self.health_checks = health_checks
        self._factory = ssl_context_factory
        self._drain_grace = drain_grace
        self._pools: dict[str, ServicePool] = {s.name: self._build(s, None) for s in specs}
        self._lookup = _with_subsets(self._pools)
        self._draining: set[asyncio.Task[None]] = set()
        self._started = False

    def __repr__(self) -> str:
        return f"Upstreams({sorted(self._pools)})"

    @property
    def mtls(self) -> bool:
        """Whether the pools' TLS comes from ``ssl_context_factory`` (the mesh's identity), not the config."""
        return self._factory is not None

    def get(self, name: str) -> ServicePool | None:
        """The pool of a service or of a ``service/subset``."""
        return self._lookup.get(name)


    def _ssl_context(self, spec: ServiceSpec) -> ssl.SSLContext | None:
        if self._factory is not None:
            return self._factory(spec)
        if spec.tls is not None:
            return client_ssl_context(spec.tls, service=spec.name)
        return None

    def _build(self, spec: ServiceSpec, previous: ServicePool | None) -> ServicePool:
        """A pool for ``spec``; it shares ``previous``'s client when the connection settings are the same.

        Building changes nothing in ``previous``: the caller releases the client once every
        pool of the reload was built, so a failed reload leaves the running pools intact.
        """
        if previous is not None and _client_key(previous.spec) == _client_key(spec):
            return ServicePool(spec, ssl_context=previous.ssl_context, h1=previous.live_h1, previous=previous)
        return ServicePool(spec, ssl_context=self._ssl_context(spec), previous=previous)

    async def start(self) -> None:
        """Start health checking in every pool."""
        self._started = True
        for pool in self._pools.values() if self.health_checks else ():
            await pool.start()

    async def update(self, specs: Sequence[ServiceSpec]) -> None:
        """Hot reload: swap in pools for new and changed services, keep unchanged ones as they are.

        1. Keep the pool of every service whose spec is unchanged (client, health, ejections).
        2. Build a pool for every new or changed service, carrying over the state of endpoints
           with the same URL (a weight-only change keeps health and ejections).
        3. Swap the map, so the next request sees the new pools, and start their health checks.
        4. Stop the replaced pools' health checks, and close them once their requests in flight
           have finished, or after the grace period.
        """
        # Build everything before touching the map, so a failure (unreadable TLS files) changes nothing.
        fresh: dict[str, ServicePool] = {}
        built: list[ServicePool] = []
        for spec in specs:
            old = self._pools.get(spec.name)
            if old is not None and old.spec == spec:
                fresh[spec.name] = old
                continue
            pool = self._build(spec, old)
            fresh[spec.name] = pool
            built.append(pool)
        replaced = [p for name, p in self._pools.items() if fresh.get(name) is not p]
        for pool in replaced:
            successor = fresh.get(pool.spec.name)
            if successor is not None and pool.shares_clients_with(successor):
                pool.release_client()
        self._pools = fresh
        self._lookup = _with_subsets(fresh)
        if self._started and self.health_checks:
            for pool in built:
                await pool.start()
        for pool in replaced:
            await pool.stop_health_checks()
            if not pool.owns_client:
                await pool.close()  # its client lives on in the successor: nothing to drain
                continue
            task = asyncio.create_task(self._drain_and_close(pool))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)

    async def _drain_and_close(self, pool: ServicePool) -> None:
        deadline = time.monotonic() + self._drain_grace
        while pool.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(_DRAIN_POLL)
        if pool.in_flight > 0:
            logger.warning("closing replaced pool of %s with %d requests in flight", pool.spec.name, pool.in_flight)
        await pool.close()

    @property
    def draining(self) -> int:
        """Replaced pools not closed yet."""
        return len(self._draining)

    async def close(self) -> None:
        """Close every pool now, replaced ones included."""
        for task in list(self._draining):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pools, self._pools = list(self._pools.values()), {}
        self._lookup = {}
        for pool in pools:
            await pool.close()
        self._started = False

    def snapshot(self) -> dict[str, Any]:
        return {"services": {name: pool.snapshot() for name, pool in sorted(self._pools.items())}}

    def health_states(self, services: Iterable[str]) -> dict[str, dict[str, HealthState]]:
        """Active health-check results: service -> endpoint URL -> state (services with a check only).
        What a process that runs the checks hands to those that run none (workers, the shadow sender)."""
        out: dict[str, dict[str, HealthState]] = {}
        for name in services:
            pool = self._pools.get(name)
            if pool is not None and pool.spec.health_check is not None:
                out[name] = {ep.url: ep.health for ep in pool.endpoints}
        return out

    def apply_health(self, states: Mapping[str, Mapping[str, HealthState]]) -> None:
        """Take another process's health-check results (``health_states``) for this process's pools."""
        for name, by_url in states.items():
            pool = self._pools.get(name)
            if pool is None:
                continue
            for ep in pool.endpoints:
                state = by_url.get(ep.url)
                if state is not None:
                    ep.health = state

    def resilience_counts(self) -> dict[str, tuple[ServicePool, dict[str, int]]]:
        """Each service's pool and its resilience counters (those ``prometheus_text`` exports): what a
        worker of ``--workers N`` ships to the supervisor. A pool a reload rebuilt counts from 0."""
        return {name: (pool, {stat: pool.stats[stat] for stat in RESILIENCE_STATS}) for name, pool in self._pools.items()}

    def absorb_resilience(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Add another process's new resilience counts (service -> stat -> n) to this process's pools,
        so ``prometheus_text`` reports the sum. Counts of a service this process no longer has are dropped."""
        for service, stats in counts.items():
            pool = self._pools.get(service)
            if pool is not None:
                pool.stats.update({stat: n for stat, n in stats.items() if stat in RESILIENCE_STATS})

    def prometheus_text(self) -> str:
        """Resilience counters per service (Envoy's cluster stats in their names): retries, retries the
        budget refused, requests refused by a full waiting queue, ejections by detector.

        Counters of a pool a reload rebuilt start again at 0 (Prometheus' rate() reads that as a reset).
        """
        lines: list[str] = []
        for name, help_text, stat in _COUNTERS:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} counter")
            for service, pool in sorted(self._pools.items()):
                lines.append(f'{name}{{service="{service}"}} {pool.stats[stat]}')
        name = "facade_upstream_ejections_total"
        lines.append(f"# HELP {name} Endpoints ejected by outlier detection, by detector.")
        lines.append(f"# TYPE {name} counter")
        for service, pool in sorted(self._pools.items()):
            for detector, stat in _EJECTIONS:
                lines.append(f'{name}{{service="{service}",detector="{detector}"}} {pool.stats[stat]}')
        return "\n".join(lines) + "\n"


_COUNTERS = (
    ("facade_upstream_retries_total", "Retries of requests to the service (Envoy upstream_rq_retry).", "retries"),
    (
        "facade_upstream_retries_budget_refused_total",
        "Retries not made because the service's retry budget was spent (Envoy upstream_rq_retry_overflow).",
        "retries_budget_refused",
    ),
    (
        "facade_upstream_pending_overflow_total",
        "Requests answered 503 at once: max_pending_requests already waited (Envoy upstream_rq_pending_overflow).",
        "pending_overflow",
    ),
)
_EJECTIONS = (
    ("consecutive", "ejections"),
    ("success_rate", "ejections_success_rate"),
    ("failure_percentage", "ejections_failure_percentage"),
)
RESILIENCE_STATS = frozenset(stat for _, _, stat in _COUNTERS) | frozenset(stat for _, stat in _EJECTIONS)
