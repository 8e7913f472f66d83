"""The carved orders service, in-process on loopback against a real catalog service: it prices
orders from the catalog over HTTP, answers the monolith's JSON, and fails clearly without it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from facade.sample_monolith import catalog, monolith, orders
from tests.servers import bind_loopback, serve_app

ORDER = {"user_id": 1, "items": [{"product_id": 1, "quantity": 4}, {"product_id": 7, "quantity": 1}]}


@pytest.fixture(params=[False, True], ids=["buggy-catalog", "fixed-catalog"])
async def shop(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    catalog_app = catalog.create_app(db_path=str(tmp_path / "catalog.db"), fix_price=request.param)
    async with serve_app(catalog_app) as catalog_url:
        app = orders.create_app(catalog_url=catalog_url, db_path=str(tmp_path / "orders.db"))
        async with serve_app(app, lifespan="on") as url, httpx.AsyncClient(base_url=url) as client:
            yield client


def comparable(order: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in order.items() if k not in ("created_at",)}


async def test_order_is_priced_by_the_catalog_and_shaped_like_the_monolith(
    shop: httpx.AsyncClient, tmp_path: Path
) -> None:
    r = await shop.post("/orders", json=ORDER)
    assert r.status_code == 201, r.text
    assert r.headers["x-served-by"] == "orders" and r.headers["location"] == "/orders/1"
    placed = r.json()
    # Exact decimal prices whether the catalog sends "19.99" or its buggy 19.99.
    assert placed["total"] == {"amount": "94.95", "currency": "USD"}
    assert [i["unit_price"] for i in placed["items"]] == ["19.99", "14.99"]
    mono_app = monolith.create_app(db_path=str(tmp_path / "shop.db"))
    async with serve_app(mono_app) as mono_url, httpx.AsyncClient(base_url=mono_url) as mono:
        expected = (await mono.post("/orders", json=ORDER)).json()
    assert comparable(placed) == comparable(expected)
    assert (await shop.get("/orders/1")).json() == placed
    listed = (await shop.get("/orders", params={"user_id": 1})).json()
    assert listed["orders"] == [placed] and "generated_at" in listed
    assert (await shop.get("/orders", params={"user_id": 2})).json()["orders"] == []


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"user_id": 99, "items": [{"product_id": 1}]}, 404, "user 99 not found"),
        ({"user_id": 1, "items": [{"product_id": 999}]}, 422, "product 999 not found"),
        ({"user_id": 1, "items": [{"product_id": 8, "quantity": 6}]}, 409, "only 5 of product 8"),
        ({"user_id": 1, "items": []}, 400, "items must be a non-empty list"),
        ({"user_id": "1", "items": [{"product_id": 1}]}, 400, "user_id must be a positive integer"),
    ],
)
async def test_order_rejections_match_the_monolith(
    shop: httpx.AsyncClient, body: dict[str, Any], status: int, message: str
) -> None:
    r = await shop.post("/orders", json=body)
    assert r.status_code == status and message in r.json()["error"]
    assert (await shop.get("/orders")).json()["orders"] == []  # nothing recorded


async def test_unknown_order_is_404(shop: httpx.AsyncClient) -> None:
    r = await shop.get("/orders/5")
    assert r.status_code == 404 and r.json()["error"] == "order 5 not found"


async def test_catalog_down_is_503_with_a_reason(tmp_path: Path) -> None:
    dead = bind_loopback()  # bound, never listening: connections are refused
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    app = orders.create_app(catalog_url=dead_url, db_path=str(tmp_path / "orders.db"))
    async with serve_app(app, lifespan="on") as url, httpx.AsyncClient(base_url=url) as client:
        r = await client.post("/orders", json=ORDER)
    assert r.status_code == 503 and r.json()["error"].startswith("catalog unavailable: ConnectError")


async def test_catalog_host_header_is_sent_for_the_sidecar(tmp_path: Path) -> None:
    seen: list[str] = []
    catalog_app = catalog.create_app(db_path=str(tmp_path / "catalog.db"))

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(dict(scope["headers"])[b"host"].decode())
        await catalog_app(scope, receive, send)

    async with serve_app(recording) as catalog_url:
        app = orders.create_app(catalog_url=catalog_url, catalog_host="catalog", db_path=str(tmp_path / "o.db"))
        async with serve_app(app, lifespan="on") as url, httpx.AsyncClient(base_url=url) as client:
            assert (await client.post("/orders", json=ORDER)).status_code == 201
    assert seen == ["catalog", "catalog"]


def test_app_from_the_environment_needs_the_catalog_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDERS_CATALOG_URL", raising=False)
    with pytest.raises(RuntimeError, match="ORDERS_CATALOG_URL is not set"):
        orders.__getattr__("app")
