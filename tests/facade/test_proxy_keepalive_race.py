"""The keep-alive race through the facade: a real uvicorn backend that closes idle connections after 1 s.

The backend runs in its own process (stock uvicorn, as deployed), so its keep-alive timer and the
facade's requests race for real. It records every request it processed; the test asks it for the
list afterwards and checks each request arrived exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.backends import EchoApp
from tests.harness import run_facade
from tests.servers import bind_loopback, refusing_url, serve_app

BACKEND = r"""
import sys
import uvicorn

processed = []


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/processed":
        out = b"\n".join(processed)
    else:
        processed.append(scope["method"].encode() + b" " + body)
        out = b"ok"
    headers = [(b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


uvicorn.run(app, fd=int(sys.argv[1]), http="httptools", lifespan="off", log_level="warning",
            access_log=False, timeout_keep_alive=float(sys.argv[2]))
"""


@contextlib.asynccontextmanager
async def uvicorn_backend(keep_alive: float) -> AsyncIterator[str]:
    sock = bind_loopback()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BACKEND, str(sock.fileno()), str(keep_alive), pass_fds=[sock.fileno()]
    )
    sock.close()
    try:
        async with httpx.AsyncClient(base_url=url) as probe, asyncio.timeout(20):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await probe.get("/processed")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.mark.slow
async def test_posts_and_puts_sent_across_the_backends_keep_alive_timeout_never_fail(tmp_path) -> None:
    # The backend closes idle connections after 1 s, the facade's pool would keep them 4 s. The
    # first close the facade sees teaches its pool the backend's timer; then requests with gaps
    # swept across that 1 s never meet the race (a POST written on a connection the backend is
    # closing could not be resent: whether it was processed cannot be known): none may fail,
    # and none may reach the backend twice.
    count = 9
    async with uvicorn_backend(keep_alive=1.0) as backend:
        cfg = f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0, token: t0ken}}
services:
  app: {{endpoints: [{backend}]}}
routes:
  - name: all
    match: {{path: {{prefix: /}}}}
    backend: app
"""
        sent: list[bytes] = []
        statuses: list[int] = []
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url, timeout=10) as client:
            pool = rt.upstreams.get("app")
            assert pool is not None
            first = await client.post("/items", content=b"warm-up")
            assert first.status_code == 200
            sent.append(b"POST warm-up")
            async with asyncio.timeout(10):  # the backend closes the idle connection after ~1 s
                while pool.h1.stats["idle_limit_lowered"] == 0:
                    await asyncio.sleep(0.02)
            address = next(iter(pool.h1._idle_limits))
            assert 0.5 <= pool.h1.idle_limit(address) < 1.0
            async with asyncio.timeout(count * 1.2 + 30):
                for i in range(count):
                    await asyncio.sleep(0.96 + 0.08 * i / (count - 1))  # 0.96 .. 1.04 s, 10 ms apart
                    method = ("POST", "PUT")[i % 2]
                    response = await client.request(method, "/items", content=f"request-{i}".encode())
                    statuses.append(response.status_code)
                    sent.append(f"{method} request-{i}".encode())
            stats = dict(pool.h1.stats)
        async with httpx.AsyncClient(base_url=backend) as direct:
            processed = (await direct.get("/processed")).content.split(b"\n")
    assert statuses == [200] * count
    assert processed == sent  # each exactly once, in order
    # Every request after the first went out on a new connection: none was reused past the limit.
    assert stats["connects"] == count + 1


async def test_a_post_body_taken_before_a_connect_failure_is_replayed_whole_on_the_next_endpoint(tmp_path) -> None:
    # The body's first chunk is taken from the client before a connection is chosen; when that
    # connect fails (nothing sent: retried for any method) the kept chunk goes out again.
    dead = refusing_url().replace("http://", "")
    live_app = EchoApp("live")
    async with serve_app(live_app) as live:
        cfg = f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0, token: t0ken}}
services:
  svc: {{endpoints: [http://{dead}, {live}], load_balancer: round_robin,
         retries: {{attempts: 2, retry_on: [connect-failure]}}}}
routes:
  - name: all
    backend: svc
"""
        payload = bytes(range(256)) * 40  # 10 KiB
        async with run_facade(tmp_path, cfg) as rt, httpx.AsyncClient(base_url=rt.url) as client:
            for _ in range(4):  # round robin: half of them try the dead endpoint first
                r = await client.post("/upload", content=payload)
                assert r.status_code == 200
                assert r.json()["size"] == len(payload)
                assert r.json()["sha256"] == hashlib.sha256(payload).hexdigest()
            pool = rt.upstreams.get("svc")
            assert pool is not None
            assert pool.h1.stats["connects"] >= 3  # the dead endpoint was tried (refused) twice
        assert len(live_app.requests) == 4
