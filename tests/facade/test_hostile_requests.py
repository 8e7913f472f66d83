"""Issue 10, items 1-6: hostile requests through the real facade (edge) AND the real sidecar (inbound, mTLS).

Every request is written as raw bytes on a socket (a client library would normalize what matters here:
header names, the request target, bytes in the path), and every case asserts on what the backend
actually received, not only on the status. One stack serves both targets:

    client ──raw HTTP──▶ facade ──▶ svc / admin echo apps          (target "edge")
    client ──raw HTTP over mTLS (peer: web)──▶ catalog sidecar ──▶ catalog echo app   (target "sidecar")

The pure decisions behind these cases are tested in tests/facade/test_request_head.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from facade.mesh.sidecar import Sidecar
from facade.mesh.spiffe import SpiffeId
from facade.mesh.tls import client_context
from tests.backends import EchoApp, close_immediately, never_answer, raw_server
from tests.harness import run_facade
from tests.mesh.pki import TD, issue
from tests.mesh.stack import mesh_facade, port_of, run_sidecar
from tests.servers import bind_loopback, refusing_url, serve_app

pytestmark = pytest.mark.slow

CATALOG = SpiffeId.workload(TD, "shop", "catalog")
WEB = SpiffeId.workload(TD, "shop", "web")
FORGED_XFCC = "By=spiffe://td/ns/x/sa/y;URI=spiffe://td/ns/admin/sa/root"


class RecordingApp(EchoApp):
    """EchoApp that also records the headers of WebSocket upgrades it accepts."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.websockets: list[list[tuple[str, str]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            self.websockets.append([(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]])
        await super().__call__(scope, receive, send)


@dataclass
class Target:
    name: str  # "edge" | "sidecar"
    port: int
    ssl: ssl.SSLContext | None
    host: str  # the Host a well-behaved client sends
    app: RecordingApp  # the backend a request for ``host`` reaches
    admin_url: str  # facade admin or sidecar admin (/metrics, /errors)
    errors: Any
    others: list[RecordingApp] = field(default_factory=list)

    def received(self) -> list[dict[str, Any]]:
        return [r for app in (self.app, *self.others) for r in app.requests]


@dataclass
class Stack:
    edge: Target
    sidecar: Target
    admin: RecordingApp
    sidecar_obj: Sidecar

    def target(self, name: str) -> Target:
        return self.edge if name == "edge" else self.sidecar


def stack_yaml(tmp_path: Path, *, svc: str, admin: str, sidecar_port: int, extra: str = "") -> str:
    return f"""
    state_dir: {tmp_path}/state
    admin: {{token: t}}
    {extra}
    services:
      svc: {{endpoints: [{svc}]}}
      admin: {{endpoints: [{admin}]}}
      catalog:
        endpoints: [https://127.0.0.1:{sidecar_port}]
        identity: {CATALOG}
    routes:
      - name: admin
        match: {{host: admin.local}}
        backend: admin
      - name: by-listener-address
        match: {{host: 127.0.0.1}}
        backend: admin
      - name: catalog
        match: {{host: catalog.local}}
        backend: catalog
      - name: all
        backend: svc
    mesh:
      trust_domain: {TD}
      services: {{catalog: {{mode: STRICT}}}}
      policies:
        - name: no-admin-host
          action: DENY
          rules: [{{to: [{{operation: {{hosts: ["admin.local"]}}}}]}}]
    """


@contextlib.asynccontextmanager
async def stack(tmp_path: Path, *, extra: str = "") -> AsyncIterator[Stack]:
    svc, admin, catalog = RecordingApp("svc"), RecordingApp("admin"), RecordingApp("catalog")
    sock = bind_loopback()
    async with (
        serve_app(svc) as svc_url,
        serve_app(admin) as admin_url,
        serve_app(catalog) as catalog_url,
        mesh_facade(
            tmp_path, stack_yaml(tmp_path, svc=svc_url, admin=admin_url, sidecar_port=port_of(sock), extra=extra)
        ) as (rt, feature),
        run_sidecar(feature, rt, "catalog", app=catalog_url, inbound_sock=sock) as sidecar,
    ):
        assert feature.ca is not None
        peer = client_context(issue(feature.ca, WEB), feature.ca.trust_bundle_pem)
        edge = Target("edge", int(rt.url.rsplit(":", 1)[1]), None, "svc.local", svc, rt.admin_url, rt.errors, [admin])
        side = Target("sidecar", port_of(sock), peer, "catalog", catalog, sidecar.admin_url, sidecar.errors)
        yield Stack(edge, side, admin, sidecar)


@dataclass
class Reply:
    status: int | None
    head: bytes = b""
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


async def exchange(target: Target, raw: bytes, *, read_until_close: bool = True) -> Reply:
    """Write ``raw`` on a fresh connection; read the response (until close, or just the head)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", target.port, ssl=target.ssl, server_hostname="" if target.ssl else None),
        timeout=5,
    )
    try:
        writer.write(raw)
        if read_until_close:
            data = await asyncio.wait_for(reader.read(), timeout=10)
        else:
            data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
        data = getattr(exc, "partial", b"")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            await writer.wait_closed()
    if not data:
        return Reply(None)
    head, _, body = data.partition(b"\r\n\r\n")
    return Reply(int(head.split(b" ", 2)[1]), head, body)


def get(target: str, host: str | None, *lines: str, version: str = "1.1") -> bytes:
    head = f"GET {target} HTTP/{version}\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    head += "".join(f"{line}\r\n" for line in lines) + "Connection: close\r\n\r\n"
    return head.encode("latin-1")


def names_seen(record: dict[str, Any]) -> list[str]:
    return [k for k, _ in record["headers"]]


def value_of(record: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in record["headers"] if k == name]


def dash_form(name: str) -> str:
    """What a WSGI/CGI server makes of a header name: "_" and "-" are the same variable."""
    return name.lower().replace("_", "-")


async def metrics(target: Target) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(target.admin_url + "/metrics")).text


TARGETS = ["edge", "sidecar"]

# -- 1. header names with underscores ---------------------------------------------------------------

UNDERSCORED = [
    f"X_Forwarded_Client_Cert: {FORGED_XFCC}",
    "X_Forwarded_For: 6.6.6.6",
    "x_fOrWaRdEd_fOr: 6.6.6.7",
    "X-Forwarded_Client-Cert: By=a;URI=spiffe://td/ns/admin/sa/mixed",
    "X_Real_IP: 6.6.6.8",
    "X_Forwarded_Host: evil.example",
    "X_Facade_Backend: admin",
    "My_Custom: 1",
]


def assert_no_forgery(record: dict[str, Any]) -> None:
    names = names_seen(record)
    assert not [n for n in names if "_" in n], names
    joined = json.dumps(record["headers"])
    for marker in ("spiffe://td/ns/admin/sa/root", "6.6.6.", "evil.example", "sa/mixed"):
        assert marker not in joined, (marker, record["headers"])
    # A WSGI app reads HTTP_X_FORWARDED_CLIENT_CERT: at most the sidecar's own element is there.
    xfcc = [v for k, v in record["headers"] if dash_form(k) == "x-forwarded-client-cert"]
    assert len(xfcc) <= 1 and all(str(WEB) in v or "facade" in v for v in xfcc), xfcc


@pytest.mark.parametrize("where", TARGETS)
async def test_underscored_header_names_are_dropped_and_counted(tmp_path: Path, where: str) -> None:
    async with stack(tmp_path) as s:
        t = s.target(where)
        for line in UNDERSCORED:
            before = len(t.received())
            reply = await exchange(t, get("/x", t.host, line))
            assert reply.status == 200, (line, reply)
            (record,) = t.received()[before:]
            assert_no_forgery(record)
        # all at once, in one request, mixed with legitimate headers
        reply = await exchange(t, get("/x", t.host, "Accept: text/plain", *UNDERSCORED, "X-Ok: yes"))
        assert reply.status == 200
        record = t.received()[-1]
        assert_no_forgery(record)
        assert value_of(record, "x-ok") == ["yes"] and value_of(record, "accept") == ["text/plain"]
        prefix = "facade" if where == "edge" else "mesh_sidecar"
        text = await metrics(t)
        dropped = 2 * len(UNDERSCORED)
        assert f'{prefix}_request_headers_dropped_total{{reason="underscore"}} {dropped}' in text, text


@pytest.mark.parametrize("where", TARGETS)
async def test_reject_answers_400_and_nothing_reaches_the_app(tmp_path: Path, where: str) -> None:
    async with stack(tmp_path, extra="headers_with_underscores: reject") as s:
        t = s.target(where)
        for line in UNDERSCORED:
            reply = await exchange(t, get("/x", t.host, line))
            assert reply.status == 400 and b"underscore" in reply.body, (line, reply)
        assert t.received() == []
        assert (await exchange(t, get("/x", t.host, "X-Fine: 1"))).status == 200
        prefix = "facade" if where == "edge" else "mesh_sidecar"
        assert f'{prefix}_requests_rejected_total{{reason="underscore_header"}} {len(UNDERSCORED)}' in await metrics(t)


@pytest.mark.parametrize("where", TARGETS)
async def test_allow_passes_underscores_but_never_an_identity_or_forwarding_alias(tmp_path: Path, where: str) -> None:
    async with stack(tmp_path, extra="headers_with_underscores: allow") as s:
        t = s.target(where)
        reply = await exchange(t, get("/x", t.host, *UNDERSCORED))
        assert reply.status == 200
        record = t.received()[-1]
        assert value_of(record, "my_custom") == ["1"]  # allowed: the app wants it
        names = [n for n in names_seen(record) if "_" in n]
        assert names == ["my_custom"], names  # the aliases of reserved headers are still gone
        assert "6.6.6." not in json.dumps(record["headers"])


def upgrade(host: str, *lines: str, target: str = "/ws") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    )
    return (head + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode("latin-1")


@pytest.mark.parametrize("where", TARGETS)
async def test_websocket_upgrades_lose_underscored_headers_too(tmp_path: Path, where: str) -> None:
    async with stack(tmp_path) as s:
        t = s.target(where)
        reply = await exchange(t, upgrade(t.host, *UNDERSCORED), read_until_close=False)
        assert reply.status == 101, reply
        deadline = asyncio.get_running_loop().time() + 5
        while not t.app.websockets and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        (headers,) = t.app.websockets
        assert not [k for k, _ in headers if "_" in k], headers
        assert "6.6.6." not in json.dumps(headers) and "sa/root" not in json.dumps(headers)
        # the count limit and the absolute-form rule apply to upgrades as well
        too_many = await exchange(t, upgrade(t.host, *["a: 1"] * 100), read_until_close=False)
        assert too_many.status == 431
        fragment = await exchange(t, upgrade(t.host, target="/ws#x"), read_until_close=False)
        assert fragment.status == 400  # a refused upgrade head is answered, never upgraded
        assert len(t.app.websockets) == 1
        if where == "edge":
            routed = await exchange(t, upgrade("svc.local", target="http://admin.local/ws"), read_until_close=False)
            assert routed.status == 101
            deadline = asyncio.get_running_loop().time() + 5
            while not s.admin.websockets and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            (admin_headers,) = s.admin.websockets
            assert ("host", "admin.local") in admin_headers
        else:
            denied = await exchange(t, upgrade("catalog", target="http://admin.local/ws"), read_until_close=False)
            assert denied.status != 101 and len(t.app.websockets) == 1  # policy: host admin.local is denied


# -- 2. header count ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", TARGETS)
async def test_header_count_limit_100_ok_101_refused(tmp_path: Path, where: str) -> None:
    async with stack(tmp_path) as s:
        t = s.target(where)
        # get() adds Host and Connection: 98 more make 100 fields.
        ok = await exchange(t, get("/x", t.host, *[f"x-h{i}: {i}" for i in range(98)]))
        assert ok.status == 200
        assert len(t.received()) == 1
        cases = {
            "101 distinct": [f"x-h{i}: {i}" for i in range(99)],
            "101 duplicates": ["a: 1"] * 99,
            "11000 empty": ["a:"] * 11_000,  # 44 KB: under the 60 KiB head limit
            "underscored ones count too": ["a: 1"] * 98 + ["a_b: 1"],
        }
        for case, lines in cases.items():
            reply = await exchange(t, get("/x", t.host, *lines))
            assert reply.status == 431, (case, reply.status)
        assert len(t.received()) == 1  # nothing after the first
        prefix = "facade" if where == "edge" else "mesh_sidecar"
        assert f'{prefix}_requests_rejected_total{{reason="too_many_headers"}} {len(cases)}' in await metrics(t)


async def many_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        fields = "".join(f"x-r{i}: {i}\r\n" for i in range(n - 1))
        writer.write(f"HTTP/1.1 200 OK\r\n{fields}content-length: 2\r\n\r\nok".encode())
        await writer.drain()
    writer.close()


@pytest.mark.parametrize(("fields", "status"), [(100, 200), (101, 502)])
async def test_upstream_response_heads_are_bounded_at_edge_and_sidecar(
    tmp_path: Path, fields: int, status: int
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await many_headers(reader, writer, fields)

    sock = bind_loopback()
    async with (
        raw_server(handler) as raw_url,
        mesh_facade(tmp_path, stack_yaml(tmp_path, svc=raw_url, admin=raw_url, sidecar_port=port_of(sock))) as (
            rt,
            feature,
        ),
        run_sidecar(feature, rt, "catalog", app=raw_url, inbound_sock=sock),
        httpx.AsyncClient(timeout=10) as client,
    ):
        edge = await client.get(rt.url + "/x", headers={"host": "svc.local"})
        assert edge.status_code == status
        via_sidecar = await client.get(rt.url + "/x", headers={"host": "catalog.local"})  # edge -> sidecar -> app
        assert via_sidecar.status_code == status
        if status == 502:
            assert set(edge.json()) == {"error", "request_id"}
            detail = rt.errors.view(edge.json()["request_id"])[0]["detail"]
            assert "more than 100 header fields" in detail


# -- 3. paths that are not UTF-8 after percent-decoding; %3B ------------------------------------------

BAD_UTF8 = [
    "/%c0%ae%c0%ae/admin",
    "/%C0%AE%C0%AE/admin",
    "/%ed%a0%80",
    "/%e2%82",
    "/x/%e2%82/y",
    "/%80",
    "/caf%e9",
    "/%f4%90%80%80",
    "/%fe",
    "/ok%c3",
]


@pytest.mark.parametrize("where", TARGETS)
@pytest.mark.parametrize("semicolons", ["reject", "keep"])
async def test_invalid_utf8_and_encoded_semicolons(tmp_path: Path, where: str, semicolons: str) -> None:
    async with stack(tmp_path, extra=f"normalize: {{semicolons: {semicolons}}}") as s:
        t = s.target(where)
        for path in BAD_UTF8:
            reply = await exchange(t, get(path, t.host))
            assert reply.status == 400, (path, reply)
        # raw (unescaped) non-UTF-8 bytes: refused by the parser or by the path rule, never forwarded
        for raw in (b"/caf\xe9", b"/\xc0\xae\xc0\xae/admin", b"/\xed\xa0\x80"):
            request = b"GET " + raw + f" HTTP/1.1\r\nHost: {t.host}\r\nConnection: close\r\n\r\n".encode()
            assert (await exchange(t, request)).status == 400, raw
        assert t.received() == []
        ok = await exchange(t, get("/caf%c3%a9", t.host))
        assert ok.status == 200 and t.received()[-1]["raw_path"] == "/caf%C3%A9"
        for path in ("/a%3bb", "/a%3Bb/c", "/%3B", "/x/y%3b"):
            reply = await exchange(t, get(path, t.host))
            if semicolons == "reject":
                assert reply.status == 400, (path, reply)
            else:
                assert reply.status == 200, (path, reply)
                assert t.received()[-1]["raw_path"] == path.replace("%3b", "%3B")
        for path in ("/public/..%3B/admin", "/a/..%3bx/b", "/a/.%3B/b"):
            assert (await exchange(t, get(path, t.host))).status == 400, path
        assert len(t.received()) == 1 + (4 if semicolons == "keep" else 0)


# -- 4. absolute-form request targets ----------------------------------------------------------------


async def test_absolute_form_routes_and_forwards_by_its_authority_at_the_edge(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        t = s.edge
        routed = {
            "http://admin.local/x": "admin.local",
            "http://admin.local:8080/x?q=1": "admin.local:8080",
            "HTTP://ADMIN.LOCAL/x": "ADMIN.LOCAL",
            "https://admin.local/x": "admin.local",
            "http://admin.local": "admin.local",
        }
        for target, host in routed.items():
            before = len(s.admin.requests)
            reply = await exchange(t, get(target, "svc.local"))
            assert reply.status == 200, (target, reply)
            (record,) = s.admin.requests[before:]
            assert value_of(record, "host") == [host], record["headers"]  # Host rewritten, sent once
            assert value_of(record, "x-forwarded-host") == [host]
        assert t.app.requests == []  # never the Host's route
        # HTTP/1.0 without Host: the authority is the host
        reply = await exchange(t, get("http://admin.local/y", None, version="1.0"))
        assert reply.status == 200 and s.admin.requests[-1]["raw_path"] == "/y"
        # the reverse: an absolute target naming svc with Host admin.local goes to svc
        reply = await exchange(t, get("http://svc.local/z", "admin.local"))
        assert reply.status == 200 and t.app.requests[-1]["raw_path"] == "/z"
        for target in (
            "http://svc.local@admin.local/x",
            "http://u:p@admin.local/x",
            "ftp://admin.local/x",
            "http:///x",
        ):
            before = len(s.admin.requests) + len(t.app.requests)
            reply = await exchange(t, get(target, "svc.local"))
            assert reply.status == 400, (target, reply)
            assert len(s.admin.requests) + len(t.app.requests) == before
        assert 'facade_requests_rejected_total{reason="absolute_form"} 4' in await metrics(t)


async def test_absolute_form_is_authorized_by_its_authority_at_the_sidecar(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        t = s.sidecar
        # policy "no-admin-host" denies host admin.local: the authority counts, not the Host header
        assert (await exchange(t, get("http://admin.local/x", "catalog"))).status == 403
        assert (await exchange(t, get("http://Admin.Local:443/x", "catalog"))).status == 403
        assert t.received() == []
        reply = await exchange(t, get("http://catalog/x", "admin.local"))
        assert reply.status == 200
        assert value_of(t.received()[-1], "host") == ["catalog"]
        assert (await exchange(t, get("http://a@catalog/x", "catalog"))).status == 400


# -- 5. error bodies -----------------------------------------------------------------------------------

GENERIC = {
    "upstream connect error or reset before response",
    "no healthy upstream",
    "upstream request timeout",
    "bad gateway",
    "no route matches",
}


def assert_generic(body: dict[str, Any], status: int) -> None:
    assert set(body) == {"error", "request_id"}, body
    assert body["error"] in GENERIC, body
    text = json.dumps(body)
    for leak in ("127.0.0.1", "spiffe://", "TLS", "handshake", "svc", "catalog"):
        assert leak not in text, (leak, body)


async def speak_plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer whatever arrives (a TLS ClientHello) with plain HTTP: the handshake fails."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reader.read(1), 5)
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
    writer.close()


async def test_error_bodies_name_no_internals_at_the_edge(tmp_path: Path) -> None:
    dead = refusing_url()
    async with (
        raw_server(close_immediately) as resetting,
        raw_server(never_answer) as silent,
        raw_server(speak_plain_http) as plain_for_tls,
        raw_server(never_answer) as one_slot,
    ):
        tls_url = plain_for_tls.replace("http://", "https://")
        names = ("dead", "reset", "slow", "tls", "pool")
        text = (
            f"state_dir: {tmp_path}/state\n"
            "services:\n"
            f"  dead: {{endpoints: [{dead}], retries: {{attempts: 0}}}}\n"
            f"  reset: {{endpoints: [{resetting}], retries: {{attempts: 0}}}}\n"
            f"  slow: {{endpoints: [{silent}], timeouts: {{request: 300ms}}, retries: {{attempts: 0}}}}\n"
            f"  tls: {{endpoints: [{tls_url}], timeouts: {{connect: 1s}}, retries: {{attempts: 0}}}}\n"
            f"  pool: {{endpoints: [{one_slot}], connection_pool: {{max_connections: 1}}, "
            "timeouts: {connect: 200ms, request: 3s}}\n"
            "routes:\n" + "".join(f"  - {{name: {n}, match: {{host: {n}.local}}, backend: {n}}}\n" for n in names)
        )
        async with (
            run_facade(tmp_path, text) as rt,
            httpx.AsyncClient(base_url=rt.url, timeout=10) as client,
        ):
            expected = {"dead": 502, "reset": 502, "slow": 504, "tls": 502, "nowhere": 404}
            for name, status in expected.items():
                r = await client.get("/x", headers={"host": f"{name}.local"})
                assert r.status_code == status, (name, r.text)
                assert_generic(r.json(), status)
                assert r.headers["x-request-id"] == r.json()["request_id"]
                if name != "nowhere":
                    (entry,) = rt.errors.view(r.json()["request_id"])
                    assert entry["route"] == name and entry["detail"]  # the operator's view has it all
            holder = asyncio.create_task(client.get("/hold", headers={"host": "pool.local"}))
            pool = rt.holder.current.upstreams.get("pool")
            deadline = asyncio.get_running_loop().time() + 5
            while (pool.live_h1 is None or pool.live_h1.in_use < 1) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)  # until the holder owns the only connection
            r = await client.get("/x", headers={"host": "pool.local"})
            assert r.status_code == 503
            assert_generic(r.json(), 503)
            assert "exhausted" in rt.errors.view(r.json()["request_id"])[0]["detail"]
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await holder
            admin = (await client.get(rt.admin_url + "/errors")).json()["errors"]
            assert {e["route"] for e in admin} >= {"dead", "reset", "slow", "tls", "pool"}


async def test_debug_error_details_reach_loopback_clients_only_when_enabled(tmp_path: Path) -> None:
    dead = refusing_url()
    text = f"state_dir: {tmp_path}/state\ndebug_error_details: true\nservices:\n  svc: {{endpoints: [{dead}]}}\n"
    text += "routes:\n  - {name: all, backend: svc}\n"
    async with run_facade(tmp_path, text) as rt, httpx.AsyncClient(base_url=rt.url) as client:
        body = (await client.get("/")).json()
        assert body["route"] == "all" and body["backend"] == "svc" and dead.rsplit(":", 1)[1] in body["detail"]


async def test_error_bodies_name_no_internals_at_the_sidecar(tmp_path: Path) -> None:
    dead = refusing_url()
    async with raw_server(close_immediately) as resetting:
        for app_url in (dead, resetting):
            sock = bind_loopback()
            svc = RecordingApp("svc")
            async with (
                serve_app(svc) as svc_url,
                mesh_facade(tmp_path, stack_yaml(tmp_path, svc=svc_url, admin=svc_url, sidecar_port=port_of(sock))) as (
                    rt,
                    feature,
                ),
                run_sidecar(feature, rt, "catalog", app=app_url, inbound_sock=sock) as sidecar,
            ):
                assert feature.ca is not None
                peer = client_context(issue(feature.ca, WEB), feature.ca.trust_bundle_pem)
                t = Target("sidecar", port_of(sock), peer, "catalog", svc, sidecar.admin_url, sidecar.errors)
                reply = await exchange(t, get("/x", "catalog"))
                assert reply.status == 502
                assert_generic(reply.json(), 502)
                (entry,) = sidecar.errors.view(reply.json()["request_id"])
                assert app_url.rsplit(":", 1)[1] in entry["detail"]
                # the edge in front of the sidecar says as little
                async with httpx.AsyncClient() as client:
                    r = await client.get(rt.url + "/x", headers={"host": "catalog.local"})
                assert r.status_code == 502 and set(r.json()) == {"error", "request_id"}
                # a policy denial names no policy
                deny = await exchange(t, get("/x", "admin.local"))
                assert deny.status == 403 and deny.json() == {"error": "RBAC: access denied"}


# -- 6. HTTP/1.0 without Host ----------------------------------------------------------------------------


@pytest.mark.parametrize("where", TARGETS)
async def test_http10_without_host_routes_as_empty_host(tmp_path: Path, where: str) -> None:
    async with stack(tmp_path) as s:
        t = s.target(where)
        reply = await exchange(t, get("/x", None, version="1.0"))
        assert reply.status == 200
        record = t.received()[-1]
        assert record["name"] == t.app.name  # the edge has a route for host 127.0.0.1: not taken
        # (the upstream leg is HTTP/1.1: the client sends the endpoint's own address as Host)
        assert "svc.local" not in value_of(record, "host") and s.admin.requests == []


# -- the sidecar's outbound listener (app -> its sidecar -> peer) applies the same rules --------------


async def test_outbound_listener_drops_underscores_counts_fields_and_routes_absolute_form(tmp_path: Path) -> None:
    from tests.mesh.test_sidecar_outbound import mesh_yaml

    catalog_app = RecordingApp("catalog")
    web_sock, catalog_sock, orders_sock = bind_loopback(), bind_loopback(), bind_loopback()
    text = mesh_yaml(tmp_path, web=port_of(web_sock), catalog=port_of(catalog_sock), orders=port_of(orders_sock))
    web_sock.close()
    orders_sock.close()
    async with (
        serve_app(catalog_app) as catalog_url,
        mesh_facade(tmp_path, text) as (rt, feature),
        run_sidecar(feature, rt, "catalog", app=catalog_url, inbound_sock=catalog_sock),
        run_sidecar(feature, rt, "web", outbound=True) as web,
    ):
        port = int(web.outbound_url.rsplit(":", 1)[1])
        t = Target("outbound", port, None, "catalog", catalog_app, web.admin_url, web.errors)
        reply = await exchange(t, get("/catalog/items", "catalog", *UNDERSCORED))
        assert reply.status == 200, reply
        (record,) = catalog_app.requests
        assert_no_forgery(record)
        (xfcc,) = value_of(record, "x-forwarded-client-cert")
        assert f"URI={WEB}" in xfcc  # the verified caller, nothing the app wrote
        assert (await exchange(t, get("/catalog/items", "catalog", *["a: 1"] * 99))).status == 431
        # absolute-form: the app names the peer in the target; its Host is replaced by the authority
        reply = await exchange(t, get("http://catalog/catalog/x", "nowhere"))
        assert reply.status == 200 and catalog_app.requests[-1]["raw_path"] == "/catalog/x"
        assert len(catalog_app.requests) == 2
        text = await metrics(t)
        assert f'mesh_sidecar_request_headers_dropped_total{{reason="underscore"}} {len(UNDERSCORED)}' in text
        assert 'mesh_sidecar_requests_rejected_total{reason="too_many_headers"} 1' in text
