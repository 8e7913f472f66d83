"""The facade's edge identity: which services get mesh mTLS, rotation of the edge SVID, and the Upstreams hook."""

from __future__ import annotations

import ssl
from pathlib import Path

from facade.config import EndpointGroup, ServiceSpec, UpstreamTLS
from facade.mesh.ca import CertificateAuthority
from facade.mesh.controlplane import MeshFeature
from facade.mesh.edge import EdgeIdentity
from facade.mesh.origination import MeshClientContext
from facade.mesh.spiffe import SpiffeId

from .pki import TD
from .stack import mesh_facade

EDGE = SpiffeId.workload(TD, "edge", "facade")
CATALOG = "spiffe://shop.local/ns/shop/sa/catalog"


def spec(endpoint: str, *, identity: str | None = None, tls: UpstreamTLS | None = None) -> ServiceSpec:
    return ServiceSpec(name="svc", groups=(EndpointGroup("default", (endpoint,)),), identity=identity, tls=tls)


def test_factory_gives_mesh_mtls_only_to_https_services_with_an_identity() -> None:
    edge = EdgeIdentity(CertificateAuthority.create(TD), EDGE, ttl=3600)
    ctx = edge.ssl_context_factory(spec("https://127.0.0.1:1", identity=CATALOG))
    assert isinstance(ctx, MeshClientContext)
    assert ctx.expected == SpiffeId.parse(CATALOG) and ctx.rotating is edge.rotating
    assert edge.ssl_context_factory(spec("http://127.0.0.1:1", identity=CATALOG)) is None  # plaintext peer
    assert edge.ssl_context_factory(spec("http://127.0.0.1:1")) is None
    plain_tls = edge.ssl_context_factory(spec("https://127.0.0.1:1", tls=UpstreamTLS(verify=False)))
    assert isinstance(plain_tls, ssl.SSLContext) and not isinstance(plain_tls, MeshClientContext)


def test_edge_rotation_swaps_in_a_new_svid_for_new_connections() -> None:
    edge = EdgeIdentity(CertificateAuthority.create(TD), EDGE, ttl=3600)
    first, before = edge.identity, edge.rotating.current
    assert first.spiffe_id == EDGE
    assert edge.issued_at < edge.rotate_at() < first.not_after
    edge.rotate()
    assert edge.identity is not first and edge.identity.spiffe_id == EDGE
    assert edge.rotating.current is not before and edge.rotating.generation == 1 and edge.rotations == 1


async def test_attach_rebuilds_the_pools_with_the_mesh_factory_and_creates_the_ca(tmp_path: Path) -> None:
    text = f"""
    state_dir: {tmp_path}/state
    services:
      catalog: {{endpoints: ["https://127.0.0.1:1"], identity: "{CATALOG}"}}
      monolith: {{endpoints: ["http://127.0.0.1:1"]}}
    routes:
      - {{name: all, match: {{path: {{prefix: /}}}}, backend: monolith}}
    mesh: {{trust_domain: {TD}, edge_identity: "{EDGE}"}}
    """
    async with mesh_facade(tmp_path, text) as (runtime, feature):
        assert isinstance(feature, MeshFeature) and runtime.feature(MeshFeature) is feature and runtime.mesh is feature
        pool = runtime.holder.current.upstreams.get("catalog")
        assert pool is not None and isinstance(pool.ssl_context, MeshClientContext)
        assert (tmp_path / "state" / "ca" / "root.crt").exists()
        assert feature.edge is not None and feature.edge.spiffe_id == EDGE
    # A second start finds the same CA instead of making a new one.
    again = CertificateAuthority.load(tmp_path / "state")
    assert again.certificate == feature.ca.certificate  # type: ignore[union-attr]


def test_a_new_edge_identity_reuses_the_rotating_holder_so_existing_pools_follow() -> None:
    ca = CertificateAuthority.create(TD)
    first = EdgeIdentity(ca, EDGE, ttl=3600)
    pooled = first.ssl_context_factory(spec("https://127.0.0.1:1", identity=CATALOG))
    renamed = SpiffeId.workload(TD, "edge", "gateway")
    second = EdgeIdentity(ca, renamed, ttl=3600, rotating=first.rotating)
    assert second.rotating is first.rotating
    assert isinstance(pooled, MeshClientContext) and pooled.rotating.current is second.rotating.current
