"""What every ``facade`` command shares: exit codes, common options, tables, the admin client.

Conventions (README, "CLI reference"):

- ``-c/--config FILE`` (default ``./facade.yaml``, or ``$FACADE_CONFIG``).
- Commands that talk to a running facade find its admin listener from the config's
  ``admin.listen`` or ``--admin URL``, and send the token from the config's ``admin.token``
  or ``$FACADE_ADMIN_TOKEN``.
- Tables for people; ``--json`` for scripts.
- Exit codes below; scripts may rely on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "EXIT_FAILURE",
    "EXIT_GATE_FAILED",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "AdminClient",
    "AdminError",
    "add_admin_options",
    "add_config_option",
    "add_json_option",
    "print_json",
    "render_table",
]

EXIT_OK = 0
EXIT_FAILURE = 1  # something went wrong that is not one of the below
EXIT_INVALID = 2  # bad usage, or a config / plan / policy that failed validation
EXIT_NOT_FOUND = 3  # no such route / migration / service
EXIT_REFUSED = 4  # the action is not allowed in the current state (or 401/409 from the admin API)
EXIT_GATE_FAILED = 5  # a migration gate failed (or was inconclusive) and nothing was forced
EXIT_UNREACHABLE = 6  # the facade's admin listener could not be reached

DEFAULT_CONFIG = "facade.yaml"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get("FACADE_CONFIG", DEFAULT_CONFIG),
        help="config file (default: ./facade.yaml or $FACADE_CONFIG)",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")


def add_admin_options(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument("--admin", metavar="URL", help="admin listener URL (default: from the config's admin.listen)")
    parser.add_argument(
        "--token", help="admin bearer token (default: $FACADE_ADMIN_TOKEN, then the config's admin.token)"
    )
    add_json_option(parser)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain fixed-width table (no colours, so it survives pipes and logs)."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()]
    lines += [fmt.format(*row).rstrip() for row in cells]
    return "\n".join(lines)


class AdminError(Exception):
    """A failed admin API call; ``exit_code`` is what the command should exit with."""

    def __init__(self, message: str, exit_code: int, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status
        self.body = body


_STATUS_EXIT = {400: EXIT_INVALID, 401: EXIT_REFUSED, 403: EXIT_REFUSED, 404: EXIT_NOT_FOUND, 409: EXIT_REFUSED,
                422: EXIT_INVALID}


class AdminClient:
    """httpx client for the admin API; resolves URL and token by the CLI conventions."""

    def __init__(self, *, base_url: str, token: str | None, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"AdminClient(base_url={self.base_url!r}, token={'set' if self.token else 'unset'})"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AdminClient:
        admin_url = getattr(args, "admin", None)
        token = getattr(args, "token", None) or os.environ.get("FACADE_ADMIN_TOKEN")
        if admin_url is None or token is None:
            listen, cfg_token = _admin_from_config(getattr(args, "config", DEFAULT_CONFIG))
            if admin_url is None:
                admin_url = listen
            if token is None:
                token = cfg_token
        if admin_url is None:
            raise AdminError(
                f"cannot find the admin listener: no --admin URL and no readable config {args.config!r}",
                EXIT_UNREACHABLE,
            )
        if "://" not in admin_url:
            admin_url = "http://" + admin_url
        return cls(base_url=admin_url, token=token)

    def request(self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None) -> Any:
        import httpx

        headers = {"accept": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        try:
            with httpx.Client(timeout=self.timeout) as client:
                response = client.request(
                    method, self.base_url + path, json=json_body, params=params, headers=headers
                )
        except httpx.HTTPError as exc:
            raise AdminError(f"cannot reach the facade admin API at {self.base_url}: {exc}", EXIT_UNREACHABLE) from None
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            detail = body.get("error") if isinstance(body, dict) else body
            code = _STATUS_EXIT.get(response.status_code, EXIT_FAILURE)
            raise AdminError(f"{method} {path}: {response.status_code} {detail}", code, response.status_code, body)
        return body

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json_body=body if body is not None else {})


def _admin_from_config(path: str) -> tuple[str | None, str | None]:
    """Read only ``admin.listen`` / ``admin.token`` so a half-broken config still finds the admin API."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    admin = data.get("admin")
    if isinstance(admin, str):
        return admin, None
    if isinstance(admin, dict):
        listen = admin.get("listen", "127.0.0.1:9901")
        token = admin.get("token")
        return str(listen), (str(token) if token is not None else None)
    return "127.0.0.1:9901", None
