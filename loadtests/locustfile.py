"""Shop users for cutover rehearsals: browse, search, view, add to cart, order, look at orders.

    facade loadtest extract-catalog                      # runs this file headless, in a subprocess
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080    # or on its own, with the web UI

Each simulated user has its own cookie jar (FastHttpUser keeps one per user), so the facade's
sticky-cohort cookie (``session_id``) keeps a user on one side of a split, the way a browser would.

Every request's name ends with the backend that served it, from the facade's ``x-facade-backend``
response header (``mark_responses: true``): ``GET /catalog/products/[id] [catalog]``, so locust's own
CSV and HTML split old from new. For ``facade loadtest`` the module also writes, every second, one
JSON line per (phase, backend, migrating?, path group) to ``$LOADTEST_SAMPLES``: request and failure counts and
a latency histogram; the phase is the rehearsal step the driver announces in ``$LOADTEST_CONTROL``.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import gevent
from locust import FastHttpUser, between, events, task
from locust.env import Environment

try:  # a package when installed / run from the repo root; a plain directory for `locust -f`
    from facade.loadtests.shape import CutoverShape, read_control
except ImportError:  # pragma: no cover - locust put this file's directory on sys.path instead
    from shape import CutoverShape, read_control  # type: ignore[no-redef]

__all__ = ["CutoverShape", "ShopUser"]

CATEGORIES = ("kitchen", "books", "outdoor", "office")
SEARCH_TERMS = ("mug", "steel", "book", "tent", "coffee", "pen", "a", "the")
PRODUCT_IDS = tuple(range(1, 13))
ORDERABLE = (1, 2, 3, 5, 6, 7, 9, 10, 11, 12)  # in stock with room to spare (the demo never decrements stock)
USER_IDS = (1, 2, 3)
BACKEND_HEADER = "x-facade-backend"
STEP_HEADER = "x-facade-step"
STABLE = "stable"  # the step label of a route no migration is splitting
FLUSH_EVERY = 1.0  # seconds between sample lines
_PHASE_EVERY = 0.1  # seconds between reads of the control file


def histogram_key(ms: float) -> int:
    """Locust's rounding: 1 ms under 100 ms, 10 ms under 1 s, 100 ms above (two significant digits)."""
    if ms < 100:
        return round(ms)
    if ms < 1000:
        return int(round(ms, -1))
    return int(round(ms, -2))


def path_group(url: str) -> str:
    """``http://h/catalog/products/1?x`` -> ``"catalog"``: the part of the shop a request is about, so
    the report can tell a migrated route's requests from the rest even when no split marks them."""
    path = urlsplit(url).path
    return path.split("/", 2)[1] if path.count("/") >= 1 else ""


@dataclass
class Bucket:
    requests: int = 0
    failures: int = 0
    latency: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


class Sampler:
    """Per-interval counts and histograms keyed by (phase, backend, migrating); written as JSON lines."""

    def __init__(self, path: str | None, control: str | None) -> None:
        self.path = path
        self.control = control
        self.buckets: dict[tuple[int, str, bool, str], Bucket] = {}
        self.phase = 0
        self._phase_read = 0.0

    def current_phase(self) -> int:
        now = time.monotonic()
        if now - self._phase_read >= _PHASE_EVERY:
            self._phase_read = now
            phase = read_control(self.control).get("phase")
            if isinstance(phase, int):
                self.phase = phase
        return self.phase

    def record(self, backend: str, migrating: bool, group: str, ms: float, error: str | None) -> None:
        key = (self.current_phase(), backend, migrating, group)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Bucket()
        bucket.requests += 1
        bucket.latency[histogram_key(ms)] += 1
        if error is not None:
            bucket.failures += 1
            bucket.errors[error[:200]] += 1

    def flush(self) -> None:
        if not self.buckets or not self.path:
            self.buckets.clear()
            return
        now = time.time()
        lines = [
            json.dumps(
                {
                    "t": now,
                    "phase": phase,
                    "backend": backend,
                    "migrating": migrating,
                    "group": group,
                    "requests": b.requests,
                    "failures": b.failures,
                    "latency_ms": {str(k): v for k, v in sorted(b.latency.items())},
                    "errors": dict(b.errors),
                }
            )
            for (phase, backend, migrating, group), b in self.buckets.items()
        ]
        self.buckets.clear()
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")


SAMPLER = Sampler(os.environ.get("LOADTEST_SAMPLES"), os.environ.get("LOADTEST_CONTROL"))


@events.init.add_listener  # type: ignore[untyped-decorator]  # locust is untyped
def _start_flushing(environment: Environment, **_: Any) -> None:
    def loop() -> None:
        while True:
            gevent.sleep(FLUSH_EVERY)
            SAMPLER.flush()

    gevent.spawn(loop)


@events.quitting.add_listener  # type: ignore[untyped-decorator]  # locust is untyped
def _final_flush(environment: Environment, **_: Any) -> None:
    SAMPLER.flush()


@events.request.add_listener  # type: ignore[untyped-decorator]  # locust is untyped
def _sample(
    request_type: str,
    name: str,
    response_time: float,
    response: Any,
    exception: BaseException | None,
    url: str = "",
    **_: Any,
) -> None:
    headers = getattr(response, "headers", None) or {}
    backend = headers.get(BACKEND_HEADER) or "-"
    step = headers.get(STEP_HEADER) or STABLE
    label = name.rsplit(" [", 1)[0]  # without the backend suffix
    if not label.startswith(request_type + " "):  # the shop's names already carry the method
        label = f"{request_type} {label}"
    error = None if exception is None else f"{label}: {exception}"
    SAMPLER.record(backend, step != STABLE, path_group(url), response_time or 0.0, error)


class ShopUser(FastHttpUser):
    """One shopper: mostly browsing, sometimes buying."""

    wait_time = between(0.05, 0.3)

    def on_start(self) -> None:
        self.user_id = random.choice(USER_IDS)
        self.last_order: tuple[int, str] | None = None  # (order id, backend that created it)

    def call(self, method: str, url: str, name: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        """One request named ``"<name> [<backend>]"``; a status outside ``ok`` is a failure."""
        with self.client.request(method, url, name=name, catch_response=True, **kwargs) as response:
            backend = response.headers.get(BACKEND_HEADER) if response.headers else None
            response.request_meta["name"] = f"{name} [{backend or '-'}]"
            if response.status_code in ok:
                response.success()
            else:
                response.failure(f"status {response.status_code}: {(response.text or '')[:120]}")
            return response

    @task(2)
    def browse_categories(self) -> None:
        self.call("GET", "/catalog/categories", "GET /catalog/categories")

    @task(4)
    def list_products(self) -> None:
        category = random.choice(CATEGORIES)
        self.call("GET", f"/catalog/products?category={category}&limit=10", "GET /catalog/products?category=")

    @task(3)
    def search(self) -> None:
        term = random.choice(SEARCH_TERMS)
        self.call("GET", f"/catalog/products?q={term}", "GET /catalog/products?q=")

    @task(5)
    def view_product(self) -> None:
        product_id = random.choice(PRODUCT_IDS)
        self.call("GET", f"/catalog/products/{product_id}", "GET /catalog/products/[id]")

    @task(2)
    def add_to_cart(self) -> None:
        body = {"product_id": random.choice(ORDERABLE), "quantity": 1}
        self.call("POST", f"/cart/{self.user_id}/items", "POST /cart/[user]/items", ok=(201,), json=body)

    @task(1)
    def view_cart(self) -> None:
        self.call("GET", f"/cart/{self.user_id}/items", "GET /cart/[user]/items")

    @task(1)
    def create_order(self) -> None:
        items = [{"product_id": pid, "quantity": random.randint(1, 2)} for pid in random.sample(ORDERABLE, 2)]
        response = self.call("POST", "/orders", "POST /orders", ok=(201,), json={"user_id": self.user_id,
                                                                                  "items": items})  # fmt: skip
        if response.status_code == 201:
            self.last_order = (int(response.json()["id"]), response.headers.get(BACKEND_HEADER) or "-")

    @task(1)
    def view_orders(self) -> None:
        self.call("GET", f"/orders?user_id={self.user_id}", "GET /orders?user_id=")
        if self.last_order is None:
            return
        order_id, created_by = self.last_order
        # An order lives where it was placed (the demo migrates no data): asking the other side
        # for it is an expected 404, not a failure; any other status still is.
        with self.client.request("GET", f"/orders/{order_id}", name="GET /orders/[id]", catch_response=True) as r:
            backend = (r.headers.get(BACKEND_HEADER) if r.headers else None) or "-"
            r.request_meta["name"] = f"GET /orders/[id] [{backend}]"
            if r.status_code == 200 or (r.status_code == 404 and backend != created_by):
                r.success()
            else:
                r.failure(f"status {r.status_code}: {(r.text or '')[:120]}")
