"""JSON shapes of the shop's resources: pure functions from values to JSON-ready dicts.

Money is a decimal string with its currency (``{"price": "19.99", "currency": "USD"}``), the
way the monolith has always sent it; the carved catalog service's one deliberate deviation
(a float price) is chosen by the caller through ``price_style``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from .store import Category, Product

__all__ = ["PriceStyle", "category_json", "money", "now_iso", "product_json"]

PriceStyle = Literal["string", "number"]


def money(cents: int) -> str:
    """1999 -> "19.99" (exact; never through a float)."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"


def now_iso() -> str:
    """The ``generated_at`` stamp of list responses: UTC, millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def product_json(product: Product, *, price_style: PriceStyle = "string") -> dict[str, Any]:
    price: str | float = money(product.price_cents) if price_style == "string" else product.price_cents / 100
    return {
        "id": product.id,
        "sku": product.sku,
        "name": product.name,
        "description": product.description,
        "category": product.category,
        "price": price,
        "currency": product.currency,
        "stock": product.stock,
        "in_stock": product.stock > 0,
        "url": f"/catalog/products/{product.id}",
    }


def category_json(category: Category) -> dict[str, Any]:
    return {
        "id": category.id,
        "slug": category.slug,
        "name": category.name,
        "product_count": category.product_count,
        "url": f"/catalog/products?category={category.slug}",
    }
