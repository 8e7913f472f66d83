"""The ``/catalog/*`` endpoints, served by the monolith and by the carved catalog service.

Both apps mount the same routes over their own database, so the JSON shapes match by
construction; the one knob, ``detail_price``, is the catalog service's deliberate bug.
"""

from __future__ import annotations

import sqlite3

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .shapes import PriceStyle, category_json, now_iso, product_json
from .store import get_product, list_categories, list_products
from .web import BadRequest, path_id, query_int

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "catalog_routes"]

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def catalog_routes(conn: sqlite3.Connection, *, detail_price: PriceStyle = "string") -> list[Route]:
    """Routes for ``GET /catalog/products``, ``/catalog/products/{id}`` and ``/catalog/categories``."""

    async def products(request: Request) -> Response:
        limit = query_int(request, "limit", default=DEFAULT_PAGE_SIZE, lo=1, hi=MAX_PAGE_SIZE)
        offset = query_int(request, "offset", default=0, lo=0, hi=1_000_000)
        q = request.query_params.get("q") or None
        category = request.query_params.get("category") or None
        page, total = list_products(conn, q=q, category=category, limit=limit, offset=offset)
        return JSONResponse(
            {
                "products": [product_json(p) for p in page],
                "total": total,
                "limit": limit,
                "offset": offset,
                "generated_at": now_iso(),
            }
        )

    async def product(request: Request) -> Response:
        product_id = path_id(request, "product_id", "product")
        found = get_product(conn, product_id)
        if found is None:
            raise BadRequest(f"product {product_id} not found", status=404)
        return JSONResponse(product_json(found, price_style=detail_price))

    async def categories(request: Request) -> Response:
        return JSONResponse(
            {"categories": [category_json(c) for c in list_categories(conn)], "generated_at": now_iso()}
        )

    return [
        Route("/catalog/products", products, methods=["GET"]),
        Route("/catalog/products/{product_id}", product, methods=["GET"]),
        Route("/catalog/categories", categories, methods=["GET"]),
    ]
