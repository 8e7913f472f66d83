"""The imported config decides like nginx itself: a real nginx and the real facade, on the
same nginx.conf (the facade on what ``facade import nginx`` made of it), in front of the
same tagged upstreams, must send every request of the table to the same place."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from facade.importers import check_emitted, emit, import_nginx
from tests.backends import EchoApp
from tests.facade.importers.nginx_process import require_nginx, run_nginx
from tests.harness import run_facade
from tests.servers import serve_app

SITES = r"""
upstream a { server {A}; }
upstream b { server {B}; }
upstream c { server {C}; }
upstream w { server {A} weight=3; server {B}; server {C} backup; }

server {
    listen 127.0.0.1:{port};
    server_name first.test;
    location / { proxy_pass http://c; }
}
server {
    listen 127.0.0.1:{port} default_server;
    server_name default.test;
    location / { proxy_pass http://a; }
    location /b/ { proxy_pass http://b; }
}
server {
    listen 127.0.0.1:{port};
    server_name shop.test www.shop.test;
    proxy_set_header X-From nginx;
    location = /exact { proxy_pass http://c; }
    location = / { proxy_pass http://b; }
    location / { proxy_pass http://a; }
    location /static { proxy_pass http://b; }
    location ^~ /static/img/ { proxy_pass http://{D}; }
    location /static/img/big/ { proxy_pass http://c; }
    location ~ \.php$ { proxy_pass http://c; }
    location ~* \.JPG$ { proxy_pass http://{D}; }
    location ~ ^/api/v[0-9]+/ { proxy_pass http://b; }
    location /api/ { proxy_pass http://c/; }
    location /weighted/ { proxy_pass http://w; }
    location /exactly { proxy_pass http://c; }
    location = /gone { return 410; }
    location /old/ { return 301 /new/; }
    location = /ping { return 200 "pong"; }
}
server {
    listen 127.0.0.1:{port};
    server_name *.shop.test;
    location / { proxy_pass http://{D}; }
}
server {
    listen 127.0.0.1:{port};
    server_name *.api.shop.test .legacy.test;
    location /v1/ { proxy_pass http://b; }
}
server {
    listen 127.0.0.1:{port};
    server_name redirect.test;
    return 301 https://$host$request_uri;
}
"""

# (Host, path): the request table. The expected answers are nginx's; the test asserts only that
# the facade gives the same, so each line names the rule it exercises.
REQUESTS = [
    ("default.test", "/"),  # the default server by name
    ("default.test", "/b/x"),
    ("unknown.test", "/b/"),  # no name matches: the default_server (not the first)
    ("unknown.test", "/x"),
    ("first.test", "/x"),  # the first server is not the default one
    ("shop.test", "/"),  # = / beats the prefix /
    ("shop.test", "/exact"),  # = exact
    ("shop.test", "/exact/"),  # exact does not cover the slash form: prefix /
    ("shop.test", "/exactly"),  # a prefix compares characters ...
    ("shop.test", "/exactlyx"),  # ... so /exactly matches /exactlyx
    ("shop.test", "/static"),
    ("shop.test", "/staticx"),
    ("shop.test", "/static/a.php"),  # a regex beats the longest plain prefix
    ("shop.test", "/static/img/a.php"),  # ^~ as the longest prefix: no regex is tried
    ("shop.test", "/static/img/x"),
    ("shop.test", "/static/img/big/a.php"),  # a longer plain prefix under ^~: regexes again
    ("shop.test", "/static/img/big/x"),
    ("shop.test", "/static/img/big/x.jpg"),  # ~* is case-insensitive
    ("shop.test", "/x.JpG"),
    ("shop.test", "/api/v2/orders"),  # regexes in file order
    ("shop.test", "/api/orders"),  # proxy_pass with a URI rewrites the prefix
    ("shop.test", "/api"),  # /api/ proxied: nginx redirects /api to /api/
    ("shop.test", "/gone"),  # return 410
    ("shop.test", "/old/page"),  # return 301 /new/
    ("shop.test", "/ping"),  # return 200 text
    ("SHOP.test", "/exact"),  # names are case-insensitive
    ("www.shop.test", "/exact"),
    ("a.shop.test", "/exact"),  # *.shop.test
    ("x.y.shop.test", "/"),  # a wildcard covers several labels
    ("v.api.shop.test", "/v1/x"),  # the longest wildcard wins
    ("v.api.shop.test", "/other"),  # the chosen server has no location: 404
    ("legacy.test", "/v1/"),  # .legacy.test is legacy.test ...
    ("a.legacy.test", "/v1/x"),  # ... and *.legacy.test
    ("a.legacy.test", "/nope"),
    ("redirect.test", "/x?y=1"),  # server-level return
    ("shop.test", "/api/orders?x=%2F"),
]
# Both normalize a path before matching it; nginx then forwards the client's bytes, the facade the
# normalized path (the path it matched is the path it sends), so these compare the upstream only.
NORMALIZED = [
    ("shop.test", "//exact"),  # merged slashes
    ("shop.test", "/%65xact"),  # a decoded unreserved character
    ("shop.test", "/static/../exact"),  # a resolved dot segment
    ("shop.test", "/static//img/a.php"),
]


async def _outcome(client: httpx.AsyncClient, base: str, host: str, path: str) -> tuple[Any, ...]:
    r = await client.get(base + path, headers={"host": host})
    if r.headers.get("x-served-by"):
        body = r.json()
        headers = dict(body["headers"])
        return (r.status_code, r.headers["x-served-by"], body["raw_path"], headers.get("x-from"))
    if 300 <= r.status_code < 400:
        location = urlsplit(r.headers["location"])
        return (r.status_code, location.scheme if location.scheme == "https" else "", location.path, location.query)
    return (r.status_code, r.text.strip() if r.status_code == 200 else "")


@pytest.mark.slow
async def test_an_imported_nginx_config_routes_every_request_like_nginx(tmp_path: Path) -> None:
    require_nginx()
    async with contextlib.AsyncExitStack() as stack:
        urls = {}
        for name in ("a", "b", "c", "d"):
            urls[name] = urlsplit(await stack.enter_async_context(serve_app(EchoApp(name)))).netloc
        sites = SITES
        for name, netloc in urls.items():
            sites = sites.replace("{" + name.upper() + "}", netloc)
        nginx_url, conf = await stack.enter_async_context(run_nginx(tmp_path / "nginx", sites))

        imported = import_nginx(str(conf))
        assert not imported.errors, imported.errors
        text = emit(imported, header="test")
        assert [p for p in check_emitted(text, str(tmp_path / "facade.yaml")) if p.severity == "error"] == []
        facade = await stack.enter_async_context(run_facade(tmp_path, text))

        async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
            differences = []
            for host, path in REQUESTS + NORMALIZED:
                want = await _outcome(client, nginx_url, host, path)
                got = await _outcome(client, facade.url, host, path)
                if (host, path) in NORMALIZED:
                    want, got = want[:2], got[:2]
                if want != got:
                    differences.append(f"{host}{path}: nginx {want}, facade {got}")
            assert differences == [], "\n".join(differences) + "\n\n" + text

            # A weighted upstream with a backup: both sides spread over the primaries, never the backup.
            served: dict[str, set[str]] = {"nginx": set(), "facade": set()}
            for side, base in (("nginx", nginx_url), ("facade", facade.url)):
                for _ in range(40):
                    r = await client.get(base + "/weighted/x", headers={"host": "shop.test"})
                    served[side].add(r.headers["x-served-by"])
            assert served["nginx"] == served["facade"] == {"a", "b"}


# -- random location sets: nginx's precedence against the imported first-match order -------------

_PREFIXES = ["/", "/a", "/a/", "/a/b", "/a/b/", "/ab", "/b/", "/b/c/"]
_REGEXES = [r"\.php$", r"^/a/b", r"b$", r"^/A", r"/c/", r"x"]
_PATHS = [
    "/",
    "/a",
    "/a/",
    "/a/b",
    "/a/b/",
    "/a/b/x.php",
    "/a/bx",
    "/ab",
    "/abc",
    "/b",
    "/b/",
    "/b/c",
    "/b/c/",
    "/b/c/d.php",
    "/x.PHP",
    "/A/B",
    "/zzz",
    "/a/b/c/",
]


def _random_server(rng: random.Random, name: str) -> str:
    lines = []
    for n, pattern in enumerate(rng.sample(_PREFIXES, rng.randint(1, len(_PREFIXES)))):
        modifier = rng.choice(["", "", "^~", "="])
        lines.append(f"location {modifier} {pattern} {{ proxy_pass http://echo; proxy_set_header X-Loc p{n}; }}")
    for n, pattern in enumerate(rng.sample(_REGEXES, rng.randint(0, 3))):
        modifier = rng.choice(["~", "~*"])
        lines.append(f"location {modifier} {pattern} {{ proxy_pass http://echo; proxy_set_header X-Loc r{n}; }}")
    rng.shuffle(lines)
    body = "\n        ".join(lines)
    return f"""
    server {{
        listen 127.0.0.1:{{port}};
        server_name {name};
        {body}
    }}"""


async def _tag(client: httpx.AsyncClient, base: str, host: str, path: str) -> tuple[Any, ...]:
    r = await client.get(base + path, headers={"host": host})
    if r.headers.get("x-served-by"):
        return (r.status_code, dict(r.json()["headers"]).get("x-loc"))
    if 300 <= r.status_code < 400:
        return (r.status_code, urlsplit(r.headers["location"]).path)
    return (r.status_code,)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
async def test_random_location_sets_decide_like_nginx(tmp_path: Path, seed: int) -> None:
    require_nginx()
    rng = random.Random(seed)
    names = [f"s{i}.test" for i in range(12)]
    async with contextlib.AsyncExitStack() as stack:
        echo = urlsplit(await stack.enter_async_context(serve_app(EchoApp("echo")))).netloc
        sites = f"upstream echo {{ server {echo}; }}\n" + "".join(_random_server(rng, n) for n in names)
        nginx_url, conf = await stack.enter_async_context(run_nginx(tmp_path / "nginx", sites))
        imported = import_nginx(str(conf))
        assert not imported.errors, imported.errors
        text = emit(imported, header="test")
        facade = await stack.enter_async_context(run_facade(tmp_path, text))
        async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
            differences, outcomes = [], set()
            for host in names:
                for path in _PATHS:
                    want = await _tag(client, nginx_url, host, path)
                    got = await _tag(client, facade.url, host, path)
                    outcomes.add(want)
                    if want != got:
                        differences.append(f"{host}{path}: nginx {want}, facade {got}")
            assert differences == [], "\n".join(differences) + "\n\n" + conf.read_text()
            assert len(outcomes) > 8  # the sets exercise many locations, redirects and 404s


_NAMES = ["a.test", "*.a.test", ".b.a.test", "b.a.test", "*.b.a.test", "c.test", "*.test", "_", "x.b.a.test"]
_HOSTS = ["a.test", "x.a.test", "b.a.test", "x.b.a.test", "y.x.b.a.test", "c.test", "zz.test", "other.org"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_server_names_decide_like_nginx(tmp_path: Path, seed: int) -> None:
    require_nginx()
    rng = random.Random(seed)
    count = rng.randint(2, 6)
    default = rng.choice([None, *range(count)])
    servers = []
    for i in range(count):
        names = " ".join(rng.sample(_NAMES, rng.randint(1, 3)))
        flag = " default_server" if i == default else ""
        # Some servers have no "location /": nginx answers 404 there instead of trying another server.
        paths = ["/", "/v1/"] if rng.random() < 0.7 else ["/v1/"]
        locations = " ".join(
            f"location {p} {{ proxy_pass http://echo; proxy_set_header X-Loc s{i}{p}; }}" for p in paths
        )
        servers.append(f"server {{ listen 127.0.0.1:{{port}}{flag}; server_name {names}; {locations} }}")
    async with contextlib.AsyncExitStack() as stack:
        echo = urlsplit(await stack.enter_async_context(serve_app(EchoApp("echo")))).netloc
        sites = f"upstream echo {{ server {echo}; }}\n" + "\n".join(servers)
        nginx_url, conf = await stack.enter_async_context(run_nginx(tmp_path / "nginx", sites))
        imported = import_nginx(str(conf))
        assert not imported.errors, imported.errors
        facade = await stack.enter_async_context(run_facade(tmp_path, emit(imported, header="test")))
        async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
            differences = []
            for host in _HOSTS:
                for path in ("/x", "/v1/x"):
                    want = await _tag(client, nginx_url, host, path)
                    got = await _tag(client, facade.url, host, path)
                    if want != got:
                        differences.append(f"{host}{path}: nginx {want}, facade {got}")
            assert differences == [], "\n".join(differences) + "\n\n" + conf.read_text()
