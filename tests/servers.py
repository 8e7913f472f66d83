"""Real servers on loopback ephemeral ports, for tests.

    async with serve_app(app) as url:            # "http://127.0.0.1:54321"
        ...

The socket is bound before uvicorn starts, so the port is known and free of races.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import uvicorn


def bind_loopback(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when proto says TCP
    # (with proto 0 every response written in two parts waits ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def serve_app(
    app: Any,
    *,
    host: str = "127.0.0.1",
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    ssl_ca_certs: str | None = None,
    ssl_cert_reqs: int = ssl.CERT_NONE,
    **config: Any,
) -> AsyncIterator[str]:
    """Run an ASGI app under uvicorn (httptools, no lifespan noise) until the block exits."""
    sock = bind_loopback(host)
    port = sock.getsockname()[1]
    cfg = uvicorn.Config(
        app,
        http="httptools",
        loop="asyncio",
        lifespan=config.pop("lifespan", "off"),
        log_level=config.pop("log_level", "warning"),
        access_log=False,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        ssl_ca_certs=ssl_ca_certs,
        ssl_cert_reqs=ssl_cert_reqs,
        **config,
    )
    server = uvicorn.Server(cfg)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        scheme = "https" if ssl_certfile else "http"
        netloc = f"[{host}]" if ":" in host else host
        yield f"{scheme}://{netloc}:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)
        sock.close()
