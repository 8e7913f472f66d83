"""WebSocket upgrades through the real facade (and a real sidecar): the same decisions as HTTP.

Real uvicorn WebSocket backends on loopback (tests/backends.py EchoApp), a real facade, and for the
mesh cases the real sidecar behind mTLS. The client is the ``websockets`` library (it shows the 101's
headers) or raw bytes where the head itself is the point (duplicate Host, underscored names).
The pure decision behind all of this is tested in tests/facade/test_resolve.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from facade.mesh.spiffe import SpiffeId
from facade.mesh.tls import client_context
from facade.mesh.xfcc import parse_xfcc
from facade.split import Split, StickySpec, bucket_of
from tests.backends import EchoApp
from tests.harness import run_facade
from tests.mesh.pki import TD, issue
from tests.mesh.stack import mesh_facade, port_of, run_sidecar
from tests.servers import bind_loopback, serve_app

CATALOG = SpiffeId.workload(TD, "shop", "catalog")
WEB = SpiffeId.workload(TD, "shop", "web")
EDGE = SpiffeId.workload(TD, "edge", "facade")
STICKY = Split(
    primary="monolith", candidate="catalog", weight_bps=5000, sticky=StickySpec("cookie", "session_id"),
    step_label="weight-50",
)
FORGED_XFCC = f"By={CATALOG};URI=spiffe://{TD}/ns/admin/sa/root"


def _ws_url(http_url: str, path: str) -> str:
    return "ws" + http_url.removeprefix("http") + path


@contextlib.asynccontextmanager
async def ws(url: str, headers: dict[str, str] | None = None, *, host: str | None = None) -> AsyncIterator[ClientConnection]:
    """A WebSocket client session; ``host`` names the Host while connecting to the URL's loopback address."""
    where: dict[str, Any] = {}
    if host is not None:
        address, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        where = {"host": address, "port": int(port)}
        url = url.replace(f"{address}:{port}", f"{host}:{port}", 1)
    async with connect(
        url, additional_headers=headers, proxy=None, open_timeout=10, compression=None, **where
    ) as conn:
        yield conn


async def echo(conn: ClientConnection, text: str) -> str:
    await conn.send(text)
    return str(await asyncio.wait_for(conn.recv(), 5))


def _key(in_cohort: bool) -> str:
    return next(k for i in range(1000) if (bucket_of(k := f"user-{i}") < STICKY.weight_bps) == in_cohort)


def upgrade(host_lines: list[str], *lines: str, target: str = "/live") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET {target} HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in host_lines)
        + f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    )
    return (head + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode("latin-1")


async def raw_upgrade(port: int, raw: bytes, ctx: ssl.SSLContext | None = None) -> tuple[int, bytes, bytes]:
    """Write an upgrade head; return the status, the response head and (for a refusal) its body."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="" if ctx else None), timeout=5
    )
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        status = int(head.split(b" ", 2)[1])
        body = b""
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        if status != 101 and length:
            body = await asyncio.wait_for(reader.readexactly(int(length.group(1))), timeout=10)
        return status, head, body
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            await writer.wait_closed()


def _count(metrics: str, **labels: str) -> int:
    """The request count of one telemetry series in the facade's /metrics text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(r"^http_server_request_duration_seconds_count\{" + re.escape(want) + r"\} (\d+)", metrics, re.MULTILINE)
    return int(found.group(1)) if found else 0


def _edge_yaml(monolith: str, catalog: str, extra: str = "") -> str:
    return f"""
    listen: 127.0.0.1:0
    admin: {{listen: 127.0.0.1:0, token: t}}
    mark_responses: true
    {extra}
    services:
      monolith: {{endpoints: [{monolith}]}}
      catalog: {{endpoints: [{catalog}]}}
    routes:
      - name: live
        match: {{host: shop.local, path: {{prefix: /live}}}}
        backend: monolith
        request_headers: {{set: {{x-env: demo}}, remove: [x-drop]}}
        response_headers: {{add: {{x-route: live}}}}
      - name: moved
        match: {{path: {{prefix: /old}}}}
        redirect: {{prefix: /live, code: 308}}
    """


# -- through a migration split: sticky cookie, header rules, marks, telemetry ------------------------------


async def test_upgrade_through_a_sticky_migration_split(tmp_path: Path) -> None:
    monolith, catalog = EchoApp("monolith"), EchoApp("catalog")
    async with serve_app(monolith) as m_url, serve_app(catalog) as c_url:
        async with run_facade(tmp_path, _edge_yaml(m_url, c_url)) as rt:
            rt.swap(splits={"live": STICKY})
            url = _ws_url(rt.url, "/live/feed?room=1")

            # A newcomer gets the cookie on the 101 and lands on the side its new key belongs to.
            async with ws(url, host="shop.local") as conn:
                cookie = conn.response.headers["set-cookie"]
                key = re.match(r"session_id=([0-9a-f]+);", cookie).group(1)  # type: ignore[union-attr]
                side = "catalog" if bucket_of(key) < STICKY.weight_bps else "monolith"
                assert await echo(conn, "hi") == f"{side}:hi"
                assert conn.response.headers["x-facade-backend"] == side
                assert conn.response.headers["x-facade-step"] == "weight-50"
                assert conn.response.headers["x-route"] == "live"  # the route's response rules apply to the 101
            # With the cookie it stays there, and is not told again.
            for _ in range(3):
                async with ws(url, {"Cookie": f"session_id={key}"}, host="shop.local") as conn:
                    assert "set-cookie" not in conn.response.headers
                    assert await echo(conn, "again") == f"{side}:again"
            for in_cohort, expected in ((True, "catalog"), (False, "monolith")):
                async with ws(url, {"Cookie": f"session_id={_key(in_cohort)}"}, host="shop.local") as conn:
                    assert await echo(conn, "x") == f"{expected}:x"
            # The route's request header rules, like HTTP's; the target byte for byte.
            async with ws(url, {"Cookie": f"session_id={_key(True)}", "X-Drop": "1"}, host="shop.local") as conn:
                assert await echo(conn, "y") == "catalog:y"
            seen = catalog.upgrades[-1]
            sent = dict(seen["headers"])
            assert (seen["raw_path"], seen["query"]) == ("/live/feed", "room=1")
            assert sent["x-env"] == "demo" and "x-drop" not in sent
            assert sent["host"] == f"shop.local:{rt.url.rsplit(':', 1)[1]}" and sent["x-forwarded-for"] == "127.0.0.1"

            # Telemetry counts every upgrade once, as a 1xx of its route, backend and step.
            total = len(monolith.upgrades) + len(catalog.upgrades)
            assert total == 7
            text = rt.telemetry.prometheus_text()
            counts = {
                side: _count(text, route="live", backend=side, step="weight-50", method="GET", status_class="1xx")
                for side in ("monolith", "catalog")
            }
            assert counts == {"monolith": len(monolith.upgrades), "catalog": len(catalog.upgrades)}


async def test_refusals_are_the_same_responses_as_http(tmp_path: Path) -> None:
    monolith = EchoApp("monolith")
    async with serve_app(monolith) as m_url:
        down = socket.socket()
        down.bind(("127.0.0.1", 0))  # bound (so no one else takes the port), never listening: connection refused
        down_url = f"http://127.0.0.1:{port_of(down)}"
        async with run_facade(tmp_path, _edge_yaml(m_url, down_url)) as rt:
            port = int(rt.url.rsplit(":", 1)[1])
            # Two Hosts: which one would we route on? Refused, like HTTP (it used to take the first).
            status, _, body = await raw_upgrade(port, upgrade(["Host: shop.local", "Host: admin.local"]))
            assert (status, json.loads(body)) == (400, {"error": "bad request: more than one Host header"})
            status, _, body = await raw_upgrade(port, upgrade([]))
            assert (status, json.loads(body)) == (400, {"error": "bad request: HTTP/1.1 request without a Host header"})
            status, _, body = await raw_upgrade(port, upgrade(["Host: shop.local"], target="/live/a%2Fb"))
            assert (status, json.loads(body)) == (400, {"error": "bad request: encoded slash in path"})
            status, head, body = await raw_upgrade(port, upgrade(["Host: other.local"]))
            assert status == 404 and json.loads(body)["error"] == "no route matches"
            assert json.loads(body)["request_id"].encode() in head  # x-request-id, to quote
            status, head, _ = await raw_upgrade(port, upgrade(["Host: shop.local"], target="/old/feed"))
            assert status == 308 and b"location: ws://shop.local/live/feed" in head.lower()
            assert monolith.upgrades == []

            # A backend that cannot be reached: 502 with an id, the detail in GET /errors, counted as a 5xx.
            rt.swap(splits={"live": Split(primary="monolith", candidate="catalog", weight_bps=10_000, step_label="all")})
            status, head, body = await raw_upgrade(port, upgrade(["Host: shop.local"]))
            answer = json.loads(body)
            assert status == 502 and answer["error"] == "upstream connect error or reset before response"
            assert str(port_of(down)) not in body.decode()  # no internals to the client
            async with httpx.AsyncClient(headers={"authorization": "Bearer t"}) as admin:
                errors = (await admin.get(rt.admin_url + "/errors")).json()
            [entry] = [e for e in errors["errors"] if e["request_id"] == answer["request_id"]]
            assert (entry["route"], entry["backend"], entry["status"]) == ("live", "catalog", 502)
            assert str(port_of(down)) in entry["detail"]
            text = rt.telemetry.prometheus_text()
            assert _count(text, route="live", backend="catalog", step="all", method="GET", status_class="5xx") == 1
        down.close()


async def test_identity_and_underscored_headers_never_reach_the_backend(tmp_path: Path) -> None:
    monolith = EchoApp("monolith")
    async with serve_app(monolith) as m_url, run_facade(tmp_path, _edge_yaml(m_url, m_url)) as rt:
        port = int(rt.url.rsplit(":", 1)[1])
        status, _, _ = await raw_upgrade(port, upgrade(
            ["Host: shop.local"],
            f"X-Forwarded-Client-Cert: {FORGED_XFCC}", f"X_Forwarded_Client_Cert: {FORGED_XFCC}",
            "X-Facade-Backend: catalog", "X-Forwarded-For: 6.6.6.6", "X_Forwarded_For: 6.6.6.7", "My_Custom: 1",
        ))
        assert status == 101
        deadline = asyncio.get_running_loop().time() + 5
        while not monolith.upgrades and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        [seen] = monolith.upgrades
        names = [k for k, _ in seen["headers"]]
        assert not [n for n in names if "_" in n or n.startswith("x-facade-")], names
        assert "x-forwarded-client-cert" not in names
        assert dict(seen["headers"])["x-forwarded-for"] == "127.0.0.1"
        assert "6.6.6." not in json.dumps(seen) and "sa/root" not in json.dumps(seen)


# -- through a sidecar: mTLS, XFCC, policy ------------------------------------------------------------------


def _mesh_yaml(tmp_path: Path, sidecar_port: int) -> str:
    return f"""
    state_dir: {tmp_path}/state
    admin: {{token: t}}
    services:
      catalog:
        endpoints: [https://127.0.0.1:{sidecar_port}]
        identity: {CATALOG}
    routes:
      - name: live
        match: {{path: {{prefix: /}}}}
        backend: catalog
    mesh:
      trust_domain: {TD}
      services: {{catalog: {{mode: STRICT}}}}
      policies:
        - name: no-admin-feed
          action: DENY
          rules: [{{to: [{{operation: {{paths: ["/admin", "/admin/*"]}}}}]}}]
    """


@pytest.mark.slow
async def test_upgrade_through_a_sidecar_with_mtls_and_policy(tmp_path: Path) -> None:
    app = EchoApp("catalog")
    sock = bind_loopback()
    async with (
        serve_app(app) as app_url,
        mesh_facade(tmp_path, _mesh_yaml(tmp_path, port_of(sock))) as (rt, feature),
        run_sidecar(feature, rt, "catalog", app=app_url, inbound_sock=sock) as sidecar,
    ):
        # client --ws--> facade --wss, the edge's SVID--> sidecar (policy, XFCC) --ws--> app
        async with ws(_ws_url(rt.url, "/feed"), {"X-Forwarded-Client-Cert": FORGED_XFCC}) as conn:
            assert await echo(conn, "hello") == "catalog:hello"
        [seen] = app.upgrades
        xfcc = [v for k, v in seen["headers"] if k == "x-forwarded-client-cert"]
        assert len(xfcc) == 1  # the client's claim is gone; the sidecar's element, from the verified peer
        [element] = parse_xfcc(xfcc[0])
        assert (element["URI"], element["By"]) == (str(EDGE), str(CATALOG))

        # Refused by policy: through the facade the client gets the sidecar's 403 (as behind Envoy) ...
        with pytest.raises(InvalidStatus) as refused:
            async with ws(_ws_url(rt.url, "/admin/feed")):
                pass
        assert refused.value.response.status_code == 403
        assert json.loads(refused.value.response.body)["error"] == "upstream refused the upgrade"
        # ... and a peer calling the sidecar directly gets the policy's own answer, as an HTTP response.
        assert feature.ca is not None
        peer = client_context(issue(feature.ca, WEB), feature.ca.trust_bundle_pem)
        status, _, body = await raw_upgrade(port_of(sock), upgrade(["Host: catalog"], target="/admin/x"), peer)
        assert (status, json.loads(body)) == (403, {"error": "RBAC: access denied"})
        # The sidecar's gate applies the same Host rules as the facade.
        status, _, body = await raw_upgrade(port_of(sock), upgrade(["Host: catalog", "Host: admin"]), peer)
        assert (status, json.loads(body)) == (400, {"error": "bad request: more than one Host header"})
        assert len(app.upgrades) == 1
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(sidecar.admin_url + "/metrics")).text
        # The upgrades were judged with the verified peer as principal (uvicorn's WebSocket scope used to lose it).
        for principal, status_class, decision in ((EDGE, "1xx", "allow"), (EDGE, "4xx", "deny"), (WEB, "4xx", "deny")):
            series = (
                f'mesh_sidecar_requests_total{{decision="{decision}",destination="catalog",direction="inbound",'
                f'source_principal="{principal}",status_class="{status_class}"}} 1.0'
            )
            assert series in metrics, metrics


async def test_upgrades_meet_the_routes_rate_limit_fault_and_concurrency_limit(tmp_path: Path) -> None:
    """An upgrade is a request like any other (Envoy's filter chain): a client cannot step around a route's
    rate limit or fault by asking for a WebSocket, and an open session counts toward max_concurrent_requests."""
    monolith = EchoApp("monolith")
    async with serve_app(monolith) as m_url:
        yaml = f"""
        listen: 127.0.0.1:0
        admin: {{listen: 127.0.0.1:0}}
        limits: {{max_concurrent_requests: 2}}
        services:
          monolith: {{endpoints: [{m_url}]}}
        routes:
          - name: limited
            match: {{path: {{prefix: /live}}}}
            backend: monolith
            rate_limit: {{requests_per_unit: 2, unit: hour}}
          - name: faulted
            match: {{path: {{prefix: /broken}}}}
            backend: monolith
            fault: {{abort: {{status: 418}}}}
          - name: open
            match: {{path: {{prefix: /}}}}
            backend: monolith
        """
        async with run_facade(tmp_path, yaml) as rt:
            port = int(rt.url.rsplit(":", 1)[1])
            for _ in range(2):
                async with ws(_ws_url(rt.url, "/live")) as conn:
                    assert await echo(conn, "hi") == "monolith:hi"
            status, head, body = await raw_upgrade(port, upgrade(["Host: x"]))
            assert (status, json.loads(body)) == (429, {"error": "rate limited"})
            assert b"retry-after:" in head.lower()
            async with httpx.AsyncClient() as client:  # the HTTP requests of the route share the bucket
                assert (await client.get(rt.url + "/live")).status_code == 429
            status, _, body = await raw_upgrade(port, upgrade(["Host: x"], target="/broken"))
            assert (status, body) == (418, b"fault filter abort")
            assert len(monolith.upgrades) == 2  # neither refusal reached the backend
            text = rt.telemetry.prometheus_text()
            assert 'facade_faults_injected_total{route="faulted",backend="monolith",kind="abort"} 1' in text

            # Two open sessions fill max_concurrent_requests: a third upgrade and an HTTP request get 503.
            async with ws(_ws_url(rt.url, "/chat")) as one, ws(_ws_url(rt.url, "/chat")) as two:
                assert await echo(one, "a") == "monolith:a" and await echo(two, "b") == "monolith:b"
                status, _, body = await raw_upgrade(port, upgrade(["Host: x"], target="/chat"))
                assert (status, json.loads(body)) == (503, {"error": "too many concurrent requests"})
                async with httpx.AsyncClient() as client:
                    assert (await client.get(rt.url + "/chat")).status_code == 503
            async with httpx.AsyncClient() as client:  # closed sessions free their slots
                deadline = asyncio.get_running_loop().time() + 10
                while (await client.get(rt.url + "/chat")).status_code != 200:
                    assert asyncio.get_running_loop().time() < deadline, "slots not freed after the sessions closed"
                    await asyncio.sleep(0.05)
