"""The sidecar's Prometheus metrics: per request source principal, destination, status class, decision, latency.

A private registry per sidecar (several sidecars may share a test process). Label values are
bounded: principals are mesh identities (or ``unauthenticated``), destinations are configured
services, status classes are ``1xx``..``5xx``, decisions ``allow``/``deny``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from facade.telemetry import CONTENT_TYPE, status_class

__all__ = ["CONTENT_TYPE", "UNAUTHENTICATED", "SidecarMetrics"]

UNAUTHENTICATED = "unauthenticated"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class SidecarMetrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.service = service
        labels = ("direction", "source_principal", "destination", "status_class", "decision")
        self.requests = Counter("mesh_sidecar_requests", "Requests through the sidecar", labels, registry=self.registry)
        self.latency = Histogram(
            "mesh_sidecar_request_duration_seconds",
            "Request latency through the sidecar (first byte in to last byte out)",
            ("direction", "destination", "decision"),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.connections = Counter(
            "mesh_sidecar_inbound_connections", "Inbound connections by outcome", ("kind",), registry=self.registry
        )
        self.config_version = Gauge("mesh_sidecar_config_version", "Config version in force", registry=self.registry)
        self.control_plane_up = Gauge(
            "mesh_sidecar_control_plane_reachable",
            "1 when the last control-plane call succeeded",
            registry=self.registry,
        )
        self.cert_expiry = Gauge(
            "mesh_sidecar_certificate_expiry_timestamp_seconds", "When the current SVID expires", registry=self.registry
        )
        self.rotations = Counter("mesh_sidecar_certificate_rotations", "SVID rotations", registry=self.registry)

    def record(
        self, *, direction: str, principal: str | None, destination: str, status: int, decision: str, duration_s: float
    ) -> None:
        self.requests.labels(direction, principal or UNAUTHENTICATED, destination, status_class(status), decision).inc()
        self.latency.labels(direction, destination, decision).observe(duration_s)

    def text(self) -> bytes:
        return generate_latest(self.registry)
