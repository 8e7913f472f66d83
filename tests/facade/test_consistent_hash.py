"""Consistent-hash load balancing (Istio consistentHash): the ring as a table, the config, and a real facade."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import httpx
import pytest

from facade.config import HashPolicy, parse_config
from facade.upstream import Upstreams
from facade.upstream.balancer import HashRing, hash_of, request_hash
from facade.yamlfile import YamlDocument
from tests.backends import EchoApp
from tests.harness import run_facade
from tests.servers import serve_app

NAMES = [f"http://127.0.0.1:80{i:02d}" for i in range(4)]
KEYS = [hash_of(f"user-{i}".encode()) for i in range(20_000)]


def _owners(ring: HashRing, names: list[str], usable: list[bool] | None = None) -> list[str]:
    usable = usable or [True] * len(names)
    out = []
    for k in KEYS:
        index = ring.pick(k, usable)
        assert index is not None
        out.append(names[index])
    return out


def test_ring_spreads_keys_evenly_enough() -> None:
    shares = Counter(_owners(HashRing.build(NAMES), NAMES))
    assert set(shares) == set(NAMES)
    assert all(0.18 < n / len(KEYS) < 0.32 for n in shares.values()), shares


def test_removing_one_of_four_endpoints_moves_only_its_keys() -> None:
    before = _owners(HashRing.build(NAMES), NAMES)
    rest = NAMES[:2] + NAMES[3:]
    after = _owners(HashRing.build(rest), rest)
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    # Only the keys the removed endpoint owned move (~1/4), the others keep their endpoint.
    assert {b for b, _ in moved} == {NAMES[2]}
    assert len(moved) == before.count(NAMES[2])
    assert 0.18 < len(moved) / len(KEYS) < 0.32


def test_an_unavailable_endpoint_is_skipped_like_a_removed_one() -> None:
    ring = HashRing.build(NAMES)
    rest = NAMES[:2] + NAMES[3:]
    skipped = _owners(ring, NAMES, [True, True, False, True])
    assert skipped == _owners(HashRing.build(rest), rest)  # the same fallbacks as a ring without it
    assert ring.pick(KEYS[0], [False] * 4) is None
    assert sorted(ring.order(KEYS[0])) == [0, 1, 2, 3]  # every endpoint once, owner first


@pytest.mark.parametrize(
    ("policy", "headers", "client", "same_as", "cookie"),
    [
        (HashPolicy(header="x-user"), [(b"x-user", b"alice")], None, b"alice", False),
        (HashPolicy(header="x-user"), [], "10.0.0.1", None, False),  # no key: the pool picks at random
        (HashPolicy(cookie="lb"), [(b"cookie", b"a=1; lb=k1")], None, b"k1", False),
        (HashPolicy(source_ip=True), [], "10.0.0.1", b"10.0.0.1", False),
        (HashPolicy(source_ip=True), [], None, None, False),
        (HashPolicy(cookie="lb", cookie_ttl=3600), [], None, "fresh", True),
    ],
)
def test_request_hash_table(
    policy: HashPolicy, headers: list[tuple[bytes, bytes]], client: str | None, same_as: bytes | str | None,
    cookie: bool,
) -> None:
    key, set_cookie = request_hash(policy, headers, client)
    if same_as is None:
        assert key is None
    elif same_as == "fresh":
        assert set_cookie is not None and set_cookie.startswith(b"lb=") and b"Max-Age=3600" in set_cookie
        assert key == hash_of(set_cookie.split(b";")[0].split(b"=", 1)[1])  # the key is the cookie issued
    else:
        assert isinstance(same_as, bytes) and key == hash_of(same_as)
    assert (set_cookie is not None) == cookie


def test_a_session_cookie_without_ttl() -> None:
    _, set_cookie = request_hash(HashPolicy(cookie="lb"), [], None)
    assert set_cookie is not None and b"Max-Age" not in set_cookie and b"HttpOnly" in set_cookie


@pytest.fixture()
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("_in_tmp")
@pytest.mark.parametrize(
    ("lb", "expected"),
    [
        ("{consistent_hash: {header: X-User}}", None),
        ("{consistent_hash: {cookie: {name: lb, ttl: 1h}}}", None),
        ("{consistent_hash: {source_ip: true}}", None),
        ("{consistent_hash: {header: x, source_ip: true}}",
         ("facade.yaml:3:38: services.svc.load_balancer.consistent_hash: needs exactly one of header: NAME, "
         "cookie: {name, ttl} or source_ip: true")),
        ("{consistent_hash: {source_ip: false}}",
         ("facade.yaml:3:50: services.svc.load_balancer.consistent_hash.source_ip: must be true "
         "(or give header / cookie instead)")),
        ("{consistent_hash: {cookie: {ttl: 1h}}}",
         "facade.yaml:3:47: services.svc.load_balancer.consistent_hash.cookie.name: is required"),
        ("{maglev: {}}", "facade.yaml:3:21: services.svc.load_balancer.maglev: unknown field 'maglev'"),
        ("sticky", "facade.yaml:3:20: services.svc.load_balancer: must be one of"),
    ],
)
def test_consistent_hash_config(lb: str, expected: str | None) -> None:
    text = f"services:\n  svc:\n    load_balancer: {lb}\n    endpoints: [http://127.0.0.1:8001]\n"
    text += "routes: [{name: r, backend: svc}]\n"
    Path("facade.yaml").write_text(textwrap.dedent(text))
    config, problems = parse_config(YamlDocument.read("facade.yaml"), env={})
    if expected is None:
        assert problems == [] and config is not None
        spec = config.service("svc")
        assert spec is not None and spec.load_balancer == "consistent_hash" and spec.hash_policy is not None
    else:
        assert len(problems) == 1 and str(problems[0]).startswith(expected), problems


def test_pool_pick_follows_the_ring_and_retries_walk_on() -> None:
    from facade.config import EndpointGroup, ServiceSpec

    spec = ServiceSpec("svc", (EndpointGroup("default", tuple(NAMES)),), load_balancer="consistent_hash",
                       hash_policy=HashPolicy(header="x-user"))
    pool = Upstreams([spec], health_checks=False).get("svc")
    assert pool is not None
    ring = HashRing.build(NAMES)
    for key in KEYS[:50]:
        order = [NAMES[i] for i in ring.order(key)]
        first = pool.pick(hash_key=key)
        assert first.url == order[0]
        assert pool.pick(exclude=[first], hash_key=key).url == order[1]  # a retry goes to the next on the ring
    first = pool.pick(hash_key=KEYS[0])
    first.healthy = False
    assert pool.pick(hash_key=KEYS[0]).url == [NAMES[i] for i in ring.order(KEYS[0])][1]


async def test_consistent_hash_through_the_facade(tmp_path: Path) -> None:
    apps = [EchoApp(f"e{i}") for i in range(4)]
    async with (
        serve_app(apps[0]) as u0, serve_app(apps[1]) as u1, serve_app(apps[2]) as u2, serve_app(apps[3]) as u3,
    ):
        text = f"""
        listen: 127.0.0.1:0
        admin: {{listen: 127.0.0.1:0}}
        services:
          byuser:
            endpoints: [{u0}, {u1}, {u2}, {u3}]
            load_balancer: {{consistent_hash: {{header: x-user}}}}
          bycookie:
            endpoints: [{u0}, {u1}, {u2}, {u3}]
            load_balancer: {{consistent_hash: {{cookie: {{name: lb, ttl: 10m}}}}}}
          byip:
            endpoints: [{u0}, {u1}, {u2}, {u3}]
            load_balancer: {{consistent_hash: {{source_ip: true}}}}
        routes:
          - {{name: user, match: {{path: {{prefix: /user}}}}, backend: byuser}}
          - {{name: cookie, match: {{path: {{prefix: /cookie}}}}, backend: bycookie}}
          - {{name: ip, backend: byip}}
        """
        async with run_facade(tmp_path, text) as rt, httpx.AsyncClient(base_url=rt.url, timeout=10) as client:
            # The same user always reaches the same endpoint; different users spread over them.
            served = {}
            for user in range(24):
                names = {(await client.get("/user", headers={"x-user": f"u{user}"})).json()["name"] for _ in range(3)}
                assert len(names) == 1
                served[user] = names.pop()
            assert len(set(served.values())) >= 3

            # A client without the cookie gets one, and stays where it was sent with it.
            first = await client.get("/cookie")
            issued = first.headers.get("set-cookie")
            assert issued is not None and issued.startswith("lb=") and "Max-Age=600" in issued
            cookie = issued.split(";")[0]
            again = [await client.get("/cookie", headers={"cookie": cookie}) for _ in range(4)]
            assert {r.json()["name"] for r in again} == {first.json()["name"]}
            assert all("set-cookie" not in r.headers for r in again)

            # Source IP: every request of this client (127.0.0.1) lands on one endpoint.
            assert len({(await client.get("/")).json()["name"] for _ in range(6)}) == 1


async def test_source_ip_behind_a_trusted_proxy_is_the_forwarded_client(tmp_path: Path) -> None:
    apps = [EchoApp(f"e{i}") for i in range(4)]
    async with (
        serve_app(apps[0]) as u0, serve_app(apps[1]) as u1, serve_app(apps[2]) as u2, serve_app(apps[3]) as u3,
    ):
        text = f"""
        listen: 127.0.0.1:0
        admin: {{listen: 127.0.0.1:0}}
        trusted_proxies: [127.0.0.1/32, 10.9.0.0/16]
        services:
          byip:
            endpoints: [{u0}, {u1}, {u2}, {u3}]
            load_balancer: {{consistent_hash: {{source_ip: true}}}}
        routes:
          - {{name: ip, backend: byip}}
        """
        async with run_facade(tmp_path, text) as rt, httpx.AsyncClient(base_url=rt.url, timeout=10) as client:
            async def served(xff: str) -> str:
                return str((await client.get("/", headers={"x-forwarded-for": xff})).json()["name"])

            # The facade's peer (127.0.0.1) is a trusted proxy: the client is the address it forwarded for.
            by_client = {i: await served(f"203.0.113.{i}") for i in range(16)}
            assert len(set(by_client.values())) >= 2
            # Stable per client, and trusted hops to the right of it do not change who the client is.
            for i in range(4):
                assert await served(f"203.0.113.{i}") == by_client[i]
                assert await served(f"203.0.113.{i}, 10.9.1.1") == by_client[i]
