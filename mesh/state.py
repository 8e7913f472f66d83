"""The control plane's durable memory: published document versions and sidecar reports (SQLite).

    store = MeshStateStore("<state_dir>/mesh.sqlite3")
    store.last_version()                      # versions continue across restarts, never repeat
    store.publish(version, epoch, at)         # one row per published version
    store.save_report(service, instance, heard_at, [(epoch, counts), ...])
    store.published(); store.reports()        # read back on start

Why: an ``mtls: strict`` step's gate counts plaintext attempts under the document versions
published since the step started. Kept only in memory, a facade restart in the middle of the
step forgot every count (and, counting versions from 1 again, could not even tell old versions
from new). With versions that never repeat and both tables durable, a restarted control plane
reads the same counts back, and sidecars that keep reporting their pre-restart segments add
to the same rows (counts are cumulative per (instance, version): the larger value is kept).

WAL with ``synchronous=NORMAL``: a commit survives the process being killed (``kill -9``), which
is the failure this is for; every call opens its own short connection (as ``MigrationStore``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .reports import SegmentCounts

__all__ = ["DEFAULT_STATE_FILE", "MAX_KEPT_VERSIONS", "MeshStateStore", "StoredReport"]

DEFAULT_STATE_FILE = "mesh.sqlite3"  # under the facade's state_dir
MAX_KEPT_VERSIONS = 4096  # published versions (and their reports) kept; older ones are pruned

_SCHEMA = """
CREATE TABLE IF NOT EXISTS published (
    version     INTEGER PRIMARY KEY,
    epoch       TEXT NOT NULL,
    at          REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    service             TEXT NOT NULL,
    instance            TEXT NOT NULL,
    version             INTEGER NOT NULL,
    mode                TEXT NOT NULL,
    plaintext_requests  INTEGER NOT NULL,
    tls_requests        INTEGER NOT NULL,
    plaintext_refused   INTEGER NOT NULL,
    heard_at            REAL NOT NULL,
    PRIMARY KEY (service, instance, version)
);
"""


@dataclass(frozen=True, slots=True)
class StoredReport:
    service: str
    instance: str
    heard_at: float
    counts: SegmentCounts


class MeshStateStore:
    """Published versions and per-(instance, version) report counts, in one SQLite file."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with self._connect() as db:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OSError(f"{path}: SQLite refused WAL mode (got {mode!r}); put state_dir on a local disk")
            db.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"MeshStateStore({self.path!r})"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    def last_version(self) -> int:
        with self._connect() as db:
            row = db.execute("SELECT MAX(version) FROM published").fetchone()
        return int(row[0] or 0)

    def publish(self, version: int, epoch: str, at: float) -> None:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT OR REPLACE INTO published (version, epoch, at) VALUES (?, ?, ?)", (version, epoch, at))
            floor = version - MAX_KEPT_VERSIONS
            db.execute("DELETE FROM published WHERE version <= ?", (floor,))
            db.execute("DELETE FROM reports WHERE version <= ?", (floor,))
            db.execute("COMMIT")

    def published(self) -> dict[int, tuple[str, float]]:
        """version -> (epoch, wall-clock time published), oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT version, epoch, at FROM published ORDER BY version").fetchall()
        return {int(v): (str(e), float(at)) for v, e, at in rows}

    def save_report(self, service: str, instance: str, heard_at: float, segments: Sequence[SegmentCounts]) -> None:
        """Keep the larger count per (service, instance, version): a repeated or late report changes nothing."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            for c in segments:
                db.execute(
                    "INSERT INTO reports (service, instance, version, mode, plaintext_requests, tls_requests, "
                    "plaintext_refused, heard_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(service, instance, version) DO UPDATE SET mode = excluded.mode, "
                    "plaintext_requests = MAX(plaintext_requests, excluded.plaintext_requests), "
                    "tls_requests = MAX(tls_requests, excluded.tls_requests), "
                    "plaintext_refused = MAX(plaintext_refused, excluded.plaintext_refused), "
                    "heard_at = MAX(heard_at, excluded.heard_at)",
                    (service, instance, c.version, c.mode, c.plaintext_requests, c.tls_requests,
                     c.plaintext_refused, heard_at),
                )  # fmt: skip
            db.execute(
                "UPDATE reports SET heard_at = ? WHERE service = ? AND instance = ?", (heard_at, service, instance)
            )
            db.execute("COMMIT")

    def reports(self) -> list[StoredReport]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT service, instance, heard_at, version, mode, plaintext_requests, tls_requests, "
                "plaintext_refused FROM reports ORDER BY heard_at"
            ).fetchall()
        return [
            StoredReport(str(r[0]), str(r[1]), float(r[2]), SegmentCounts(int(r[3]), str(r[4]), *map(int, r[5:8])))
            for r in rows
        ]
