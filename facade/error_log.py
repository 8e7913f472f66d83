"""The details of recent upstream failures, for operators: the client only gets a status, a reason and an id.

An error body that names internal addresses, SPIFFE IDs or TLS failure reasons tells an attacker the
topology of the mesh (issue 10, item 5). ``Proxy`` keeps those details here (and in its log line),
keyed by the request id the client received, so ``GET /errors`` on the admin API (or the sidecar's
admin listener) answers "what happened to request X" without the client ever seeing it.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

__all__ = ["DEFAULT_RECENT_ERRORS", "RecentErrors"]

DEFAULT_RECENT_ERRORS = 256


class RecentErrors:
    """A bounded ring of the last ``size`` failures (oldest dropped first); cheap to append."""

    __slots__ = ("_ring", "added")

    def __init__(self, size: int = DEFAULT_RECENT_ERRORS) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=size)
        self.added = 0  # entries ever added: a worker ships those added since it last looked

    def __repr__(self) -> str:
        return f"<RecentErrors {len(self._ring)}/{self._ring.maxlen}>"

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, *, request_id: str, status: int, reason: str, detail: str, route: str, backend: str) -> None:
        self.added += 1
        self._ring.append(
            {
                "time": time.time(),
                "request_id": request_id,
                "status": status,
                "error": reason,
                "detail": detail,
                "route": route,
                "backend": backend,
            }
        )

    def view(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """Newest first; only the entries of ``request_id`` when given."""
        entries = reversed(self._ring)
        return [dict(e) for e in entries if request_id is None or e["request_id"] == request_id]

    def since(self, added: int) -> list[dict[str, Any]]:
        """The entries added after the first ``added`` (oldest first; at most what the ring keeps)."""
        fresh = min(self.added - added, len(self._ring))
        return [dict(e) for e in list(self._ring)[len(self._ring) - fresh:]] if fresh > 0 else []

    def absorb(self, entries: list[dict[str, Any]], **extra: Any) -> None:
        """Add another process's entries (``since``) as they were, with ``extra`` fields (``worker=1``)."""
        for entry in entries:
            self.added += 1
            self._ring.append(entry | extra)
