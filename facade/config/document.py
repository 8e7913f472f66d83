"""``facade.yaml`` -> ``Config``: the top-level reader, ``check_config`` and ``load_config``.

The top level, the listener, admin, limits, normalization, workers, shadow and mesh sections are
read here; services and routes have their own modules.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, cast

from ..errors import ConfigError, Problem
from ..yamlfile import (
    Node,
    Problems,
    YamlDocument,
    read_bool,
    read_duration,
    read_int,
    read_size,
    read_str,
    read_str_list,
)

if TYPE_CHECKING:
    from facade.mesh.config import MeshSpec  # the optional mesh package reads the mesh: section

from .model import (
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_LISTEN,
    AdminSpec,
    Config,
    Limits,
    NormalizeSpec,
    ShadowSpec,
    TLSListener,
)
from .reachability import unreachable_routes
from .reading import (
    _SHADOW_FIELDS,
    _SHADOW_MAX_CONCURRENCY,
    _SHADOW_MAX_QUEUE,
    _SHADOW_MAX_RING,
    _TOKEN_RE,
    _TOP_FIELDS,
    ENV_ADMIN_TOKEN,
    _Ctx,
    _nonempty_str,
    _positive_duration,
    _read_cidrs,
    _read_listen,
    _read_state_store,
)
from .routes import _read_routes
from .services import _declared_subsets, _read_services


def parse_config(doc: YamlDocument, *, env: Mapping[str, str] | None = None) -> tuple[Config | None, list[Problem]]:
    """Validate a loaded ``facade.yaml`` and build the frozen Config.

    Returns ``(config, problems)`` with every error and warning in file order; ``config`` is
    None when any problem is an error. Relative paths resolve against the file's directory.
    ``env`` (default ``os.environ``) supplies ``FACADE_ADMIN_TOKEN`` when the file has no token.
    The only I/O is checking that referenced certificate files exist.
    """
    problems = Problems(doc.file)
    ctx = _Ctx(problems, os.path.dirname(doc.file), os.environ if env is None else env)
    f = doc.root.fields(problems, _TOP_FIELDS)

    listen = _read_listen(f.get("listen"), problems, DEFAULT_LISTEN)
    tls = _read_listener_tls(f.get("tls"), ctx)
    admin = _read_admin(f.get("admin"), ctx)
    state_dir = ctx.path(_nonempty_str(f.get("state_dir"), problems) or ".facade")
    state_store = _read_state_store(f.get("state_store"), problems)
    migrations = _nonempty_str(f.get("migrations"), problems)
    trusted = _read_cidrs(f.get("trusted_proxies"), problems)
    access_log = read_bool(f.get("access_log"), problems, default=False)
    mark_responses = read_bool(f.get("mark_responses"), problems, default=False)
    underscores = cast(
        Literal["drop", "reject", "allow"],
        read_str(f.get("headers_with_underscores"), problems, default="drop", choices=("drop", "reject", "allow")),
    )
    debug_error_details = read_bool(f.get("debug_error_details"), problems, default=False)
    limits = _read_limits(f.get("limits"), problems)
    normalize = _read_normalize(f.get("normalize"), problems)
    services = _read_services(f.get("services"), ctx)
    # Routes may name any declared service, even one with errors of its own (reported there).
    services_node = f.get("services")
    declared = [name for name, _ in services_node.items()] if services_node is not None else []
    backends = declared + _declared_subsets(services_node)
    routes = _read_routes(f.get("routes"), ctx, backends, doc.root)
    mesh = _read_mesh(f.get("mesh"), problems, declared, ctx)
    shadow_spec = _read_shadow(f.get("shadow"), problems)
    workers = _read_workers(f.get("workers"), problems)

    if not problems.errors:
        for later, earlier in unreachable_routes([r for r, _ in routes]):
            route, node = routes[later]
            shadow = routes[earlier][0]
            problems.warn(
                node,
                f"route {route.name!r} can never match: route {shadow.name!r} (line {shadow.line}) matches first",
            )
    found = problems.sorted()
    if problems.errors:
        return None, found
    config = Config(
        source=doc.file,
        sha256=hashlib.sha256(doc.text.encode("utf-8")).hexdigest(),
        listen=listen,
        tls=tls,
        admin=admin,
        limits=limits,
        normalize=normalize,
        trusted_proxies=tuple(trusted),
        services=tuple(services),
        routes=tuple(r for r, _ in routes),
        state_dir=state_dir,
        state_store=state_store,
        migrations_dir=ctx.path(migrations) if migrations is not None else None,
        access_log=access_log,
        mark_responses=mark_responses,
        headers_with_underscores=underscores,
        debug_error_details=debug_error_details,
        mesh=mesh,
        shadow=shadow_spec,
        warnings=tuple(p for p in found if p.severity == "warning"),
        workers=workers,
    )
    return config, found


MAX_WORKERS = 64


def parse_workers(value: object, cores: int | None = None) -> int:
    """The number of worker processes ``value`` asks for: an integer 1..64 or ``"auto"`` (one per core).

    Shared by ``workers:`` and ``facade serve --workers``; raises ``ValueError`` naming what is wrong.
    """
    if value == "auto":
        return max(1, min(MAX_WORKERS, cores if cores is not None else os.cpu_count() or 1))
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"workers must be an integer 1..{MAX_WORKERS} or 'auto', got {value!r}")  # noqa: TRY004
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"workers must be within 1..{MAX_WORKERS} (or 'auto'), got {value}")
    return value


def _read_workers(node: Node | None, problems: Problems) -> int | Literal["auto"]:
    """``workers:``: 1..64 or ``auto`` (``parse_workers``)."""
    if node is None:
        return 1
    value = node.value if node.is_scalar else None
    try:
        parse_workers(value)
    except ValueError as exc:
        problems.error(node, str(exc))
        return 1
    return "auto" if value == "auto" else int(value)  # type: ignore[arg-type]


def _read_shadow(node: Node | None, problems: Problems) -> ShadowSpec:
    """The ``shadow:`` section (sender limits and defaults); ranges checked with positions."""
    if node is None or node.is_null:
        return ShadowSpec()
    f = node.fields(problems, _SHADOW_FIELDS)
    redact = f.get("redact")
    redact_fields: dict[str, Node] = {}
    if redact is not None and not redact.is_null:
        redact_fields = redact.fields(problems, ("headers", "fields"))
    headers = read_str_list(redact_fields.get("headers"), problems, default=[])
    for element, name in zip((redact_fields["headers"].elements() if "headers" in redact_fields else []), headers,
                             strict=False):
        if not _TOKEN_RE.match(name):
            problems.error(element, f"not a header name: {name!r}")
    fields = read_str_list(redact_fields.get("fields"), problems, default=[])
    from ..diff import Redaction  # pure; imported here so reading a config stays light

    for element, name in zip((redact_fields["fields"].elements() if "fields" in redact_fields else []), fields,
                             strict=False):
        try:
            if not name:
                raise ValueError("must not be empty")
            Redaction.of(fields=[name])
        except ValueError as exc:  # the diff engine's own message, at the field's position
            problems.error(element, str(exc))
    max_body = read_size(f.get("max_body"), problems)
    max_queued = read_size(f.get("max_queued_bytes"), problems)
    if max_body is not None and max_queued is not None and 0 < max_queued < max_body:
        problems.warn(f["max_queued_bytes"], f"smaller than max_body ({max_body} bytes): a full-size copy never fits")
    timeout = read_duration(f.get("timeout"), problems, min=0.001)
    return ShadowSpec(
        concurrency=read_int(f.get("concurrency"), problems, min=1, max=_SHADOW_MAX_CONCURRENCY),
        queue_size=read_int(f.get("queue_size"), problems, min=0, max=_SHADOW_MAX_QUEUE),
        max_body=max_body,
        timeout=timeout,
        max_queued_bytes=max_queued,
        host_suffix=read_bool(f.get("host_suffix"), problems),
        learn_noise=read_bool(f.get("learn_noise"), problems),
        ring_size=read_int(f.get("ring_size"), problems, min=1, max=_SHADOW_MAX_RING),
        redact_headers=tuple(h.lower() for h in headers),
        redact_fields=tuple(fields),
        sender=read_str(f.get("sender"), problems, choices=("process", "inline")),
    )


def _read_mesh(node: Node | None, problems: Problems, services: list[str], ctx: _Ctx) -> MeshSpec | None:
    """The ``mesh:`` section is the mesh package's to read (identity, mTLS modes, policies)."""
    if node is None or node.is_null:
        return None
    try:
        from facade.mesh.config import parse_mesh
    except ModuleNotFoundError:
        problems.error(node, "the mesh feature is not installed in this build")
        return None
    return parse_mesh(node, problems, services=services, resolve_path=ctx.path)


def check_config(path: str) -> tuple[Config | None, list[Problem]]:
    """Read and validate ``path``; unreadable files and YAML syntax errors become Problems."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return None, [Problem(path, 1, 1, "", f"cannot read file: {exc.strerror or exc}")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(path, 1, 1, "", f"file is not UTF-8: {exc.reason}")]
    try:
        doc = YamlDocument.load(text, path)
    except ConfigError as exc:
        return None, list(exc.problems)
    return parse_config(doc)


def load_config(path: str) -> Config:
    """Read and validate ``path``. Raises ConfigError with every problem when any is an error;
    warnings of a valid file are on ``Config.warnings``."""
    config, problems = check_config(path)
    if config is None:
        raise ConfigError(problems)
    return config


# -- listener, admin, limits -------------------------------------------------------------------


def _read_listener_tls(node: Node | None, ctx: _Ctx) -> TLSListener | None:
    if node is None or node.is_null:
        return None
    f = node.fields(ctx.problems, ("cert", "key", "client_ca"), required=("cert", "key"))
    cert = ctx.existing_file(f.get("cert"))
    key = ctx.existing_file(f.get("key"))
    client_ca = ctx.existing_file(f.get("client_ca"))
    if cert is None or key is None:
        return None
    return TLSListener(cert_file=cert, key_file=key, client_ca_file=client_ca)


def _read_admin(node: Node | None, ctx: _Ctx) -> AdminSpec:
    listen = DEFAULT_ADMIN_LISTEN
    token: str | None = None
    if node is not None and node.is_scalar and not node.is_null:
        listen = _read_listen(node, ctx.problems, DEFAULT_ADMIN_LISTEN)
    elif node is not None and not node.is_null:
        f = node.fields(ctx.problems, ("listen", "token"))
        listen = _read_listen(f.get("listen"), ctx.problems, DEFAULT_ADMIN_LISTEN)
        token = _nonempty_str(f.get("token"), ctx.problems)
    if token is None:
        token = ctx.env.get(ENV_ADMIN_TOKEN) or None  # the file wins; the environment fills in
    return AdminSpec(listen=listen, token=token)


def _read_limits(node: Node | None, problems: Problems) -> Limits:
    d = Limits()
    if node is None or node.is_null:
        return d
    f = node.fields(
        problems,
        ("max_request_headers", "max_request_headers_count", "max_request_body", "max_concurrent_requests", "header_timeout"),
    )
    headers = read_size(f.get("max_request_headers"), problems, default=d.max_request_headers)
    if headers < 1024 and "max_request_headers" in f:
        problems.error(f["max_request_headers"], f"must be at least 1KiB, got {headers} bytes")
        headers = d.max_request_headers
    body_node = f.get("max_request_body")
    body = None if body_node is None or body_node.is_null else read_size(body_node, problems, default=None)
    return Limits(
        max_request_headers=headers,
        max_request_body=body,
        max_concurrent_requests=read_int(
            f.get("max_concurrent_requests"), problems, default=d.max_concurrent_requests, min=1
        ),
        header_timeout=_positive_duration(f.get("header_timeout"), problems, d.header_timeout),
        max_request_headers_count=read_int(
            f.get("max_request_headers_count"), problems, default=d.max_request_headers_count, min=1, max=10_000
        ),
    )


def _read_normalize(node: Node | None, problems: Problems) -> NormalizeSpec:
    d = NormalizeSpec()
    if node is None or node.is_null:
        return d
    f = node.fields(problems, ("merge_slashes", "reject_encoded_slash", "semicolons"))
    return NormalizeSpec(
        merge_slashes=read_bool(f.get("merge_slashes"), problems, default=d.merge_slashes),
        reject_encoded_slash=read_bool(f.get("reject_encoded_slash"), problems, default=d.reject_encoded_slash),
        semicolons=cast(
            Literal["reject", "keep"],
            read_str(f.get("semicolons"), problems, default=d.semicolons, choices=("reject", "keep")),
        ),
    )


