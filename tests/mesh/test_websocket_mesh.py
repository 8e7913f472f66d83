"""WebSocket upgrades across the mesh: facade -> catalog sidecar (mTLS, SPIFFE-checked) -> app, both ways."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import websockets.asyncio.client
import websockets.exceptions

from facade.mesh.spiffe import SpiffeId
from tests.backends import EchoApp
from tests.servers import bind_loopback, serve_app

from .pki import TD
from .stack import mesh_facade, port_of, run_sidecar

CATALOG = SpiffeId.workload(TD, "shop", "catalog")
ORDERS = SpiffeId.workload(TD, "shop", "orders")


async def test_websocket_through_a_sidecar_with_mtls(tmp_path: Path) -> None:
    """The facade's upstream leg originates mTLS with the pool's SPIFFE-checking context: the upgrade goes
    through the catalog sidecar to the app and back; a service expecting another identity at the same
    sidecar fails the handshake (502), before any request byte."""
    catalog_sock = bind_loopback()
    sidecar = f"https://127.0.0.1:{port_of(catalog_sock)}"
    text = f"""
    state_dir: {tmp_path}/state
    admin: {{token: t}}
    services:
      catalog: {{endpoints: ["{sidecar}"], identity: "{CATALOG}"}}
      orders: {{endpoints: ["{sidecar}"], identity: "{ORDERS}"}}
    routes:
      - {{name: orders, match: {{path: {{prefix: /orders}}}}, backend: orders}}
      - {{name: all, match: {{path: {{prefix: /}}}}, backend: catalog}}
    mesh:
      trust_domain: {TD}
      mode: STRICT
    """
    app = EchoApp("catalog")
    async with (
        serve_app(app) as app_url,
        mesh_facade(tmp_path, text) as (rt, feature),
        run_sidecar(feature, rt, "catalog", app=app_url, inbound_sock=catalog_sock),
    ):
        ws_url = rt.url.replace("http://", "ws://")
        async with websockets.asyncio.client.connect(ws_url + "/ws", proxy=None, open_timeout=10) as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 5) == "catalog:hello"
            await ws.send(b"\x00\x01")
            assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\x01"
            await ws.send("close-me")
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 4001  # the app's close code, relayed by the sidecar and the facade
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.asyncio.client.connect(ws_url + "/orders/ws", proxy=None, open_timeout=10):
                pass
        assert refused.value.response.status_code == 502  # the sidecar is catalog, not orders
