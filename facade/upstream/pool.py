"""One service's pool: its endpoints' runtime state, the pick and report decisions, its HTTP client.

Everything here runs on the event loop thread; no locks. The decisions delegate to the pure
modules (``balancer``, ``outlier``, ``health``); this module keeps the state and does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

from ..config import EndpointGroup, OutlierDetection, ServiceSpec
from ..errors import UpstreamUnavailable
from . import balancer, outlier
from .h1 import Address, H1Client
from .health import HealthState, run_checks
from .outcome import Outcome

__all__ = ["DEFAULT_DNS_CACHE_TTL", "Endpoint", "ServicePool"]

DEFAULT_DNS_CACHE_TTL = 10  # seconds (aiohttp's default, which the project used first), stated so it is a decision


class Endpoint:
    """The mutable runtime state of one endpoint (touched only from the event loop thread)."""

    __slots__ = (
        "address", "group", "health", "in_flight", "last_checked", "outcomes", "outlier", "path_prefix", "url",
        "window_failures", "window_requests",
    )

    def __init__(self, url: str, group: str) -> None:
        try:
            parsed = urllib.parse.urlsplit(url)
            port = parsed.port
        except ValueError:
            parsed, port = None, None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"endpoint {url!r}: expected http://host:port or https://host:port")
        self.url = url
        self.group = group
        self.health = HealthState()
        self.outlier = outlier.OutlierState()
        self.in_flight = 0
        self.outcomes: Counter[str] = Counter()
        self.last_checked: float | None = None
        # Outcomes since the statistical outlier detectors last judged (only counted when they are on).
        self.window_requests = 0
        self.window_failures = 0
        # An endpoint may carry a base path ("http://h:1/v2"): requests go below it.
        self.path_prefix = parsed.path.rstrip("/")
        tls = parsed.scheme == "https"
        self.address: Address = (parsed.hostname, port or (443 if tls else 80), tls)

    def __repr__(self) -> str:
        state = "available" if self.available else ("ejected" if self.outlier.ejected else "unhealthy")
        return f"Endpoint({self.url!r}, group={self.group!r}, {state}, in_flight={self.in_flight})"

    @property
    def healthy(self) -> bool:
        return self.health.healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self.health = HealthState(healthy=value)

    @property
    def ejected_until(self) -> float:
        """0.0 when not ejected; otherwise the pool clock's value when the ejection ends."""
        return self.outlier.ejected_until

    @property
    def times_ejected(self) -> int:
        return self.outlier.times_ejected

    @property
    def available(self) -> bool:
        """Healthy and not ejected: may be picked."""
        return self.health.healthy and self.outlier.ejected_until == 0.0

    def begin(self) -> None:
        self.in_flight += 1

    def end(self) -> None:
        self.in_flight -= 1

    def target_for(self, raw_path_and_query: str) -> str:
        """The request target for the service's HTTP/1.1 client: the base path + the path as matched.

        Never re-quoted and dot segments never removed: the bytes the router matched are the bytes
        sent (docs/architecture.md, "Invariants").
        """
        return self.path_prefix + raw_path_and_query if self.path_prefix else raw_path_and_query

    def adopt_state(self, other: Endpoint) -> None:
        """Carry health and ejection state over from the same endpoint of a previous pool."""
        self.health = other.health
        self.outlier = other.outlier
        self.last_checked = other.last_checked
        self.outcomes = other.outcomes.copy()

    def snapshot(self, now: float) -> dict[str, Any]:
        o = self.outlier
        return {
            "url": self.url,
            "group": self.group,
            "available": self.available,
            "healthy": self.healthy,
            "ejected": o.ejected,
            "ejected_until": o.ejected_until,
            "ejected_remaining_s": round(max(0.0, o.ejected_until - now), 3) if o.ejected else 0.0,
            "times_ejected": o.times_ejected,
            "consecutive_5xx": o.consecutive_5xx,
            "consecutive_gateway_errors": o.consecutive_gateway_errors,
            "in_flight": self.in_flight,
            "interval_requests": self.window_requests,
            "interval_failures": self.window_failures,
            "health_checks": self.health.checks,
            "last_health_check": self.health.last_detail,
            "outcomes": dict(self.outcomes),
        }


class _Group:
    __slots__ = ("endpoints", "ring", "rr", "spec")

    def __init__(self, spec: EndpointGroup, endpoints: tuple[Endpoint, ...], *, hashed: bool = False) -> None:
        self.spec = spec
        self.endpoints = endpoints
        self.rr = 0  # round-robin counter of this group
        # Placed by URL, so every replica and every reload builds the same ring.
        self.ring = balancer.HashRing.build([ep.url for ep in endpoints]) if hashed else None


class ServicePool:
    """The endpoints of one service, how to choose among them, and the one client that reaches them.

    ``h1`` (facade.upstream.h1) carries everything sent to the service: proxied requests, health
    checks, shadow copies, and the connections of WebSocket upgrades, so ``max_connections``
    bounds them all together. ``ssl_context`` is used for https:// endpoints (None = the system
    trust store). ``h1`` lets a reload hand over warm connections; the pool then owns them.
    ``previous`` is the pool this one replaces: the state of endpoints with the same URL carries
    over (and the endpoint objects themselves when the client is handed over and the group is
    unchanged, so requests still in flight on the old pool keep counting).

    ``parent`` makes this pool a subset of another (``service/subset``, built by ``subset()``): it
    holds the parent's own endpoint objects, so health, ejections and in-flight counts are shared;
    it reaches them through the parent's client, reports outcomes to the parent (ejection limits
    count the whole service) and runs no health checks of its own.
    """

    def __init__(
        self,
        spec: ServiceSpec,
        *,
        ssl_context: ssl.SSLContext | None = None,
        h1: H1Client | None = None,
        previous: ServicePool | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        parent: ServicePool | None = None,
    ) -> None:
        self.spec = spec
        self.parent = parent
        self.ssl_context = ssl_context
        self._h1 = h1
        self._owns_client = True
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        # A subset counts in its service's counters and retry budget (Envoy: a subset is part of its
        # cluster, whose stats and circuit breakers it shares), so /metrics and the budget see all of it.
        self.cluster: ServicePool = parent if parent is not None else self
        self.stats: Counter[str] = parent.stats if parent is not None else Counter()
        # The proxy's requests to this service now, and how many of them are retrying (retry budget):
        # kept on ``cluster``.
        self.requests_active = 0
        self.retries_active = 0
        old = {ep.url: ep for ep in previous.endpoints} if previous is not None else {}
        shared = {ep.url: ep for ep in parent.endpoints} if parent is not None else {}
        groups = []
        for g in spec.groups:
            eps = []
            for url in g.endpoints:
                if url in shared:
                    eps.append(shared[url])
                    continue
                prior = old.get(url)
                if prior is not None and h1 is not None and prior.group == g.name:
                    eps.append(prior)  # same object: in-flight counts and late reports stay true
                    continue
                ep = Endpoint(url, g.name)
                if prior is not None:
                    ep.adopt_state(prior)
                eps.append(ep)
            groups.append(_Group(g, tuple(eps), hashed=spec.load_balancer == "consistent_hash"))
        self._groups = tuple(groups)
        self.endpoints: tuple[Endpoint, ...] = tuple(ep for g in self._groups for ep in g.endpoints)
        # The next time an ejection ends or a count decays: pick() scans the endpoints only then.
        self._next_event = self._earliest_event()
        # Success rate / failure percentage: outcomes counted per endpoint, judged once per interval.
        od = spec.outlier_detection
        self._statistical = od is not None and od.statistical
        self._next_judgement = clock() + od.interval if od is not None and self._statistical else float("inf")

    def __repr__(self) -> str:
        up = sum(ep.available for ep in self.endpoints)
        return f"ServicePool({self.spec.name!r}, {up}/{len(self.endpoints)} available, lb={self.spec.load_balancer})"

    # -- the client -----------------------------------------------------------------------

    @property
    def h1(self) -> H1Client:
        """The proxy's HTTP/1.1 client for this service (facade.upstream.h1), created on first use."""
        if self.parent is not None:
            return self.parent.h1
        if self._h1 is None:
            if self._closed:
                raise UpstreamUnavailable(f"service {self.spec.name} was reconfigured; retry the request")
            pool = self.spec.connection_pool
            self._h1 = H1Client(
                limit=pool.max_connections,
                idle_timeout=pool.idle_timeout,
                connect_timeout=self.spec.timeouts.connect,
                ssl_context=self.ssl_context,
                dns_ttl=DEFAULT_DNS_CACHE_TTL,
                max_pending=pool.max_pending_requests,
            )
        return self._h1

    @property
    def live_h1(self) -> H1Client | None:
        """The HTTP/1.1 client if it was created already (never creates one)."""
        return self.parent.live_h1 if self.parent is not None else self._h1

    def shares_clients_with(self, other: ServicePool) -> bool:
        """``other`` was handed this pool's HTTP/1.1 client (a reload kept the connections)."""
        return self._h1 is not None and other._h1 is self._h1

    def release_client(self) -> None:
        """The HTTP/1.1 client now belongs to a successor pool: this pool will not close it."""
        self._owns_client = False

    @property
    def owns_client(self) -> bool:
        """This pool will close an HTTP/1.1 client of its own when it closes."""
        return self._owns_client and self._h1 is not None

    # -- decisions ------------------------------------------------------------------------

    def pick(
        self, *, exclude: Collection[Endpoint] = (), now: float | None = None, hash_key: int | None = None
    ) -> Endpoint:
        """Choose the endpoint for one try.

        Order of preference: weighted groups among endpoints not in ``exclude`` (the ones this
        request already tried), then weighted groups allowing reuse, then drained (weight 0)
        groups the same two ways. Raises UpstreamUnavailable when no endpoint is available.
        ``hash_key`` (consistent hashing) makes the group and the endpoint a function of the key:
        a retry walks on to the next endpoint of the ring.
        """
        if self.spec.outlier_detection is not None:
            (self.parent or self)._release_due(self._clock() if now is None else now)
        if hash_key is not None and self._groups[0].ring is not None:
            return self._pick_hashed(hash_key, exclude)
        if exclude:
            fresh = [[ep for ep in g.endpoints if ep.available and ep not in exclude] for g in self._groups]
            chosen = self._choose(fresh, drained=False)
            if chosen is None:
                everyone = [[ep for ep in g.endpoints if ep.available] for g in self._groups]
                chosen = (
                    self._choose(everyone, drained=False)
                    or self._choose(fresh, drained=True)
                    or self._choose(everyone, drained=True)
                )
        elif len(self._groups) == 1:  # the common case, without the group choice
            only = self._groups[0]
            cands = [ep for ep in only.endpoints if ep.available]
            chosen = self._balance(only, cands) if cands else None
        else:
            everyone = [[ep for ep in g.endpoints if ep.available] for g in self._groups]
            chosen = self._choose(everyone, drained=False) or self._choose(everyone, drained=True)
        if chosen is None:
            self.stats["no_healthy_endpoint"] += 1
            raise UpstreamUnavailable(f"no healthy endpoint in service {self.spec.name}")
        return chosen

    def _pick_hashed(self, key: int, exclude: Collection[Endpoint]) -> Endpoint:
        if len(self._groups) == 1 and not exclude:  # the common case, without the group choice
            only = self._groups[0]
            assert only.ring is not None
            index = only.ring.pick(key, [ep.available for ep in only.endpoints])
            if index is not None:
                return only.endpoints[index]
        draw = (key & 0xFFFFFFFF) / 0x100000000  # the group draw, independent of the ring position's high bits
        for allow_reuse, drained in ((False, False), (True, False), (False, True), (True, True)):
            views = [
                balancer.GroupCandidates(
                    g.spec.weight, g.spec.priority,
                    sum(1 for ep in g.endpoints if ep.available and (allow_reuse or ep not in exclude)),
                )
                for g in self._groups
            ]
            gi = balancer.choose_group(views, self._rng, drained=drained, draw=draw)
            if gi is None:
                continue
            group = self._groups[gi]
            assert group.ring is not None
            usable = [ep.available and (allow_reuse or ep not in exclude) for ep in group.endpoints]
            index = group.ring.pick(key, usable)
            if index is not None:
                return group.endpoints[index]
        self.stats["no_healthy_endpoint"] += 1
        raise UpstreamUnavailable(f"no healthy endpoint in service {self.spec.name}")

    def _choose(self, candidates: list[list[Endpoint]], *, drained: bool) -> Endpoint | None:
        views = [
            balancer.GroupCandidates(g.spec.weight, g.spec.priority, len(c))
            for g, c in zip(self._groups, candidates, strict=True)
        ]
        gi = balancer.choose_group(views, self._rng, drained=drained)
        if gi is None:
            return None
        return self._balance(self._groups[gi], candidates[gi])

    def _balance(self, group: _Group, cands: list[Endpoint]) -> Endpoint:
        lb = self.spec.load_balancer
        if lb == "least_request":
            i = balancer.pick_least_request([ep.in_flight for ep in cands], self._rng)
        elif lb == "random" or lb == "consistent_hash":  # a request without a hash key: random, as Envoy
            i = balancer.pick_random(len(cands), self._rng)
        else:
            i = balancer.pick_round_robin(len(cands), group.rr)
            group.rr += 1
        return cands[i]

    def report(self, ep: Endpoint, outcome: Outcome, *, now: float | None = None) -> None:
        """Record the outcome of one try; may eject the endpoint (outlier detection)."""
        if self.parent is not None:
            self.parent.report(ep, outcome, now=now)  # the service's ejection limits, not the subset's
            return
        ep.outcomes[outcome.value] += 1
        spec = self.spec.outlier_detection
        if spec is None:
            return
        now = self._clock() if now is None else now
        self._release_due(now)
        if ep.outlier.ejected:
            return  # late results of requests sent before the ejection do not extend it
        if self._statistical:
            ep.window_requests += 1
            if outcome is not Outcome.SUCCESS:
                ep.window_failures += 1
            if now >= self._next_judgement:
                self._judge(spec, now)
                if ep.outlier.ejected:
                    return
        state = outlier.count_outcome(ep.outlier, outcome)
        if outlier.should_eject(state, spec):
            ejected_now = sum(1 for e in self.endpoints if e.outlier.ejected)
            if outlier.ejection_allowed(ejected_now, len(self.endpoints), spec.max_ejection_percent):
                state = outlier.eject(state, spec, now)
                self._next_event = min(self._next_event, state.ejected_until)
                self.stats["ejections"] += 1
            else:
                self.stats["ejections_overflow"] += 1  # Envoy: ejections_overflow
        ep.outlier = state

    def _judge(self, spec: OutlierDetection, now: float) -> None:
        """One judgement of the statistical detectors over the interval that ended (Envoy runs it on
        a timer every ``interval``; here the first outcome reported after it does, which judges the
        same counts: without outcomes there is nothing new to judge)."""
        volumes = [(ep.window_requests, ep.window_failures) for ep in self.endpoints]
        found = [(i, "ejections_success_rate") for i in outlier.success_rate_outliers(volumes, spec)]
        found += [(i, "ejections_failure_percentage") for i in outlier.failure_percentage_outliers(volumes, spec)]
        for i, stat in found:
            ep = self.endpoints[i]
            if ep.outlier.ejected:
                continue  # found by both detectors, or ejected already
            ejected_now = sum(1 for e in self.endpoints if e.outlier.ejected)
            if outlier.ejection_allowed(ejected_now, len(self.endpoints), spec.max_ejection_percent):
                ep.outlier = outlier.eject(ep.outlier, spec, now)
                self._next_event = min(self._next_event, ep.outlier.ejected_until)
                self.stats[stat] += 1
            else:
                self.stats["ejections_overflow"] += 1
        for ep in self.endpoints:
            ep.window_requests = ep.window_failures = 0
        self._next_judgement = now + spec.interval

    def _release_due(self, now: float) -> None:
        """End ejections whose time has passed and decay old ejection counts (lazy, no timers)."""
        if now < self._next_event:
            return
        spec = self.spec.outlier_detection
        assert spec is not None
        for ep in self.endpoints:
            ep.outlier = outlier.refresh(ep.outlier, spec, now)
        self._next_event = self._earliest_event()

    def _earliest_event(self) -> float:
        """When the outlier state of some endpoint changes by itself: an ejection ends or a count decays."""
        spec = self.spec.outlier_detection
        if spec is None:
            return float("inf")
        return min(
            (
                ep.outlier.ejected_until if ep.outlier.ejected else ep.outlier.released_at + spec.max_ejection
                for ep in self.endpoints
                if ep.outlier.times_ejected
            ),
            default=float("inf"),
        )

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return sum(ep.in_flight for ep in self.endpoints)

    async def start(self) -> None:
        """Start active health checking if the service has a health check (first round at once)."""
        hc = self.spec.health_check
        if hc is None or self._tasks or self._closed or self.parent is not None:
            return
        client = self.h1
        for ep in self.endpoints:
            rng = random.Random(self._rng.random())
            task = asyncio.create_task(run_checks(client, ep, hc, rng=rng, clock=self._clock))
            self._tasks.append(task)

    async def stop_health_checks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def close(self) -> None:
        """Stop health checks and close the HTTP/1.1 client (unless it was handed over)."""
        self._closed = True
        await self.stop_health_checks()
        if self._owns_client and self._h1 is not None:
            await self._h1.close()

    def subset(self, spec: ServiceSpec) -> ServicePool:
        """A pool over some of this pool's endpoints (``ServiceSpec.subset_spec``), sharing their state."""
        return ServicePool(spec, ssl_context=self.ssl_context, rng=self._rng, clock=self._clock, parent=self)

    def snapshot(self, *, now: float | None = None) -> dict[str, Any]:
        """JSON-able state: groups with their endpoints, health, ejections, in-flight counts, stats."""
        now = self._clock() if now is None else now
        conn: dict[str, Any] = {"limit": self.spec.connection_pool.max_connections}
        if self._h1 is not None:
            conn["in_use"] = self._h1.in_use
        return {
            "service": self.spec.name,
            "load_balancer": self.spec.load_balancer,
            "health_check": self.spec.health_check is not None,
            "outlier_detection": self.spec.outlier_detection is not None,
            "available": sum(ep.available for ep in self.endpoints),
            "total": len(self.endpoints),
            "in_flight": self.in_flight,
            "connections": conn,
            "stats": dict(self.stats),
            "groups": [
                {
                    "name": g.spec.name,
                    "weight": g.spec.weight,
                    "priority": g.spec.priority,
                    "endpoints": [ep.snapshot(now) for ep in g.endpoints],
                }
                for g in self._groups
            ],
        }
