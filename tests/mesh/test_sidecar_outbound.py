"""Outbound: app -> its sidecar (plain HTTP, Host = service) -> mTLS -> the callee's sidecar -> callee app,
with the server's SPIFFE ID checked against the configured identity (a wrong one never gets a request)."""

from __future__ import annotations

from pathlib import Path

import httpx

from facade.mesh.spiffe import SpiffeId
from facade.mesh.xfcc import parse_xfcc
from tests.backends import EchoApp
from tests.servers import bind_loopback, serve_app

from .pki import TD
from .stack import mesh_facade, port_of, run_sidecar

WEB = SpiffeId.workload(TD, "shop", "web")
CATALOG = SpiffeId.workload(TD, "shop", "catalog")
ORDERS = SpiffeId.workload(TD, "shop", "orders")


def mesh_yaml(tmp_path: Path, *, web: int, catalog: int, orders: int) -> str:
    return f"""
    state_dir: {tmp_path}/state
    admin: {{token: t}}
    services:
      web: {{endpoints: ["https://127.0.0.1:{web}"], identity: "{WEB}"}}
      catalog: {{endpoints: ["https://127.0.0.1:{catalog}"], identity: "{CATALOG}"}}
      orders: {{endpoints: ["https://127.0.0.1:{orders}"], identity: "{ORDERS}"}}
    routes:
      - {{name: all, match: {{path: {{prefix: /}}}}, backend: catalog}}
    mesh:
      trust_domain: {TD}
      mode: STRICT
      policies:
        - name: only-web-reads-catalog
          services: [catalog]
          rules: [{{from: [{{source: {{principals: ["{WEB}"]}}}}], to: [{{operation: {{paths: ["/catalog/*"]}}}}]}}]
    """


async def test_app_to_sidecar_to_sidecar_to_app_with_the_caller_as_principal(tmp_path: Path) -> None:
    catalog_app = EchoApp("catalog")
    web_sock, catalog_sock, orders_sock = bind_loopback(), bind_loopback(), bind_loopback()
    text = mesh_yaml(tmp_path, web=port_of(web_sock), catalog=port_of(catalog_sock), orders=port_of(orders_sock))
    web_sock.close()  # only reserved ports: web has no inbound here, orders is not running
    orders_sock.close()
    async with (
        serve_app(catalog_app) as catalog_url,
        mesh_facade(tmp_path, text) as (rt, feature),
        run_sidecar(feature, rt, "catalog", app=catalog_url, inbound_sock=catalog_sock),
        run_sidecar(feature, rt, "web", outbound=True) as web,
        httpx.AsyncClient() as client,
    ):
        r = await client.get(web.outbound_url + "/catalog/items?x=1", headers={"host": "catalog"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["raw_path"] == "/catalog/items"
        [xfcc] = [v for k, v in body["headers"] if k == "x-forwarded-client-cert"]
        assert parse_xfcc(xfcc)[0]["URI"] == str(WEB)
        assert parse_xfcc(xfcc)[0]["By"] == str(CATALOG)

        # The catalog's ALLOW policy admits web on /catalog/* only; the edge (facade) is not web.
        denied = await client.get(web.outbound_url + "/other", headers={"host": "catalog"})
        assert denied.status_code == 403
        edge = await client.get(rt.url + "/catalog/items")
        assert edge.status_code == 403

        # A host that is no mesh service has no route.
        unknown = await client.get(web.outbound_url + "/x", headers={"host": "nowhere"})
        assert unknown.status_code == 404
        metrics = (await client.get(web.admin_url + "/metrics")).text
        assert 'direction="outbound"' in metrics and 'destination="catalog"' in metrics


async def test_a_server_with_the_wrong_identity_gets_no_request(tmp_path: Path) -> None:
    """catalog's endpoint actually leads to the orders sidecar: the handshake fails the SPIFFE check -> 502."""
    orders_app = EchoApp("orders")
    web_sock, orders_sock = bind_loopback(), bind_loopback()
    text = mesh_yaml(tmp_path, web=port_of(web_sock), catalog=port_of(orders_sock), orders=port_of(orders_sock))
    web_sock.close()
    async with (
        serve_app(orders_app) as orders_url,
        mesh_facade(tmp_path, text) as (rt, feature),
        run_sidecar(feature, rt, "orders", app=orders_url, inbound_sock=orders_sock),
        run_sidecar(feature, rt, "web", outbound=True) as web,
    ):
        async with httpx.AsyncClient() as client:
            r = await client.get(web.outbound_url + "/catalog/items", headers={"host": "catalog"})
            assert r.status_code in (502, 503), r.text
            assert str(CATALOG) not in r.text  # identities and TLS reasons are for the log and /errors
            assert "expected " + str(CATALOG) in web.errors.view(r.json()["request_id"])[0]["detail"]
            # The edge checks too: the facade's route to catalog lands on orders' sidecar.
            edge = await client.get(rt.url + "/catalog/items")
            assert edge.status_code in (502, 503), edge.text
            # The right name through the same sidecar works.
            ok = await client.get(web.outbound_url + "/catalog/items", headers={"host": "orders"})
            assert ok.status_code == 200
        assert [req["raw_path"] for req in orders_app.requests] == ["/catalog/items"]
