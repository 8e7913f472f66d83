"""Run a real facade (listener + admin, uvicorn on loopback ephemeral ports) inside a test.

    async with run_facade(tmp_path, yaml_text) as rt:
        rt.url, rt.admin_url
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

from facade.config import load_config
from facade.runtime import FacadeRuntime
from tests.servers import bind_loopback

__all__ = ["run_facade", "write_config"]


def write_config(tmp_path: Path, text: str, name: str = "facade.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@contextlib.asynccontextmanager
async def run_facade(
    tmp_path: Path, text: str, *, watch_interval: float | None = None, features: bool = False
) -> AsyncIterator[FacadeRuntime]:
    path = write_config(tmp_path, text)
    config = load_config(str(path))
    runtime = FacadeRuntime(config, config_path=str(path), watch_interval=watch_interval)
    if features:
        from facade.features import attach_features

        attach_features(runtime)
    await runtime.start(listen_sock=bind_loopback(), admin_sock=bind_loopback())
    try:
        yield runtime
    finally:
        await runtime.stop()
