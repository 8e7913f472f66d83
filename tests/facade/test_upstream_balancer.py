"""Group choice and load balancing: pure functions and ServicePool.pick, no sockets."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from facade.errors import UpstreamUnavailable
from facade.upstream import GroupCandidates, ServicePool, choose_group, pick_least_request, pick_round_robin

from .test_upstream_specs import group, service, urls

N = 6000


def counts(pool: ServicePool, n: int = N) -> Counter[str]:
    return Counter(pool.pick().url for _ in range(n))


def test_round_robin_is_exact_and_cyclic() -> None:
    pool = ServicePool(service(group("a", *urls(3))))
    picks = [pool.pick().url for _ in range(9)]
    assert picks == list(urls(3)) * 3


def test_round_robin_skips_unavailable_endpoints() -> None:
    pool = ServicePool(service(group("a", *urls(3))))
    pool.endpoints[1].healthy = False
    assert Counter(pool.pick().url for _ in range(10)) == {urls(3)[0]: 5, urls(3)[2]: 5}


def test_pick_round_robin_cycles() -> None:
    assert [pick_round_robin(3, c) for c in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_random_is_uniform_within_bound() -> None:
    pool = ServicePool(service(group("a", *urls(4)), lb="random"), rng=random.Random(7))
    c = counts(pool)
    assert set(c) == set(urls(4))
    for n in c.values():  # expected 1500 each; 5 sigma is ~170
        assert abs(n - N / 4) < 170


def test_least_request_prefers_idle_endpoint() -> None:
    pool = ServicePool(service(group("a", *urls(4)), lb="least_request"), rng=random.Random(1))
    for ep in pool.endpoints[1:]:
        ep.in_flight = 5
    c = counts(pool)
    # P2C over 4 distinct endpoints: the idle one wins every pair it is in, 3 of 6 pairs -> 1/2.
    assert abs(c[urls(4)[0]] - N / 2) < 200
    for url in urls(4)[1:]:
        assert abs(c[url] - N / 6) < 150


def test_least_request_with_two_always_takes_the_idler() -> None:
    rng = random.Random(3)
    assert all(pick_least_request([4, 1], rng) == 1 for _ in range(100))
    assert pick_least_request([9], rng) == 0


def test_least_request_follows_begin_and_end() -> None:
    pool = ServicePool(service(group("a", *urls(2)), lb="least_request"), rng=random.Random(5))
    busy = pool.endpoints[0]
    busy.begin()
    assert all(pool.pick() is pool.endpoints[1] for _ in range(50))
    busy.end()
    assert busy.in_flight == 0
    assert {pool.pick().url for _ in range(50)} == set(urls(2))


def test_group_weights_split_traffic() -> None:
    pool = ServicePool(
        service(group("old", *urls(2), weight=80), group("new", *urls(2, base=10), weight=20)),
        rng=random.Random(11),
    )
    by_group = Counter(pool.pick().group for _ in range(N))
    assert abs(by_group["new"] - 0.2 * N) < 5 * (N * 0.2 * 0.8) ** 0.5  # 5 sigma ~ 155


def test_choose_group_takes_lowest_priority_with_candidates() -> None:
    rng = random.Random(0)
    groups = [GroupCandidates(100, 1, 2), GroupCandidates(100, 0, 0), GroupCandidates(100, 0, 1)]
    assert {choose_group(groups, rng) for _ in range(20)} == {2}
    assert choose_group([GroupCandidates(100, 0, 0)], rng) is None


def test_choose_group_drained_only_when_asked() -> None:
    rng = random.Random(0)
    groups = [GroupCandidates(0, 0, 3), GroupCandidates(100, 0, 0)]
    assert choose_group(groups, rng) is None
    assert choose_group(groups, rng, drained=True) == 0


def test_failover_to_next_priority_and_back() -> None:
    pool = ServicePool(
        service(group("primary", *urls(2), priority=0), group("backup", *urls(2, base=10), priority=1)),
    )
    assert {pool.pick().group for _ in range(10)} == {"primary"}
    for ep in pool.endpoints[:2]:
        ep.healthy = False
    assert {pool.pick().group for _ in range(10)} == {"backup"}
    pool.endpoints[0].healthy = True  # one primary endpoint recovered: all traffic returns
    assert {pool.pick().url for _ in range(10)} == {urls(2)[0]}


def test_group_without_available_endpoint_gives_its_share_to_the_others() -> None:
    pool = ServicePool(
        service(group("a", *urls(1), weight=50), group("b", *urls(1, base=10), weight=50)),
        rng=random.Random(2),
    )
    pool.endpoints[0].healthy = False
    assert {pool.pick().group for _ in range(100)} == {"b"}


def test_weight_zero_group_is_drained_but_is_the_last_resort() -> None:
    pool = ServicePool(service(group("old", *urls(2), weight=0), group("new", *urls(2, base=10), weight=100)))
    assert {pool.pick().group for _ in range(20)} == {"new"}
    for ep in pool.endpoints[2:]:
        ep.healthy = False
    assert {pool.pick().group for _ in range(20)} == {"old"}


def test_weighted_group_at_any_priority_beats_a_drained_one() -> None:
    pool = ServicePool(
        service(group("old", *urls(1), weight=0, priority=0), group("new", *urls(1, base=9), priority=5))
    )
    assert pool.pick().group == "new"


def test_no_available_endpoint_raises_unavailable() -> None:
    pool = ServicePool(service(group("a", *urls(2)), name="catalog"))
    for ep in pool.endpoints:
        ep.healthy = False
    with pytest.raises(UpstreamUnavailable, match="no healthy endpoint in service catalog"):
        pool.pick()
    assert pool.snapshot()["stats"]["no_healthy_endpoint"] == 1


def test_exclude_sends_retries_elsewhere() -> None:
    pool = ServicePool(service(group("a", *urls(3)), lb="random"), rng=random.Random(4))
    tried = {pool.endpoints[0], pool.endpoints[1]}
    assert all(pool.pick(exclude=tried) is pool.endpoints[2] for _ in range(30))


def test_exclude_prefers_backup_priority_over_reuse() -> None:
    pool = ServicePool(service(group("p0", *urls(1)), group("p1", *urls(1, base=9), priority=1)))
    first = pool.pick()
    assert first.group == "p0"
    assert pool.pick(exclude=[first]).group == "p1"


def test_exclude_everything_allows_reuse() -> None:
    pool = ServicePool(service(group("a", *urls(2)), group("drained", *urls(1, base=9), weight=0)))
    # Reuse a weighted endpoint rather than send a retry to a drained group.
    assert pool.pick(exclude=set(pool.endpoints[:2])).group == "a"
    assert pool.pick(exclude=set(pool.endpoints)).group == "a"
