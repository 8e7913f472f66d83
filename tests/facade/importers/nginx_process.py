"""A real nginx for tests: loopback, an ephemeral port, everything under a temp prefix.

    async with run_nginx(tmp_path, "server { listen 127.0.0.1:{port}; ... }") as url: ...

``{port}`` in the server text is replaced by the port nginx listens on. One process
(``master_process off``) as the current user, so no privileges are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.servers import free_ports

__all__ = ["NGINX", "nginx_conf", "require_nginx", "run_nginx"]

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
)


def require_nginx() -> str:
    if NGINX is None:
        pytest.skip("the nginx binary is not installed (apt-get install nginx; CI installs it)")
    return NGINX


def _free_port() -> int:
    (port,) = free_ports(1)  # below the ephemeral range: see tests.servers.free_ports
    return port


def nginx_conf(prefix: Path, http_body: str) -> str:
    """A whole nginx.conf: process settings under ``prefix`` around ``http_body``."""
    return f"""daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{http_body}
}}
"""


@contextlib.asynccontextmanager
async def run_nginx(prefix: Path, http_body: str) -> AsyncIterator[tuple[str, Path]]:
    """Start nginx on ``http_body`` (``{port}`` filled in); yields its URL and the conf path."""
    binary = require_nginx()
    prefix.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, http_body.replace("{port}", str(port))))
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-p",
        str(prefix),
        "-c",
        str(conf),
        "-e",
        str(prefix / "error.log"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:
            if proc.returncode is not None:
                err = (await proc.stderr.read()).decode() if proc.stderr else ""
                log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
                raise RuntimeError(f"nginx exited {proc.returncode}: {err}{log}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            if loop.time() > deadline:
                raise RuntimeError("nginx did not accept connections within 15 s")
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}", conf
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGQUIT)  # graceful shutdown
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
