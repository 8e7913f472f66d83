"""A real mesh on loopback for tests: the facade (control plane on its admin listener) and sidecars.

socks = Sockets()                                  # bind first: ports go into facade.yaml
async with mesh_facade(tmp_path, yaml) as (rt, feature):
    async with run_sidecar(feature, rt, "catalog", app=url, inbound_sock=socks["catalog"]) as sc:
        ...
"""

from __future__ import annotations

import contextlib
import socket
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from facade.config import load_config
from facade.mesh.controlplane import MeshFeature
from facade.mesh.sidecar import Sidecar, SidecarOptions
from facade.runtime import FacadeRuntime
from tests.servers import bind_loopback

ADMIN_TOKEN = "test-admin-token"


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def mesh_facade(tmp_path: Path, text: str) -> AsyncIterator[tuple[FacadeRuntime, MeshFeature]]:
    path = tmp_path / "facade.yaml"
    path.write_text(textwrap.dedent(text))
    config = load_config(str(path))
    runtime = FacadeRuntime(config, config_path=str(path), watch_interval=None)
    feature = MeshFeature.attach(runtime)
    await runtime.start(listen_sock=bind_loopback(), admin_sock=bind_loopback())
    try:
        yield runtime, feature
    finally:
        await runtime.stop()


@contextlib.asynccontextmanager
async def run_sidecar(
    feature: MeshFeature,
    runtime: FacadeRuntime,
    service: str,
    *,
    app: str | None = None,
    inbound_sock: socket.socket | None = None,
    outbound: bool = False,
    poll_wait: float = 5.0,
    control_plane: str | None = None,
    **options: Any,
) -> AsyncIterator[Sidecar]:
    token, _ = feature.issue_token(service)
    sidecar = Sidecar(
        SidecarOptions(
            service=service,
            control_plane=control_plane or runtime.admin_url,
            bootstrap_token=token,
            inbound="unused" if inbound_sock is not None else None,
            app=app,
            poll_wait=poll_wait,
            retry_interval=options.pop("retry_interval", 0.1),
            bootstrap_timeout=options.pop("bootstrap_timeout", 5.0),
            **options,
        )
    )
    await sidecar.start(
        inbound_sock=inbound_sock,
        outbound_sock=bind_loopback() if outbound else None,
        admin_sock=bind_loopback(),
    )
    try:
        yield sidecar
    finally:
        await sidecar.stop()
