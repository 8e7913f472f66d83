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
an ``mtls`` step's STRICT switch is not rehearsed). With a ``mesh:`` section it needs the live CA
to present an identity the sidecars accept: ``mesh.ca.state_dir`` when the config sets one (read
in place), else a copy of ``ca/`` from the live facade's state directory (``--live-state-dir``,
else the config's ``state_dir``, else ``facade up``'s ``./.facade-demo/facade/<config>-<hash>``).
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
from typing import Any

from ..errors import FacadeError
from .up import DEFAULT_STATE_DIR, ChildSpec, Listen, Stack, _pythonpath

__all__ = ["NoLiveCa", "ThrowawayFacade", "live_ca_source", "start_throwaway_facade"]

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


class NoLiveCa(FacadeError):
    """A mesh config, and no live CA to give the throwaway facade an identity the sidecars trust."""


def live_ca_source(config: Any, *, live_state_dir: str | None, cwd: str) -> Path | None:
    """The live facade's ``ca/`` directory to copy, or None when there is nothing to copy (no mesh,
    or ``mesh.ca.state_dir`` set: the throwaway facade reads that one in place). Raises NoLiveCa."""
    mesh = getattr(config, "mesh", None)
    if mesh is None or getattr(getattr(mesh, "ca", None), "state_dir", None):
        return None
    if live_state_dir is not None:
        candidates = [Path(live_state_dir)]
    else:
        from .up import facade_state_key  # `facade up` keeps one facade state per config file

        demo = Path(cwd) / DEFAULT_STATE_DIR / "facade"
        candidates = [Path(config.state_dir), demo / facade_state_key(config.source), demo]
    for state_dir in candidates:
        if (state_dir / "ca").is_dir():
            return state_dir / "ca"
    tried = ", ".join(str(c / "ca") for c in candidates)
    raise NoLiveCa(
        f"the config has a mesh: the rehearsal's facade needs the live facade's CA to talk mTLS to the sidecars, "
        f"and there is none in {tried}; pass --live-state-dir DIR (the live facade's state directory; with "
        f"`facade up --state-dir S` it is S/facade), or --live to drive the live facade itself"
    )


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


def start_throwaway_facade(
    config_path: str, *, log_dir: Path, live_state_dir: str | None = None, python: str = sys.executable
) -> ThrowawayFacade:
    """Start ``facade serve -c config_path`` on free loopback ports with a fresh temporary
    ``state_dir``; returns once its admin API answers ``/readyz``. Raises ConfigError (invalid
    config), NoLiveCa (a mesh and no CA), ChildFailed (it did not come up); nothing is left
    running on a failure."""
    from ..config import load_config

    config = load_config(config_path)
    live_ca = live_ca_source(config, live_state_dir=live_state_dir, cwd=os.getcwd())
    state_dir = Path(tempfile.mkdtemp(prefix="facade-rehearsal-"))  # 0700
    if live_ca is not None:
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
