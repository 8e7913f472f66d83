"""What every ``facade`` command shares: exit codes, common options, tables, the admin client.

Conventions (README, "CLI reference"):

- The config file, for every command that reads one (``find_config``): ``-c/--config FILE``, else
  ``$FACADE_CONFIG``, else ``./facade.yaml``, else the config of the ``facade up`` running from this
  directory (``./.facade-demo/up.json``); none of them -> a one-line error, exit 2.
- Commands that talk to a running facade find its admin listener from ``--admin URL`` or the
  config's ``admin.listen``, and send the first token of (``admin_token``): ``--token``,
  ``$FACADE_ADMIN_TOKEN``, the config's ``admin.token``, ``./.facade-demo/admin-token`` (the file
  ``facade up`` writes, 0600). A refused token names where it came from and what else was tried.
- Errors are one line on stderr, ``facade <command>: message`` (``fail``); raise ``CliError``
  from a handler and ``facade.cli.main`` prints it so. No HTTP status codes or API parameter
  names in them: the exit code says what kind of failure it was.
- Tables for people; ``--json`` for scripts. Long waits show a ``Progress`` line.
- Exit codes below; scripts may rely on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

__all__ = [
    "DEMO_DIR",
    "EXIT_FAILURE",
    "EXIT_GATE_FAILED",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "AdminClient",
    "AdminError",
    "CliError",
    "Progress",
    "add_admin_options",
    "add_config_option",
    "add_json_option",
    "admin_token",
    "command_name",
    "fail",
    "find_config",
    "print_json",
    "read_running",
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
ENV_CONFIG = "FACADE_CONFIG"
ENV_TOKEN = "FACADE_ADMIN_TOKEN"
DEMO_DIR = ".facade-demo"  # `facade up`'s default --state-dir; commands look here for its token and config
TOKEN_FILE = "admin-token"
RUNNING_FILE = "up.json"  # written by `facade up` once the stack is ready, removed when it stops


class CliError(Exception):
    """A failure a command reports as one line (``facade <command>: message``) and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def command_name(args: argparse.Namespace | None) -> str:
    """``facade migrate next``: the prefix of the command's error lines (``facade.cli`` sets ``cli_prog``)."""
    return str(getattr(args, "cli_prog", None) or "facade")


def fail(args: argparse.Namespace | None, message: str, code: int) -> int:
    """Print ``facade <command>: message`` on stderr; return ``code`` (for ``return fail(...)``)."""
    print(f"{command_name(args)}: {message}", file=sys.stderr, flush=True)
    return code


def read_running(demo_dir: str = DEMO_DIR) -> dict[str, Any] | None:
    """What ``facade up`` running from this directory wrote about itself (config, URLs), or None."""
    try:
        with open(os.path.join(demo_dir, RUNNING_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


CONFIG_SOURCES = f"-c FILE, ${ENV_CONFIG}, ./{DEFAULT_CONFIG}, a `facade up` running from this directory"


def find_config(flag: str | None, *, env: Mapping[str, str] | None = None, demo_dir: str = DEMO_DIR) -> str:
    """The config file by the one lookup order: ``-c`` > ``$FACADE_CONFIG`` > ``./facade.yaml`` > the
    config of the ``facade up`` running from this directory. Raises CliError (exit 2) when none is
    given or found, or the one given cannot be read."""
    env = os.environ if env is None else env
    for given, where in ((flag, "-c"), (env.get(ENV_CONFIG) or None, f"${ENV_CONFIG}")):
        if given:
            if not os.path.isfile(given):
                reason = "no such file" if not os.path.exists(given) else "not a file"
                raise CliError(f"cannot read the config {given} (from {where}): {reason}", EXIT_INVALID)
            try:
                open(given, "rb").close()
            except OSError as exc:
                raise CliError(f"cannot read the config {given} (from {where}): {exc.strerror}", EXIT_INVALID) from None
            return given
    if os.path.isfile(DEFAULT_CONFIG):
        return DEFAULT_CONFIG
    running = read_running(demo_dir)
    if running and isinstance(running.get("config"), str) and os.path.isfile(running["config"]):
        return str(running["config"])
    raise CliError(f"no config file: tried {CONFIG_SOURCES}; pass -c FILE", EXIT_INVALID)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE",
        help=f"config file (default: ${ENV_CONFIG}, ./{DEFAULT_CONFIG}, else the running `facade up`'s)",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")


def add_admin_options(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument("--admin", metavar="URL", help="admin listener URL (default: from the config's admin.listen)")
    parser.add_argument(
        "--token",
        help=f"admin bearer token (default: ${ENV_TOKEN}, the config's admin.token, ./{DEMO_DIR}/{TOKEN_FILE})",
    )
    add_json_option(parser)


def admin_token(
    flag: str | None,
    config_token: str | None,
    *,
    config: str | None,
    env: Mapping[str, str] | None = None,
    demo_dir: str = DEMO_DIR,
) -> tuple[str | None, str, list[str]]:
    """(token, where it came from, every source tried) by the precedence ``--token`` > ``$FACADE_ADMIN_TOKEN``
    > the config's ``admin.token`` > the token file ``facade up`` writes. Pure but for reading that file."""
    env = os.environ if env is None else env
    token_file = os.path.join(demo_dir, TOKEN_FILE)
    tried = ["--token", f"${ENV_TOKEN}", f"admin.token in {config}" if config else "admin.token (no config)",
             token_file]  # fmt: skip
    from_file = None
    try:
        with open(token_file, encoding="utf-8") as fh:
            from_file = fh.read().strip() or None
    except OSError:
        pass
    for token, source in zip((flag, env.get(ENV_TOKEN) or None, config_token, from_file), tried, strict=True):
        if token:
            return token, source, tried
    return None, "", tried


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


class AdminError(CliError):
    """A failed admin API call; ``exit_code`` is what the command should exit with. The message is the
    API's own error text (no method, path or status: ``status`` and ``body`` keep those for callers)."""

    def __init__(self, message: str, exit_code: int, status: int | None = None, body: Any = None) -> None:
        super().__init__(message, exit_code)
        self.status = status
        self.body = body


_STATUS_EXIT = {
    400: EXIT_INVALID,
    401: EXIT_REFUSED,
    403: EXIT_REFUSED,
    404: EXIT_NOT_FOUND,
    409: EXIT_REFUSED,
    422: EXIT_INVALID,
}


class AdminClient:
    """httpx client for the admin API; resolves URL and token by the CLI conventions."""

    def __init__(
        self, *, base_url: str, token: str | None, timeout: float = 10.0, token_source: str = "",
        tried: Sequence[str] = (),
    ) -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.token_source = token_source  # where the token came from, for the message when it is refused
        self.tried = tuple(tried)

    def __repr__(self) -> str:
        return f"AdminClient(base_url={self.base_url!r}, token={'set' if self.token else 'unset'})"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AdminClient:
        """URL and token by the CLI conventions; raises CliError (exit 2) when there is no config to
        read them from and ``--admin`` does not say where the facade is."""
        admin_url = getattr(args, "admin", None)
        config: str | None = None
        listen = cfg_token = None
        try:
            config = find_config(getattr(args, "config", None))
        except CliError:
            if admin_url is None:
                raise
        if config is not None:
            listen, cfg_token = _admin_from_config(config)
            if admin_url is None and listen is None:
                raise CliError(f"cannot read admin.listen from {config}; pass --admin URL", EXIT_INVALID)
        admin_url = admin_url or listen
        assert admin_url is not None
        token, source, tried = admin_token(getattr(args, "token", None), cfg_token, config=config)
        if "://" not in admin_url:
            admin_url = "http://" + admin_url
        return cls(base_url=admin_url, token=token, token_source=source, tried=tried)

    def request(self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None) -> Any:
        import httpx

        headers = {"accept": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        try:
            with httpx.Client(timeout=self.timeout) as client:
                response = client.request(method, self.base_url + path, json=json_body, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise AdminError(
                f"cannot reach the facade's admin API at {self.base_url} ({_reason(exc)}); is `facade up` or "
                "`facade serve` running? (--admin URL says where)", EXIT_UNREACHABLE,
            ) from None  # fmt: skip
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            detail = str(body.get("error") if isinstance(body, dict) else body).strip() or response.reason_phrase
            if response.status_code == 401:
                detail = self._token_message(detail)
            known = body.get("routes") if isinstance(body, dict) and response.status_code == 404 else None
            if isinstance(known, list) and "(routes:" not in detail:  # what to type instead
                detail += f" (routes: {', '.join(map(str, known)) or 'none'})"
            code = _STATUS_EXIT.get(response.status_code, EXIT_FAILURE)
            raise AdminError(detail, code, response.status_code, body)
        return body

    def _token_message(self, detail: str) -> str:
        if "no admin token configured" in detail:
            return detail
        tried = ", ".join(self.tried) or "--token"
        if self.token is None:
            return f"the admin API needs a token and none was found (tried {tried})"
        return f"the admin API refused the token from {self.token_source} (sources, first wins: {tried})"

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json_body=body if body is not None else {})


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    for known in ("Connection refused", "timed out", "Name or service not known"):
        if known.lower() in text.lower():
            return known.lower()
    return text


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


class Progress:
    """One status line for a long wait: rewritten in place on a terminal (carriage return), and on a
    pipe or log a plain line each time ``text`` changes (``detail``, e.g. a running clock, only
    shows on a terminal, so logs get one line per change, not one per tick)."""

    def __init__(self, out: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = _isatty(self.out) if tty is None else tty
        self._shown = ""
        self._last_text: str | None = None

    def __repr__(self) -> str:
        return f"Progress(tty={self.tty}, shown={self._shown!r})"

    def update(self, text: str, detail: str = "") -> None:
        if self.tty:
            line = f"{text} {detail}".rstrip()
            pad = max(0, len(self._shown) - len(line))
            self.out.write("\r" + line + " " * pad)
            self.out.flush()
            self._shown = line
        elif text != self._last_text:
            print(text, file=self.out, flush=True)
        self._last_text = text

    def done(self, text: str | None = None) -> None:
        """End the line (and print ``text`` as the last state, if given)."""
        if text is not None:
            self.update(text)
        if self.tty and self._shown:
            self.out.write("\n")
            self.out.flush()
        self._shown = ""

    def clear(self) -> None:
        """Erase the line on a terminal (so a following message starts at column 0)."""
        if self.tty and self._shown:
            self.out.write("\r" + " " * len(self._shown) + "\r")
            self.out.flush()
        self._shown = ""


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def elapsed(since: float) -> str:
    """``12s`` / ``2m05s``: the clock a progress line shows."""
    seconds = int(time.monotonic() - since)
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"
