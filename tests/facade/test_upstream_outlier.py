"""Outlier detection: the pure bookkeeping and ServicePool.report with an injected clock."""

from __future__ import annotations

import pytest

from facade.config import OutlierDetection
from facade.errors import UpstreamUnavailable
from facade.upstream import Outcome, OutlierState, ServicePool
from facade.upstream.outlier import count_outcome, eject, ejection_allowed, refresh, should_eject

from .test_upstream_specs import group, service, urls

OD = OutlierDetection(
    consecutive_5xx=3, consecutive_gateway_errors=2, base_ejection=30, max_ejection=300, max_ejection_percent=50
)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (404, Outcome.SUCCESS),
        (500, Outcome.HTTP_5XX),
        (501, Outcome.HTTP_5XX),
        (502, Outcome.GATEWAY_ERROR),
        (503, Outcome.GATEWAY_ERROR),
        (504, Outcome.GATEWAY_ERROR),
    ],
)
def test_outcome_from_status(status: int, outcome: Outcome) -> None:
    assert Outcome.from_status(status) is outcome


def test_5xx_counts_both_gateway_errors_only_one() -> None:
    s = count_outcome(OutlierState(), Outcome.HTTP_5XX)
    s = count_outcome(s, Outcome.CONNECT_FAILURE)
    assert (s.consecutive_5xx, s.consecutive_gateway_errors) == (2, 1)
    assert should_eject(s, OD) is False
    s = count_outcome(s, Outcome.TIMEOUT)
    assert should_eject(s, OD) is True  # 2 gateway errors reach consecutive_gateway_errors


def test_success_resets_the_counters() -> None:
    s = count_outcome(count_outcome(OutlierState(), Outcome.HTTP_5XX), Outcome.HTTP_5XX)
    s = count_outcome(s, Outcome.SUCCESS)
    assert (s.consecutive_5xx, s.consecutive_gateway_errors) == (0, 0)


def test_ejection_time_grows_and_is_capped() -> None:
    spec = OutlierDetection(base_ejection=30, max_ejection=75)
    s = eject(OutlierState(), spec, now=100.0)
    assert (s.ejected_until, s.times_ejected) == (130.0, 1)
    s = refresh(s, spec, now=130.0)
    assert not s.ejected and s.times_ejected == 1
    s = eject(s, spec, now=131.0)
    assert s.ejected_until == 131.0 + 60
    s = eject(refresh(s, spec, now=200.0), spec, now=200.0)
    assert s.ejected_until == 200.0 + 75  # 90 capped at max_ejection


def test_times_ejected_decays_after_good_behaviour() -> None:
    s = refresh(eject(OutlierState(), OD, now=0.0), OD, now=30.0)
    assert refresh(s, OD, now=30.0 + 299).times_ejected == 1
    assert refresh(s, OD, now=30.0 + 300).times_ejected == 0


def test_ejection_allowed_caps_percent_but_allows_one() -> None:
    assert ejection_allowed(0, 3, 10.0) is True  # at least one, whatever the percentage
    assert ejection_allowed(1, 3, 10.0) is False
    assert ejection_allowed(1, 10, 20.0) is True
    assert ejection_allowed(2, 10, 20.0) is False


def pool_with(n: int, od: OutlierDetection = OD) -> ServicePool:
    return ServicePool(service(group("a", *urls(n)), outlier=od))


def test_pool_ejects_after_consecutive_5xx_and_recovers_after_the_time() -> None:
    pool = pool_with(2)
    bad, good = pool.endpoints
    for _ in range(2):
        pool.report(bad, Outcome.HTTP_5XX, now=10.0)
    assert bad.available
    pool.report(bad, Outcome.HTTP_5XX, now=10.0)
    assert not bad.available and bad.ejected_until == 40.0 and bad.times_ejected == 1
    assert {pool.pick(now=20.0).url for _ in range(10)} == {good.url}
    assert pool.pick(now=40.0) is not None and bad.available  # released lazily by pick()
    assert {pool.pick(now=41.0).url for _ in range(10)} == {good.url, bad.url}
    assert pool.snapshot(now=41.0)["stats"]["ejections"] == 1


def test_success_in_between_prevents_ejection() -> None:
    pool = pool_with(2)
    ep = pool.endpoints[0]
    for outcome in [Outcome.HTTP_5XX, Outcome.HTTP_5XX, Outcome.SUCCESS, Outcome.HTTP_5XX, Outcome.HTTP_5XX]:
        pool.report(ep, outcome, now=1.0)
    assert ep.available


def test_second_ejection_lasts_longer() -> None:
    pool = pool_with(2)
    ep = pool.endpoints[0]
    for _ in range(2):
        pool.report(ep, Outcome.GATEWAY_ERROR, now=0.0)
    assert ep.ejected_until == 30.0
    pool.pick(now=30.0)
    for _ in range(2):
        pool.report(ep, Outcome.RESET, now=31.0)
    assert ep.ejected_until == 31.0 + 60.0 and ep.times_ejected == 2


def test_max_ejection_percent_limits_ejections_but_allows_one() -> None:
    pool = pool_with(3, OutlierDetection(consecutive_5xx=1, max_ejection_percent=10))
    a, b, c = pool.endpoints
    pool.report(a, Outcome.HTTP_5XX, now=0.0)
    pool.report(b, Outcome.HTTP_5XX, now=0.0)
    assert not a.available and b.available  # 10 % of 3 is 0.3, yet one is ejected
    assert pool.snapshot(now=0.0)["stats"]["ejections_overflow"] == 1
    assert {pool.pick(now=1.0).url for _ in range(10)} == {b.url, c.url}


def test_single_endpoint_service_can_be_ejected_and_then_503s() -> None:
    pool = pool_with(1, OutlierDetection(consecutive_5xx=1, base_ejection=5))
    pool.report(pool.endpoints[0], Outcome.CONNECT_FAILURE, now=0.0)
    with pytest.raises(UpstreamUnavailable):
        pool.pick(now=1.0)
    assert pool.pick(now=5.0) is pool.endpoints[0]


def test_late_failures_do_not_extend_an_ejection() -> None:
    pool = pool_with(2, OutlierDetection(consecutive_5xx=1, base_ejection=10))
    ep = pool.endpoints[0]
    pool.report(ep, Outcome.HTTP_5XX, now=0.0)
    pool.report(ep, Outcome.HTTP_5XX, now=5.0)  # a request sent before the ejection answers late
    assert ep.ejected_until == 10.0 and ep.times_ejected == 1


def test_without_outlier_detection_nothing_is_ejected() -> None:
    pool = ServicePool(service(group("a", *urls(1))))
    for _ in range(20):
        pool.report(pool.endpoints[0], Outcome.HTTP_5XX, now=0.0)
    assert pool.endpoints[0].available
    assert pool.snapshot()["groups"][0]["endpoints"][0]["outcomes"] == {"http_5xx": 20}
