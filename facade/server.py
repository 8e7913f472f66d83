"""Listening sockets and the uvicorn servers on them: the one start-up path of every listener.

The facade's listener and admin listener, the sidecar's inbound, outbound and admin listeners
(and the tests' backends) all start here, so the settings that keep them safe live in one place:

- httptools, never h11: h11 accepts Content-Length with Transfer-Encoding (request smuggling) and
  obs-folded headers. A proxying listener passes ``facade.listener.guarded_protocol(limits)``, the
  httptools protocol plus the head bounds uvicorn lacks;
- ``proxy_headers`` off: X-Forwarded-* are the facade's to build, never uvicorn's to trust (its
  default trusts them from 127.0.0.1, where clients and sidecars live);
- on a listener that forwards upstream answers (``passthrough=True``) uvicorn's own ``server`` and
  ``date`` headers are off, so the upstream's pass through exactly once;
- no signal capture (the owner handles SIGHUP/SIGINT/SIGTERM) and the owner's event loop.

    sock = bind("127.0.0.1:8080")
    server = await Server.start(server_config(app, protocol=guarded_protocol(limits)), sock)
    ...
    await server.stop()                     # stop accepting, drain (graceful timeout), close
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import uvicorn

__all__ = ["Server", "bind", "parse_listen", "prepared", "server_config", "socket_url"]

# uvicorn's default keep-alive: the facade's pools expire idle connections sooner (docs/architecture.md).
KEEP_ALIVE_S = 5


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``"[::1]:8080"`` -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def bind(listen: str, *, backlog: int = 2048) -> socket.socket:
    """A non-blocking listening TCP socket on ``listen`` (``host:port``; port 0: any free one)."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when proto says TCP
    # (with proto 0 every response written in two parts waits ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {listen}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def socket_url(sock: socket.socket, scheme: str = "http") -> str:
    """``http://127.0.0.1:8080`` / ``http://[::1]:8080`` for a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def server_config(
    app: Any,
    *,
    protocol: type[asyncio.Protocol] | None = None,
    passthrough: bool = False,
    graceful_shutdown: int = 5,
    **settings: Any,
) -> uvicorn.Config:
    """uvicorn's settings for a facade or sidecar listener (the module says why each is what it is).

    ``protocol``: the HTTP protocol class (default: uvicorn's httptools one). ``passthrough``: the
    listener forwards upstream answers, so uvicorn adds no ``server`` / ``date`` header. ``settings``:
    further ``uvicorn.Config`` arguments (TLS files, ``ws_max_size``, ...).
    """
    return uvicorn.Config(
        app,
        http=protocol or "httptools",
        loop="none",
        lifespan="off",
        proxy_headers=False,
        server_header=not passthrough,
        date_header=not passthrough,
        access_log=False,
        log_level="warning",
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=graceful_shutdown,
        **settings,
    )


def prepared(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server ready to serve ``config`` (loaded, with its lifespan), not yet listening.

    ``Server.start`` listens with it; ``mesh.listener`` accepts connections itself and only needs
    its protocol class and connection state.
    """
    if not config.loaded:
        config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)  # shutdown() expects one, even "off"
    return server


class Server:
    """One uvicorn server listening on one socket, started and stopped by its owner.

    uvicorn's ``Server.serve()`` minus its signal capture and its own loop: the owner's event
    loop runs it and the owner decides when it stops.
    """

    def __init__(self, server: uvicorn.Server, sock: socket.socket, main_loop: asyncio.Task[None]) -> None:
        self.server = server
        self.sock = sock
        self._main_loop = main_loop

    def __repr__(self) -> str:
        return f"<Server {socket_url(self.sock) if self.sock.fileno() != -1 else 'closed'}>"

    @classmethod
    async def start(cls, config: uvicorn.Config, sock: socket.socket) -> Server:
        """Run the app's lifespan start-up (when on) and listen on ``sock``."""
        server = prepared(config)
        await server.startup(sockets=[sock])
        return cls(server, sock, asyncio.create_task(server.main_loop()))

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to the graceful timeout), close the socket."""
        self._main_loop.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._main_loop
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await self.server.shutdown(sockets=[self.sock])
