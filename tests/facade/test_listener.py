"""Listener limits (431, header timeout, concurrency), TLS termination, WebSocket upgrades."""

from __future__ import annotations

import asyncio
import datetime
import ssl

import httpx
import pytest
import websockets.asyncio.client
import websockets.exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.typing import Subprotocol

from facade.listener import HeadCoalescingWriter
from tests.backends import EchoApp, raw_server
from tests.harness import run_facade
from tests.servers import serve_app


def _cfg(url: str, extra: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0, token: t}}
{extra}
services:
  svc: {{endpoints: [{url}]}}
routes:
  - name: all
    backend: svc
"""


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_oversized_request_head_gets_431(tmp_path):
    async with serve_app(EchoApp()) as url:
        async with run_facade(tmp_path, _cfg(url, "limits: {max_request_headers: 4KiB}")) as rt:
            async with httpx.AsyncClient(base_url=rt.url) as client:
                r = await client.get("/", headers={"x-big": "a" * 8000})
                assert r.status_code == 431
                r = await client.get("/", headers={"x-small": "a" * 1000})
                assert r.status_code == 200


async def test_a_client_trickling_its_headers_is_cut_off(tmp_path):
    async with serve_app(EchoApp()) as url:
        async with run_facade(tmp_path, _cfg(url, "limits: {header_timeout: 300ms}")) as rt:
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(rt.url))
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
            closed_after = None
            for i in range(40):  # bounded: 40 x 100 ms
                await asyncio.sleep(0.1)
                try:
                    writer.write(b"X-Slow: 1\r\n")  # never finishes the head
                    await writer.drain()
                except ConnectionError:
                    closed_after = i
                    break
                if reader.at_eof():
                    closed_after = i
                    break
            if closed_after is None:
                data = await asyncio.wait_for(reader.read(), 1)
                assert b"408" in data or data == b""
            else:
                assert closed_after < 20
            writer.close()


async def test_a_silent_connection_is_closed_after_the_header_timeout(tmp_path):
    async with serve_app(EchoApp()) as url:
        async with run_facade(tmp_path, _cfg(url, "limits: {header_timeout: 200ms}")) as rt:
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(rt.url))
            data = await asyncio.wait_for(reader.read(), 5)  # returns b"" when the facade closes
            assert data == b""
            writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(tmp_path, monkeypatch):
    # The keep-alive and request-head deadlines run on the loop's coarse timer wheel (facade/timers.py):
    # they still fire, a little late at most, and a connection reused in time stays open.
    monkeypatch.setattr("facade.server.KEEP_ALIVE_S", 0.5)
    async with serve_app(EchoApp()) as url:
        async with run_facade(tmp_path, _cfg(url)) as rt:
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(rt.url))
            loop = asyncio.get_running_loop()
            for _ in range(3):  # reused well within the timeout: the same connection answers every time
                writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await asyncio.wait_for(reader.readexactly(length), 5)
            idle_from = loop.time()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the facade
            assert loop.time() - idle_from >= 0.5 - 0.01
            writer.close()


async def test_concurrency_limit_answers_503(tmp_path):
    backend = EchoApp()
    async with serve_app(backend) as url:
        async with run_facade(tmp_path, _cfg(url, "limits: {max_concurrent_requests: 2}")) as rt:
            async with httpx.AsyncClient(base_url=rt.url, timeout=10) as client:
                slow = [asyncio.create_task(client.get("/slow?ms=1500")) for _ in range(2)]
                # Both slow requests are in flight once the backend has them: poll, do not guess a delay.
                deadline = asyncio.get_running_loop().time() + 5
                while sum(r["raw_path"] == "/slow" for r in backend.requests) < 2:
                    assert asyncio.get_running_loop().time() < deadline, backend.requests
                    await asyncio.sleep(0.01)
                r = await client.get("/x")
                assert r.status_code == 503
                assert [(await t).status_code for t in slow] == [200, 200]
                assert (await client.get("/x")).status_code == 200


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_the_listener_terminates_tls(tmp_path):
    cert, key = _self_signed(tmp_path)
    async with serve_app(EchoApp()) as url:
        async with run_facade(tmp_path, _cfg(url, f"tls: {{cert: {cert}, key: {key}}}")) as rt:
            assert rt.url.startswith("https://")
            ctx = ssl.create_default_context(cafile=str(cert))
            port = _port(rt.url)
            async with httpx.AsyncClient(verify=ctx) as client:
                r = await client.get(f"https://localhost:{port}/x")
                assert r.status_code == 200
                sent = dict(r.json()["headers"])
                assert sent["x-forwarded-proto"] == "https"


async def test_websocket_is_proxied_both_ways(tmp_path):
    async with serve_app(EchoApp("ws-backend")) as url:
        async with run_facade(tmp_path, _cfg(url)) as rt:
            async with websockets.asyncio.client.connect(
                rt.url.replace("http://", "ws://") + "/ws", subprotocols=[Subprotocol("chat")], proxy=None
            ) as ws:
                assert ws.subprotocol == "chat"
                await ws.send("hello")
                assert await asyncio.wait_for(ws.recv(), 5) == "ws-backend:hello"
                await ws.send(b"\x00\x01")
                assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\x01"
                await ws.send("close-me")
                with pytest.raises(websockets.exceptions.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                assert ws.close_code == 4001

class _Recorded(asyncio.Transport):
    """Stands for the socket under HeadCoalescingWriter: what reached it, one entry per write call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def test_a_response_head_leaves_with_the_body_written_in_the_same_turn():
    sock = _Recorded()
    writer = HeadCoalescingWriter(sock, asyncio.get_running_loop())
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert sock.writes == []  # held: the body may follow in this turn
    writer.write(b"ok")
    assert sock.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    writer.write(b"more")  # later writes pass straight through
    await asyncio.sleep(0)
    assert sock.writes[1:] == [b"more"]


async def test_a_held_head_goes_out_alone_after_one_loop_turn_and_before_a_close():
    sock = _Recorded()
    writer = HeadCoalescingWriter(sock, asyncio.get_running_loop())
    writer.write(b"HEAD-BYTES")
    for _ in range(3):  # the flush is scheduled with call_soon: due within a turn or two
        await asyncio.sleep(0)
    assert sock.writes == [b"HEAD-BYTES"]
    writer.write(b"body")
    assert sock.writes == [b"HEAD-BYTES", b"body"]

    sock2 = _Recorded()
    writer2 = HeadCoalescingWriter(sock2, asyncio.get_running_loop())
    writer2.write(b"HEAD-BYTES")
    writer2.close()  # uvicorn closes after a response when keep-alive is off: the head first
    assert sock2.writes == [b"HEAD-BYTES"] and sock2.closed
    await asyncio.sleep(0)
    assert sock2.writes == [b"HEAD-BYTES"]  # the scheduled flush finds nothing left


async def test_pipelined_requests_with_a_head_request_are_answered_in_order(tmp_path):
    # A HEAD response has no body write to carry its head: it must not be held behind the next response.
    async with serve_app(EchoApp("b")) as url:
        async with run_facade(tmp_path, _cfg(url)) as rt:
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(rt.url))
            try:
                writer.write(
                    b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"HEAD /two HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                data = await asyncio.wait_for(reader.read(), 10)  # until the close the last request asked for
            finally:
                writer.close()
    parts = data.split(b"HTTP/1.1 ")
    assert parts[0] == b"" and len(parts) == 4, data
    first, second, third = parts[1:]
    assert first.startswith(b"200") and b"/one" in first.split(b"\r\n\r\n", 1)[1]
    assert second.startswith(b"200") and second.endswith(b"\r\n\r\n")  # a head, no body
    assert third.startswith(b"200") and b"/three" in third.split(b"\r\n\r\n", 1)[1]


async def _head_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(30)  # no body byte: the test ends first


async def test_a_stream_head_reaches_the_client_before_any_body_byte(tmp_path):
    # The listener holds a response head for the body write that usually follows in the same turn;
    # a stream whose body has not started must still get its head at once.
    async with raw_server(_head_then_silence) as url:
        async with run_facade(tmp_path, _cfg(url)) as rt:
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(rt.url))
            try:
                writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            finally:
                writer.close()
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
