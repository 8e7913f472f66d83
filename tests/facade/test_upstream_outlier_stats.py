"""Success-rate and failure-percentage outlier detection (Envoy's statistical detectors): the pure
judgement, the pool's interval bookkeeping, and a sick endpoint ejected behind a real facade."""

from __future__ import annotations

import httpx
import pytest

from facade.config import OutlierDetection
from facade.upstream import Outcome, ServicePool
from facade.upstream.outlier import failure_percentage_outliers, success_rate_outliers
from tests.backends import EchoApp
from tests.harness import run_facade
from tests.servers import serve_app

from .test_upstream_specs import group, service, urls

SR = OutlierDetection(success_rate_stdev_factor=1900, success_rate_minimum_hosts=5, success_rate_request_volume=100)
FP = OutlierDetection(failure_percentage_threshold=50, failure_percentage_minimum_hosts=3, failure_percentage_request_volume=10)


@pytest.mark.parametrize(
    ("volumes", "outliers"),
    [
        # rates 100,100,100,100,50: mean 90, stdev 20, threshold 90 - 1.9 * 20 = 52
        ([(100, 0)] * 4 + [(100, 50)], [4]),
        ([(100, 0)] * 4 + [(100, 45)], [4]),
        ([(100, 0)] * 4 + [(100, 40)], [4]),
        ([(100, 10)] * 5, []),  # all alike: stdev 0, nobody is below the mean
        ([(100, 0)] * 3 + [(100, 50)], []),  # fewer than minimum_hosts judged
        ([(100, 0)] * 4 + [(99, 99), (100, 50)], [5]),  # 99 requests: below the volume, not judged
        ([(100, 0)] * 8 + [(100, 5), (100, 6)], [9]),  # mean 98.9, stdev 2.21, threshold 94.7: 94 only
    ],
)
def test_success_rate_outliers(volumes: list[tuple[int, int]], outliers: list[int]) -> None:
    assert success_rate_outliers(volumes, SR) == outliers


def test_success_rate_factor_is_envoys_integer_form() -> None:
    volumes = [(100, 0)] * 4 + [(100, 50)]  # threshold 90 - f * 20: 50 is an outlier for f < 2.0 only
    assert success_rate_outliers(volumes, OutlierDetection(success_rate_stdev_factor=1999)) == [4]
    assert success_rate_outliers(volumes, OutlierDetection(success_rate_stdev_factor=2000)) == []
    assert success_rate_outliers(volumes, OutlierDetection()) == []  # off


@pytest.mark.parametrize(
    ("volumes", "outliers"),
    [
        ([(10, 0), (10, 4), (10, 5)], [2]),  # at least the threshold
        ([(10, 0), (10, 4), (9, 9)], []),  # the sick one is below the volume: only two judged
        ([(10, 9), (10, 9), (10, 9)], [0, 1, 2]),  # max_ejection_percent bounds what the pool does with it
        ([(10, 0)] * 2, []),
    ],
)
def test_failure_percentage_outliers(volumes: list[tuple[int, int]], outliers: list[int]) -> None:
    assert failure_percentage_outliers(volumes, FP) == outliers
    assert failure_percentage_outliers(volumes, OutlierDetection()) == []


def _report(pool: ServicePool, i: int, good: int, bad: int, now: float) -> None:
    # Interleaved, so the consecutive detectors never fire.
    for k in range(good + bad):
        failing = k % 2 == 1 and bad > 0
        bad -= failing
        pool.report(pool.endpoints[i], Outcome.HTTP_5XX if failing else Outcome.SUCCESS, now=now)


def test_pool_judges_once_per_interval_and_respects_max_ejection_percent() -> None:
    spec = OutlierDetection(
        interval=10.0, failure_percentage_threshold=40, failure_percentage_minimum_hosts=3,
        failure_percentage_request_volume=10, max_ejection_percent=25,
    )
    pool = ServicePool(service(group("a", *urls(4)), outlier=spec), clock=lambda: 0.0)
    _report(pool, 0, 10, 0, 1.0)
    _report(pool, 1, 10, 0, 1.0)
    _report(pool, 2, 5, 5, 1.0)
    _report(pool, 3, 6, 4, 1.0)
    assert all(ep.available for ep in pool.endpoints)  # the interval has not ended
    assert pool.endpoints[2].window_failures == 5
    pool.report(pool.endpoints[0], Outcome.SUCCESS, now=10.0)  # the first outcome after it: judged
    ejected = [ep.outlier.ejected for ep in pool.endpoints]
    assert ejected == [False, False, True, False]  # 25 % of 4: one, the other outlier overflows
    stats = pool.snapshot(now=10.0)["stats"]
    assert stats["ejections_failure_percentage"] == 1 and stats["ejections_overflow"] == 1
    assert all(ep.window_requests == 0 for ep in pool.endpoints)  # a new interval
    assert pool.endpoints[2].ejected_until == 10.0 + spec.base_ejection
    _report(pool, 3, 6, 4, 11.0)
    pool.report(pool.endpoints[0], Outcome.SUCCESS, now=19.0)
    assert not pool.endpoints[3].outlier.ejected  # the next judgement is at 20


def test_pool_success_rate_ejects_the_outlier() -> None:
    spec = OutlierDetection(
        interval=5.0, success_rate_stdev_factor=1900, success_rate_request_volume=20, success_rate_minimum_hosts=5
    )
    pool = ServicePool(service(group("a", *urls(5)), outlier=spec), clock=lambda: 0.0)
    for i in range(4):
        _report(pool, i, 20, 0, 1.0)
    _report(pool, 4, 10, 10, 1.0)
    pool.report(pool.endpoints[4], Outcome.SUCCESS, now=5.0)
    assert [ep.available for ep in pool.endpoints] == [True, True, True, True, False]
    assert pool.snapshot(now=5.0)["stats"]["ejections_success_rate"] == 1


class Sick(EchoApp):
    """Answers 500 to everything but its health check."""

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http" and scope["path"] != "/healthz":
            scope = {**scope, "path": "/status/500", "raw_path": b"/status/500"}
        await super().__call__(scope, receive, send)


async def test_a_sick_endpoint_is_ejected_by_failure_percentage_behind_the_facade(tmp_path):
    sick, well = Sick("sick"), EchoApp("well")
    async with serve_app(sick) as s, serve_app(well) as w:
        cfg = f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0}}
services:
  svc:
    endpoints: [{s}, {w}]
    retries: {{attempts: 0}}
    outlier_detection:
      consecutive_5xx: 1000
      consecutive_gateway_errors: 1000
      interval: 100ms
      failure_percentage_threshold: 50
      failure_percentage_minimum_hosts: 2
      failure_percentage_request_volume: 3
      max_ejection_percent: 50
routes:
  - name: all
    backend: svc
"""
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            pool = rt.upstreams.get("svc")
            assert pool is not None
            for _ in range(500):  # bounded: until an interval with enough requests to both has ended
                await client.get("/x")
                if not pool.endpoints[0].available:
                    break
            assert not pool.endpoints[0].available and pool.endpoints[1].available
            assert [(await client.get("/x")).status_code for _ in range(6)] == [200] * 6
            async with httpx.AsyncClient() as admin:
                text = (await admin.get(f"{rt.admin_url}/metrics")).text
            assert 'facade_upstream_ejections_total{service="svc",detector="failure_percentage"} 1' in text
