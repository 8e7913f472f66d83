"""The cutover load shape: ramp up to the target users, then hold them steady until the
rehearsal says stop.

A cutover rehearsal wants a constant load while the migration moves step by step, so the
per-step numbers compare like with like; the ramp happens before the first step (``facade
loadtest`` waits for it). Settings come from the environment (``facade loadtest`` sets them):

    LOADTEST_USERS         target users (default 10)
    LOADTEST_SPAWN_RATE    users started per second while ramping (default 10)
    LOADTEST_MAX_SECONDS   hard stop, whatever happens to the driver (default 600)
    LOADTEST_CONTROL       JSON file the driver writes; {"stop": true} ends the run
"""

from __future__ import annotations

import json
import os
import time

from locust import LoadTestShape

__all__ = ["CutoverShape", "read_control"]

_CONTROL_EVERY = 0.2  # seconds between reads of the control file


def read_control(path: str | None) -> dict[str, object]:
    """The driver's control document, or {} while there is none (or it is being replaced)."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class CutoverShape(LoadTestShape):
    """Ramp to ``LOADTEST_USERS`` at ``LOADTEST_SPAWN_RATE``, hold, stop when told (or at the cap)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # locust is untyped
        self.users = int(os.environ.get("LOADTEST_USERS", "10"))
        self.spawn_rate = float(os.environ.get("LOADTEST_SPAWN_RATE", "10"))
        self.max_seconds = float(os.environ.get("LOADTEST_MAX_SECONDS", "600"))
        self.control = os.environ.get("LOADTEST_CONTROL")
        self._checked = 0.0
        self._stop = False

    def tick(self) -> tuple[int, float] | None:
        if self.get_run_time() > self.max_seconds:  # type: ignore[no-untyped-call]
            return None
        now = time.monotonic()
        if now - self._checked >= _CONTROL_EVERY:
            self._checked = now
            self._stop = bool(read_control(self.control).get("stop"))
        if self._stop:
            return None
        return self.users, self.spawn_rate
