"""Plan pipelines: webhooks, notification targets and Prometheus gates, as validated values.

Parsed here (with positions), called in ``facade.migration.callouts`` (the I/O edge), judged in
``facade.migration.gates`` (pure). Flagger's webhook semantics, per plan (every step) or per step::

    webhooks:
      - name: approve                 # default: the kind
        kind: confirm                 # confirm | pre_step | post_step | rollout | rollback | event
        url: http://127.0.0.1:9000/approve
        timeout: 5s                   # each attempt (default 10s, at most 60s)
        retries: 2                    # further attempts after a transport error or a 5xx (default 0, at most 5)
        secret_env: FACADE_HOOK_SECRET   # the HMAC-SHA256 key; inline secrets are refused
        metadata: {team: catalog}     # passed through in the payload
    notify:
      - {url: https://hooks.slack.com/services/..., format: slack}
      - {url: http://127.0.0.1:9000/events, format: json, secret_env: FACADE_HOOK_SECRET}
    steps:
      - weight: 5
        gates:
          prometheus: {url: http://127.0.0.1:9090, query: 'sum(rate(checkout_total[1m]))', min: 0.5}

Secrets are never written in a plan file: ``secret_env`` names an environment variable, which
must be set when the plan is loaded (and is read again at each call, so rotating it needs no reload).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from ..yamlfile import Node, Problems, read_duration, read_float, read_int, read_str

__all__ = [
    "DEFAULT_HOOK_TIMEOUT",
    "DEFAULT_QUERY_TIMEOUT",
    "HOOK_KINDS",
    "MAX_RETRIES",
    "Notification",
    "PromGate",
    "Webhook",
    "read_notifications",
    "read_prometheus_gates",
    "read_webhooks",
]

HookKind = Literal["confirm", "pre_step", "post_step", "rollout", "rollback", "event"]
HOOK_KINDS: tuple[HookKind, ...] = ("confirm", "pre_step", "post_step", "rollout", "rollback", "event")
NotifyFormat = Literal["json", "slack"]
DEFAULT_HOOK_TIMEOUT = 10.0  # Flagger's webhook timeout default
MAX_HOOK_TIMEOUT = 60.0  # an approval is re-asked every check; a minute per attempt is already long
MAX_RETRIES = 5
DEFAULT_QUERY_TIMEOUT = 5.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Webhook:
    """One hook: called with a signed JSON body (``facade.migration.callouts``)."""

    kind: HookKind
    url: str
    name: str
    secret_env: str
    timeout: float = DEFAULT_HOOK_TIMEOUT
    retries: int = 0
    metadata: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "url": self.url, "timeout": self.timeout,
                "retries": self.retries, "secret_env": self.secret_env, "metadata": dict(self.metadata)}


@dataclass(frozen=True, slots=True)
class Notification:
    """Where transitions, gate failures and rollbacks are announced (``json`` or Slack's incoming-webhook format)."""

    url: str
    format: NotifyFormat = "json"
    secret_env: str | None = None
    timeout: float = DEFAULT_HOOK_TIMEOUT

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "format": self.format, "secret_env": self.secret_env, "timeout": self.timeout}


@dataclass(frozen=True, slots=True)
class PromGate:
    """A PromQL instant query whose single value must stay within ``max`` / ``min`` (either or both)."""

    name: str
    url: str
    query: str
    max: float | None = None
    min: float | None = None
    timeout: float = DEFAULT_QUERY_TIMEOUT

    def describe(self) -> str:
        bounds = [f">= {self.min:g}"] if self.min is not None else []
        if self.max is not None:
            bounds.append(f"<= {self.max:g}")
        return f"prometheus {self.name} {' and '.join(bounds)}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "query": self.query, "max": self.max, "min": self.min,
                "timeout": self.timeout}


# -- parsing -----------------------------------------------------------------------------------

_HOOK_FIELDS = ("name", "kind", "url", "timeout", "retries", "secret_env", "secret", "metadata")
_NOTIFY_FIELDS = ("url", "format", "secret_env", "secret", "timeout")
_PROM_FIELDS = ("name", "url", "query", "max", "min", "timeout")


def read_webhooks(node: Node | None, problems: Problems, environ: Mapping[str, str] | None = None) -> tuple[Webhook, ...]:
    """A ``webhooks:`` list (plan or step level); every problem reported at its position."""
    hooks: list[Webhook] = []
    placed: list[Node] = []  # each hook's element, for a duplicate name's position
    for element in _elements(node, problems, "webhooks"):
        fields = element.fields(problems, _HOOK_FIELDS, required=("kind", "url"))
        if not element.is_mapping:
            continue
        kind = read_str(fields.get("kind"), problems, choices=HOOK_KINDS)
        url = _read_url(fields.get("url"), problems)
        name = read_str(fields.get("name"), problems, default=kind or "")
        if name == "" and "name" in fields:
            problems.error(fields["name"], "must not be empty (leave 'name' out to use the kind)")
            continue
        timeout = _read_timeout(fields.get("timeout"), problems, DEFAULT_HOOK_TIMEOUT)
        retries = read_int(fields.get("retries"), problems, default=0, min=0, max=MAX_RETRIES)
        secret_env = _read_secret_env(element, fields, problems, environ, required=True)
        metadata = _read_metadata(fields.get("metadata"), problems)
        if kind is None or url is None or timeout is None or retries is None or secret_env is None:
            continue
        hooks.append(Webhook(kind, url, name, secret_env, timeout, retries, metadata))  # type: ignore[arg-type]
        placed.append(element)
    seen: set[str] = set()
    for hook, element in zip(hooks, placed, strict=True):
        if hook.name in seen:
            problems.error(element.get("name") or element, f"hook name {hook.name!r} is used twice here; "
                           "give each hook a distinct 'name'")
        seen.add(hook.name)
    return tuple(hooks)


def read_notifications(
    node: Node | None, problems: Problems, environ: Mapping[str, str] | None = None
) -> tuple[Notification, ...]:
    """A plan's ``notify:`` list."""
    targets: list[Notification] = []
    for element in _elements(node, problems, "notify"):
        fields = element.fields(problems, _NOTIFY_FIELDS, required=("url",))
        if not element.is_mapping:
            continue
        url = _read_url(fields.get("url"), problems)
        fmt = read_str(fields.get("format"), problems, default="json", choices=("json", "slack"))
        timeout = _read_timeout(fields.get("timeout"), problems, DEFAULT_HOOK_TIMEOUT)
        secret_env = _read_secret_env(element, fields, problems, environ, required=False)
        if url is None or fmt is None or timeout is None:
            continue
        targets.append(Notification(url, fmt, secret_env, timeout))  # type: ignore[arg-type]
    return tuple(targets)


def read_prometheus_gates(node: Node | None, problems: Problems) -> tuple[PromGate, ...]:
    """A step's ``gates.prometheus``: one mapping or a list of them."""
    if node is None or node.is_null:
        return ()
    elements = node.elements() if node.is_list else [node]
    gates: list[PromGate] = []
    for index, element in enumerate(elements):
        fields = element.fields(problems, _PROM_FIELDS, required=("url", "query"))
        if not element.is_mapping:
            continue
        url = _read_url(fields.get("url"), problems)
        query: str | None = read_str(fields.get("query"), problems)
        if query is not None and not query.strip():
            problems.error(fields["query"], "must be a PromQL expression, got an empty string")
            query = None
        high = read_float(fields.get("max"), problems)
        low: float | None = read_float(fields.get("min"), problems)
        if "max" not in fields and "min" not in fields:
            problems.error(element, "needs 'max' or 'min' (or both): the bound the query's value must keep")
        elif high is not None and low is not None and low > high:
            problems.error(fields["min"], f"min {low:g} is above max {high:g}: no value could pass")
            low = None
        name = read_str(fields.get("name"), problems, default=str(index) if node.is_list else "query")
        timeout = _read_timeout(fields.get("timeout"), problems, DEFAULT_QUERY_TIMEOUT)
        if url is None or query is None or (high is None and low is None) or timeout is None:
            continue
        gates.append(PromGate(name, url, query, high, low, timeout))
    return tuple(gates)


def _elements(node: Node | None, problems: Problems, what: str) -> list[Node]:
    if node is None or node.is_null:
        return []
    if not node.is_list:
        problems.error(node, f"must be a list of {what} entries, got {node.kind}")
        return []
    return node.elements()


def _read_url(node: Node | None, problems: Problems) -> str | None:
    url = read_str(node, problems)
    if url is None or node is None:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        problems.error(node, f"bad URL {url!r}: {exc}")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.error(node, f"bad URL {url!r}: expected http://HOST[:PORT]/PATH or https://...")
        return None
    if any(c.isspace() or not c.isprintable() for c in url):
        # The HTTP client refuses such a URL only when the hook is called, mid-migration.
        problems.error(node, f"bad URL {url!r}: contains a space or control character (percent-encode it, e.g. %20)")
        return None
    return url


def _read_timeout(node: Node | None, problems: Problems, default: float) -> float | None:
    if node is not None and node.is_scalar and isinstance(node.value, str) and node.value.strip().startswith("-"):
        problems.error(node, f"must be a positive duration, got {node.value}")
        return None
    timeout = read_duration(node, problems, default=default, min=0.001)
    if timeout is not None and timeout > MAX_HOOK_TIMEOUT:
        problems.error(node, f"must be at most {MAX_HOOK_TIMEOUT:g}s, got {node.value if node else timeout}")
        return None
    return timeout


def _read_secret_env(
    element: Node, fields: dict[str, Node], problems: Problems, environ: Mapping[str, str] | None, *, required: bool
) -> str | None:
    if "secret" in fields:
        problems.error(fields["secret"], "inline secrets are not accepted in a plan file: put the secret in an "
                       "environment variable and name it with 'secret_env: NAME'")
        return None
    node = fields.get("secret_env")
    if node is None:
        if required:
            problems.error(element, "needs 'secret_env: NAME': the environment variable holding the HMAC secret "
                           "the body is signed with", path=f"{element.path}.secret_env")
        return None
    name = read_str(node, problems)
    if name is None:
        return None
    if not _ENV_NAME.match(name):
        problems.error(node, f"must be an environment variable name (letters, digits, _), got {name!r}")
        return None
    env = os.environ if environ is None else environ
    if not env.get(name):
        problems.error(node, f"environment variable {name} is not set (or empty): the secret it references is missing")
        return None
    return name


def _read_metadata(node: Node | None, problems: Problems) -> tuple[tuple[str, str], ...]:
    if node is None or node.is_null:
        return ()
    if not node.is_mapping:
        problems.error(node, f"must be a mapping of names to strings, got {node.kind}")
        return ()
    out = []
    for key, value in node.items():
        text = read_str(value, problems)
        if text is not None:
            out.append((key, text))
    return tuple(out)

