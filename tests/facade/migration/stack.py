"""A real facade with the migration feature, a monolith and a carved-out service, for controller tests.

    async with migration_stack(tmp_path, PLAN_YAML) as s:
        await s.admin.post("/migrations/shop/start", json={})
        r = await s.client.get("/catalog/x")      # through the facade
        r.headers["x-served-by"]                   # "monolith" or "catalog"
        s.new.fail = True                          # the carved-out service starts answering 500
"""

from __future__ import annotations

import contextlib
import json
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from facade.migration.controller import MigrationController
from facade.runtime import FacadeRuntime
from tests.backends import EchoApp
from tests.harness import run_facade
from tests.servers import serve_app

__all__ = ["TOKEN", "Stack", "Switchable", "config_text", "migration_stack"]

TOKEN = "s3cret"


class Switchable:
    """An EchoApp that can be told to fail: every HTTP request then gets a 500.

    ``/catalog/same...`` answers the same JSON on every backend (for shadow comparisons that agree).
    """

    def __init__(self, name: str) -> None:
        self.app = EchoApp(name)
        self.fail = False

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        if self.fail and scope["type"] == "http" and scope["path"] != "/healthz":
            body = json.dumps({"name": self.app.name, "failing": True}).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"), (b"x-served-by", self.app.name.encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http" and scope["path"].startswith("/catalog/same"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"x-served-by", self.app.name.encode())]})
            await send({"type": "http.response.body", "body": b'{"ok": true}'})
            return
        await self.app(scope, receive, send)


def config_text(old_url: str, new_url: str, *, comment: str = "") -> str:
    return textwrap.dedent(f"""\
        # {comment}
        listen: 127.0.0.1:0
        admin: {{listen: 127.0.0.1:0, token: {TOKEN}}}
        state_dir: state
        services:
          monolith: {{endpoints: [{old_url}]}}
          catalog: {{endpoints: [{new_url}]}}
        routes:
          - name: catalog
            match: {{path: {{prefix: /catalog}}}}
            backend: monolith
          - name: default
            match: {{path: {{prefix: /}}}}
            backend: monolith
        migrations: migrations/
        """)


@dataclass
class Stack:
    runtime: FacadeRuntime
    old: Switchable
    new: Switchable
    old_url: str
    new_url: str
    client: httpx.AsyncClient  # to the facade's listener
    admin: httpx.AsyncClient  # to the admin listener, with the bearer token
    tmp_path: Path

    @property
    def controller(self) -> MigrationController:
        return self.runtime.feature(MigrationController)

    async def act(self, name: str, action: str, **body: Any) -> httpx.Response:
        return await self.admin.post(f"/migrations/{name}/{action}", json=body)

    async def status(self, name: str, journal: int = 1000) -> dict[str, Any]:
        r = await self.admin.get(f"/migrations/{name}", params={"journal": journal})
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    async def served_by(self, path: str = "/catalog/item", **kwargs: Any) -> str:
        r = await self.client.get(path, **kwargs)
        return str(r.headers["x-served-by"])

    def write_plan(self, text: str, name: str = "001-plan.yaml") -> None:
        (self.tmp_path / "migrations" / name).write_text(textwrap.dedent(text))

    def touch_config(self, comment: str) -> None:
        """Rewrite the config with a different comment, so a reload sees a changed file."""
        (self.tmp_path / "facade.yaml").write_text(config_text(self.old_url, self.new_url, comment=comment))


@contextlib.asynccontextmanager
async def migration_stack(tmp_path: Path, plan: str, *, watch_interval: float | None = None) -> AsyncIterator[Stack]:
    old, new = Switchable("monolith"), Switchable("catalog")
    (tmp_path / "migrations").mkdir(exist_ok=True)
    (tmp_path / "migrations" / "001-plan.yaml").write_text(textwrap.dedent(plan))
    async with serve_app(old) as old_url, serve_app(new) as new_url:
        text = config_text(old_url, new_url)
        auth = {"authorization": f"Bearer {TOKEN}"}
        async with (
            run_facade(tmp_path, text, features=True, watch_interval=watch_interval) as rt,
            httpx.AsyncClient(base_url=rt.url, timeout=10) as client,
            httpx.AsyncClient(base_url=rt.admin_url, timeout=10, headers=auth) as admin,
        ):
            yield Stack(rt, old, new, old_url, new_url, client, admin, tmp_path)
