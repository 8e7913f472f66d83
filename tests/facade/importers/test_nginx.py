"""``facade import nginx``: translation, positions of what is lost, bad input (no nginx binary needed;
test_nginx_live.py checks the decisions against a real nginx)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from facade.cli import main
from facade.config import load_config
from facade.importers import check_emitted, emit, format_finding, import_nginx
from facade.importers.nginx_precedence import nginx_regex_to_facade
from facade.routing import RouteTable


def _conf(tmp_path: Path, text: str, name: str = "nginx.conf") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _load(tmp_path: Path, conf: Path):  # type: ignore[no-untyped-def]
    imported = import_nginx(str(conf))
    assert imported.errors == []
    out = tmp_path / "facade.yaml"
    out.write_text(emit(imported, header="test"))
    return imported, load_config(str(out))


def _decide(config, host: str, path: str) -> object:  # type: ignore[no-untyped-def]
    hit = RouteTable.compile(config.routes).resolve(host=host, path=path, method="GET", headers=[], query_string=b"")
    if hit is None:
        return None
    r = hit.route
    if r.backends:
        return r.backends[0].service
    if r.redirect:
        return ("redirect", r.redirect.code, r.redirect.path)
    assert r.direct_response is not None
    return r.direct_response.status


def test_upstreams_become_services_with_weights_backups_and_balancing(tmp_path: Path) -> None:
    conf = _conf(
        tmp_path,
        """
        http {
          upstream shop {
            least_conn;
            server 10.0.0.1:8001 weight=3;
            server 10.0.0.2:8001 weight=3;
            server 10.0.0.3:8001;
            server 10.0.0.4:8001 backup;
            server 10.0.0.5:8001 down;
            keepalive 32;
          }
          upstream flaky { server app.internal max_fails=3 fail_timeout=20s; }
          server {
            listen 80;
            location / { proxy_pass http://shop; }
            location /f/ { proxy_pass https://flaky; }
            location /direct/ { proxy_pass http://127.0.0.1:9000; }
          }
        }
    """,
    )
    imported, config = _load(tmp_path, conf)
    shop = config.service("shop")
    assert shop is not None and shop.load_balancer == "least_request"
    groups = [(g.name, g.endpoints, g.weight, g.priority) for g in shop.groups]
    # nginx weighs servers, the facade weighs groups: 3+3 for the two weight-3 servers, 1 for the third.
    assert groups == [
        ("weight-3", ("http://10.0.0.1:8001", "http://10.0.0.2:8001"), 6, 0),
        ("weight-1", ("http://10.0.0.3:8001",), 1, 0),
        ("backup", ("http://10.0.0.4:8001",), 100, 1),
    ]
    flaky = config.service("flaky")
    assert flaky is not None and flaky.groups[0].endpoints == ("https://app.internal:80",)
    assert flaky.outlier_detection is not None
    assert (flaky.outlier_detection.consecutive_gateway_errors, flaky.outlier_detection.base_ejection) == (3, 20.0)
    assert config.service("127-0-0-1-9000") is not None
    down = [f for f in imported.warnings if "10.0.0.5:8001 is marked down" in f.message]
    assert [(f.line, f.col) for f in down] == [(9, 5)]


def test_location_precedence_becomes_first_match_order(tmp_path: Path) -> None:
    conf = _conf(
        tmp_path,
        r"""
        upstream a { server 127.0.0.1:1; }
        upstream b { server 127.0.0.1:2; }
        upstream c { server 127.0.0.1:3; }
        server {
          listen 80;
          location / { proxy_pass http://a; }
          location ~ \.php$ { proxy_pass http://b; }
          location ^~ /assets/ { proxy_pass http://c; }
          location /assets/php/ { proxy_pass http://a; }
          location = /assets/x.php { return 204; }
          location /docs { proxy_pass http://c; }
        }
    """,
    )
    _, config = _load(tmp_path, conf)
    table = {
        "/index.php": "b",  # a regex beats the prefix /
        "/assets/a.php": "c",  # ^~ as the longest prefix stops the regexes
        "/assets/php/a.php": "b",  # a longer plain prefix under ^~: the regex is tried again
        "/assets/php/a.txt": "a",
        "/assets/x.php": 204,  # = wins over everything
        "/docs": "c",
        "/docsx": "c",  # nginx prefixes compare characters, not segments
        "/doc": "a",
        "/assets": ("redirect", 301, "/assets/"),  # "/assets/" is proxied: nginx redirects "/assets" there
        "/assets/php": ("redirect", 301, "/assets/php/"),
        "/docs/": "c",
    }
    assert {path: _decide(config, "any.host", path) for path in table} == table


def test_server_names_pick_exact_then_longest_wildcard_then_the_default(tmp_path: Path) -> None:
    conf = _conf(
        tmp_path,
        """
        server { listen 80; server_name first.test; return 200 first; }
        server { listen 80 default_server; server_name www.example.test; return 200 default; }
        server { listen 80; server_name *.example.test; return 200 wild; }
        server { listen 80; server_name *.api.example.test api.example.test; location /v1/ { return 200 api; } }
        server { listen 80; server_name _ example.* ~^(?<sub>.+)\\.regex\\.test$; return 200 never; }
    """,
    )
    imported, config = _load(tmp_path, conf)
    table = {
        "first.test": 200,
        "www.example.test": "default",  # the default server's exact name beats another server's wildcard
        "a.example.test": "wild",
        "x.api.example.test": "api",  # the longest wildcard wins
        "api.example.test": "api",
        "other.test": "default",
    }
    got = {}
    for host in table:
        hit = RouteTable.compile(config.routes).resolve(
            host=host, path="/v1/x", method="GET", headers=[], query_string=b""
        )
        assert hit is not None and hit.route.direct_response is not None
        got[host] = hit.route.direct_response.body or hit.route.direct_response.status
    assert got == table | {"first.test": "first"}
    # The API server has no location for other paths: nginx answers 404 there, not the next server.
    assert _decide(config, "x.api.example.test", "/other") == 404
    lost = sorted(f.message for f in imported.warnings)
    assert any("example.*: only leading *. wildcards" in m for m in lost)
    assert any("regex server names are not imported" in m for m in lost)


def test_returns_headers_and_what_is_lost_are_translated_with_positions(tmp_path: Path) -> None:
    conf = _conf(
        tmp_path,
        """
        http {
          gzip on;
          proxy_set_header X-Team shop;
          upstream app { server 127.0.0.1:8001; }
          server {
            listen 80;
            server_name old.test;
            return 308 https://new.test$request_uri;
          }
          server {
            listen 80 default_server;
            add_header X-Frame-Options DENY always;
            location / {
              proxy_pass http://app;
              proxy_set_header Host $host;
              proxy_set_header X-Real-IP $remote_addr;
              proxy_set_header X-Drop "";
              proxy_read_timeout 30s;
            }
            location /inherit/ { proxy_pass http://app; }
            location /moved { return 302 /elsewhere; }
            location = /health { return 200 "ok\\n"; }
            location /static/ { root /var/www; }
            location @fallback { proxy_pass http://app; }
          }
        }
    """,
    )
    imported, config = _load(tmp_path, conf)
    routes = {r.name: r for r in config.routes}
    old = routes["old-test"]
    assert old.redirect is not None and (old.redirect.scheme, old.redirect.host, old.redirect.path) == (
        "https",
        "new.test",
        None,
    )
    assert old.redirect.code == 308
    root = routes["default-root"]
    # The location's own proxy_set_header replaces the inherited ones (nginx semantics); Host $host is
    # what the facade does anyway, X-Real-IP with a variable cannot be expressed.
    assert root.request_headers.set == () and root.request_headers.remove == ("x-drop",)
    assert root.response_headers.add == (("x-frame-options", "DENY"),)
    assert routes["default-inherit"].request_headers.set == (("x-team", "shop"),)
    assert routes["default-health-exact"].direct_response is not None
    assert routes["default-health-exact"].direct_response.body == "ok\n"
    assert routes["default-moved"].redirect is not None and routes["default-moved"].redirect.path == "/elsewhere"
    assert (
        routes["default-static"].direct_response is not None and routes["default-static"].direct_response.status == 501
    )
    lost = {(f.line, f.col): f.message for f in imported.warnings}
    assert lost[(3, 3)] == "gzip: not imported"
    assert lost[(17, 7)].startswith("proxy_set_header X-Real-IP $remote_addr: variables")
    assert lost[(19, 7)] == "proxy_read_timeout: not imported"
    assert lost[(24, 25)] == "root: not imported"
    assert lost[(24, 5)].startswith("location without proxy_pass or return")
    assert lost[(25, 5)].startswith("named location @fallback")
    assert all(f.file == str(conf) for f in imported.findings)
    assert format_finding(imported.warnings[0]).startswith(f"{conf}:3:3: warning: gzip")


def test_includes_are_followed_and_positioned_in_their_own_file(tmp_path: Path) -> None:
    (tmp_path / "sites").mkdir()
    _conf(
        tmp_path,
        "server {\n  listen 80;\n  server_name inc.test;\n  location / { proxy_pass http://127.0.0.1:7; }\n"
        "  ssi on;\n}\n",
        "sites/inc.conf",
    )
    conf = _conf(tmp_path, "http {\n  server { listen 80 default_server; return 404; }\n  include sites/*.conf;\n}\n")
    imported, config = _load(tmp_path, conf)
    assert [r.matches[0].hosts for r in config.routes] == [("inc.test",), ()]
    assert [(Path(f.file).name, f.line, f.col) for f in imported.warnings] == [("inc.conf", 5, 3)]


@pytest.mark.parametrize(
    ("pattern", "ignore_case"),
    [
        (r"\.php$", False),
        (r"^/api/v[0-9]+/", False),
        (r"\.(png|JPG)$", True),
        (r"^/a|b$", False),
        (r"(?i)^/Admin", False),
        (r"/x[|]y", False),
        (r"^/exact$", False),
        (r"\$$", False),
    ],
)
def test_an_nginx_regex_search_becomes_an_equivalent_full_match(pattern: str, ignore_case: bool) -> None:
    translated = re.compile(nginx_regex_to_facade(pattern, ignore_case=ignore_case))
    original = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    paths = [
        "/",
        "/index.php",
        "/index.php/x",
        "/api/v2/",
        "/api/v2/x",
        "/x/api/v2/",
        "/a.PNG",
        "/a.jpg",
        "/a",
        "/xa",
        "/b",
        "/ab",
        "/admin",
        "/ADMIN/x",
        "/x|y",
        "/exact",
        "/exact/",
        "/cost$",
        "/c$x",
    ]
    assert {p: translated.fullmatch(p) is not None for p in paths} == {p: original.search(p) is not None for p in paths}
    within = re.compile(nginx_regex_to_facade(pattern, ignore_case=ignore_case, within="/api/"))
    assert {p: within.fullmatch(p) is not None for p in paths} == {
        p: p.startswith("/api/") and original.search(p) is not None for p in paths
    }


# -- bad input: a positioned error, exit 2, nothing written ----------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("services:\n  shop: {endpoints: [http://x]}\n", ":1:1", "is not an nginx directive"),  # YAML
        ("http {\n  server {\n    listen 80;\n", ":3", "unexpected end of file"),
        (
            "server {\n  listen 80;\n  location ~ ^/(?<section>[a-z]+)/ { proxy_pass http://a; }\n}\n",
            ":3:3",
            "write (?P<name>...) for a named group",
        ),
        ("server {\n  location ~ ^/(a|(?1))$ { return 200; }\n}\n", ":2:3", "unknown extension ?1"),
        ("server {\n  location ~ ^/[[:alpha:]]+$ { return 200; }\n}\n", ":2:3", "means something else in Python"),
        ("server {\n  location ~ \\h+ { return 200; }\n}\n", ":2:3", "bad escape \\h"),
        ("events {}\n", ":1", "no server blocks"),
        ("garbage\n", ":1", "a directive without its ';'"),  # crossplane's own message is empty here
    ],
)
def test_bad_input_is_a_positioned_error_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str, message: str
) -> None:
    conf = _conf(tmp_path, text)
    out = tmp_path / "facade.yaml"
    assert main(["import", "nginx", str(conf), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{conf}{where}: error: " in err and message in err
    assert "nothing written" in err
    assert not out.exists()


def test_the_cli_writes_a_config_that_validates_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _conf(
        tmp_path, "server {\n  listen 80;\n  location / { proxy_pass http://127.0.0.1:8001; }\n  gzip on;\n}\n"
    )
    out = tmp_path / "facade.yaml"
    assert main(["import", "nginx", str(conf), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{conf}:4:3: warning: gzip: not imported" in err
    assert main(["validate", "-c", str(out)]) == 0
    assert "valid (1 services, 1 routes)" in capsys.readouterr().out

    before = out.read_text()
    assert main(["import", "nginx", str(conf), "-o", str(out)]) == 2
    assert "exists (use --force" in capsys.readouterr().err
    assert main(["import", "nginx", str(conf), "-o", str(out), "--strict", "--force"]) == 2  # gzip is lost
    assert out.read_text() == before
    assert main(["import", "nginx", str(conf), "-o", str(out), "--force"]) == 0

    assert main(["import", "nginx", str(conf)]) == 0  # no -o: standard output
    printed = capsys.readouterr().out
    assert printed.startswith("# Imported by `facade import nginx`")
    assert [p for p in check_emitted(printed, "x.yaml") if p.severity == "error"] == []


def test_types_and_map_blocks_hold_table_rows_not_directives(tmp_path: Path) -> None:
    # Debian's nginx.conf includes mime.types: "text/html html;" is a row, not a bad directive.
    conf = _conf(
        tmp_path,
        """
        http {
          types { text/html html htm; application/json json; }
          map $uri $legacy { default 0; ~^/old/ 1; }
          server { listen 80; location / { proxy_pass http://127.0.0.1:1; } }
        }
    """,
    )
    imported = import_nginx(str(conf))
    assert imported.errors == []
    assert [(f.line, f.message) for f in imported.warnings] == [(4, "map: not imported")]


def test_a_missing_file_and_tls_listeners(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "nginx", str(tmp_path / "nope.conf")]) == 2
    assert f"{tmp_path / 'nope.conf'}:1: error: cannot read file" in capsys.readouterr().err
    conf = _conf(tmp_path, "server {\n  listen 443 ssl;\n  location / { proxy_pass http://127.0.0.1:1; }\n}\n")
    imported = import_nginx(str(conf))
    assert [(f.line, f.col, f.message.split(":")[0]) for f in imported.warnings] == [(2, 3, "listen 443 ssl")]


def test_import_without_a_kind_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import"]) == 2
    assert "facade import: say what to import" in capsys.readouterr().err
