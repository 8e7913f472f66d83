"""The catalog service, carved out of the monolith: the same ``/catalog/*`` endpoints and JSON
shapes over its own copy of the catalog data.

    uvicorn facade.sample_monolith.catalog:app --port 8002     # CATALOG_DB or SHOP_DB (default: a temp file)

Every response carries ``x-served-by: catalog``.

DELIBERATE BUG, for shadow diffing to catch: ``GET /catalog/products/{id}`` renders the price as
a JSON number (``19.99``) where the monolith sends a string (``"19.99"``). ``CATALOG_FIX_PRICE=1``
(or ``create_app(fix_price=True)``) fixes it. List endpoints already match the monolith.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from .catalog_routes import catalog_routes
from .store import open_database
from .web import ServedBy, exception_handlers

__all__ = ["SERVICE_NAME", "app", "create_app"]

SERVICE_NAME = "catalog"


def create_app(*, db_path: str | None = None, fix_price: bool = False) -> ASGIApp:
    """The catalog service over its own database at ``db_path`` (None = a temp file)."""
    conn = open_database(db_path, shop_tables=False)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": SERVICE_NAME})

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        *catalog_routes(conn, detail_price="string" if fix_price else "number"),
    ]
    return ServedBy(Starlette(routes=routes, exception_handlers=exception_handlers()), name=SERVICE_NAME)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


app: ASGIApp  # declared for type checkers; built lazily by __getattr__


def __getattr__(name: str) -> ASGIApp:
    # ``app`` is built on first use (uvicorn's getattr), not at import; see monolith.py.
    if name == "app":
        built = globals()["app"] = create_app(
            db_path=os.environ.get("CATALOG_DB") or os.environ.get("SHOP_DB") or None,
            fix_price=_env_flag("CATALOG_FIX_PRICE"),
        )
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
