"""Real servers on loopback ephemeral ports, for tests.

    async with serve_app(app) as url:            # "http://127.0.0.1:54321"
        ...

The socket is bound before uvicorn starts, so the port is known and free of races.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn

from facade.server import Server, bind, socket_url

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_CHOSEN = 10000


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free now, for a child process that binds its own (it is given a
    number, not a socket: ``facade up``, nginx, Prometheus, a ``facade serve`` subprocess).

    Chosen at random BELOW the kernel's ephemeral range: a port taken from the ephemeral range with
    bind(port 0) and released can be handed at once to any other test's bind(0) (two xdist workers
    do that all the time), and the child then fails to bind. Below the range only another caller
    of this function can pick the same port, which random choice makes rare.
    """
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    chosen: list[int] = []
    rng = random.SystemRandom()
    for _ in range(50 * n + 100):
        if len(chosen) == n:
            break
        port = rng.randrange(_LOWEST_CHOSEN, low) if low > _LOWEST_CHOSEN + 1000 else 0
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = probe.getsockname()[1]
        if port not in chosen:
            chosen.append(port)
    assert len(chosen) == n, "no free loopback ports below the ephemeral range"
    return chosen


_REFUSING: list[socket.socket] = []  # held until the test process ends


def refusing_url() -> str:
    """A loopback URL whose connections are refused, for as long as the test process runs.

    The port stays bound (without listen(), so the kernel answers SYN with RST): a port merely
    released by a closed server can be taken at once by any other process on a busy machine, and a
    "dead" endpoint then answers (a 404 from somebody else's server instead of a refused connect).
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _REFUSING.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def bind_loopback(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket on loopback (port 0: a free ephemeral port), as the facade binds its own."""
    return bind(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", backlog=1024)


@contextlib.asynccontextmanager
async def serve_app(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    ssl_ca_certs: str | None = None,
    ssl_cert_reqs: int = ssl.CERT_NONE,
    **config: Any,
) -> AsyncIterator[str]:
    """Run an ASGI app under uvicorn (httptools, no lifespan noise) until the block exits.

    A backend, not a facade listener: uvicorn's defaults otherwise (its server/date headers, ...).
    It starts through the facade's one start-up path (``facade.server.Server``).
    """
    sock = bind_loopback(host, port)
    cfg = uvicorn.Config(
        app,
        http="httptools",
        loop="none",
        lifespan=config.pop("lifespan", "off"),
        log_level=config.pop("log_level", "warning"),
        access_log=False,
        timeout_graceful_shutdown=config.pop("timeout_graceful_shutdown", 5),
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        ssl_ca_certs=ssl_ca_certs,
        ssl_cert_reqs=ssl_cert_reqs,
        **config,
    )
    try:
        server = await Server.start(cfg, sock)
    except BaseException:
        sock.close()
        raise
    try:
        yield socket_url(sock, "https" if ssl_certfile else "http")
    finally:
        await server.stop()
