"""The ``shadow:`` section of facade.yaml: parsed into a frozen ShadowSpec, applied to the shadow sender."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from facade.config import ShadowSpec, parse_config
from facade.diff import DEFAULT_REDACT_HEADERS
from facade.shadow import DEFAULT_CONCURRENCY, ShadowSender, sender_options
from facade.yamlfile import YamlDocument
from tests.harness import run_facade
from tests.servers import serve_app


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def run(text: str) -> tuple[Any, list[str]]:
    Path("facade.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    config, problems = parse_config(YamlDocument.read("facade.yaml"), env={})
    return config, [str(p) for p in problems if "no routes" not in p.message]


def test_shadow_section_values_and_defaults() -> None:
    config, problems = run("""
        shadow:
          concurrency: 4
          queue_size: 0
          max_body: 64KiB
          timeout: 250ms
          max_queued_bytes: 1MiB
          host_suffix: false
          learn_noise: false
          ring_size: 10
          redact: {headers: [X-Api-Key], fields: [password, $.user.email]}
        """)
    assert problems == []
    assert config.shadow == ShadowSpec(4, 0, 64 * 1024, 0.25, 1024 * 1024, False, False, 10, ("x-api-key",),
                                       ("password", "$.user.email"))
    options = sender_options(config.shadow)
    assert options["redact_headers"] == (*DEFAULT_REDACT_HEADERS, "x-api-key")  # added, never replacing
    assert options["host_suffix"] is False and options["timeout"] == 0.25
    empty, problems = run("listen: 127.0.0.1:0\n")
    assert problems == [] and empty.shadow == ShadowSpec() and sender_options(empty.shadow) == {}
    sender = ShadowSender(upstreams=None, **sender_options(empty.shadow))  # type: ignore[arg-type]
    assert sender.concurrency == DEFAULT_CONCURRENCY and sender.host_suffix is True


def test_shadow_section_errors_with_positions_and_hints() -> None:
    _, problems = run("""
        shadow:
          concurency: 4
          queue_size: -1
          timeout: 0s
          max_body: lots
          ring_size: 0
          host_suffix: maybe
          redact: {headers: ["bad header"], fields: ["$.items["], other: 1}
        """)
    assert problems == [
        "facade.yaml:2:3: shadow.concurency: unknown field 'concurency'; did you mean 'concurrency'?",
        "facade.yaml:3:15: shadow.queue_size: must be 0-100000, got -1",
        "facade.yaml:4:12: shadow.timeout: must be at least 0.001s, got 0s",
        "facade.yaml:5:13: shadow.max_body: invalid size 'lots' (expected e.g. 8192, 64KiB, 10MiB, 1GiB)",
        "facade.yaml:6:14: shadow.ring_size: must be 1-100000, got 0",
        "facade.yaml:7:16: shadow.host_suffix: must be true or false, got 'maybe'",
        "facade.yaml:8:22: shadow.redact.headers[0]: not a header name: 'bad header'",
        "facade.yaml:8:46: shadow.redact.fields[0]: bad rule '$.items[': unclosed '[' at column 8",
        "facade.yaml:8:59: shadow.redact.other: unknown field 'other' (expected one of: fields, headers)",
    ]


PLAN = """\
name: shop
route: catalog
from: monolith
to: catalog
steps:
  - shadow: {percent: 100}
"""


class HostRecorder:
    """Answers the same JSON to everyone and remembers the Host of every request."""

    def __init__(self) -> None:
        self.hosts: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.hosts.append(dict(scope["headers"]).get(b"host", b"").decode())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})


@pytest.mark.parametrize(("host_suffix", "expected"), [("false", "shop.local"), ("true", "shop.local-shadow")])
async def test_host_suffix_from_the_config_reaches_the_candidate(
    tmp_path: Path, host_suffix: str, expected: str
) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001.yaml").write_text(PLAN)
    old, new = HostRecorder(), HostRecorder()
    async with serve_app(old) as old_url, serve_app(new) as new_url:
        text = f"""\
            listen: 127.0.0.1:0
            admin: {{listen: 127.0.0.1:0, token: t}}
            state_dir: state
            services:
              monolith: {{endpoints: [{old_url}]}}
              catalog: {{endpoints: [{new_url}]}}
            routes:
              - {{name: catalog, match: {{path: {{prefix: /}}}}, backend: monolith}}
            migrations: migrations/
            shadow: {{host_suffix: {host_suffix}, learn_noise: false, concurrency: 2}}
            """
        async with run_facade(tmp_path, text, features=True) as rt:
            assert rt.shadow is not None and rt.shadow.concurrency == 2 and rt.shadow.options.learn_noise is False
            async with httpx.AsyncClient(base_url=rt.admin_url, headers={"authorization": "Bearer t"}) as admin:
                assert (await admin.post("/migrations/shop/start", json={})).status_code == 200
            async with httpx.AsyncClient(base_url=rt.url, headers={"host": "shop.local"}) as client:
                assert (await client.get("/x")).status_code == 200
            for _ in range(100):  # bounded: the copy is sent after the primary answered
                if new.hosts:
                    break
                await asyncio.sleep(0.02)
            assert new.hosts == [expected]
            assert old.hosts == ["shop.local"]  # no noise copy: learn_noise is off
