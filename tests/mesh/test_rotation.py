"""SVID rotation under a bounded concurrent load, with a 4 s certificate lifetime: zero failed requests.

Three kinds of traffic run while the edge, the web sidecar and the catalog sidecar each rotate
several times: facade -> catalog sidecar (pooled mTLS connections that outlive a rotation),
web app -> web sidecar -> catalog sidecar (the same, sidecar to sidecar), and a fresh mTLS
connection per request straight to the catalog sidecar (a new handshake every time, so every
rotation is seen by new handshakes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from facade.mesh.origination import mesh_client_context
from facade.mesh.spiffe import SpiffeId
from tests.backends import EchoApp
from tests.servers import bind_loopback, serve_app

from .pki import TD
from .stack import mesh_facade, port_of, run_sidecar

WEB = SpiffeId.workload(TD, "shop", "web")
CATALOG = SpiffeId.workload(TD, "shop", "catalog")

DURATION_S = 6.0
MAX_REQUESTS_PER_WORKER = 3000


@pytest.mark.slow
async def test_rotation_under_concurrent_load_fails_no_request(tmp_path: Path) -> None:
    web_sock, catalog_sock = bind_loopback(), bind_loopback()
    text = f"""
    state_dir: {tmp_path}/state
    admin: {{token: t}}
    services:
      web: {{endpoints: ["https://127.0.0.1:{port_of(web_sock)}"], identity: "{WEB}"}}
      catalog: {{endpoints: ["https://127.0.0.1:{port_of(catalog_sock)}"], identity: "{CATALOG}"}}
    routes:
      - {{name: all, match: {{path: {{prefix: /}}}}, backend: catalog}}
    mesh:
      trust_domain: {TD}
      mode: STRICT
      ca: {{svid_ttl: 4s}}
    """
    web_sock.close()  # web runs no inbound listener in this test
    failures: list[str] = []
    served = 0
    server_certs: set[bytes] = set()
    async with (
        serve_app(EchoApp("catalog")) as app_url,
        mesh_facade(tmp_path, text) as (rt, feature),
        run_sidecar(feature, rt, "catalog", app=app_url, inbound_sock=catalog_sock) as catalog,
        run_sidecar(feature, rt, "web", outbound=True) as web,
    ):
        assert feature.edge is not None
        fresh_ctx = mesh_client_context(feature.edge.rotating, expected=CATALOG, trust_domain=TD)
        deadline = time.monotonic() + DURATION_S

        async def pooled(client: httpx.AsyncClient, url: str, host: str | None) -> None:
            nonlocal served
            for _ in range(MAX_REQUESTS_PER_WORKER):
                if time.monotonic() > deadline:
                    return
                try:
                    r = await client.get(url, headers={"host": host} if host else None)
                    if r.status_code != 200:
                        failures.append(f"{url}: {r.status_code} {r.text[:200]}")
                    served += 1
                except httpx.HTTPError as exc:
                    failures.append(f"{url}: {exc!r}")

        async def fresh_handshakes() -> None:
            nonlocal served
            for _ in range(MAX_REQUESTS_PER_WORKER):
                if time.monotonic() > deadline:
                    return
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", port_of(catalog_sock), ssl=fresh_ctx, server_hostname=""),
                        timeout=5,
                    )
                    server_certs.add(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
                    writer.write(b"GET /fresh HTTP/1.1\r\nhost: catalog\r\nconnection: close\r\n\r\n")
                    data = await asyncio.wait_for(reader.read(), timeout=5)
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                    if not data.startswith(b"HTTP/1.1 200"):
                        failures.append(f"fresh: {data[:100]!r}")
                    served += 1
                except (OSError, TimeoutError) as exc:
                    failures.append(f"fresh: {exc!r}")
                await asyncio.sleep(0.02)

        async with httpx.AsyncClient(timeout=10) as client:
            await asyncio.gather(
                *(pooled(client, rt.url + "/via-edge", None) for _ in range(3)),
                *(pooled(client, web.outbound_url + "/via-web", "catalog") for _ in range(3)),
                fresh_handshakes(),
            )
        rotations = (feature.edge.rotations, web.rotations, catalog.rotations)

    assert failures == []
    assert served > 100
    assert min(rotations) >= 2, rotations
    assert len(server_certs) >= 3  # new handshakes saw the catalog sidecar's successive certificates
