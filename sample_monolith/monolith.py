"""The shop monolith: catalog, carts, orders and users in one Starlette app over one SQLite file.

    uvicorn facade.sample_monolith.monolith:app --port 8001      # SHOP_DB=/path/shop.db (default: a temp file)

Every response carries ``x-served-by: monolith``.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from .catalog_routes import catalog_routes
from .commerce import (
    OrderRejected,
    add_to_cart,
    cart_json,
    get_order,
    get_user,
    list_orders,
    parse_line,
    parse_lines,
    place_order,
    remove_from_cart,
)
from .shapes import now_iso
from .store import open_database
from .web import BadRequest, ServedBy, error_response, exception_handlers, path_id, query_int, read_json_object

__all__ = ["SERVICE_NAME", "app", "create_app"]

SERVICE_NAME = "monolith"


def create_app(*, db_path: str | None = None, fix_price: bool = False) -> ASGIApp:
    """The monolith over the database at ``db_path`` (created and seeded; None = a temp file).

    ``fix_price`` is accepted for symmetry with ``catalog.create_app``; the monolith's prices are
    always decimal strings.
    """
    conn = open_database(db_path, shop_tables=True)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": SERVICE_NAME})

    async def cart(request: Request) -> Response:
        user_id = path_id(request, "user_id", "user")
        if request.method == "POST":
            line = parse_line(await read_json_object(request))
            add_to_cart(conn, user_id, line)
            return JSONResponse(cart_json(conn, user_id), status_code=201)
        return JSONResponse(cart_json(conn, user_id))

    async def cart_item(request: Request) -> Response:
        user_id = path_id(request, "user_id", "user")
        product_id = path_id(request, "product_id", "product")
        remove_from_cart(conn, user_id, product_id)
        return Response(status_code=204)

    async def orders(request: Request) -> Response:
        if request.method == "POST":
            body = await read_json_object(request)
            user_id = body.get("user_id")
            if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id < 1:
                raise BadRequest(f"user_id must be a positive integer, got {user_id!r}")
            order = place_order(conn, user_id, parse_lines(body.get("items")))
            return JSONResponse(order, status_code=201, headers={"location": order["url"]})
        user_filter = query_int(request, "user_id", default=0, lo=0, hi=2**62) or None
        return JSONResponse({"orders": list_orders(conn, user_id=user_filter), "generated_at": now_iso()})

    async def order(request: Request) -> Response:
        order_id = path_id(request, "order_id", "order")
        found = get_order(conn, order_id)
        if found is None:
            raise BadRequest(f"order {order_id} not found", status=404)
        return JSONResponse(found)

    async def user(request: Request) -> Response:
        user_id = path_id(request, "user_id", "user")
        found = get_user(conn, user_id)
        if found is None:
            raise BadRequest(f"user {user_id} not found", status=404)
        return JSONResponse(found)

    async def rejected(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OrderRejected)
        return error_response(exc.status, exc.message)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        *catalog_routes(conn),
        Route("/cart/{user_id}/items", cart, methods=["GET", "POST"]),
        Route("/cart/{user_id}/items/{product_id}", cart_item, methods=["DELETE"]),
        Route("/orders", orders, methods=["GET", "POST"]),
        Route("/orders/{order_id}", order, methods=["GET"]),
        Route("/users/{user_id}", user, methods=["GET"]),
    ]
    handlers = {**exception_handlers(), OrderRejected: rejected}
    return ServedBy(Starlette(routes=routes, exception_handlers=handlers), name=SERVICE_NAME)


app: ASGIApp  # declared for type checkers; built lazily by __getattr__


def __getattr__(name: str) -> ASGIApp:
    # ``app`` is built on first use (uvicorn's getattr), not at import, so importing the module
    # for ``create_app`` does not create a database.
    if name == "app":
        built = globals()["app"] = create_app(db_path=os.environ.get("SHOP_DB") or None)
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
