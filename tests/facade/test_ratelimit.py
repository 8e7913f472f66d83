"""Token buckets, per-key limiters and the client key of a rate limit (facade.ratelimit, pure with a clock)."""

from __future__ import annotations

import ipaddress
import tracemalloc

import pytest

from facade.config import RateLimit, Route, RouteMatch, WeightedBackend
from facade.ratelimit import DEFAULT_MAX_KEYS, MAX_KEY_CHARS, RateLimits, RouteLimiter, TokenBucket, client_key


def test_bucket_grants_its_capacity_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(3.0, 0.0)
    assert [bucket.take(0.0, 1.0, 3.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0, 1.0, 3.0) == pytest.approx(1.0)  # one second until the next token
    assert bucket.take(0.5, 1.0, 3.0) == pytest.approx(0.5)  # a refused request takes nothing
    assert bucket.take(1.0, 1.0, 3.0) == 0.0
    assert bucket.take(100.0, 1.0, 3.0) == 0.0  # never more than the capacity after a quiet spell
    assert [bucket.take(100.0, 1.0, 3.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_limiter_counts_and_answers_retry_after_in_whole_seconds() -> None:
    limiter = RouteLimiter(RateLimit(requests_per_unit=2, unit="minute"))
    assert limiter.check("", 0.0) == 0.0 and limiter.check("", 0.0) == 0.0
    wait = limiter.check("", 0.0)
    assert wait == pytest.approx(30.0)  # 2 per minute: a token every 30 s
    assert (limiter.allowed, limiter.limited) == (2, 1)
    headers = dict(limiter.headers(wait))
    assert headers[b"retry-after"] == b"30"
    assert headers[b"x-ratelimit-limit"] == b"2, 2;w=60"
    assert headers[b"x-ratelimit-remaining"] == b"0"
    assert dict(limiter.headers(0.2))[b"retry-after"] == b"1"  # at least one second


def test_burst_sizes_the_bucket() -> None:
    limiter = RouteLimiter(RateLimit(requests_per_unit=1, unit="second", burst=5))
    assert [limiter.check("k", 0.0) == 0.0 for _ in range(6)] == [True] * 5 + [False]


def test_keys_are_bounded_least_recently_used_first() -> None:
    limiter = RouteLimiter(RateLimit(requests_per_unit=1, unit="hour", key="client_ip"), max_keys=2)
    assert limiter.check("a", 0.0) == 0.0
    assert limiter.check("b", 0.0) == 0.0
    assert limiter.check("a", 1.0) > 0  # a is now the most recently used
    assert limiter.check("c", 2.0) == 0.0  # evicts b, the least recently used
    assert limiter.keys == 2 and limiter.evicted == 1
    assert limiter.check("a", 3.0) > 0  # a kept its empty bucket
    assert limiter.check("b", 4.0) == 0.0  # b came back with a full one (documented)


def _route(spec: RateLimit | None, name: str = "r") -> Route:
    return Route(name=name, matches=(RouteMatch(),), backends=(WeightedBackend("a"),), rate_limit=spec)


def test_limiters_survive_snapshots_while_the_spec_stays() -> None:
    limits = RateLimits(clock=lambda: 0.0)
    spec = RateLimit(requests_per_unit=1)
    first = limits.limiter(_route(spec))
    assert limits.limiter(_route(RateLimit(requests_per_unit=1))) is first  # an equal spec from a reload
    assert limits.limiter(_route(RateLimit(requests_per_unit=2))) is not first  # changed: full buckets
    first.check("", 0.0)
    text = limits.prometheus_text()
    assert 'facade_ratelimit_requests_total{route="r",decision="allowed"} 0' in text  # the new limiter's
    limits.limiter(_route(spec, name='we"ird')).check("", 0.0)
    assert 'facade_ratelimit_requests_total{route="we\\"ird",decision="allowed"} 1' in limits.prometheus_text()


_TRUSTED = [ipaddress.ip_network("10.0.0.0/8")]


def _trusted(ip: str) -> bool:
    try:
        return any(ipaddress.ip_address(ip) in net for net in _TRUSTED)
    except ValueError:
        return False


@pytest.mark.parametrize(
    ("peer", "xff", "key"),
    [
        ("192.0.2.1", [b"198.51.100.7"], "192.0.2.1"),  # an untrusted peer's X-Forwarded-For is never read
        ("10.0.0.1", [b"198.51.100.7"], "198.51.100.7"),
        ("10.0.0.1", [b"203.0.113.9, 198.51.100.7, 10.0.0.2"], "198.51.100.7"),  # right-most untrusted hop
        ("10.0.0.1", [b"203.0.113.9", b"198.51.100.7"], "198.51.100.7"),  # several header lines
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", [b"10.0.0.3"], "10.0.0.1"),  # only trusted hops: the peer
        ("10.0.0.1", [b"not-an-ip"], "10.0.0.1"),
    ],
)
def test_client_key(peer: str, xff: list[bytes], key: str) -> None:
    assert client_key(peer, xff, _trusted) == key


def test_long_client_chosen_keys_are_kept_as_digests_so_memory_stays_bounded() -> None:
    limiter = RouteLimiter(RateLimit(requests_per_unit=1, unit="hour", key="header", header="x-k"))
    tracemalloc.start()
    try:
        for i in range(DEFAULT_MAX_KEYS + 500):
            assert limiter.check(f"{i}:" + "x" * 30_000, 0.0) == 0.0  # each long value has its own full bucket
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert limiter.keys == DEFAULT_MAX_KEYS and limiter.evicted == 500
    assert held < 4_000_000  # raw keys would hold ~300 MB
    assert limiter.check(f"{DEFAULT_MAX_KEYS + 499}:" + "x" * 30_000, 1.0) > 0  # the same long value: the same bucket
    assert limiter.check("x" * (MAX_KEY_CHARS + 1), 1.0) == 0.0  # a value just over the bound is its own key too
