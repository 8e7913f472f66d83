"""The shop's deliberate catalog bug, seen through the facade's own shadow diff engine: list
endpoints agree once ``$.generated_at`` is ignored; product detail differs in ``$.price``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from facade.sample_monolith import catalog, monolith
from tests.servers import serve_app

diff = pytest.importorskip("facade.diff")

IGNORE = diff.IgnoreRules.parse(["$.generated_at"])


def sample(response: httpx.Response) -> object:
    return diff.ResponseSample(response.status_code, dict(response.headers), response.content)


@pytest.mark.parametrize("fix_price", [False, True])
async def test_shadow_diff_catches_the_price_type_unless_fixed(tmp_path: Path, fix_price: bool) -> None:
    old_app = monolith.create_app(db_path=str(tmp_path / "shop.db"))
    new_app = catalog.create_app(db_path=str(tmp_path / "catalog.db"), fix_price=fix_price)
    async with serve_app(old_app) as old_url, serve_app(new_app) as new_url, httpx.AsyncClient() as client:
        differing = {}
        for path in ("/catalog/products", "/catalog/products?q=mug", "/catalog/categories", "/catalog/products/1",
                     "/catalog/products/999"):  # fmt: skip
            old, new = await client.get(old_url + path), await client.get(new_url + path)
            result = diff.diff_responses(sample(old), sample(new), ignore=IGNORE)
            if result.differs:
                differing[path] = [str(d) for d in result.differences]
    if fix_price:
        assert differing == {}
    else:
        assert list(differing) == ["/catalog/products/1"]
        (only,) = differing["/catalog/products/1"]
        assert only.startswith("$.price") and '"19.99"' in only and "19.99" in only.replace('"19.99"', "")
