"""Small builders of ServiceSpec values for the upstream tests (no tests here)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from facade.config import EndpointGroup, HealthCheck, OutlierDetection, ServiceSpec
from tests.servers import refusing_url


def group(name: str, *urls: str, weight: int = 100, priority: int = 0) -> EndpointGroup:
    return EndpointGroup(name=name, endpoints=tuple(urls), weight=weight, priority=priority)


def service(
    *groups: EndpointGroup,
    name: str = "svc",
    lb: str = "round_robin",
    outlier: OutlierDetection | None = None,
    health: HealthCheck | None = None,
) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        groups=groups,
        load_balancer=lb,  # type: ignore[arg-type]
        outlier_detection=outlier,
        health_check=health,
    )


def urls(n: int, base: int = 1) -> tuple[str, ...]:
    return tuple(f"http://10.0.0.{i}:8080" for i in range(base, base + n))


async def eventually(cond: Callable[[], bool], *, timeout: float = 3.0) -> bool:
    """Poll ``cond`` every 10 ms for at most ``timeout`` seconds."""
    for _ in range(int(timeout / 0.01)):
        if cond():
            return True
        await asyncio.sleep(0.01)
    return cond()


def closed_port_url() -> str:
    """A loopback URL on which nothing listens (and nothing else can start listening: see refusing_url)."""
    return refusing_url()
