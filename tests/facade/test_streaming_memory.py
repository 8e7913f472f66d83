"""A 1 GiB upload and a 1 GiB download pass through the facade with bounded memory.

The facade runs as its own process (``facade serve``) so its RSS can be measured alone.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx
import psutil
import pytest

from tests.backends import EchoApp
from tests.servers import free_ports, serve_app

GIB = 1024**3
RSS_BUDGET = 50 * 1024 * 1024


def _free_port() -> int:
    (port,) = free_ports(1)  # below the ephemeral range: see tests.servers.free_ports
    return port


def _spawn_facade(cfg: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "facade", "serve", "-c", str(cfg), "--no-watch",
                                 "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)


async def _start_facade(tmp_path, backend_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port, admin = _free_port(), _free_port()
    cfg = tmp_path / "facade.yaml"
    cfg.write_text(
        f"listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}}}\n"
        f"services:\n  svc: {{endpoints: [{backend_url}], timeouts: {{request: 60s}}}}\n"
        "routes:\n  - name: all\n    backend: svc\n"
    )
    proc = _spawn_facade(cfg, tmp_path / "facade.log")
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(200):  # bounded: ~10 s
            try:
                await client.get(f"http://127.0.0.1:{admin}/readyz")
                return proc, url
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError("facade did not start: " + (tmp_path / "facade.log").read_text())


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            await asyncio.sleep(0.05)

    def __enter__(self) -> Self:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.mark.slow
async def test_one_gib_up_and_down_with_bounded_memory(tmp_path):
    async with serve_app(EchoApp()) as backend:
        proc, url = await _start_facade(tmp_path, backend)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                # Warm up pools and code paths before the baseline.
                await client.post("/upload", content=b"w" * 1024 * 1024)
                async with client.stream("GET", "/big?bytes=1048576") as r:
                    async for _ in r.aiter_raw():
                        pass
                sampler = RssSampler(proc.pid)

                async def body():
                    chunk = os.urandom(256 * 1024)
                    for _ in range(GIB // len(chunk)):
                        yield chunk

                t0 = time.monotonic()
                with sampler:
                    r = await client.post("/upload", content=body(), headers={"content-length": str(GIB)})
                    assert r.status_code == 200 and r.json()["size"] == GIB
                    up_s = time.monotonic() - t0
                    received = 0
                    async with client.stream("GET", f"/big?bytes={GIB}") as r:
                        assert r.status_code == 200
                        async for chunk in r.aiter_raw():
                            received += len(chunk)
                    assert received == GIB
                growth = sampler.peak - sampler.baseline
                print(f"1 GiB up {up_s:.1f}s; total {time.monotonic() - t0:.1f}s; RSS growth {growth / 2**20:.1f} MiB")
                assert growth < RSS_BUDGET
        finally:
            proc.terminate()
            proc.wait(10)
