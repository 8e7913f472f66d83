"""Hot reload: validate, compile, swap; invalid files change nothing; no request fails across reloads."""

from __future__ import annotations

import asyncio

import httpx

from tests.backends import EchoApp
from tests.harness import run_facade
from tests.servers import serve_app

TOKEN = "s3cret"


def _cfg(a: str, b: str, backend: str = "a", extra_route: str = "") -> str:
    return (
        "listen: 127.0.0.1:0\n"
        f"admin: {{listen: 127.0.0.1:0, token: {TOKEN}}}\n"
        "services:\n"
        f"  a: {{endpoints: [{a}]}}\n"
        f"  b: {{endpoints: [{b}]}}\n"
        "routes:\n"
        f"{extra_route}"
        "  - name: all\n"
        f"    backend: {backend}\n"
    )


async def test_reload_endpoint_needs_the_token(tmp_path):
    async with serve_app(EchoApp("a")) as a, serve_app(EchoApp("b")) as b:
        async with run_facade(tmp_path, _cfg(a, b)) as rt, httpx.AsyncClient(base_url=rt.admin_url) as admin:
            assert (await admin.post("/reload")).status_code == 401
            r = await admin.post("/reload", headers={"authorization": "Bearer wrong"})
            assert r.status_code == 401
            r = await admin.post("/reload", headers={"authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200 and r.json()["changed"] is False


async def test_a_valid_change_is_applied_and_an_invalid_one_changes_nothing(tmp_path):
    async with serve_app(EchoApp("a")) as a, serve_app(EchoApp("b")) as b:
        async with run_facade(tmp_path, _cfg(a, b)) as rt:
            path = tmp_path / "facade.yaml"
            auth = {"authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=rt.url) as client, httpx.AsyncClient(base_url=rt.admin_url) as admin:
                assert (await client.get("/")).json()["name"] == "a"

                path.write_text(_cfg(a, b, backend="b"))
                r = await admin.post("/reload", headers=auth)
                assert r.status_code == 200 and r.json()["ok"] and r.json()["version"] == 2
                assert (await client.get("/")).json()["name"] == "b"

                path.write_text(_cfg(a, b, backend="nope"))  # unknown backend
                r = await admin.post("/reload", headers=auth)
                assert r.status_code == 422
                problems = r.json()["problems"]
                assert any("nope" in p["message"] for p in problems)
                assert all(p["file"].endswith("facade.yaml") and p["line"] > 0 for p in problems)
                # The running config is untouched.
                assert (await client.get("/")).json()["name"] == "b"
                cfg = (await admin.get("/config")).json()
                assert cfg["version"] == 2 and cfg["last_reload"]["ok"] is False
                assert cfg["config_version"] == 2  # one config applied since start; the rejected one does not count


async def test_a_file_change_is_picked_up_by_the_watcher(tmp_path):
    async with serve_app(EchoApp("a")) as a, serve_app(EchoApp("b")) as b:
        async with run_facade(tmp_path, _cfg(a, b), watch_interval=0.05) as rt:
            async with httpx.AsyncClient(base_url=rt.url) as client:
                (tmp_path / "facade.yaml").write_text(_cfg(a, b, backend="b") + "\n# changed\n")
                for _ in range(100):  # bounded: up to ~5 s
                    if (await client.get("/")).json()["name"] == "b":
                        break
                    await asyncio.sleep(0.05)
                assert (await client.get("/")).json()["name"] == "b"
                assert rt.last_reload.trigger == "file-change"


async def test_twenty_reloads_under_load_fail_no_request(tmp_path):
    async with serve_app(EchoApp("a")) as a, serve_app(EchoApp("b")) as b:
        async with run_facade(tmp_path, _cfg(a, b)) as rt:
            path = tmp_path / "facade.yaml"
            stop = asyncio.Event()
            statuses: list[int] = []
            errors: list[str] = []

            async def client_loop() -> None:
                async with httpx.AsyncClient(base_url=rt.url, timeout=10) as client:
                    for _ in range(2000):  # bounded in count; also stops when the reloads are done
                        if stop.is_set():
                            return
                        try:
                            r = await client.get("/items?x=1")
                            statuses.append(r.status_code)
                        except httpx.HTTPError as exc:
                            errors.append(repr(exc))

            clients = [asyncio.create_task(client_loop()) for _ in range(8)]
            auth = {"authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=rt.admin_url) as admin:
                for i in range(20):
                    backend = "b" if i % 2 == 0 else "a"
                    extra = f"  - name: extra{i}\n    match: {{path: {{prefix: /extra{i}}}}}\n    backend: a\n"
                    path.write_text(_cfg(a, b, backend=backend, extra_route=extra))
                    r = await admin.post("/reload", headers=auth)
                    assert r.status_code == 200 and r.json()["changed"] is True
                    await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*clients)
            assert errors == []
            assert statuses and set(statuses) == {200}
            assert rt.version == 21
