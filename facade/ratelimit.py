"""Local rate limiting per route (Envoy's local_ratelimit): token buckets, per route or per key.

A route's ``rate_limit`` (``facade.config.RateLimit``) gives each key a bucket of ``capacity``
tokens (``burst``, else ``requests_per_unit``) that refills at ``requests_per_unit`` per ``unit``;
a request takes one token or is answered 429 with ``retry-after`` (docs/routing.md, "Rate
limiting"). Keys: the route (one bucket), the client's IP, or a header's value.

Buckets of per-key limiters are bounded: at most ``max_keys`` (``DEFAULT_MAX_KEYS``) per route,
least recently used evicted first, and a key longer than ``MAX_KEY_CHARS`` is kept as its digest,
so a client choosing header values cannot grow the table past ~2-3 MB a route. An evicted key comes
back with a full bucket, which loses nothing when its bucket had refilled anyway (idle for ``capacity / rate`` seconds); a client that
cycles through more keys than the cap within that time is not limited per key (bound the key
space, e.g. rate limit by client IP rather than a client-chosen header).

State lives in ``RateLimits``, owned by the runtime and shared by every snapshot, so a reload or a
migration step keeps the buckets of routes whose ``rate_limit`` did not change. Each worker
process (``--workers N``) has its own buckets, like each Envoy has its own local limiter; the
workers ship their decisions (``counts()``/``absorb()``) and buckets held (``report_keys()``) to the
supervisor, whose ``/metrics`` sums them (docs/workers.md).
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import math
import time
from collections.abc import Callable, Hashable, Iterable, Mapping

from .config import RateLimit, Route
from .telemetry.prometheus import escape_label_value

__all__ = ["DEFAULT_MAX_KEYS", "MAX_KEY_CHARS", "RateLimits", "RouteLimiter", "TokenBucket", "client_key"]

DEFAULT_MAX_KEYS = 10_000  # per route; a bucket is ~100 bytes, so ~1 MB per keyed route at most
# A key longer than this is kept as its digest: a header value is the client's to choose and may be as
# long as the request head allows (32 KiB), and 10,000 such keys would hold ~300 MB per route.
MAX_KEY_CHARS = 64


class TokenBucket:
    """Tokens available and when they were counted; refilled lazily when a token is asked for."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp

    def take(self, now: float, rate: float, capacity: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available (nothing taken)."""
        tokens = self.tokens + (now - self.stamp) * rate
        if tokens > capacity:  # noqa: PLR1730 - min() is a builtin call on every request
            tokens = capacity
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / rate


class RouteLimiter:
    """The buckets of one route's ``rate_limit`` and what they decided."""

    __slots__ = ("_buckets", "_one", "allowed", "capacity", "evicted", "limited", "max_keys", "rate", "spec")

    def __init__(self, spec: RateLimit, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.spec = spec
        self.rate = spec.requests_per_unit / spec.unit_seconds  # tokens per second
        self.capacity = float(spec.capacity)
        self.max_keys = max_keys
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()
        self._one = TokenBucket(self.capacity, float("-inf")) if spec.key == "route" else None
        self.allowed = 0
        self.limited = 0
        self.evicted = 0

    def __repr__(self) -> str:
        return f"RouteLimiter({self.spec!r}, keys={len(self._buckets)}, allowed={self.allowed}, limited={self.limited})"

    @property
    def keys(self) -> int:
        return 1 if self._one is not None else len(self._buckets)

    def check(self, key: str, now: float) -> float:
        """One request under ``key``: 0.0 when it may pass, else the seconds until it could."""
        bucket = self._one
        if bucket is not None:  # key "route": one bucket, no key bookkeeping
            wait = bucket.take(now, self.rate, self.capacity)
        else:
            wait = self._keyed(key).take(now, self.rate, self.capacity)
        if wait:
            self.limited += 1
        else:
            self.allowed += 1
        return wait

    def _keyed(self, key: str) -> TokenBucket:
        if len(key) > MAX_KEY_CHARS:
            # 128 bits: two values sharing a bucket by chance would take ~2^64 keys.
            key = "#" + hashlib.blake2b(key.encode("latin-1", "replace"), digest_size=16).hexdigest()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)  # the least recently used key
                self.evicted += 1
            # Full, as of "long ago": take() refills it to the capacity whatever the clock says.
            bucket = self._buckets[key] = TokenBucket(self.capacity, float("-inf"))
        else:
            self._buckets.move_to_end(key)
        return bucket

    def headers(self, wait: float) -> list[tuple[bytes, bytes]]:
        """The 429's headers: ``retry-after`` in whole seconds (at least 1) and the limit's x-ratelimit-*."""
        seconds = str(max(1, math.ceil(wait))).encode()
        window = str(int(self.spec.unit_seconds)).encode()
        return [
            (b"retry-after", seconds),
            (b"x-ratelimit-limit", b"%d, %d;w=%s" % (self.spec.requests_per_unit, self.spec.requests_per_unit, window)),
            (b"x-ratelimit-remaining", b"0"),
            (b"x-ratelimit-reset", seconds),
        ]


def client_key(peer: str, forwarded_for: Iterable[bytes], trusted: Callable[[str], bool]) -> str:
    """The client a rate limit counts: the peer, or, when the peer is a trusted proxy, the right-most
    X-Forwarded-For address that is not a trusted proxy (what a client cannot forge)."""
    if not trusted(peer):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.decode("latin-1").split(",")]
    for hop in reversed(hops):
        try:
            address = str(ipaddress.ip_address(hop))
        except ValueError:
            return peer  # a malformed chain: count the proxy itself rather than a made-up name
        if not trusted(address):
            return address
    return peer


class RateLimits:
    """Every route's limiter, kept across snapshots while the route's ``rate_limit`` stays the same."""

    def __init__(self, *, max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._routes: dict[str, RouteLimiter] = {}
        # What other processes decided (the workers of `--workers N`): route -> decision -> requests,
        # and the buckets each of them holds now (a gauge: the latest report per process).
        self._absorbed: dict[str, collections.Counter[str]] = {}
        self._remote_keys: dict[Hashable, dict[str, int]] = {}

    def __repr__(self) -> str:
        return f"RateLimits(routes={sorted(self._routes)})"

    def limiter(self, route: Route) -> RouteLimiter:
        """The limiter of ``route`` (which has a ``rate_limit``); a changed spec starts full buckets."""
        spec = route.rate_limit
        assert spec is not None, "only routes with a rate_limit have a limiter"
        limiter = self._routes.get(route.name)
        if limiter is not None and limiter.spec is spec:  # the common case: the same route object
            return limiter
        if limiter is None or limiter.spec != spec:
            limiter = self._routes[route.name] = RouteLimiter(spec, max_keys=self.max_keys)
        else:
            limiter.spec = spec  # an equal spec from a new snapshot: compared once, by identity after
        return limiter

    def counts(self) -> dict[str, tuple[RouteLimiter, dict[str, int]]]:
        """Each route's limiter and its decisions so far (a changed spec's new limiter counts from 0)."""
        return {name: (lim, {"allowed": lim.allowed, "limited": lim.limited}) for name, lim in self._routes.items()}

    def keys(self) -> dict[str, int]:
        """The buckets held per route."""
        return {name: limiter.keys for name, limiter in self._routes.items()}

    def absorb(self, decisions: Mapping[str, Mapping[str, int]]) -> None:
        """Add another process's new decisions (route -> ``allowed``/``limited`` -> requests)."""
        for route, counts in decisions.items():
            self._absorbed.setdefault(route, collections.Counter()).update(counts)

    def report_keys(self, source: Hashable, keys: Mapping[str, int] | None) -> None:
        """The buckets another process holds now; None when it is gone (its buckets went with it)."""
        if keys is None:
            self._remote_keys.pop(source, None)
        else:
            self._remote_keys[source] = dict(keys)

    def prometheus_text(self) -> str:
        """``facade_ratelimit_requests_total{route, decision}`` and the keys held per route, this
        process's and those of every process that reported (summed)."""
        decided: dict[str, collections.Counter[str]] = {
            name: collections.Counter(absorbed) for name, absorbed in self._absorbed.items()
        }
        keys: collections.Counter[str] = collections.Counter()
        for name, limiter in self._routes.items():
            decided.setdefault(name, collections.Counter()).update(allowed=limiter.allowed, limited=limiter.limited)
            keys[name] += limiter.keys
        for reported in self._remote_keys.values():
            keys.update(reported)
        lines = [
            "# HELP facade_ratelimit_requests_total Requests judged by a route's local rate limit.",
            "# TYPE facade_ratelimit_requests_total counter",
        ]
        for name in sorted(decided):
            counts, label = decided[name], escape_label_value(name)
            lines.append(f'facade_ratelimit_requests_total{{route="{label}",decision="allowed"}} {counts["allowed"]}')
            lines.append(f'facade_ratelimit_requests_total{{route="{label}",decision="limited"}} {counts["limited"]}')
        lines.append("# HELP facade_ratelimit_keys Rate limit buckets held per route (bounded by the key cap).")
        lines.append("# TYPE facade_ratelimit_keys gauge")
        for name in sorted(keys):
            lines.append(f'facade_ratelimit_keys{{route="{escape_label_value(name)}"}} {keys[name]}')
        return "\n".join(lines) + "\n"
