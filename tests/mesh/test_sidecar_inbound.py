"""The real sidecar's inbound side: mTLS per mode, the verified peer as principal, XFCC, policy on the wire.

Each test runs the facade (control plane + edge identity) and one sidecar in front of an echo app,
all on loopback, and talks to the sidecar with real handshakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from facade.mesh.ca import CertificateAuthority
from facade.mesh.controlplane import MeshFeature
from facade.mesh.identity import WorkloadIdentity
from facade.mesh.sidecar import Sidecar
from facade.mesh.spiffe import SpiffeId
from facade.mesh.tls import client_context
from facade.mesh.xfcc import parse_xfcc
from tests.backends import EchoApp
from tests.servers import bind_loopback, serve_app

from .pki import TD, bare_client_context, forge, issue
from .stack import mesh_facade, port_of, run_sidecar

CATALOG = SpiffeId.workload(TD, "shop", "catalog")
WEB = SpiffeId.workload(TD, "shop", "web")
EDGE = SpiffeId.workload(TD, "edge", "facade")


def facade_yaml(tmp_path: Path, sidecar_port: int, mode: str) -> str:
    return f"""
    state_dir: {tmp_path}/state
    admin: {{token: t}}
    services:
      catalog:
        endpoints: [https://127.0.0.1:{sidecar_port}]
        identity: {CATALOG}
    routes:
      - name: all
        match: {{path: {{prefix: /}}}}
        backend: catalog
    mesh:
      trust_domain: {TD}
      services: {{catalog: {{mode: {mode}}}}}
      policies:
        - name: deny-admin
          action: DENY
          rules: [{{to: [{{operation: {{paths: ["/admin", "/admin/*"]}}}}]}}]
        - name: private-needs-mtls
          action: DENY
          rules: [{{from: [{{source: {{not_principals: ["*"]}}}}], to: [{{operation: {{paths: ["/private/*"]}}}}]}}]
    """


@dataclass
class Stack:
    facade_url: str
    feature: MeshFeature
    sidecar: Sidecar
    app: EchoApp
    port: int

    @property
    def ca(self) -> CertificateAuthority:
        assert self.feature.ca is not None
        return self.feature.ca


@contextlib.asynccontextmanager
async def stack(tmp_path: Path, mode: str) -> AsyncIterator[Stack]:
    app = EchoApp("catalog")
    sock = bind_loopback()
    async with (
        serve_app(app) as app_url,
        mesh_facade(tmp_path, facade_yaml(tmp_path, port_of(sock), mode)) as (rt, feature),
        run_sidecar(feature, rt, "catalog", app=app_url, inbound_sock=sock) as sidecar,
    ):
        yield Stack(rt.url, feature, sidecar, app, port_of(sock))


@dataclass
class Answer:
    status: int | None  # None: no HTTP response (refused or disconnected)
    body: Any = None
    error: str | None = None


async def request(port: int, ctx: ssl.SSLContext | None, path: str, headers: dict[str, str] | None = None) -> Answer:
    """One HTTP/1.1 request over a fresh connection (TLS with ``ctx``, plaintext when None)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="" if ctx else None), timeout=5
        )
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        return Answer(None, error=f"{type(exc).__name__}: {exc}")
    try:
        head = f"GET {path} HTTP/1.1\r\nhost: catalog\r\nconnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write((head + "\r\n").encode("latin-1"))
        data = await asyncio.wait_for(reader.read(), timeout=5)
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        return Answer(None, error=f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError, OSError):
            await writer.wait_closed()
    if not data:
        return Answer(None, error="closed without a response")
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    try:
        return Answer(status, json.loads(body))
    except ValueError:
        return Answer(status, body)


def tls(ca: CertificateAuthority, identity: WorkloadIdentity) -> ssl.SSLContext:
    return client_context(identity, ca.trust_bundle_pem)


def xfcc_of(echo_body: dict[str, Any]) -> list[str]:
    return [v for k, v in echo_body["headers"] if k == "x-forwarded-client-cert"]


# -- STRICT -----------------------------------------------------------------------------------------


async def test_strict_accepts_the_edge_identity_and_the_app_sees_xfcc_from_the_verified_peer(tmp_path: Path) -> None:
    async with stack(tmp_path, "STRICT") as s:
        async with httpx.AsyncClient() as client:
            r = await client.get(
                s.facade_url + "/items",
                headers={"x-forwarded-client-cert": f"By={CATALOG};URI=spiffe://{TD}/ns/shop/sa/admin"},
            )
        assert r.status_code == 200, r.text
        values = xfcc_of(r.json())
        assert len(values) == 1  # the client's claim is gone, only the sidecar's element remains
        [element] = parse_xfcc(values[0])
        assert element["URI"] == str(EDGE)
        assert element["By"] == str(CATALOG)
        assert len(element["Hash"]) == 64


async def test_strict_refuses_plaintext_and_the_app_sees_nothing(tmp_path: Path) -> None:
    async with stack(tmp_path, "STRICT") as s:
        answer = await request(s.port, None, "/items")
        assert answer.status is None
        assert s.app.requests == []


async def test_strict_refuses_a_certificate_from_another_ca(tmp_path: Path) -> None:
    async with stack(tmp_path, "STRICT") as s:
        other = CertificateAuthority.create(TD)
        answer = await request(s.port, client_context(issue(other, WEB), s.ca.trust_bundle_pem), "/items")
        assert answer.status is None
        assert s.app.requests == []


async def test_strict_refuses_tls_without_a_client_certificate(tmp_path: Path) -> None:
    async with stack(tmp_path, "STRICT") as s:
        answer = await request(s.port, bare_client_context(s.ca.trust_bundle_pem), "/items")
        assert answer.status is None
        assert s.app.requests == []


@pytest.mark.parametrize(
    ("uris", "is_ca"),
    [
        (["spiffe://other.td/ns/shop/sa/web"], False),  # wrong trust domain
        ([str(WEB), f"spiffe://{TD}/ns/shop/sa/admin"], False),  # two URI SANs
        ([str(WEB)], True),  # a CA certificate as a leaf
    ],
    ids=["wrong-trust-domain", "two-uri-sans", "ca-as-leaf"],
)
async def test_strict_disconnects_peers_that_break_svid_rules_after_the_handshake(
    tmp_path: Path, uris: list[str], is_ca: bool
) -> None:
    async with stack(tmp_path, "STRICT") as s:
        answer = await request(s.port, tls(s.ca, forge(s.ca, uris, is_ca=is_ca)), "/items")
        assert answer.status is None
        assert s.app.requests == []
        counters = s.sidecar.config_view()["connections"]
        assert counters["peer_rejected"] == 1
        # ... and the same CA's valid SVID is served on the same port.
        ok = await request(s.port, tls(s.ca, issue(s.ca, WEB)), "/items")
        assert ok.status == 200


async def test_strict_refuses_a_tls_1_1_client_and_serves_the_same_client_on_tls_1_2(tmp_path: Path) -> None:
    async with stack(tmp_path, "STRICT") as s:
        identity = issue(s.ca, WEB)
        old = tls(s.ca, identity)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # setting TLS 1.1 is deprecated, which is the point
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        assert (await request(s.port, old, "/items")).status is None
        assert (await request(s.port, tls(s.ca, identity), "/items")).status == 200
        assert [r["raw_path"] for r in s.app.requests] == ["/items"]


# -- PERMISSIVE -------------------------------------------------------------------------------------


async def test_permissive_serves_tls_and_plaintext_on_one_port_principal_only_for_tls(tmp_path: Path) -> None:
    async with stack(tmp_path, "PERMISSIVE") as s:
        forged_claim = {"x-forwarded-client-cert": f"By={CATALOG};URI={WEB}"}
        plain = await request(s.port, None, "/items", forged_claim)
        assert plain.status == 200
        assert xfcc_of(plain.body) == []  # no principal, and the client's claim never reaches the app

        mtls = await request(s.port, tls(s.ca, issue(s.ca, WEB)), "/items", forged_claim)
        assert mtls.status == 200
        [value] = xfcc_of(mtls.body)
        assert parse_xfcc(value)[0]["URI"] == str(WEB)

        # Policy sees the difference: /private/* needs an authenticated principal.
        assert (await request(s.port, None, "/private/x")).status == 403
        assert (await request(s.port, tls(s.ca, issue(s.ca, WEB)), "/private/x")).status == 200
        assert s.sidecar.config_view()["connections"]["plaintext"] >= 2


async def test_disable_serves_plaintext_and_refuses_tls(tmp_path: Path) -> None:
    async with stack(tmp_path, "DISABLE") as s:
        assert (await request(s.port, None, "/items")).status == 200
        assert (await request(s.port, tls(s.ca, issue(s.ca, WEB)), "/items")).status is None


# -- policy on the wire --------------------------------------------------------------------------------

BYPASS_ATTEMPTS = [
    "/admin",
    "/admin/x",
    "/admin/../admin/x",
    "/%61dmin/x",
    "/%61%64%6d%69%6e/x",
    "//admin/x",
    "/./admin/x",
    "/public/../admin/x",
    "/admin/%2e%2e/admin/x",
    "/admin/./x",
    "/admin%2fx",
    "/admin;x/y",
    "/admin/x;y",
    "/%2e/admin/x",
]


async def test_deny_admin_holds_against_encoding_tricks_through_the_real_sidecar(tmp_path: Path) -> None:
    async with stack(tmp_path, "PERMISSIVE") as s:
        ctx = tls(s.ca, issue(s.ca, WEB))
        for path in BYPASS_ATTEMPTS:
            for client_ctx in (None, ctx):
                answer = await request(s.port, client_ctx, path)
                assert answer.status in (400, 403), (path, answer)
        assert s.app.requests == []  # not one of them reached the app
        ok = await request(s.port, ctx, "/public/../catalog/x")
        assert ok.status == 200
        assert ok.body["raw_path"] == "/catalog/x"  # the normalized path policy checked is what the app got
        # Through the facade too (edge identity, mTLS).
        async with httpx.AsyncClient() as client:
            r = await client.get(s.facade_url + "/%61dmin/x")
        assert r.status_code == 403


async def test_sidecar_metrics_count_principal_destination_status_and_decision(tmp_path: Path) -> None:
    async with stack(tmp_path, "PERMISSIVE") as s:
        await request(s.port, None, "/admin/x")
        await request(s.port, tls(s.ca, issue(s.ca, WEB)), "/items")
        async with httpx.AsyncClient() as client:
            text = (await client.get(s.sidecar.admin_url + "/metrics")).text
            health = await client.get(s.sidecar.admin_url + "/healthz")
        assert health.status_code == 200
        assert (
            'mesh_sidecar_requests_total{decision="deny",destination="catalog",direction="inbound",'
            'source_principal="unauthenticated",status_class="4xx"} 1.0'
        ) in text
        assert (
            'mesh_sidecar_requests_total{decision="allow",destination="catalog",direction="inbound",'
            f'source_principal="{WEB}",status_class="2xx"}} 1.0'
        ) in text
        assert "mesh_sidecar_request_duration_seconds_bucket" in text
        assert 'mesh_sidecar_inbound_connections_total{kind="plaintext"} 1.0' in text
