"""The sample shop, in-process on loopback: every endpoint of the monolith and the carved catalog
service, their JSON parity, and the catalog's deliberate price difference."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from facade.sample_monolith import catalog, monolith
from tests.servers import serve_app


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = monolith.create_app(db_path=str(tmp_path / "shop.db"))
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as client:
        yield client


@pytest.fixture
async def carved(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = catalog.create_app(db_path=str(tmp_path / "catalog.db"))
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as client:
        yield client


def without_generated_at(body: dict[str, Any]) -> dict[str, Any]:
    assert "generated_at" in body
    return {k: v for k, v in body.items() if k != "generated_at"}


async def test_healthz_and_served_by(shop: httpx.AsyncClient, carved: httpx.AsyncClient) -> None:
    r = await shop.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "service": "monolith"}
    assert r.headers["x-served-by"] == "monolith"
    r = await carved.get("/healthz")
    assert r.json()["service"] == "catalog" and r.headers["x-served-by"] == "catalog"


async def test_errors_are_json_and_carry_served_by(shop: httpx.AsyncClient, carved: httpx.AsyncClient) -> None:
    for client, name in ((shop, "monolith"), (carved, "catalog")):
        for path in ("/nope", "/catalog/products/999", "/catalog/products/abc"):
            r = await client.get(path)
            assert r.status_code == 404, path
            assert r.headers["x-served-by"] == name
            assert r.headers["content-type"] == "application/json"
            assert r.json()["status"] == 404
    assert (await shop.get("/catalog/products/999")).json()["error"] == "product 999 not found"
    r = await shop.post("/catalog/products")
    assert r.status_code == 405 and r.headers["x-served-by"] == "monolith"
    # The carved service does not serve the rest of the shop.
    assert (await carved.get("/orders")).status_code == 404


async def test_product_list_shape_and_paging(shop: httpx.AsyncClient) -> None:
    body = (await shop.get("/catalog/products")).json()
    assert body["total"] == 12 and body["limit"] == 20 and body["offset"] == 0
    assert [p["id"] for p in body["products"]] == list(range(1, 13))
    first = body["products"][0]
    assert first == {
        "id": 1,
        "sku": "KIT-MUG-001",
        "name": "Enamel Camp Mug",
        "description": "A 350 ml enamel mug that survives campfires and dishwashers.",
        "category": "kitchen",
        "price": "19.99",
        "currency": "USD",
        "stock": 42,
        "in_stock": True,
        "url": "/catalog/products/1",
    }
    assert body["generated_at"].endswith("Z")
    page = (await shop.get("/catalog/products", params={"limit": 5, "offset": 10})).json()
    assert [p["id"] for p in page["products"]] == [11, 12] and page["total"] == 12


async def test_product_search_and_category_filter(shop: httpx.AsyncClient) -> None:
    body = (await shop.get("/catalog/products", params={"q": "MONOLITH"})).json()
    assert [p["id"] for p in body["products"]] == [5]  # matched in the description, case-insensitively
    body = (await shop.get("/catalog/products", params={"category": "books"})).json()
    assert {p["category"] for p in body["products"]} == {"books"} and body["total"] == 3
    body = (await shop.get("/catalog/products", params={"q": "e", "category": "outdoor", "limit": 2})).json()
    assert body["total"] == 3 and len(body["products"]) == 2
    body = (await shop.get("/catalog/products", params={"q": "100%"})).json()
    assert body["total"] == 0  # % is a literal, not a LIKE wildcard


@pytest.mark.parametrize("params", [{"limit": "x"}, {"limit": 0}, {"limit": 101}, {"offset": -1}])
async def test_bad_paging_is_400(shop: httpx.AsyncClient, params: dict[str, Any]) -> None:
    r = await shop.get("/catalog/products", params=params)
    assert r.status_code == 400
    assert next(iter(params)) in r.json()["error"]


async def test_product_detail_and_categories(shop: httpx.AsyncClient) -> None:
    r = await shop.get("/catalog/products/2")
    assert r.status_code == 200
    assert r.json()["name"] == "Chef's Knife" and r.json()["price"] == "89.00"
    body = (await shop.get("/catalog/categories")).json()
    assert [(c["slug"], c["product_count"]) for c in body["categories"]] == [
        ("kitchen", 4),
        ("books", 3),
        ("outdoor", 3),
        ("office", 2),
    ]
    assert "generated_at" in body


async def test_users(shop: httpx.AsyncClient) -> None:
    r = await shop.get("/users/1")
    assert r.json() == {
        "id": 1,
        "name": "Ada Lovelace",
        "email": "ada@shop.example",
        "created_at": "2024-03-01T09:30:00Z",
    }
    assert (await shop.get("/users/42")).status_code == 404


async def test_cart_add_merge_list_delete(shop: httpx.AsyncClient) -> None:
    empty = (await shop.get("/cart/2/items")).json()
    assert empty["items"] == [] and empty["total"] == {"amount": "0.00", "currency": "USD"}
    r = await shop.post("/cart/2/items", json={"product_id": 1, "quantity": 2})
    assert r.status_code == 201
    await shop.post("/cart/2/items", json={"product_id": 1, "quantity": 1})
    await shop.post("/cart/2/items", json={"product_id": 11})  # quantity defaults to 1
    cart = (await shop.get("/cart/2/items")).json()
    assert [(i["product_id"], i["quantity"], i["line_total"]) for i in cart["items"]] == [
        (1, 3, "59.97"),
        (11, 1, "12.00"),
    ]
    assert cart["total"] == {"amount": "71.97", "currency": "USD"} and cart["item_count"] == 4
    assert "generated_at" in cart
    r = await shop.delete("/cart/2/items/1")
    assert r.status_code == 204 and r.headers["x-served-by"] == "monolith"
    assert [i["product_id"] for i in (await shop.get("/cart/2/items")).json()["items"]] == [11]
    assert (await shop.delete("/cart/2/items/1")).status_code == 404


async def test_cart_rejects_bad_input(shop: httpx.AsyncClient) -> None:
    assert (await shop.get("/cart/99/items")).status_code == 404
    assert (await shop.post("/cart/1/items", json={"product_id": 999, "quantity": 1})).status_code == 422
    assert (await shop.post("/cart/1/items", json={"product_id": 1, "quantity": 0})).status_code == 400
    assert (await shop.post("/cart/1/items", json={"product_id": "1"})).status_code == 400
    assert (await shop.post("/cart/1/items", content=b"{not json")).status_code == 400
    assert (await shop.post("/cart/1/items", json=[1])).status_code == 400


async def test_order_total_is_computed_from_catalog_prices(shop: httpx.AsyncClient) -> None:
    r = await shop.post(
        "/orders",
        json={
            "user_id": 1,
            "items": [
                {"product_id": 1, "quantity": 3},
                {"product_id": 7, "quantity": 1},
                {"product_id": 1, "quantity": 1},
            ],
            "total": "0.01",
        },
    )
    assert r.status_code == 201
    order = r.json()
    # 4 x 19.99 + 14.99, in exact decimal arithmetic (a float sum would give 94.94999...).
    assert order["total"] == {"amount": "94.95", "currency": "USD"}
    assert [(i["product_id"], i["quantity"], i["unit_price"], i["line_total"]) for i in order["items"]] == [
        (1, 4, "19.99", "79.96"),
        (7, 1, "14.99", "14.99"),
    ]
    assert order["status"] == "placed" and r.headers["location"] == f"/orders/{order['id']}"
    assert (await shop.get(f"/orders/{order['id']}")).json() == order
    listed = (await shop.get("/orders")).json()
    assert [o["id"] for o in listed["orders"]] == [order["id"]] and "generated_at" in listed
    assert (await shop.get("/orders", params={"user_id": 2})).json()["orders"] == []


async def test_order_rejections(shop: httpx.AsyncClient) -> None:
    assert (await shop.get("/orders/12345")).status_code == 404
    cases = [
        ({"user_id": 77, "items": [{"product_id": 1, "quantity": 1}]}, 404),
        ({"user_id": 1, "items": []}, 400),
        ({"user_id": 1}, 400),
        ({"user_id": "1", "items": [{"product_id": 1, "quantity": 1}]}, 400),
        ({"user_id": 1, "items": [{"product_id": 999, "quantity": 1}]}, 422),
        ({"user_id": 1, "items": [{"product_id": 4, "quantity": 1}]}, 409),  # out of stock
    ]
    for body, status in cases:
        r = await shop.post("/orders", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]
    assert (await shop.get("/orders")).json()["orders"] == []  # nothing half-recorded


async def test_list_endpoints_match_the_monolith_modulo_generated_at(
    shop: httpx.AsyncClient, carved: httpx.AsyncClient
) -> None:
    cases: list[tuple[str, dict[str, str | int]]] = [
        ("/catalog/products", {}),
        ("/catalog/products", {"q": "book", "limit": 3}),
        ("/catalog/products", {"category": "kitchen", "offset": 1}),
        ("/catalog/categories", {}),
    ]
    for path, params in cases:
        old, new = await shop.get(path, params=params), await carved.get(path, params=params)
        assert old.status_code == new.status_code == 200
        assert without_generated_at(old.json()) == without_generated_at(new.json()), path


async def test_catalog_detail_price_is_a_number_deliberately(
    shop: httpx.AsyncClient, carved: httpx.AsyncClient
) -> None:
    old, new = (await shop.get("/catalog/products/1")).json(), (await carved.get("/catalog/products/1")).json()
    assert old["price"] == "19.99" and new["price"] == 19.99
    assert {k: v for k, v in old.items() if k != "price"} == {k: v for k, v in new.items() if k != "price"}


async def test_fixed_catalog_matches_the_monolith_exactly(shop: httpx.AsyncClient, tmp_path: Path) -> None:
    app = catalog.create_app(db_path=str(tmp_path / "fixed.db"), fix_price=True)
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as fixed:
        for pid in range(1, 13):
            old, new = await shop.get(f"/catalog/products/{pid}"), await fixed.get(f"/catalog/products/{pid}")
            assert old.json() == new.json()


async def test_database_persists_and_is_not_reseeded(tmp_path: Path) -> None:
    db = str(tmp_path / "shop.db")
    async with serve_app(monolith.create_app(db_path=db)) as url, httpx.AsyncClient(base_url=url) as c:
        assert (await c.post("/orders", json={"user_id": 3, "items": [{"product_id": 9}]})).status_code == 201
    async with serve_app(monolith.create_app(db_path=db)) as url, httpx.AsyncClient(base_url=url) as c:
        orders = (await c.get("/orders")).json()["orders"]
        assert [o["total"]["amount"] for o in orders] == ["32.99"]
        assert (await c.get("/catalog/products")).json()["total"] == 12


def test_unusable_database_path_fails_at_startup(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unable to open database"):
        monolith.create_app(db_path=str(tmp_path / "missing-dir" / "shop.db"))
