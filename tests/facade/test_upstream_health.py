"""Active health checks against real servers on loopback, and the threshold state machine."""

from __future__ import annotations

import asyncio
from typing import Any

from facade.config import HealthCheck
from facade.upstream import HealthState, ServicePool, record_check
from tests.servers import serve_app

from .test_upstream_specs import closed_port_url, eventually, group, service

HC = HealthCheck(path="/healthz", interval=0.05, timeout=0.5, healthy_threshold=2, unhealthy_threshold=2)


class FlippingBackend:
    """Answers /healthz with ``status`` (settable), everything else 200; counts health checks."""

    def __init__(self) -> None:
        self.status = 200
        self.checks = 0
        self.user_agents: set[bytes] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status = 200
        if scope["path"] == "/healthz":
            self.checks += 1
            status = self.status
            self.user_agents.update(v for k, v in scope["headers"] if k == b"user-agent")
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


def test_thresholds_count_consecutive_results() -> None:
    s = HealthState()
    s = record_check(s, False, HC)
    assert s.healthy  # one failure is below unhealthy_threshold=2
    s = record_check(record_check(s, True, HC), False, HC)
    assert s.healthy  # the success in between restarted the count
    s = record_check(s, False, HC)
    assert not s.healthy and s.consecutive_failures == 2
    s = record_check(s, True, HC)
    assert not s.healthy  # healthy_threshold=2
    s = record_check(s, True, HC)
    assert s.healthy and s.checks == 6


async def test_health_check_marks_down_after_threshold_and_up_after_recovery() -> None:
    backend = FlippingBackend()
    async with serve_app(backend) as url:
        pool = ServicePool(service(group("a", url), health=HC))
        ep = pool.endpoints[0]
        try:
            await pool.start()
            assert await eventually(lambda: ep.health.checks >= 1)  # the first check runs at once
            assert ep.healthy and ep.health.last_detail == "200"
            backend.status = 503
            assert await eventually(lambda: not ep.healthy)
            assert ep.health.consecutive_failures >= 2 and ep.health.last_detail == "503"
            backend.status = 200
            assert await eventually(lambda: ep.healthy)
            assert ep.health.consecutive_successes >= 2
            assert backend.user_agents == {b"facade-health-check"}
        finally:
            await pool.close()
        checks = backend.checks
        await asyncio.sleep(0.15)
        assert backend.checks == checks  # close() stopped the checker


async def test_unreachable_endpoint_goes_down_and_traffic_fails_over() -> None:
    backend = FlippingBackend()
    async with serve_app(backend) as url:
        dead = closed_port_url()
        pool = ServicePool(service(group("a", dead), group("b", url, priority=1), health=HC))
        try:
            assert pool.pick().url == dead  # healthy at start: no 503 before the first check
            await pool.start()
            assert await eventually(lambda: not pool.endpoints[0].healthy)
            assert pool.endpoints[0].health.last_detail.startswith("ConnectFailed: ")
            assert {pool.pick().url for _ in range(5)} == {url}
        finally:
            await pool.close()


async def test_unexpected_status_range_is_a_failure() -> None:
    backend = FlippingBackend()
    hc = HealthCheck(path="/healthz", interval=0.05, timeout=0.5, unhealthy_threshold=1, expected_statuses=((204, 204),))
    async with serve_app(backend) as url:
        pool = ServicePool(service(group("a", url), health=hc))
        try:
            await pool.start()
            assert await eventually(lambda: not pool.endpoints[0].healthy)
        finally:
            await pool.close()


async def test_expected_statuses_accept_any_listed_range() -> None:
    # Envoy's expected_statuses as configured (`[200-299, 404]`): a 404 health answer is a success, a 500 is not.
    backend = FlippingBackend()
    backend.status = 404
    hc = HealthCheck(
        path="/healthz", interval=0.05, timeout=0.5, unhealthy_threshold=1, expected_statuses=((200, 299), (404, 404))
    )
    async with serve_app(backend) as url:
        pool = ServicePool(service(group("a", url), health=hc))
        try:
            await pool.start()
            assert await eventually(lambda: backend.checks >= 3)
            assert pool.endpoints[0].healthy
            backend.status = 500
            assert await eventually(lambda: not pool.endpoints[0].healthy)
        finally:
            await pool.close()
