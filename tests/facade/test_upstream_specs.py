"""Small builders of ServiceSpec values for the upstream tests (no tests here)."""

from __future__ import annotations

from facade.config import EndpointGroup, HealthCheck, OutlierDetection, ServiceSpec


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
