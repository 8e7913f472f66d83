"""Active health checking: a pure threshold state machine and the probe loop that feeds it.

Thresholds count consecutive results (Envoy): ``unhealthy_threshold`` failures in a row mark
an endpoint unhealthy, ``healthy_threshold`` successes in a row mark it healthy again.
Endpoints start healthy (unlike Envoy, which waits for the first check) so a facade with a
health check does not answer 503 to its first requests; the first check runs at once.

Checks go through the service's own HTTP/1.1 client (``facade.upstream.h1``): the same connections,
TLS context and ``max_connections`` as proxied requests. A check that finds every connection busy
is skipped (no result recorded): a saturated pool says nothing about the endpoint's health.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import HealthCheck
from .h1 import H1Client, PoolExhausted, UpstreamError

if TYPE_CHECKING:
    from .pool import Endpoint

__all__ = ["HEALTH_CHECK_USER_AGENT", "INTERVAL_JITTER", "HealthState", "probe", "record_check", "run_checks"]

_DRAIN_LIMIT = 64 * 1024  # body bytes read to keep a check's connection reusable; past that it is closed

HEALTH_CHECK_USER_AGENT = "facade-health-check"
INTERVAL_JITTER = 0.1  # each wait is the interval +- 10 %, so checks of many endpoints do not align


@dataclass(frozen=True, slots=True)
class HealthState:
    healthy: bool = True
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    checks: int = 0
    last_detail: str = ""  # "200", or why the last check failed


def record_check(state: HealthState, ok: bool, spec: HealthCheck, detail: str = "") -> HealthState:
    """Apply one check result to the threshold state machine."""
    if ok:
        successes = state.consecutive_successes + 1
        healthy = state.healthy or successes >= spec.healthy_threshold
        return HealthState(healthy, successes, 0, state.checks + 1, detail)
    failures = state.consecutive_failures + 1
    healthy = state.healthy and failures < spec.unhealthy_threshold
    return HealthState(healthy, 0, failures, state.checks + 1, detail)


async def probe(client: H1Client, endpoint: Endpoint, spec: HealthCheck) -> tuple[bool, str] | None:
    """One check: GET the health path within the timeout; success when the status is in the expected range.

    None when the check could not be sent because every connection of the pool was busy.
    """
    expected = spec.expected_statuses
    path = spec.path if spec.path.startswith("/") else "/" + spec.path
    headers = [("user-agent", HEALTH_CHECK_USER_AGENT)]
    try:
        async with asyncio.timeout(spec.timeout):
            resp = await client.request(endpoint.address, "GET", endpoint.target_for(path), headers, idempotent=True)
            try:
                size = len(resp.read_nowait())
                while not resp.at_eof() and size <= _DRAIN_LIMIT:
                    size += len(await resp.readany())  # drained so the connection can serve the next request
            finally:
                resp.release()  # back to the pool only when complete (else closed)
            status = resp.status
            return any(low <= status <= high for low, high in expected), str(status)
    except PoolExhausted:
        return None
    except TimeoutError:
        if client.exhausted:
            return None  # the wait was for a free connection, not for the endpoint
        return False, f"timeout after {spec.timeout:g}s"
    except (UpstreamError, OSError) as exc:
        return False, f"{type(exc).__name__}: {exc}"


async def run_checks(
    client: H1Client,
    endpoint: Endpoint,
    spec: HealthCheck,
    *,
    rng: random.Random,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Check one endpoint forever (until cancelled): first at once, then every jittered interval."""
    while True:
        result = await probe(client, endpoint, spec)
        if result is not None:
            endpoint.health = record_check(endpoint.health, result[0], spec, result[1])
            endpoint.last_checked = clock()
        jitter = 1.0 + INTERVAL_JITTER * (2.0 * rng.random() - 1.0)
        await asyncio.sleep(spec.interval * jitter)
