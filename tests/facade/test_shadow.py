"""Shadow traffic end to end: a real facade mirroring to real backends on loopback, and the pure parts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from facade.config import load_config
from facade.diff import ResponseSample
from facade.runtime import FacadeRuntime
from facade.sample_monolith import catalog, monolith
from facade.shadow import (
    SHADOW_HEADER,
    ShadowFeature,
    ShadowSender,
    decoded,
    mirrorable,
    mirrored_headers,
    parse_window,
    resolve_step,
    shadow_host,
)
from facade.split import Split
from facade.upstream import Upstreams
from tests.backends import EchoApp, raw_server
from tests.harness import write_config
from tests.servers import bind_loopback, refusing_url, serve_app

SHADOW_SPLIT = Split(primary="monolith", candidate="catalog", weight_bps=0, shadow_percent=100.0, step_label="0:shadow")


@dataclass(frozen=True, slots=True)
class UnsafeSplit(Split):
    """A split whose plan allows mirroring unsafe methods (the field the proxy reads with getattr)."""

    shadow_unsafe: bool = True


def config_text(monolith_url: str, catalog_url: str) -> str:
    return f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0, token: t0ken}}
services:
  monolith: {{endpoints: [{monolith_url}]}}
  catalog: {{endpoints: [{catalog_url}]}}
routes:
  - name: catalog
    match: {{path: {{prefix: /catalog}}}}
    backend: monolith
  - name: default
    match: {{path: {{prefix: /}}}}
    backend: monolith
"""


@contextlib.asynccontextmanager
async def shadow_facade(
    tmp_path: Path, monolith_url: str, catalog_url: str, *, split: Split | None = SHADOW_SPLIT, **options: Any
) -> AsyncIterator[tuple[FacadeRuntime, ShadowSender]]:
    """tests/harness.py run_facade plus the shadow feature, and the catalog route in a shadow step."""
    path = write_config(tmp_path, config_text(monolith_url, catalog_url))
    runtime = FacadeRuntime(load_config(str(path)), config_path=str(path), watch_interval=None)
    feature = ShadowFeature.attach(runtime, **options)
    await runtime.start(listen_sock=bind_loopback(), admin_sock=bind_loopback())
    try:
        if split is not None:
            runtime.swap(splits={"catalog": split})
        yield runtime, feature.sender
    finally:
        await runtime.stop()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


Handler = Callable[[dict[str, Any]], Awaitable[tuple[int, list[tuple[str, str]], Any]]]


class JsonApp:
    """ASGI app answering JSON from ``handler(scope)``; records requests; answers only once ``gate`` is set."""

    def __init__(self, handler: Handler, *, gate: asyncio.Event | None = None) -> None:
        self.handler = handler
        self.gate = gate
        self.received: list[dict[str, Any]] = []
        self.answered = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.received.append(scope)
        if self.gate is not None:
            await self.gate.wait()
        status, headers, body = await self.handler(scope)
        payload = json.dumps(body).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in headers]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})
        self.answered += 1


def fixed(body: Any, headers: list[tuple[str, str]] | None = None) -> Handler:
    async def handler(scope: dict[str, Any]) -> tuple[int, list[tuple[str, str]], Any]:
        return 200, headers or [], body

    return handler


def noisy(value: int) -> Handler:
    async def handler(scope: dict[str, Any]) -> tuple[int, list[tuple[str, str]], Any]:
        return 200, [], {"nonce": uuid.uuid4().hex, "value": value}

    return handler


def closed_port_url() -> str:
    return refusing_url()


# -- the mirrored request ----------------------------------------------------------------------------


async def test_copy_carries_marker_and_shadow_host_and_the_client_gets_the_primary(tmp_path: Path) -> None:
    mono, cat = EchoApp("monolith"), EchoApp("catalog")
    async with serve_app(mono) as m, serve_app(cat) as c, shadow_facade(tmp_path, m, c) as (rt, sender):
        async with httpx.AsyncClient(base_url=rt.url) as client:
            r = await client.get("/catalog/products?q=mug", headers={"host": "shop.local:8080", SHADOW_HEADER: "0"})
        assert await sender.drain(5)
    assert r.status_code == 200 and r.json()["name"] == "monolith" and r.headers["x-served-by"] == "monolith"
    (copy,) = cat.requests
    headers = copy["headers"]
    assert ("host", "shop.local-shadow:8080") in headers
    assert [v for k, v in headers if k == SHADOW_HEADER] == ["1"]  # the client's own marker does not pass
    assert copy["raw_path"] == "/catalog/products" and copy["query"] == "q=mug"
    # The monolith got the primary request and the noise-learning copy (marked, Host unchanged).
    primary, second = mono.requests
    assert ("host", "shop.local:8080") in primary["headers"]
    assert ("host", "shop.local:8080") in second["headers"] and (SHADOW_HEADER, "1") in second["headers"]
    assert sender.results[("catalog", "compared")] == 1


async def test_primary_answers_before_the_candidate_even_answers(tmp_path: Path) -> None:
    gate = asyncio.Event()
    cat = JsonApp(fixed({"value": 1}), gate=gate)  # answers only when the test says so
    mono = JsonApp(fixed({"value": 1}))
    async with (
        serve_app(mono) as m,
        serve_app(cat) as c,
        shadow_facade(tmp_path, m, c, learn_noise=False) as (rt, sender),
        httpx.AsyncClient(base_url=rt.url, timeout=5) as client,
    ):
        for _ in range(3):
            r = await client.get("/catalog/products/1")
            assert r.status_code == 200 and r.json() == {"value": 1}
        await until(lambda: len(cat.received) == 3)
        # Every primary response arrived while the candidate held all three copies unanswered.
        assert cat.answered == 0 and sender.stats()["in_flight"] == 3
        gate.set()
        assert await sender.drain(5)
    assert cat.answered == 3
    assert rt.telemetry.diff_counts("catalog").compared == 3
    assert rt.telemetry.diff_counts("catalog").differing == 0


async def test_unsafe_methods_are_not_mirrored_unless_the_split_allows_them(tmp_path: Path) -> None:
    mono, cat = EchoApp("monolith"), EchoApp("catalog")
    async with (
        serve_app(mono) as m,
        serve_app(cat) as c,
        shadow_facade(tmp_path, m, c) as (rt, sender),
        httpx.AsyncClient(base_url=rt.url) as client,
    ):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            r = await client.request(method, "/catalog/products", content=b"{}")
            assert r.status_code == 200 and r.json()["method"] == method
        assert await sender.drain(5)
        assert cat.requests == []
        assert sender.skipped_unsafe["catalog"] == 4

        rt.swap(splits={"catalog": UnsafeSplit(primary="monolith", candidate="catalog", shadow_percent=100.0)})
        r = await client.post("/catalog/products", content=b'{"name": "mug"}')
        assert r.status_code == 200
        assert await sender.drain(5)
    (copy,) = cat.requests
    assert copy["method"] == "POST" and copy["body_size"] == len(b'{"name": "mug"}')
    assert len(mono.requests) == 5  # no noise-learning copy for an unsafe method: it would repeat the write


# -- diffing ----------------------------------------------------------------------------------------


async def test_price_difference_is_caught_and_generated_at_is_ignored(tmp_path: Path) -> None:
    old_app = monolith.create_app(db_path=str(tmp_path / "shop.db"))
    new_app = catalog.create_app(db_path=str(tmp_path / "catalog.db"))
    async with (
        serve_app(old_app) as m,
        serve_app(new_app) as c,
        shadow_facade(tmp_path, m, c, ignore=["$.generated_at"], learn_noise=False) as (rt, sender),
        httpx.AsyncClient(base_url=rt.url) as client,
    ):
        for path in ("/catalog/products", "/catalog/categories", "/catalog/products/1"):
            assert (await client.get(path)).status_code == 200
        assert await sender.drain(5)
        async with httpx.AsyncClient(base_url=rt.admin_url) as admin:
            diffs = (await admin.get("/diffs", params={"route": "catalog"})).json()
            report = (await admin.get("/compare", params={"route": "catalog"})).json()
            metrics = (await admin.get("/metrics")).text
    counts = rt.telemetry.diff_counts("catalog")
    assert (counts.compared, counts.differing) == (3, 1)
    assert diffs["kept"] == 1 and diffs["seen"] == 1
    (sample,) = diffs["samples"]
    assert sample["request"] == "GET /catalog/products/1" and sample["step"] == "0:shadow"
    assert [d["path"] for d in sample["differences"]] == ["$.price"]
    assert sample["differences"][0]["primary"] == "19.99" and sample["differences"][0]["candidate"] == 19.99
    assert report["old_backend"] == "monolith" and report["new_backend"] == "catalog"
    assert report["diffs"]["compared"] == 3 and report["diffs"]["differing"] == 1
    assert report["outcome"] == "worse" and "different responses" in report["verdict"]
    assert 'facade_shadow_diffs_total{route="catalog",step="0:shadow"} 1' in metrics
    # /metrics carries the sender's own counters too, without clashing with telemetry's families.
    families = [f.name for f in text_string_to_metric_families(metrics)]
    assert len(families) == len(set(families)) and "facade_shadow_requests" in families


@pytest.mark.parametrize(("learn", "new_value", "differing", "paths"), [
    (True, 1, 0, []),  # the nonce differs between two monolith answers: noise
    (False, 1, 1, ["$.nonce"]),  # without learning, the nonce is a difference
    (True, 2, 1, ["$.value"]),  # learned noise does not hide a real difference
])  # fmt: skip
async def test_learned_noise_is_suppressed_and_reported(
    tmp_path: Path, learn: bool, new_value: int, differing: int, paths: list[str]
) -> None:
    mono, cat = JsonApp(noisy(1)), JsonApp(noisy(new_value))
    async with (
        serve_app(mono) as m,
        serve_app(cat) as c,
        shadow_facade(tmp_path, m, c, learn_noise=learn) as (rt, sender),
        httpx.AsyncClient(base_url=rt.url) as client,
    ):
        assert (await client.get("/catalog/item")).status_code == 200
        assert await sender.drain(5)
    counts = rt.telemetry.diff_counts("catalog")
    assert (counts.compared, counts.differing) == (1, differing)
    assert counts.noise_fields == (("$.nonce",) if learn else ())
    samples = sender.ring.samples("catalog")
    assert [d.path for s in samples for d in s.result.differences] == paths
    if learn and differing:
        assert samples[0].result.noise_suppressed == ("$.nonce",)


async def test_stored_samples_are_redacted(tmp_path: Path) -> None:
    mono = JsonApp(fixed({"token": "old-secret-token", "user": "a"}, [("set-cookie", "session=old-secret")]))
    cat = JsonApp(fixed({"token": "new-secret-token", "user": "b"}, [("set-cookie", "session=new-secret")]))
    async with (
        serve_app(mono) as m,
        serve_app(cat) as c,
        shadow_facade(tmp_path, m, c, compare_headers=["content-type", "set-cookie"], redact_fields=["token"],
                      learn_noise=False) as (rt, sender),
        httpx.AsyncClient(base_url=rt.url) as client,
    ):
        r = await client.get("/catalog/me?token=sekrit-query&page=2",
                             headers={"authorization": "Bearer sekrit-auth", "cookie": "sid=sekrit-cookie"})
        assert r.json()["token"] == "old-secret-token"  # the client's answer is not redacted, only stored samples
        assert await sender.drain(5)
        async with httpx.AsyncClient(base_url=rt.admin_url) as admin:
            stored = (await admin.get("/diffs", params={"route": "catalog"})).text
            stats = (await admin.get("/shadow")).text
    # The copy carried the client's credentials (the candidate must authorize like the primary) ...
    copy_headers = dict(cat.received[0]["headers"])
    assert copy_headers[b"authorization"] == b"Bearer sekrit-auth"
    # ... but nothing secret is kept or shown.
    (sample,) = json.loads(stored)["samples"]
    assert {d["path"]: (d["primary"], d["candidate"]) for d in sample["differences"]} == {
        "headers.set-cookie": ("[redacted]", "[redacted]"),
        "$.token": ("[redacted]", "[redacted]"),
        "$.user": ("a", "b"),
    }
    assert sample["request"] == "GET /catalog/me?token=[redacted]&page=2"
    for secret in ("secret", "sekrit"):
        assert secret not in stored and secret not in stats


# -- bounds -----------------------------------------------------------------------------------------


async def test_slow_candidate_fills_the_slots_then_copies_are_dropped_and_counted(tmp_path: Path) -> None:
    gate = asyncio.Event()
    mono, cat = JsonApp(fixed({"v": 1})), JsonApp(fixed({"v": 1}), gate=gate)
    async with (
        serve_app(mono) as m,
        serve_app(cat) as c,
        shadow_facade(tmp_path, m, c, concurrency=2, queue_size=3, timeout=30, learn_noise=False) as (rt, sender),
        httpx.AsyncClient(base_url=rt.url, timeout=5) as client,
    ):
        for _ in range(20):
            assert (await client.get("/catalog/x")).status_code == 200
        await until(lambda: len(cat.received) == 2)
        stats = sender.stats()
        assert (stats["in_flight"], stats["queue_depth"], stats["pending"]) == (2, 3, 0)
        assert sender.dropped[("catalog", "capacity")] == 15
        gate.set()
        assert await sender.drain(5)
        assert sender.results[("catalog", "compared")] == 5
        assert sender.stats()["queued_bytes"] == 0
        metrics = sender.prometheus_text()
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    dropped = {(s.labels["route"], s.labels["reason"]): s.value for s in families["facade_shadow_dropped"].samples}
    assert dropped == {("catalog", "capacity"): 15.0}


async def test_candidate_down_counts_errors_and_holds_nothing(tmp_path: Path) -> None:
    mono = EchoApp("monolith")
    async with (
        serve_app(mono) as m,
        shadow_facade(tmp_path, m, closed_port_url(), learn_noise=False) as (rt, sender),
        httpx.AsyncClient(base_url=rt.url) as client,
    ):
        for _ in range(10):
            assert (await client.get("/catalog/x")).status_code == 200
        assert await sender.drain(5)
        stats = sender.stats()
    failed = stats["routes"]["catalog"]["results"]
    assert failed.get("error", 0) + failed.get("unavailable", 0) == 10 and "compared" not in failed
    assert (stats["queue_depth"], stats["in_flight"], stats["pending"], stats["queued_bytes"]) == (0, 0, 0, 0)
    assert rt.telemetry.diff_counts("catalog").compared == 0  # a failed copy is not a comparison


async def test_candidate_that_never_answers_times_out(tmp_path: Path) -> None:
    gate = asyncio.Event()
    mono, cat = JsonApp(fixed({"v": 1})), JsonApp(fixed({"v": 1}), gate=gate)
    async with (
        serve_app(mono) as m,
        serve_app(cat) as c,
        shadow_facade(tmp_path, m, c, timeout=0.2, learn_noise=False) as (rt, sender),
        httpx.AsyncClient(base_url=rt.url) as client,
    ):
        assert (await client.get("/catalog/x")).status_code == 200
        assert await sender.drain(5)
        assert sender.results[("catalog", "timeout")] == 1
        gate.set()
        # The workers outlive a timed-out copy: the next copies are compared (concurrency 16: each worker).
        for _ in range(20):
            assert (await client.get("/catalog/x")).status_code == 200
        assert await sender.drain(5)
    assert sender.results[("catalog", "timeout")] == 1
    assert sender.results[("catalog", "compared")] == 20


async def test_byte_budget_drops_copies_that_do_not_fit(tmp_path: Path) -> None:
    mono, cat = JsonApp(fixed({"v": "x" * 100})), JsonApp(fixed({"v": 1}))
    async with (
        serve_app(mono) as m,
        serve_app(cat) as c,
        shadow_facade(tmp_path, m, c, max_queued_bytes=50) as (rt, sender),
        httpx.AsyncClient(base_url=rt.url) as client,
    ):
        assert (await client.get("/catalog/x")).status_code == 200
        assert await sender.drain(5)
    assert sender.dropped[("catalog", "bytes")] == 1 and cat.received == []


async def test_a_ticket_the_proxy_never_returns_frees_its_slot() -> None:
    sender = ShadowSender(upstreams=Upstreams(()), concurrency=1, queue_size=0)
    ticket = sender.begin(route="r", split=SHADOW_SPLIT, method="GET")
    assert ticket is not None and ticket.max_body == 1024 * 1024
    assert sender.begin(route="r", split=SHADOW_SPLIT, method="GET") is None
    assert sender.dropped[("r", "capacity")] == 1
    del ticket
    gc.collect()
    again = sender.begin(route="r", split=SHADOW_SPLIT, method="GET")
    assert again is not None
    sender.cancel(again)
    assert sender.reserved == 0


async def test_feature_sends_over_the_pools_the_runtime_has_at_start(tmp_path: Path) -> None:
    path = write_config(tmp_path, config_text("http://127.0.0.1:1", "http://127.0.0.1:2"))
    runtime = FacadeRuntime(load_config(str(path)), config_path=str(path), watch_interval=None)
    feature = ShadowFeature.attach(runtime)
    assert runtime.shadow is feature.sender and runtime.feature(ShadowFeature) is feature
    assert runtime.holder.current.shadow is feature.sender  # installed through the swap
    replaced = Upstreams(runtime.config.services)
    runtime.install_upstreams(replaced)  # as the mesh feature does (mTLS pools)
    await feature.start()
    try:
        assert feature.sender.upstreams is replaced
        assert runtime.holder.current.shadow is feature.sender and runtime.holder.current.upstreams is replaced
    finally:
        await feature.stop()
        await replaced.close()
    assert feature.sender.begin(route="catalog", split=SHADOW_SPLIT, method="GET") is None  # stopped


# -- one pool per service ---------------------------------------------------------------------------


class CountingBackend:
    """A minimal HTTP/1.1 keep-alive server that counts the connections it has open (and the most at once)."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0
        self.accepted = 0
        self.health_checks = 0
        self.copies = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            for _ in range(10_000):
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                self.health_checks += head.startswith(b"get /healthz ")
                self.copies += b"\r\nx-facade-shadow: 1\r\n" in head
                length = 0
                for line in head.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                await asyncio.sleep(0.002)  # a little service time, so concurrent requests need connections
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n"
                             b'{"ok":true}')
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open -= 1
            writer.close()


async def test_proxy_health_checks_and_copies_share_one_pool_within_max_connections(tmp_path: Path) -> None:
    """Each service's connections (proxied + health checks + shadow copies, noise copies too) stay within
    its ``max_connections``, counted where they land: at the backend, under concurrent load."""
    old, new = CountingBackend(), CountingBackend()
    async with raw_server(old) as old_url, raw_server(new) as new_url:
        hc = "health_check: {path: /healthz, interval: 0.02s, timeout: 1s}"
        path = write_config(tmp_path, f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0, token: t0ken}}
services:
  monolith: {{endpoints: [{old_url}], connection_pool: {{max_connections: 3}}, {hc}}}
  catalog: {{endpoints: [{new_url}], connection_pool: {{max_connections: 2}}, {hc}}}
routes:
  - name: catalog
    match: {{path: {{prefix: /catalog}}}}
    backend: monolith
""")
        runtime = FacadeRuntime(load_config(str(path)), config_path=str(path), watch_interval=None)
        feature = ShadowFeature.attach(runtime, learn_noise=True)  # a second copy to the primary's pool
        await runtime.start(listen_sock=bind_loopback(), admin_sock=bind_loopback())
        try:
            runtime.swap(splits={"catalog": SHADOW_SPLIT})
            statuses: list[int] = []
            async with httpx.AsyncClient(base_url=runtime.url, timeout=10) as client:

                async def worker(n: int) -> None:
                    for i in range(15):
                        statuses.append((await client.get(f"/catalog/{n}/{i}")).status_code)

                await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(12))), 60)
            await until(lambda: feature.sender.stats()["in_flight"] == 0 and feature.sender.stats()["queue_depth"] == 0)
        finally:
            await runtime.stop()
    assert statuses.count(200) == len(statuses) == 180  # a full pool makes requests wait, never fail here
    assert old.health_checks > 0 and new.health_checks > 0 and new.copies > 0 and old.copies > 0
    assert old.peak <= 3, f"monolith saw {old.peak} connections at once (max_connections 3)"
    assert new.peak <= 2, f"catalog saw {new.peak} connections at once (max_connections 2)"


# -- admin ------------------------------------------------------------------------------------------


async def test_admin_compare_diffs_and_shadow_endpoints(tmp_path: Path) -> None:
    mono, cat = EchoApp("monolith"), EchoApp("catalog")
    async with (
        serve_app(mono) as m,
        serve_app(cat) as c,
        shadow_facade(tmp_path, m, c, learn_noise=False) as (rt, sender),
        httpx.AsyncClient(base_url=rt.url) as client,
        httpx.AsyncClient(base_url=rt.admin_url) as admin,
    ):
        for _ in range(3):
            await client.get("/catalog/x")
        assert await sender.drain(5)
        report = (await admin.get("/compare", params={"route": "catalog", "window": "5m"})).json()
        assert report["window_s"] == 300 and report["step"] is None and report["migration_step"] == "0:shadow"
        assert report["old"]["requests"] == 3 and report["new"]["requests"] == 0
        assert report["diffs"]["compared"] == 3 and report["diffs"]["differing"] == 3  # echo names differ
        assert {row["metric"] for row in report["rows"]} >= {"requests", "error_rate", "p99_ms", "diff_rate"}

        bad = {
            (): 400,
            (("route", "nope"),): 404,
            (("route", "catalog"), ("window", "soon")): 400,
            (("route", "catalog"), ("window", "1h")): 400,  # longer than the longest rolling window
            (("route", "catalog"), ("window", "1m"), ("step", "0:shadow")): 400,
            (("route", "default"),): 400,  # no migration in force and no old=/new=
        }
        for params, status in bad.items():
            r = await admin.get("/compare", params=dict(params))
            assert r.status_code == status, (params, r.text)
            assert r.json()["error"]
        by_number = (await admin.get("/compare", params={"route": "catalog", "step": "0"})).json()
        assert by_number["step"] == "0:shadow" and by_number["diffs"]["compared"] == 3
        r = await admin.get("/compare", params={"route": "catalog", "step": "7"})
        assert r.status_code == 400 and r.json()["steps"] == ["0:shadow"]
        r = await admin.get("/compare", params={"route": "default", "old": "monolith", "new": "catalog"})
        assert r.status_code == 200 and r.json()["new"]["requests"] == 0

        diffs = (await admin.get("/diffs", params={"route": "catalog", "limit": "2"})).json()
        assert diffs["kept"] == 3 and len(diffs["samples"]) == 2
        assert (await admin.get("/diffs", params={"route": "catalog", "limit": "0"})).status_code == 400
        assert (await admin.get("/diffs", params={"route": "nope"})).status_code == 404
        assert (await admin.get("/diffs", params={"route": "default"})).json()["samples"] == []

        stats = (await admin.get("/shadow")).json()
        assert stats["running"] is True and stats["concurrency"] == 16 and stats["queue_size"] == 256
        assert stats["totals"]["compared"] == 3 and stats["totals"]["dropped"] == 0
        latency = stats["routes"]["catalog"]["candidate_latency_ms"]
        assert list(latency) == ["0:shadow"] and latency["0:shadow"]["count"] == 3
        assert 0 < latency["0:shadow"]["p50"] <= latency["0:shadow"]["p99"]


# -- pure parts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "shadow"), [
    ("shop.local", "shop.local-shadow"),
    ("shop.local:8080", "shop.local-shadow:8080"),
    ("127.0.0.1:80", "127.0.0.1-shadow:80"),
    ("[::1]:8080", "[::1]-shadow:8080"),
    ("[::1]", "[::1]-shadow"),
])  # fmt: skip
def test_shadow_host_suffix_goes_before_the_port(host: str, shadow: str) -> None:
    assert shadow_host(host) == shadow


def test_mirrored_headers_marker_once_framing_dropped_order_kept() -> None:
    sent = [("host", "a.local"), ("content-length", "3"), ("x-facade-shadow", "0"), ("accept", "*/*"),
            ("transfer-encoding", "chunked"), ("x-request-id", "r1")]  # fmt: skip
    assert mirrored_headers(sent, host_suffix=True) == [
        ("host", "a.local-shadow"), ("accept", "*/*"), ("x-request-id", "r1"), ("x-facade-shadow", "1"),
    ]  # fmt: skip
    assert mirrored_headers(sent, host_suffix=False)[0] == ("host", "a.local")


@pytest.mark.parametrize(("method", "allowed"), [
    ("GET", True), ("HEAD", True), ("OPTIONS", True), ("TRACE", True),
    ("POST", False), ("PUT", False), ("PATCH", False), ("DELETE", False), ("PURGE", False), ("get", False),
])  # fmt: skip
def test_only_safe_methods_are_mirrorable_by_default(method: str, allowed: bool) -> None:
    assert mirrorable(method, SHADOW_SPLIT) is allowed
    assert mirrorable(method, UnsafeSplit(primary="a", candidate="b")) is True


def test_parse_window() -> None:
    assert parse_window("5m") == 300 and parse_window("90") == 90 and parse_window("1m30s") == 90
    for bad in ("", "soon", "0", "-5", "5 parsecs"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_step_numbers_resolve_to_the_one_matching_label() -> None:
    labels = ["extract-catalog step 1: shadow 100%", "extract-catalog step 3: weight 25%", "stable"]
    assert resolve_step("3", labels) == "extract-catalog step 3: weight 25%"
    assert resolve_step("0", ["0:shadow", "10:weight"]) == "0:shadow"
    with pytest.raises(ValueError, match="ambiguous"):
        resolve_step("1", labels + ["other step 1: weight 5%"])
    with pytest.raises(ValueError, match="no step 2"):
        resolve_step("2", labels)


def test_gzip_bodies_are_compared_by_content() -> None:
    doc = json.dumps({"price": "19.99"}).encode()
    zipped = ResponseSample(200, [("content-type", "application/json"), ("content-encoding", "gzip")],
                            gzip.compress(doc))
    plain = decoded(zipped, 1 << 20)
    assert plain.body == doc and plain.header("content-encoding") is None and not plain.truncated
    assert decoded(zipped, 5).truncated and decoded(zipped, 5).body == doc[:5]
    broken = ResponseSample(200, [("content-encoding", "gzip")], b"not gzip")
    assert decoded(broken, 100) is broken


@pytest.mark.parametrize(
    ("candidate", "same"),
    [
        (ResponseSample(200, [("Content-Type", "application/json"), ("date", "Tue")], b'{"a": 1}'), True),
        (ResponseSample(200, [("content-type", "application/json")], b'{"a": 2}'), False),  # body
        (ResponseSample(201, [("content-type", "application/json")], b'{"a": 1}'), False),  # status
        (ResponseSample(200, [("content-type", "text/plain")], b'{"a": 1}'), False),  # compared header
        (ResponseSample(200, [], b'{"a": 1}'), False),  # compared header missing
        (ResponseSample(200, [("content-type", "application/json")], b'{"a":1}'), False),  # same JSON, other bytes
    ],
)
def test_identical_answers_skip_the_diff_only_when_nothing_could_differ(candidate: ResponseSample, same: bool) -> None:
    from facade.diff import IgnoreRules, diff_responses
    from facade.shadow.policy import identical

    primary = ResponseSample(200, [("content-type", "application/json"), ("date", "Mon")], b'{"a": 1}')
    assert identical(primary, candidate, ("content-type",)) is same
    if same:  # the fast path agrees with the full diff under any rules (they only ever suppress)
        for ignore, noise in ((IgnoreRules(), ()), (IgnoreRules.parse(["$.a"]), ("$.a",))):
            assert not diff_responses(primary, candidate, ignore=ignore, noise=noise).differs
    assert identical(primary, candidate, ()) is (primary.status == candidate.status and primary.body == candidate.body)
