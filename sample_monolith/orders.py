"""The orders service, carved out of the monolith: ``/orders`` over its own database, pricing every
order by asking the catalog service for the products.

    ORDERS_CATALOG_URL=http://127.0.0.1:8002 uvicorn facade.sample_monolith.orders:app --port 8003

In the full demo ``ORDERS_CATALOG_URL`` is the orders sidecar's outbound listener and
``ORDERS_CATALOG_HOST=catalog`` names the service the sidecar should reach (over mTLS, where the
catalog's policy decides whether ``orders`` may call it); in tests it is the catalog's own URL.
``ORDERS_DB`` (or ``SHOP_DB``) is the database file (default: a temp file).

The JSON is the monolith's, field for field, so shadowing ``GET /orders`` compares like with like.
Orders placed before the carve-out stay in the monolith's database (no data migration in the demo):
``GET /orders/{id}`` of such an order is 404 here.
Every response carries ``x-served-by: orders``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from .commerce import OrderLine, OrderRejected, get_order, list_orders, parse_lines, record_order, require_user
from .shapes import now_iso
from .store import Product, open_orders_database
from .web import BadRequest, ServedBy, error_response, exception_handlers, path_id, query_int, read_json_object

__all__ = ["CATALOG_TIMEOUT", "SERVICE_NAME", "CatalogClient", "app", "create_app"]

SERVICE_NAME = "orders"
CATALOG_TIMEOUT = 5.0  # seconds per catalog request; an order fails with 503 rather than hang


class CatalogClient:
    """Reads products from the catalog service (``GET /catalog/products/{id}``)."""

    def __init__(self, base_url: str, *, host: str | None = None, timeout: float = CATALOG_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.host = host
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"CatalogClient(base_url={self.base_url!r}, host={self.host!r})"

    async def product(self, product_id: int) -> Product:
        """The product, or OrderRejected: 422 unknown product, 503 catalog unreachable or broken."""
        if self._client is None:
            # Created on first use, inside the server's event loop; trust_env=False: never a proxy.
            headers = {"host": self.host} if self.host else {}
            self._client = httpx.AsyncClient(
                base_url=self.base_url, headers=headers, timeout=self.timeout, trust_env=False
            )
        try:
            response = await self._client.get(f"/catalog/products/{product_id}")
        except httpx.HTTPError as exc:
            raise OrderRejected(f"catalog unavailable: {type(exc).__name__}: {exc}", 503) from None
        if response.status_code == 404:
            raise OrderRejected(f"product {product_id} not found", 422)
        if response.status_code != 200:
            raise OrderRejected(f"catalog answered {response.status_code} for product {product_id}", 503)
        return product_from_catalog_json(response.json())

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def product_from_catalog_json(body: Any) -> Product:
    """A catalog product document -> Product. The price may be a decimal string (the monolith's
    contract) or a number (the carved catalog's deliberate bug); both are read exactly."""
    try:
        cents = Decimal(str(body["price"])) * 100
        if cents != cents.to_integral_value():
            raise ValueError(f"price {body['price']!r} has more than 2 decimals")
        return Product(
            id=int(body["id"]),
            sku=str(body["sku"]),
            name=str(body["name"]),
            description=str(body["description"]),
            category=str(body["category"]),
            price_cents=int(cents),
            currency=str(body["currency"]),
            stock=int(body["stock"]),
        )
    except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
        raise OrderRejected(f"catalog sent an unusable product: {exc}", 503) from None


def create_app(*, catalog_url: str, catalog_host: str | None = None, db_path: str | None = None) -> ASGIApp:
    """The orders service over its own database at ``db_path`` (None = a temp file), pricing orders
    from the catalog at ``catalog_url`` (``catalog_host``: the Host header to send, for a sidecar)."""
    conn = open_orders_database(db_path)
    catalog = CatalogClient(catalog_url, host=catalog_host)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": SERVICE_NAME})

    async def orders(request: Request) -> Response:
        if request.method == "POST":
            body = await read_json_object(request)
            user_id = body.get("user_id")
            if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id < 1:
                raise BadRequest(f"user_id must be a positive integer, got {user_id!r}")
            lines: list[OrderLine] = parse_lines(body.get("items"))
            require_user(conn, user_id)  # before asking the catalog anything
            priced = [(line, await catalog.product(line.product_id)) for line in lines]
            order = record_order(conn, user_id, priced)
            return JSONResponse(order, status_code=201, headers={"location": order["url"]})
        user_filter = query_int(request, "user_id", default=0, lo=0, hi=2**62) or None
        return JSONResponse({"orders": list_orders(conn, user_id=user_filter), "generated_at": now_iso()})

    async def order(request: Request) -> Response:
        order_id = path_id(request, "order_id", "order")
        found = get_order(conn, order_id)
        if found is None:
            raise BadRequest(f"order {order_id} not found", status=404)
        return JSONResponse(found)

    async def rejected(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OrderRejected)
        return error_response(exc.status, exc.message)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await catalog.aclose()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/orders", orders, methods=["GET", "POST"]),
        Route("/orders/{order_id}", order, methods=["GET"]),
    ]
    handlers = {**exception_handlers(), OrderRejected: rejected}
    return ServedBy(Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan), name=SERVICE_NAME)


app: ASGIApp  # declared for type checkers; built lazily by __getattr__


def __getattr__(name: str) -> ASGIApp:
    # ``app`` is built on first use (uvicorn's getattr), not at import; see monolith.py.
    if name == "app":
        url = os.environ.get("ORDERS_CATALOG_URL")
        if not url:
            raise RuntimeError("ORDERS_CATALOG_URL is not set: the orders service needs the catalog's URL for prices")
        built = globals()["app"] = create_app(
            catalog_url=url,
            catalog_host=os.environ.get("ORDERS_CATALOG_HOST") or None,
            db_path=os.environ.get("ORDERS_DB") or os.environ.get("SHOP_DB") or None,
        )
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
