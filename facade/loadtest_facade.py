"""The throwaway facade a rehearsal drives: ``facade serve`` from the user's config, on loopback
ports of its own, with a migration store of its own in a temporary directory.

Why a copy and not the live facade: a rehearsal forces steps (holds and gates do not stop it) and
shifts traffic to the candidate. On the live facade that shift reaches real users while the
rehearsal runs, and putting the migration back afterwards can fail exactly when it matters (the
driver killed with ``kill -9``, the facade down when the restore is due). A private facade with a
private store has nothing to put back: the live migration's journal is never written, whatever
way the rehearsal ends. It routes to the same backends, so the load and the gates see the same
services the cutover will.

What it does not share with the live facade: its telemetry (the gates judge the rehearsal's own
load, which is the point) and the mesh control plane (sidecars keep following the live facade, so
an ``mtls`` step's STRICT switch is not rehearsed). With a ``mesh:`` section it copies the live
CA (``<state_dir>/ca``) so the sidecars accept its client certificate.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .up import ChildSpec, Listen, Stack, _pythonpath

__all__ = ["ThrowawayFacade", "start_throwaway_facade"]

HEALTH_TIMEOUT = 30.0  # seconds for the private facade to answer /readyz
STOP_GRACE = 5.0

# Linux: the private facade gets SIGTERM when the driver dies, even by ``kill -9``, so no orphan
# keeps the ports and the temporary store (prctl's death signal survives the exec that follows).
_DEATH_SIGNAL_SHIM = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):  # the driver died before the prctl: do not start at all
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


@dataclass
class ThrowawayFacade:
    """A running private facade; ``stop()`` ends it and removes its store."""

    url: str
    admin_url: str
    token: str
    state_dir: Path
    stack: Stack

    def exited(self) -> str | None:
        """Why the private facade is gone (None while it runs): the rehearsal cannot go on without it."""
        for running in self.stack.running.values():
            code = running.process.poll()
            if code is not None:
                return f"the rehearsal's facade exited with code {code}; see {running.log_path}"
        return None

    def stop(self) -> None:
        self.stack.stop(grace=STOP_GRACE)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def start_throwaway_facade(config_path: str, *, log_dir: Path, python: str = sys.executable) -> ThrowawayFacade:
    """Start ``facade serve -c config_path`` on free loopback ports with a fresh temporary
    ``state_dir``; returns once its admin API answers ``/readyz``. Raises ConfigError (invalid
    config), ChildFailed (it did not come up); nothing is left running on a failure."""
    from .config import load_config

    config = load_config(config_path)
    state_dir = Path(tempfile.mkdtemp(prefix="facade-rehearsal-"))  # 0700
    mesh = getattr(config, "mesh", None)
    if mesh is not None and not getattr(getattr(mesh, "ca", None), "state_dir", None):
        live_ca = Path(config.state_dir) / "ca"
        if live_ca.is_dir():
            shutil.copytree(live_ca, state_dir / "ca")
    listen_port, admin_port = _two_free_ports()
    listen = Listen("facade", "127.0.0.1", listen_port)
    admin = Listen("admin", "127.0.0.1", admin_port)
    # The file's token wins over FACADE_ADMIN_TOKEN (config rules); a fresh one when it has none.
    token = config.admin.token or secrets.token_urlsafe(24)

    serve = (
        python, "-m", "facade", "serve", "-c", os.path.abspath(config_path), "--listen", f"127.0.0.1:{listen.port}",
        "--admin-listen", f"127.0.0.1:{admin.port}", "--state-dir", str(state_dir), "--no-watch",
        "--log-level", "warning",
    )  # fmt: skip
    argv = (python, "-c", _DEATH_SIGNAL_SHIM, str(os.getpid()), *serve)
    env = (("PYTHONUNBUFFERED", "1"), ("PYTHONPATH", _pythonpath()), ("FACADE_ADMIN_TOKEN", token))
    spec = ChildSpec("facade", argv, env, admin.url + "/readyz", (listen, admin))
    stack = Stack([spec], log_dir=log_dir, health_timeout=HEALTH_TIMEOUT, out=io.StringIO())
    facade = ThrowawayFacade(listen.url, admin.url, token, state_dir, stack)
    try:
        stack.start()
    except BaseException:
        facade.stop()
        raise
    return facade


def _two_free_ports() -> tuple[int, int]:
    """Two distinct ports the OS hands out on 127.0.0.1 (both held until both are known)."""
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return int(a.getsockname()[1]), int(b.getsockname()[1])
