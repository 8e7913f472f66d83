"""``nginx.conf`` -> facade services and routes (``facade import nginx``).

crossplane (nginx's own Python parser) reads the file and its includes; this module only
translates. What it translates (docs/import.md has the full table):

- ``upstream`` blocks -> services: servers, ``weight=`` (one endpoint group per weight),
  ``backup`` (a group at priority 1), ``least_conn`` / ``random``, ``max_fails`` / ``fail_timeout``;
- ``server`` blocks: ``server_name`` (exact, ``*.suffix``, ``.suffix``) -> route hosts, the default
  server -> routes for any host, placed last;
- ``location`` (``=``, ``^~``, prefix, ``~``, ``~*``) with ``proxy_pass`` -> routes, ``return 30x``
  -> redirects, ``return <code> [text]`` -> direct responses, ``proxy_set_header`` / ``add_header``
  -> header rules.

nginx does not pick the first location that matches: an exact ``=`` location wins, then the longest
prefix, which wins at once when it is ``^~``; otherwise the regex locations are tried in file order
and the longest prefix is used only when none matches. Server names are chosen exact first, then
the longest ``*.`` wildcard, then the default server. ``nginx_precedence`` turns
both rules into the facade's first-match order, so the imported table decides as nginx does.
Everything else is reported with its position as lost.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..config.routes import RESERVED_REQUEST_HEADERS
from .emit import Imported, unique_name
from .nginx_precedence import Location, Server, host_tiers, nginx_regex_to_facade, order_locations

__all__ = ["import_nginx", "nginx_regex_to_facade"]

_REDIRECT_CODES = (301, 302, 303, 307, 308)
# Process-level directives with no routing meaning: skipped without a report.
_QUIET = frozenset(
    {
        "user",
        "worker_processes",
        "worker_rlimit_nofile",
        "worker_connections",
        "pid",
        "events",
        "error_log",
        "daemon",
        "master_process",
        "load_module",
        "include",
        "types",
        "default_type",
        "access_log",
        "log_format",
        "client_body_temp_path",
        "proxy_temp_path",
        "fastcgi_temp_path",
        "uwsgi_temp_path",
        "scgi_temp_path",
        "sendfile",
        "tcp_nopush",
        "tcp_nodelay",
        "server_tokens",
        "keepalive_timeout",
        "types_hash_max_size",
        "server_names_hash_bucket_size",
        "multi_accept",
        "use",
    }
)
# Inside an upstream block: the facade pools connections and keeps state per service anyway.
_UPSTREAM_QUIET = frozenset({"keepalive", "keepalive_timeout", "keepalive_requests", "zone"})
# proxy_set_header values the facade already produces itself (it keeps Host, and rebuilds X-Forwarded-*).
_HEADER_EQUIVALENT = {
    "host": ("$host", "$http_host"),
    "x-forwarded-for": ("$proxy_add_x_forwarded_for", "$remote_addr"),
    "x-forwarded-proto": ("$scheme",),
    "x-forwarded-host": ("$host", "$http_host"),
    "connection": ("",),
}
# Blocks whose entries are table rows, not directives ("text/html html;" in types, "~^/a 1;" in map).
_TABLE_BLOCKS = frozenset({"types", "map", "geo", "split_clients", "charset_map", "match"})
_DIRECTIVE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VAR = re.compile(r"\$(\w+|\{\w+\})")


# -- the parsed tree, with includes resolved and positions attached -------------------------------


@dataclass(frozen=True)
class Stmt:
    file: str
    line: int
    col: int  # 0 when the directive cannot be found on its line
    directive: str
    args: tuple[str, ...]
    block: tuple[Stmt, ...] | None


class _Sources:
    """Source lines per file, to give a directive its column (crossplane reports lines only)."""

    def __init__(self) -> None:
        self._lines: dict[str, list[str]] = {}

    def col(self, file: str, line: int, directive: str) -> int:
        if file not in self._lines:
            try:
                with open(file, encoding="utf-8", errors="replace") as fh:
                    self._lines[file] = fh.read().splitlines()
            except OSError:
                self._lines[file] = []
        lines = self._lines[file]
        if not 0 < line <= len(lines):
            return 0
        m = re.search(r"(?<![\w$])" + re.escape(directive) + r"(?![\w])", lines[line - 1])
        return m.start() + 1 if m else 0


def _expand(
    payload: dict[str, Any],
    index: int,
    stmts: list[dict[str, Any]],
    src: _Sources,
    found: Imported,
    *,
    free_form: bool = False,
) -> tuple[Stmt, ...]:
    file = payload["config"][index]["file"]
    out: list[Stmt] = []
    for s in stmts:
        if not free_form and not _DIRECTIVE_NAME.match(s["directive"]):
            # crossplane reads any word as a directive; nginx's are identifiers ("services:" is YAML).
            col = src.col(file, s["line"], s["directive"])
            found.error(file, s["line"], col, f"{s['directive']!r} is not an nginx directive: is this an nginx config?")
            continue
        if s["directive"] == "include" and "includes" in s:
            for i in s["includes"]:
                out.extend(_expand(payload, i, payload["config"][i]["parsed"], src, found, free_form=free_form))
            continue
        inner_free = free_form or s["directive"] in _TABLE_BLOCKS
        block = _expand(payload, index, s["block"], src, found, free_form=inner_free) if "block" in s else None
        col = src.col(file, s["line"], s["directive"])
        out.append(Stmt(file, s["line"], col, s["directive"], tuple(s["args"]), block))
    return tuple(out)


def _unescape(text: str) -> str:
    # nginx unescapes \" \' \\ \t \r \n inside quoted strings; crossplane keeps them as written.
    return re.sub(r"\\([\"'\\trn])", lambda m: {"t": "\t", "r": "\r", "n": "\n"}.get(m[1], m[1]), text)


# -- upstreams -> services ------------------------------------------------------------------------


@dataclass
class _Upstream:
    name: str
    stmt: Stmt
    primary: list[tuple[str, int]] = field(default_factory=list)  # (host:port, weight)
    backup: list[str] = field(default_factory=list)
    load_balancer: str | None = None
    max_fails: int | None = None
    fail_timeout: str | None = None


def _read_upstream(stmt: Stmt, out: Imported) -> _Upstream | None:
    if len(stmt.args) != 1:
        out.error(stmt.file, stmt.line, stmt.col, "upstream needs exactly one name")
        return None
    up = _Upstream(stmt.args[0], stmt)
    for s in stmt.block or ():
        if s.directive == "server":
            _read_upstream_server(s, up, out)
        elif s.directive == "least_conn":
            up.load_balancer = "least_request"
        elif s.directive == "random":
            up.load_balancer = "random"
            if s.args:
                out.lost(s.file, s.line, s.col, f"random {' '.join(s.args)}: the facade picks uniformly at random")
        elif s.directive in _UPSTREAM_QUIET:
            continue
        else:
            out.lost(s.file, s.line, s.col, f"{s.directive} in upstream {up.name!r}: balanced round robin instead")
    if not up.primary and not up.backup:
        out.error(stmt.file, stmt.line, stmt.col, f"upstream {up.name!r} has no usable server")
        return None
    if not up.primary:  # only backups: nginx uses them as the servers
        up.primary, up.backup = [(a, 1) for a in up.backup], []
    return up


def _read_upstream_server(s: Stmt, up: _Upstream, out: Imported) -> None:
    if not s.args:
        out.error(s.file, s.line, s.col, "server needs an address")
        return
    address = s.args[0]
    if address.startswith("unix:"):
        out.lost(s.file, s.line, s.col, f"server {address}: the facade connects over TCP only; server skipped")
        return
    weight, backup = 1, False
    for param in s.args[1:]:
        key, _, value = param.partition("=")
        if key == "weight" and value.isdigit() and int(value) > 0:
            weight = int(value)
        elif key == "backup" and not value:
            backup = True
        elif key == "down" and not value:
            out.lost(s.file, s.line, s.col, f"server {address} is marked down: not imported")
            return
        elif key == "max_fails" and value.isdigit():
            up.max_fails = int(value)
        elif key == "fail_timeout" and value:
            up.fail_timeout = value
        else:
            out.lost(s.file, s.line, s.col, f"server {address}: parameter {param!r} ignored")
    if ":" not in address.rsplit("]", 1)[-1]:
        address += ":80"
    if backup:
        up.backup.append(address)
    else:
        up.primary.append((address, weight))


def _service_spec(up: _Upstream, scheme: str, out: Imported) -> dict[str, Any]:
    def url(address: str) -> str:
        return f"{scheme}://{address}"

    spec: dict[str, Any] = {}
    weights = sorted({w for _, w in up.primary}, reverse=True)
    if len(weights) == 1 and not up.backup:
        spec["endpoints"] = [url(a) for a, _ in up.primary]
    else:
        # The facade weighs groups, not endpoints: servers of equal weight share a group whose
        # weight is their sum, so each server keeps its nginx share of the traffic.
        groups: list[dict[str, Any]] = []
        for w in weights:
            members = [url(a) for a, wa in up.primary if wa == w]
            groups.append({"name": f"weight-{w}", "endpoints": members, "weight": w * len(members)})
        if up.backup:
            groups.append({"name": "backup", "endpoints": [url(a) for a in up.backup], "priority": 1})
        spec["groups"] = groups
    if up.load_balancer:
        spec["load_balancer"] = up.load_balancer
    if up.max_fails or up.fail_timeout:
        detection: dict[str, Any] = {"consecutive_gateway_errors": up.max_fails or 1}
        timeout = _duration(up.fail_timeout or "10s")
        if timeout is None:
            out.lost(
                up.stmt.file,
                up.stmt.line,
                up.stmt.col,
                f"fail_timeout={up.fail_timeout}: not a duration the facade reads",
            )
        else:
            detection |= {"base_ejection": timeout, "max_ejection": timeout, "max_ejection_percent": 100}
        spec["outlier_detection"] = detection
    return spec


def _duration(value: str) -> str | None:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    return f"{m[1]}{m[2] or 's'}" if m else None


# -- servers and locations ------------------------------------------------------------------------


class _Translator:
    def __init__(self, out: Imported) -> None:
        self.out = out
        self.upstreams: dict[str, _Upstream] = {}
        self.service_names: set[str] = set()
        self.service_of: dict[tuple[str, str], str] = {}  # (upstream or host:port, scheme) -> service

    # services are declared on first use, so a service's scheme is the one proxy_pass gives
    def service_for(self, stmt: Stmt, target: str) -> str | None:
        url = target
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.netloc:
            self.out.lost(
                stmt.file, stmt.line, stmt.col, f"proxy_pass {target}: only http:// and https:// are imported"
            )
            return None
        netloc = parts.netloc
        key = (netloc, scheme)
        if key in self.service_of:
            return self.service_of[key]
        upstream = self.upstreams.get(netloc)
        name = unique_name(netloc if upstream else netloc.replace(":", "-"), self.service_names, fallback="service")
        if upstream is not None:
            spec = _service_spec(upstream, scheme, self.out)
        else:
            port = parts.port
            host = parts.hostname or ""
            netloc = f"[{host}]" if ":" in host else host
            spec = {"endpoints": [f"{scheme}://{netloc}" + (f":{port}" if port else "")]}
        self.out.services[name] = spec
        self.service_of[key] = name
        return name

    def headers(self, stmts: tuple[Stmt, ...], directive: str, inherited: dict[str, Any]) -> dict[str, Any]:
        """``proxy_set_header`` / ``add_header`` of one level; nginx inherits the outer level's only
        when this level has none of its own."""
        own = [s for s in stmts if s.directive == directive]
        if not own:
            return inherited
        ops: dict[str, Any] = {}
        for s in own:
            if len(s.args) < 2:
                self.out.error(s.file, s.line, s.col, f"{directive} needs a name and a value")
                continue
            name, value = s.args[0].lower(), _unescape(s.args[1])
            if directive == "add_header" and len(s.args) > 2 and s.args[2] != "always":
                self.out.lost(s.file, s.line, s.col, f"add_header parameter {s.args[2]!r} ignored")
            if directive == "proxy_set_header" and value in _HEADER_EQUIVALENT.get(name, ()):
                continue  # the facade already does this
            if _VAR.search(value):
                self.out.lost(s.file, s.line, s.col, f"{directive} {s.args[0]} {s.args[1]}: variables are not imported")
                continue
            if name in RESERVED_REQUEST_HEADERS:
                self.out.lost(s.file, s.line, s.col, f"{directive} {s.args[0]}: the facade sets this header itself")
                continue
            if directive == "proxy_set_header" and value == "":
                ops.setdefault("remove", []).append(name)  # an empty value drops the header in nginx
            elif directive == "proxy_set_header":
                ops.setdefault("set", {})[name] = value
            else:  # add_header appends to what the upstream sent
                ops.setdefault("add", {})[name] = value
        return ops

    def return_action(self, s: Stmt) -> dict[str, Any] | None:
        args = s.args
        if not args or len(args) > 2:
            self.out.error(s.file, s.line, s.col, "return needs a code and an optional text or URL")
            return None
        if len(args) == 1 and not args[0].isdigit():
            code, text = 302, args[0]  # "return URL" is a 302
        elif not args[0].isdigit():
            self.out.error(s.file, s.line, s.col, f"return code must be a number, got {args[0]!r}")
            return None
        else:
            code, text = int(args[0]), _unescape(args[1]) if len(args) == 2 else ""
        if code in _REDIRECT_CODES:
            redirect = self.redirect(s, text)
            if redirect is None:
                return None
            return {"redirect": redirect | {"code": code}}
        if not 100 <= code <= 599 or code == 444:
            self.out.lost(
                s.file,
                s.line,
                s.col,
                f"return {code}: nginx's special code is answered as a plain {min(max(code, 100), 599)}",
            )
            code = min(max(code, 100), 599)
        if _VAR.search(text):
            self.out.lost(s.file, s.line, s.col, "return text with variables: sent literally")
        response: dict[str, Any] = {"status": code}
        if text:
            response["body"] = text
        return {"direct_response": response}

    def redirect(self, s: Stmt, target: str) -> dict[str, Any] | None:
        # The usual shapes: "https://$host$request_uri", "https://new.example/", "/new/path".
        keep_path = False
        rest = target
        for tail in ("$request_uri", "$uri", "$uri$is_args$args"):
            if rest.endswith(tail):
                rest, keep_path = rest[: -len(tail)], True
                break
        m = re.fullmatch(r"(?:(https?|\$scheme)://([^/]*))?(/.*)?", rest)
        if not target or m is None or (rest and not m[1] and not m[3] and not keep_path):
            self.out.lost(s.file, s.line, s.col, f"return redirect to {target!r}: not a URL the facade can express")
            return None
        redirect: dict[str, Any] = {}
        scheme, authority, path = m[1], m[2], m[3]
        if scheme and scheme != "$scheme":
            redirect["scheme"] = scheme
        if authority and authority not in ("$host", "$http_host", "$server_name"):
            host, _, port = authority.rpartition(":") if ":" in authority.split("]")[-1] else (authority, "", "")
            if _VAR.search(authority):
                self.out.lost(s.file, s.line, s.col, f"redirect host {authority!r}: variables are not imported")
                return None
            redirect["host"] = host
            if port:
                redirect["port"] = int(port)
        if path and _VAR.search(path):
            self.out.lost(s.file, s.line, s.col, f"redirect path {path!r}: variables are not imported")
            return None
        if path and not keep_path:
            redirect["path"] = path
        elif not keep_path and authority:
            redirect["path"] = "/"  # "https://new.example" sends every request to its root
        if not redirect:
            self.out.lost(s.file, s.line, s.col, f"return redirect to {target!r} points at the same URL: not imported")
            return None
        return redirect

    def location(self, s: Stmt, proxy_headers: dict[str, Any], add_headers: dict[str, Any]) -> Location | None:
        if not s.args or len(s.args) > 2:
            self.out.error(s.file, s.line, s.col, "location needs a path, optionally after =, ^~, ~ or ~*")
            return None
        modifier, pattern = (s.args[0], s.args[1]) if len(s.args) == 2 else ("", s.args[0])
        if modifier not in ("=", "^~", "~", "~*", ""):
            self.out.error(s.file, s.line, s.col, f"unknown location modifier {modifier!r}")
            return None
        if pattern.startswith("@"):
            self.out.lost(s.file, s.line, s.col, f"named location {pattern}: reached only through error_page/try_files")
            return None
        if modifier in ("~", "~*"):
            try:
                nginx_regex_to_facade(pattern, ignore_case=modifier == "~*")
            except ValueError as exc:
                self.out.error(s.file, s.line, s.col, str(exc))
                return None
        elif not pattern.startswith("/"):
            self.out.lost(
                s.file, s.line, s.col, f"location {pattern!r} does not start with '/': no request path matches it"
            )
            return None
        block = s.block or ()
        proxy_headers = self.headers(block, "proxy_set_header", proxy_headers)
        add_headers = self.headers(block, "add_header", add_headers)
        action: dict[str, Any] | None = None
        proxies = False
        for d in block:
            if d.directive == "return" and action is None:
                action = self.return_action(d) or {}
            elif d.directive == "proxy_pass":
                proxies = True
            elif d.directive == "location":
                self.out.lost(d.file, d.line, d.col, "nested location: not imported (the outer location decides)")
            elif d.directive not in ("proxy_set_header", "add_header", "return", "proxy_http_version"):
                self.out.lost(d.file, d.line, d.col, f"{d.directive}: not imported")
        if action is None:
            proxy = next((d for d in block if d.directive == "proxy_pass"), None)
            if proxy is None:
                self.out.lost(
                    s.file,
                    s.line,
                    s.col,
                    "location without proxy_pass or return (files, fastcgi, ...): "
                    "imported as a 501 direct response so later locations keep their precedence",
                )
                action = {"direct_response": {"status": 501, "body": "not imported from nginx"}}
            else:
                action = self.proxy_action(proxy, modifier, pattern) or {}
        if not action:  # the reason was reported; keep the location's place with an answer that says so
            action = {"direct_response": {"status": 501, "body": "not imported from nginx"}}
        if "direct_response" not in action and "redirect" not in action and proxy_headers:
            action["request_headers"] = proxy_headers
        if add_headers:
            action["response_headers"] = add_headers
        return Location(s, modifier, pattern, action, proxies)

    def proxy_action(self, d: Stmt, modifier: str, pattern: str) -> dict[str, Any] | None:
        if len(d.args) != 1:
            self.out.error(d.file, d.line, d.col, "proxy_pass needs exactly one URL")
            return None
        target = d.args[0]
        if _VAR.search(target):
            self.out.lost(d.file, d.line, d.col, f"proxy_pass {target}: variables are not imported")
            return None
        parts = urlsplit(target)
        service = self.service_for(d, f"{parts.scheme}://{parts.netloc}")
        if service is None:
            return None
        action: dict[str, Any] = {"backend": service}
        uri = target[len(f"{parts.scheme}://{parts.netloc}") :]
        if uri:
            # nginx replaces the part of the path the location matched with this URI.
            if modifier in ("", "^~") and pattern.endswith("/") and uri.startswith("/"):
                if uri != pattern:
                    action["rewrite"] = {"prefix": uri}
            else:
                self.out.lost(
                    d.file,
                    d.line,
                    d.col,
                    f"proxy_pass URI {uri!r} on location {modifier} {pattern}: "
                    "the facade rewrites only prefixes ending in '/'; the path is sent unchanged",
                )
        return action

    def server(self, s: Stmt, index: int, proxy_headers: dict[str, Any], add_headers: dict[str, Any]) -> Server:
        block = s.block or ()
        srv = Server(s, label=f"server{index}")
        names: list[str] = []
        for d in block:
            if d.directive == "server_name":
                names.extend(d.args)
                self.server_names(d, srv)
            elif d.directive == "listen":
                if not d.args:
                    self.out.error(d.file, d.line, d.col, "listen needs an address")
                    continue
                srv.listens.append(d.args[0])
                if "ssl" in d.args[1:] or "http2" in d.args[1:] or "quic" in d.args[1:]:
                    self.out.lost(
                        d.file,
                        d.line,
                        d.col,
                        f"listen {' '.join(d.args)}: TLS and HTTP/2 are set on the "
                        "facade's listener (tls: in facade.yaml), not per server",
                    )
                srv.default = srv.default or any(a in ("default_server", "default") for a in d.args[1:])
        real = [n for n in names if n not in ("", "_")]
        if real:
            srv.label = real[0].lstrip("*.~") or srv.label
        proxy_headers = self.headers(block, "proxy_set_header", proxy_headers)
        add_headers = self.headers(block, "add_header", add_headers)
        for d in block:
            if d.directive == "location":
                loc = self.location(d, proxy_headers, add_headers)
                if loc is not None:
                    srv.locations.append(loc)
            elif d.directive == "return":
                if srv.server_return is None:
                    srv.server_return = self.return_action(d)
            elif d.directive in ("server_name", "listen", "proxy_set_header", "add_header", "proxy_http_version"):
                continue
            elif d.directive not in _QUIET:
                self.out.lost(d.file, d.line, d.col, f"{d.directive}: not imported")
        return srv

    def server_names(self, d: Stmt, srv: Server) -> None:
        for name in d.args:
            host = name.lower()
            if host in ("", "_") or host.startswith("$"):
                continue  # "" and "_" are the usual never-matching names of a catch-all server
            if host.startswith("~"):
                self.out.lost(d.file, d.line, d.col, f"server_name {name}: regex server names are not imported")
            elif host.startswith("."):
                srv.names.append(("dot", host[1:]))
            elif host.startswith("*."):
                srv.names.append(("star", host[2:]))
            elif "*" in host:
                self.out.lost(d.file, d.line, d.col, f"server_name {name}: only leading *. wildcards are imported")
            else:
                srv.names.append(("exact", host))


# -- entry point --------------------------------------------------------------------------------


def import_nginx(path: str) -> Imported:
    """Translate the nginx config at ``path`` (and its includes). Never raises on bad input:
    errors and losses are ``Imported.findings``, located by file and line (and column)."""
    out = Imported()
    try:
        import crossplane
    except ImportError:  # pragma: no cover - a declared dependency
        out.error(path, 1, 0, "the nginx importer needs the 'crossplane' package (pip install crossplane)")
        return out
    if not os.path.isfile(path):
        out.error(path, 1, 0, "cannot read file: no such file")
        return out
    try:
        with open(path, "rb") as fh:
            fh.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        out.error(path, 1, 0, f"cannot read file: {exc}")
        return out
    payload = crossplane.parse(path, comments=False, check_ctx=False, catch_errors=True)
    if payload["errors"]:
        for e in payload["errors"]:
            message = re.sub(r" in \S+:\d+$", "", str(e.get("error") or ""))
            # crossplane gives no text for a last directive left open at the end of the file.
            message = message or "not nginx syntax: a directive without its ';', or a block without its '}'?"
            out.error(e.get("file") or path, int(e.get("line") or 1), 0, message)
        return out
    src = _Sources()
    root = _expand(payload, 0, payload["config"][0]["parsed"], src, out)
    if out.errors:
        return out
    # A site file holds server blocks without the http around them; treat its top level as http.
    http_blocks = [s for s in root if s.directive == "http"]
    contexts = [b.block or () for b in http_blocks] if http_blocks else [root]
    for s in root:
        if http_blocks and s.directive not in ("http",) and s.directive not in _QUIET:
            out.lost(s.file, s.line, s.col, f"{s.directive}: not imported")
    tr = _Translator(out)
    server_stmts: list[tuple[Stmt, dict[str, Any], dict[str, Any]]] = []
    for ctx in contexts:
        proxy_headers = tr.headers(ctx, "proxy_set_header", {})
        add_headers = tr.headers(ctx, "add_header", {})
        for s in ctx:
            if s.directive == "upstream":
                up = _read_upstream(s, out)
                if up is not None:
                    if up.name in tr.upstreams:
                        out.error(s.file, s.line, s.col, f"duplicate upstream {up.name!r}")
                    tr.upstreams[up.name] = up
            elif s.directive == "server":
                server_stmts.append((s, proxy_headers, add_headers))
            elif s.directive not in _QUIET and s.directive not in ("proxy_set_header", "add_header", "http"):
                out.lost(s.file, s.line, s.col, f"{s.directive}: not imported")
    servers = [tr.server(s, i, ph, ah) for i, (s, ph, ah) in enumerate(server_stmts, 1)]
    if not servers:
        out.error(path, 1, 0, "no server blocks: nothing routes requests")
        return out
    _check_listens(servers, out)
    default = next((s for s in servers if s.default), servers[0])
    _emit_routes(servers, default, out)
    return out


def _check_listens(servers: list[Server], out: Imported) -> None:
    ports = {listen.rsplit(":", 1)[-1] for s in servers for listen in s.listens}
    if len(ports) > 1:
        s = servers[0]
        out.lost(
            s.stmt.file,
            s.stmt.line,
            s.stmt.col,
            f"servers listen on {len(ports)} ports ({', '.join(sorted(ports))}): "
            "the facade has one listener, so their routes are merged (the first default server is the default)",
        )


def _route_name(label: str, loc: Location, action: dict[str, Any]) -> str:
    if loc.modifier in ("~", "~*"):
        return f"{label}-regex-line{loc.stmt.line}"
    slug = re.sub(r"[^a-z0-9]+", "-", loc.pattern.lower()).strip("-") or "root"
    if loc.action is not action:  # the "/p" -> "/p/" redirect nginx adds
        return f"{label}-{slug}-add-slash"
    return f"{label}-{slug}" + ("-exact" if loc.modifier == "=" else "")


def _emit_routes(servers: list[Server], default: Server, out: Imported) -> None:
    names: set[str] = set()
    for srv, hosts in host_tiers(servers, default):
        label = srv.label if hosts is not None or srv is not default else "default"
        where = f"{os.path.basename(srv.stmt.file)}:{srv.stmt.line}"
        base_match: dict[str, Any] = {"host": hosts} if hosts is not None else {}
        if srv.server_return is not None:
            route: dict[str, Any] = {"name": unique_name(label, names, fallback="route")}
            route |= {"match": base_match} if hosts else {}
            out.routes.append((f"{where} server {label}: return", route | srv.server_return))
            continue
        covers_all = False
        for loc, action, path_match in order_locations(srv.locations):
            text = f"location {loc.modifier + ' ' if loc.modifier else ''}{loc.pattern}"
            name = unique_name(_route_name(label, loc, action), names, fallback="route")
            route = {"name": name, "match": base_match | {"path": path_match}} | action
            loc_where = f"{os.path.basename(loc.stmt.file)}:{loc.stmt.line}"
            out.routes.append((f"{loc_where} server {label}, {text}", route))
            covers_all = covers_all or path_match == {"prefix": "/"}
        if hosts is not None and not covers_all:
            # nginx answers 404 for a path no location of the chosen server matches; without this
            # the request would fall through to a later server's routes.
            route = {
                "name": unique_name(f"{label}-no-location", names, fallback="route"),
                "match": dict(base_match),
                "direct_response": {"status": 404, "body": "not found"},
            }
            out.routes.append((f"{where} server {label}: no location matches", route))
