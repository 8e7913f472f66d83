"""The shop's data: SQLite schema, seeding from ``seed.json`` and the catalog queries.

Each app opens its own database file (the monolith's ``SHOP_DB``, the carved catalog
service's own copy), created and seeded at startup, so a fresh checkout runs without setup.
Prices are integer cents in the database; ``shapes`` renders them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any

__all__ = [
    "SEED_FILE",
    "Category",
    "Product",
    "get_product",
    "list_categories",
    "list_products",
    "load_seed",
    "open_database",
    "open_orders_database",
    "product_from_row",
]

SEED_FILE = "seed.json"

_CATALOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS categories (
    id INTEGER PRIMARY KEY, slug TEXT NOT NULL UNIQUE, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, name TEXT NOT NULL, description TEXT NOT NULL,
    category TEXT NOT NULL REFERENCES categories(slug), price_cents INTEGER NOT NULL, currency TEXT NOT NULL,
    stock INTEGER NOT NULL);
"""

_USERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, created_at TEXT NOT NULL);
"""

_CART_SCHEMA = """
CREATE TABLE IF NOT EXISTS cart_items (
    user_id INTEGER NOT NULL REFERENCES users(id), product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL, PRIMARY KEY (user_id, product_id));
"""

_ORDERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL REFERENCES users(id),
    status TEXT NOT NULL, total_cents INTEGER NOT NULL, currency TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS order_items (
    order_id INTEGER NOT NULL REFERENCES orders(id), product_id INTEGER NOT NULL, name TEXT NOT NULL,
    quantity INTEGER NOT NULL, unit_price_cents INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Category:
    id: int
    slug: str
    name: str
    product_count: int


@dataclass(frozen=True, slots=True)
class Product:
    id: int
    sku: str
    name: str
    description: str
    category: str
    price_cents: int
    currency: str
    stock: int


def load_seed() -> dict[str, Any]:
    """The shipped seed data (``sample_monolith/seed.json``)."""
    text = resources.files("facade.sample_monolith").joinpath(SEED_FILE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def open_database(path: str | None, *, shop_tables: bool) -> sqlite3.Connection:
    """Open (creating and seeding when empty) the database at ``path``; None = a fresh temp file.

    ``shop_tables`` adds users, carts and orders (the monolith); without it only the catalog
    (the carved service). Raises ``sqlite3.Error`` / ``OSError`` when the path is unusable,
    which makes the app fail at startup rather than on the first request.
    """
    conn = _connect(path)
    conn.executescript(_CATALOG_SCHEMA + (_USERS_SCHEMA + _CART_SCHEMA + _ORDERS_SCHEMA if shop_tables else ""))
    _seed(conn, load_seed(), catalog=True, users=shop_tables)
    return conn


def open_orders_database(path: str | None) -> sqlite3.Connection:
    """The carved orders service's database: users (a seeded copy) and orders, no catalog; the
    service asks the catalog service for products and prices."""
    conn = _connect(path)
    conn.executescript(_USERS_SCHEMA + _ORDERS_SCHEMA)
    _seed(conn, load_seed(), catalog=False, users=True)
    return conn


def _connect(path: str | None) -> sqlite3.Connection:
    if path is None:
        path = os.path.join(tempfile.mkdtemp(prefix="shop-"), "shop.db")
    # Every query runs on the event loop thread, but uvicorn may build the app in another one.
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _seed(conn: sqlite3.Connection, seed: dict[str, Any], *, catalog: bool, users: bool) -> None:
    # INSERT OR IGNORE: re-running against an existing database keeps its carts and orders.
    currency = str(seed["currency"])
    conn.execute("BEGIN")
    try:
        if catalog:
            _seed_catalog(conn, seed, currency)
        if users:
            conn.executemany(
                "INSERT OR IGNORE INTO users (id, name, email, created_at) VALUES (?, ?, ?, ?)",
                [(u["id"], u["name"], u["email"], u["created_at"]) for u in seed["users"]],
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _seed_catalog(conn: sqlite3.Connection, seed: dict[str, Any], currency: str) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO categories (id, slug, name) VALUES (?, ?, ?)",
        [(c["id"], c["slug"], c["name"]) for c in seed["categories"]],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO products (id, sku, name, description, category, price_cents, currency, stock)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (p["id"], p["sku"], p["name"], p["description"], p["category"], _cents(p["price"]), currency, p["stock"])
            for p in seed["products"]
        ],
    )


def _cents(price: str) -> int:
    cents = Decimal(price) * 100
    assert cents == cents.to_integral_value(), f"seed price {price!r} has more than 2 decimals"
    return int(cents)


def product_from_row(row: sqlite3.Row) -> Product:
    return Product(
        id=row["id"],
        sku=row["sku"],
        name=row["name"],
        description=row["description"],
        category=row["category"],
        price_cents=row["price_cents"],
        currency=row["currency"],
        stock=row["stock"],
    )


def list_products(
    conn: sqlite3.Connection, *, q: str | None, category: str | None, limit: int, offset: int
) -> tuple[list[Product], int]:
    """Products ordered by id, filtered by a case-insensitive substring ``q`` of name or description
    and by category slug; returns (page, total matching)."""
    where, params = [], []
    if q:
        pattern = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append("(lower(name) LIKE ? ESCAPE '\\' OR lower(description) LIKE ? ESCAPE '\\')")
        params += [pattern, pattern]
    if category:
        where.append("category = ?")
        params.append(category)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    total = conn.execute(f"SELECT count(*) FROM products{clause}", params).fetchone()[0]
    rows = conn.execute(f"SELECT * FROM products{clause} ORDER BY id LIMIT ? OFFSET ?", [*params, limit, offset])
    return [product_from_row(r) for r in rows], int(total)


def get_product(conn: sqlite3.Connection, product_id: int) -> Product | None:
    row = conn.execute("SELECT * FROM products WHERE id = ?", (product_id,)).fetchone()
    return product_from_row(row) if row else None


def list_categories(conn: sqlite3.Connection) -> list[Category]:
    rows = conn.execute(
        "SELECT c.id, c.slug, c.name, count(p.id) AS n FROM categories c"
        " LEFT JOIN products p ON p.category = c.slug GROUP BY c.id ORDER BY c.id"
    )
    return [Category(id=r["id"], slug=r["slug"], name=r["name"], product_count=r["n"]) for r in rows]
