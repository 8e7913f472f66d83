"""Upstreams: lookup, hot reload keeping state, draining and closing replaced pools."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl

import pytest

from facade.config import ConnectionPool, HealthCheck, OutlierDetection, ServiceSpec, UpstreamTLS
from facade.upstream import Outcome, Upstreams, UpstreamTLSError

from .test_upstream_specs import closed_port_url, eventually, group, service, urls

OD = OutlierDetection(consecutive_5xx=1, base_ejection=1000, max_ejection_percent=100)


async def test_get_and_snapshot() -> None:
    ups = Upstreams([service(group("a", *urls(2)), name="catalog"), service(group("m", *urls(1)), name="monolith")])
    try:
        pool = ups.get("catalog")
        assert pool is not None and len(pool.endpoints) == 2
        assert ups.get("nope") is None
        snap = ups.snapshot()
        json.dumps(snap)
        assert sorted(snap["services"]) == ["catalog", "monolith"]
        assert snap["services"]["catalog"]["groups"][0]["endpoints"][1]["url"] == urls(2)[1]
    finally:
        await ups.close()


async def test_update_keeps_unchanged_pools_and_closes_removed_ones() -> None:
    keep, drop = service(group("a", *urls(1)), name="keep"), service(group("a", *urls(1, 5)), name="drop")
    ups = Upstreams([keep, drop])
    try:
        kept, dropped = ups.get("keep"), ups.get("drop")
        assert kept is not None and dropped is not None
        kept.report(kept.endpoints[0], Outcome.HTTP_5XX)  # state that must survive
        client = kept.h1
        dropped_client = dropped.h1
        await ups.update([keep])
        assert ups.get("keep") is kept and kept.h1 is client
        assert ups.get("drop") is None
        assert await eventually(lambda: dropped_client.closed)
        assert not client.closed
    finally:
        await ups.close()
    assert client.closed


async def test_weight_only_change_keeps_health_ejections_and_client() -> None:
    spec = service(group("old", *urls(2), weight=100), group("new", *urls(1, 9), weight=0), outlier=OD)
    ups = Upstreams([spec])
    try:
        before = ups.get("svc")
        assert before is not None
        client = before.h1
        before.report(before.endpoints[0], Outcome.GATEWAY_ERROR)
        before.endpoints[1].healthy = False
        shifted = dataclasses.replace(spec, groups=(group("old", *urls(2), weight=0), group("new", *urls(1, 9))))
        await ups.update([shifted])
        after = ups.get("svc")
        assert after is not None and after is not before
        assert after.h1 is client  # the warm connections stay
        assert after.endpoints[0].ejected_until > 0 and not after.endpoints[1].healthy
        assert {after.pick().group for _ in range(5)} == {"new"}
        await ups.update([spec])  # and back by changing one weight
        back = ups.get("svc")
        assert back is not None and back.endpoints[0].times_ejected == 1
        assert not back.endpoints[0].available and not back.endpoints[1].available
        assert {back.pick().group for _ in range(5)} == {"new"}  # nothing available in "old": failover
        await asyncio.sleep(0.1)
        assert not client.closed  # the replaced pools handed their client over
    finally:
        await ups.close()


async def test_changed_connection_settings_build_a_new_client_and_drain_the_old() -> None:
    spec = service(group("a", *urls(1)))
    ups = Upstreams([spec], drain_grace=10.0)
    try:
        old = ups.get("svc")
        assert old is not None
        old_client = old.h1
        ep = old.pick()
        ep.begin()  # a request in flight on the old pool
        await ups.update([dataclasses.replace(spec, connection_pool=ConnectionPool(max_connections=7))])
        new = ups.get("svc")
        assert new is not None and new.h1 is not old_client and new.h1.limit == 7
        await asyncio.sleep(0.1)
        assert not old_client.closed and ups.draining == 1
        ep.end()
        assert await eventually(lambda: old_client.closed)
        assert ups.draining == 0
    finally:
        await ups.close()


async def test_replaced_pool_closes_after_the_grace_period_even_when_busy() -> None:
    spec = service(group("a", *urls(1)))
    ups = Upstreams([spec], drain_grace=0.1)
    try:
        old = ups.get("svc")
        assert old is not None
        old_client = old.h1
        old.pick().begin()  # never ends
        await ups.update([])
        assert await eventually(lambda: old_client.closed, timeout=2.0)
    finally:
        await ups.close()


async def test_update_starts_health_checks_of_new_pools_and_stops_replaced_ones() -> None:
    hc = HealthCheck(interval=0.05, timeout=0.2, unhealthy_threshold=1)
    dead = closed_port_url()
    ups = Upstreams([service(group("a", dead), name="one", health=hc)])
    try:
        await ups.start()
        one = ups.get("one")
        assert one is not None
        assert await eventually(lambda: not one.endpoints[0].healthy)
        await ups.update([service(group("a", dead), name="two", health=hc)])
        two = ups.get("two")
        assert two is not None
        assert await eventually(lambda: two.endpoints[0].health.checks >= 1)
        checks = one.endpoints[0].health.checks
        await asyncio.sleep(0.15)
        assert one.endpoints[0].health.checks == checks
    finally:
        await ups.close()


async def test_failed_update_changes_nothing() -> None:
    a, b = service(group("a", *urls(1)), name="a"), service(group("b", *urls(1, 5)), name="b")
    ups = Upstreams([a, b])
    try:
        pool_a, pool_b = ups.get("a"), ups.get("b")
        assert pool_a is not None and pool_b is not None
        client_a = pool_a.h1
        reweighted = dataclasses.replace(a, groups=(group("a", *urls(1), weight=50),))
        broken = dataclasses.replace(b, tls=UpstreamTLS(ca_file="/nonexistent/ca.pem"))
        with pytest.raises(UpstreamTLSError, match="service b"):
            await ups.update([reweighted, broken])
        assert ups.get("a") is pool_a and ups.get("b") is pool_b
        assert pool_a.owns_client  # the client was not promised to a pool that never went live
    finally:
        await ups.close()
    assert client_a.closed


async def test_replaced_pool_keeps_working_for_requests_that_still_hold_it() -> None:
    spec = service(group("a", *urls(2)))
    ups = Upstreams([spec])
    try:
        old = ups.get("svc")
        assert old is not None
        client = old.h1
        await ups.update([dataclasses.replace(spec, groups=(group("a", *urls(2), weight=10),))])
        assert old.h1 is client and not client.closed  # a retry on the old snapshot still works
        assert old.pick() in ups.get("svc").endpoints  # type: ignore[union-attr]
    finally:
        await ups.close()


async def test_ssl_context_factory_supplies_the_context() -> None:
    seen: list[str] = []
    ctx = ssl.create_default_context()

    def factory(spec: ServiceSpec) -> ssl.SSLContext | None:
        seen.append(spec.name)
        return ctx if spec.name == "catalog" else None

    ups = Upstreams(
        [service(group("a", *urls(1)), name="catalog"), service(group("m", *urls(1)), name="monolith")],
        ssl_context_factory=factory,
    )
    try:
        assert seen == ["catalog", "monolith"]
        assert ups.get("catalog").ssl_context is ctx  # type: ignore[union-attr]
        assert ups.get("monolith").ssl_context is None  # type: ignore[union-attr]
    finally:
        await ups.close()
