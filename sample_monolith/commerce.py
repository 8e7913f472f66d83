"""The monolith's non-catalog data: users, carts and orders (SQLite), plus order pricing.

Orders are priced from the catalog at the moment they are placed: the client sends product
ids and quantities, never prices.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .shapes import money, now_iso
from .store import Product, get_product

__all__ = [
    "MAX_QUANTITY",
    "OrderLine",
    "OrderRejected",
    "add_to_cart",
    "cart_json",
    "get_order",
    "get_user",
    "list_orders",
    "parse_line",
    "parse_lines",
    "place_order",
    "record_order",
    "remove_from_cart",
    "require_user",
]

MAX_QUANTITY = 1000


class OrderRejected(Exception):
    """An order or cart change that cannot be accepted; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class OrderLine:
    product_id: int
    quantity: int


def parse_lines(items: Any) -> list[OrderLine]:
    """``[{product_id, quantity}, ...]`` -> lines; duplicate products are merged."""
    if not isinstance(items, list) or not items:
        raise OrderRejected("items must be a non-empty list of {product_id, quantity}", 400)
    merged: dict[int, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise OrderRejected(f"items[{i}] must be an object", 400)
        line = parse_line(item, where=f"items[{i}].")
        merged[line.product_id] = merged.get(line.product_id, 0) + line.quantity
    return [OrderLine(pid, qty) for pid, qty in merged.items()]


def parse_line(item: dict[str, Any], *, where: str = "") -> OrderLine:
    pid, qty = item.get("product_id"), item.get("quantity", 1)
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
        raise OrderRejected(f"{where}product_id must be a positive integer, got {pid!r}", 400)
    if not isinstance(qty, int) or isinstance(qty, bool) or not 1 <= qty <= MAX_QUANTITY:
        raise OrderRejected(f"{where}quantity must be an integer between 1 and {MAX_QUANTITY}, got {qty!r}", 400)
    return OrderLine(pid, qty)


def get_user(conn: sqlite3.Connection, user_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT id, name, email, created_at FROM users WHERE id = ?", (user_id,)).fetchone()
    return dict(row) if row else None


def require_user(conn: sqlite3.Connection, user_id: int) -> None:
    if get_user(conn, user_id) is None:
        raise OrderRejected(f"user {user_id} not found", 404)


def _require_product(conn: sqlite3.Connection, product_id: int) -> Product:
    product = get_product(conn, product_id)
    if product is None:
        raise OrderRejected(f"product {product_id} not found", 422)
    return product


def cart_json(conn: sqlite3.Connection, user_id: int) -> dict[str, Any]:
    require_user(conn, user_id)
    rows = conn.execute(
        "SELECT c.product_id, c.quantity, p.name, p.price_cents, p.currency FROM cart_items c"
        " JOIN products p ON p.id = c.product_id WHERE c.user_id = ? ORDER BY c.product_id",
        (user_id,),
    ).fetchall()
    items = [
        {
            "product_id": r["product_id"],
            "name": r["name"],
            "quantity": r["quantity"],
            "unit_price": money(r["price_cents"]),
            "line_total": money(r["price_cents"] * r["quantity"]),
            "currency": r["currency"],
        }
        for r in rows
    ]
    total = sum(r["price_cents"] * r["quantity"] for r in rows)
    currency = rows[0]["currency"] if rows else "USD"
    return {
        "user_id": user_id,
        "items": items,
        "item_count": sum(r["quantity"] for r in rows),
        "total": {"amount": money(total), "currency": currency},
        "generated_at": now_iso(),
    }


def add_to_cart(conn: sqlite3.Connection, user_id: int, line: OrderLine) -> None:
    require_user(conn, user_id)
    _require_product(conn, line.product_id)
    conn.execute(
        "INSERT INTO cart_items (user_id, product_id, quantity) VALUES (?, ?, ?)"
        " ON CONFLICT (user_id, product_id) DO UPDATE SET quantity = min(quantity + excluded.quantity, ?)",
        (user_id, line.product_id, line.quantity, MAX_QUANTITY),
    )


def remove_from_cart(conn: sqlite3.Connection, user_id: int, product_id: int) -> None:
    require_user(conn, user_id)
    cur = conn.execute("DELETE FROM cart_items WHERE user_id = ? AND product_id = ?", (user_id, product_id))
    if cur.rowcount == 0:
        raise OrderRejected(f"product {product_id} is not in user {user_id}'s cart", 404)


def place_order(conn: sqlite3.Connection, user_id: int, lines: Sequence[OrderLine]) -> dict[str, Any]:
    """Price ``lines`` from the catalog and record the order in one transaction; returns the order."""
    require_user(conn, user_id)
    return record_order(conn, user_id, [(line, _require_product(conn, line.product_id)) for line in lines])


def record_order(conn: sqlite3.Connection, user_id: int, priced: Sequence[tuple[OrderLine, Product]]) -> dict[str, Any]:
    """Check stock and record an order whose lines are already priced (``product`` from whichever
    catalog the caller asked: the monolith's tables or the catalog service)."""
    require_user(conn, user_id)
    for line, product in priced:
        if line.quantity > product.stock:
            raise OrderRejected(
                f"only {product.stock} of product {product.id} ({product.name}) in stock, {line.quantity} ordered",
                409,
            )
    currencies = {product.currency for _, product in priced}
    assert len(currencies) == 1, "the seed data has one currency"
    total = sum(line.quantity * product.price_cents for line, product in priced)
    conn.execute("BEGIN IMMEDIATE")
    try:
        cur = conn.execute(
            "INSERT INTO orders (user_id, status, total_cents, currency, created_at) VALUES (?, 'placed', ?, ?, ?)",
            (user_id, total, currencies.pop(), now_iso()),
        )
        order_id = cur.lastrowid
        conn.executemany(
            "INSERT INTO order_items (order_id, product_id, name, quantity, unit_price_cents) VALUES (?, ?, ?, ?, ?)",
            [(order_id, p.id, p.name, line.quantity, p.price_cents) for line, p in priced],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    assert order_id is not None
    order = get_order(conn, order_id)
    assert order is not None
    return order


def get_order(conn: sqlite3.Connection, order_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    return _order_json(conn, row) if row else None


def list_orders(conn: sqlite3.Connection, *, user_id: int | None) -> list[dict[str, Any]]:
    if user_id is None:
        rows = conn.execute("SELECT * FROM orders ORDER BY id").fetchall()
    else:
        rows = conn.execute("SELECT * FROM orders WHERE user_id = ? ORDER BY id", (user_id,)).fetchall()
    return [_order_json(conn, r) for r in rows]


def _order_json(conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    items = conn.execute(
        "SELECT product_id, name, quantity, unit_price_cents FROM order_items WHERE order_id = ? ORDER BY rowid",
        (row["id"],),
    ).fetchall()
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "status": row["status"],
        "items": [
            {
                "product_id": i["product_id"],
                "name": i["name"],
                "quantity": i["quantity"],
                "unit_price": money(i["unit_price_cents"]),
                "line_total": money(i["unit_price_cents"] * i["quantity"]),
            }
            for i in items
        ],
        "total": {"amount": money(row["total_cents"]), "currency": row["currency"]},
        "created_at": row["created_at"],
        "url": f"/orders/{row['id']}",
    }
