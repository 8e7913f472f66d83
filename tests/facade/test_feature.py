"""The feature contract (facade/feature.py) and the runtime's one swap, on a real facade.

A feature overrides only the hooks it needs; the runtime calls every hook on every feature, in the
order they were added. What the hot path reads changes only through ``swap`` / ``stage`` /
``install_*``; before ``start()`` nothing has been served, so the starting snapshot keeps version 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from facade.config import Config, load_config
from facade.errors import ConfigError, Problem
from facade.feature import Feature
from facade.runtime import FacadeRuntime
from facade.split import Split
from facade.upstream import Upstreams
from tests.backends import EchoApp
from tests.harness import write_config
from tests.servers import bind_loopback, serve_app

TOKEN = "s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _cfg(a: str, b: str, backend: str = "a") -> str:
    return (
        "listen: 127.0.0.1:0\n"
        f"admin: {{listen: 127.0.0.1:0, token: {TOKEN}}}\n"
        "services:\n"
        f"  a: {{endpoints: [{a}]}}\n"
        f"  b: {{endpoints: [{b}]}}\n"
        "routes:\n"
        "  - name: all\n"
        f"    backend: {backend}\n"
    )


class Recorder(Feature):
    """Records every hook call; adds one admin route and one metric."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.refuse: str | None = None  # check_config refuses configs whose routes' backend is this

    def admin_routes(self) -> list[BaseRoute]:
        async def hello(request: Request) -> Response:
            return JSONResponse({"calls": self.calls})

        return [Route("/recorder", hello)]

    def check_config(self, config: Config) -> None:
        self.calls.append(f"check:{config.routes[0].backends[0].service}")
        if config.routes[0].backends[0].service == self.refuse:
            raise ConfigError([Problem(config.source, 1, 1, "routes", "refused by the recorder")])

    async def config_changed(self, config: Config) -> None:
        self.calls.append(f"changed:{config.routes[0].backends[0].service}")

    async def reload_sources(self, trigger: str) -> list[Problem]:
        self.calls.append(f"sources:{trigger}")
        return []

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")

    def prometheus_text(self) -> str:
        return f"# TYPE recorder_calls gauge\nrecorder_calls {len(self.calls)}\n"


class StagesSplits(Feature):
    """Puts a split on the route whenever the config changes (as the migration controller does)."""

    def __init__(self, runtime: FacadeRuntime, split: Split) -> None:
        self.runtime = runtime
        self.split = split

    async def config_changed(self, config: Config) -> None:
        self.runtime.stage(splits={"all": self.split})


@contextlib.asynccontextmanager
async def facade(
    tmp_path: Path, text: str, plug: Callable[[FacadeRuntime], object]
) -> AsyncIterator[FacadeRuntime]:
    """A real facade with the features ``plug`` adds before it starts."""
    path = write_config(tmp_path, text)
    runtime = FacadeRuntime(load_config(str(path)), config_path=str(path), watch_interval=None)
    plug(runtime)
    await runtime.start(listen_sock=bind_loopback(), admin_sock=bind_loopback())
    try:
        yield runtime
    finally:
        await runtime.stop()


async def test_every_hook_of_every_feature_is_called_and_the_defaults_do_nothing(tmp_path: Path) -> None:
    recorder = Recorder()
    async with serve_app(EchoApp("a")) as a, serve_app(EchoApp("b")) as b:
        def plug(rt: FacadeRuntime) -> None:
            rt.add_feature(Feature())  # every hook a no-op
            rt.add_feature(recorder)

        async with facade(tmp_path, _cfg(a, b), plug) as rt:
            assert rt.feature(Recorder) is recorder and rt.feature(StagesSplits) is None
            async with httpx.AsyncClient(base_url=rt.admin_url) as admin, httpx.AsyncClient(base_url=rt.url) as client:
                assert (await admin.get("/recorder")).json() == {"calls": ["start"]}
                metrics = (await admin.get("/metrics")).text
                assert "\nrecorder_calls 1\n" in metrics and "facade_" in metrics

                r = await admin.post("/reload", headers=AUTH)  # the file did not change
                assert r.json()["changed"] is False and r.json()["ok"] is True
                (tmp_path / "facade.yaml").write_text(_cfg(a, b, backend="b"))
                r = await admin.post("/reload", headers=AUTH)
                assert r.json()["ok"] is True and r.json()["version"] == 2
                assert (await client.get("/")).json()["name"] == "b"
            assert recorder.calls == ["start", "sources:api", "check:b", "changed:b"]
    assert recorder.calls[-1] == "stop"


async def test_a_feature_that_refuses_a_config_leaves_everything_as_it_was(tmp_path: Path) -> None:
    recorder = Recorder()
    recorder.refuse = "b"
    async with serve_app(EchoApp("a")) as a, serve_app(EchoApp("b")) as b:
        async with facade(tmp_path, _cfg(a, b), lambda rt: rt.add_feature(recorder)) as rt:
            (tmp_path / "facade.yaml").write_text(_cfg(a, b, backend="b"))
            async with httpx.AsyncClient(base_url=rt.admin_url) as admin, httpx.AsyncClient(base_url=rt.url) as client:
                r = await admin.post("/reload", headers=AUTH)
                assert r.status_code == 422 and r.json()["problems"][0]["message"] == "refused by the recorder"
                assert (await client.get("/")).json()["name"] == "a"
            assert rt.version == 1 and "changed:b" not in recorder.calls


async def test_splits_staged_on_a_reload_come_in_with_the_new_config_in_one_swap(tmp_path: Path) -> None:
    to_b = Split(primary="a", candidate="b", weight_bps=10_000, step_label="all b")
    async with serve_app(EchoApp("a")) as a, serve_app(EchoApp("b")) as b, serve_app(EchoApp("c")) as c:
        async with facade(tmp_path, _cfg(a, b), lambda rt: rt.add_feature(StagesSplits(rt, to_b))) as rt:
            before = rt.holder.current
            assert before.version == 1 and not before.splits
            (tmp_path / "facade.yaml").write_text(_cfg(a, c, backend="a"))  # service b moves to c's address
            result = await rt.reload("test")
            after = rt.holder.current
            assert result.ok and after.version == 2  # one swap: config and splits together
            assert after.config.sha256 != before.config.sha256 and after.splits == {"all": to_b}
            async with httpx.AsyncClient(base_url=rt.url) as client:
                assert (await client.get("/")).json()["name"] == "c"
            # A later swap without splits keeps the ones in force; nothing stays staged.
            assert rt.swap().splits == {"all": to_b} and rt.version == 3


async def test_before_start_installs_rebuild_the_starting_snapshot_and_after_it_pools_stay(tmp_path: Path) -> None:
    path = write_config(tmp_path, _cfg("http://127.0.0.1:1", "http://127.0.0.1:2"))
    runtime = FacadeRuntime(load_config(str(path)), config_path=str(path), watch_interval=None)
    pools = Upstreams(runtime.config.services)
    assert runtime.install_upstreams(pools).version == 1  # nothing served yet: still the starting snapshot
    assert runtime.holder.current.upstreams is pools and runtime.upstreams is pools
    assert runtime.swap(splits={"all": Split(primary="a", candidate="b")}).version == 1
    await runtime.start(listen_sock=bind_loopback(), admin_sock=bind_loopback())
    try:
        assert runtime.version == 1 and "all" in runtime.splits
        with pytest.raises(RuntimeError, match="only before the runtime starts"):
            runtime.install_upstreams(Upstreams(runtime.config.services))
        with pytest.raises(RuntimeError, match="before the runtime starts"):
            runtime.add_feature(Feature())
        assert runtime.swap(splits={}).version == 2 and runtime.holder.current.upstreams is pools
    finally:
        await runtime.stop()
