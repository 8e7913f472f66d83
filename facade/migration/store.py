"""Durable migration state: the ``StateStore`` contract and its default, SQLite in WAL mode.

``StateStore`` is what the controller needs of a store: commit a transition in one transaction
with an optimistic version check, read states and the journal, and (for a store that several
instances share, ``shared``) hear about other instances' transitions, record which version each
instance routes, and elect the one instance that runs auto mode. Two implementations:
``MigrationStore`` here (the default, one facade per file) and ``facade.migration.pgstore.PostgresStore``
(``state_store: postgresql://...``, shared by replicas; docs/replicas.md). ``facade.migration.stores``
picks one from the config, so nothing else asks which kind it holds.

The SQLite store: one transaction per transition.

Two tables: ``migration_state`` (the current state of each plan, with a ``version``) and
``journal`` (every transition ever committed, append-only).  ``commit`` writes both in one
transaction after checking that the stored version is still the one the transition was
computed from (optimistic concurrency): of two concurrent ``next`` on the same state, one
commits and the other gets a ``Refusal`` with code ``conflict``.

``synchronous=FULL`` makes a commit durable before ``commit`` returns, so after ``kill -9``
a fresh store reads the same state and the whole journal.  Every call opens its own short
connection, so one store may be used from several threads (and processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .engine import MigrationState, Phase, Refusal, Transition, check_plan_edit

# check_plan_edit lives with the engine (it is pure); it is re-exported here because a reload
# checks a changed plan against the stored state before accepting it.
__all__ = [
    "DEFAULT_JOURNAL",
    "DEFAULT_STORE_FILE",
    "EvidenceKey",
    "InstanceReport",
    "JournalEntry",
    "MigrationStore",
    "StateStore",
    "StoreUnavailable",
    "check_plan_edit",
]

DEFAULT_STORE_FILE = "migrations.sqlite3"  # under the config's state_dir
DEFAULT_JOURNAL = 100  # journal entries a status document carries unless asked otherwise
BUSY_TIMEOUT = 5.0  # seconds a writer waits for another writer's transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS migration_state (
    plan        TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    state_json  TEXT NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    plan        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    plan_hash   TEXT NOT NULL,
    from_step   INTEGER NOT NULL,
    to_step     INTEGER NOT NULL,
    from_state  TEXT NOT NULL,
    to_state    TEXT NOT NULL,
    action      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    gates_json  TEXT NOT NULL,
    at          REAL NOT NULL,
    summary_json TEXT NOT NULL DEFAULT 'null',
    UNIQUE (plan, version)
);
"""


EvidenceKey = tuple[str, str, str]  # (plan, route, step epoch: facade.migration.evidence.epoch_key)


def journal_row(transition: Transition, version: int) -> tuple[Any, ...]:
    """A transition as the journal's row values, in the journal's column order (every store writes these)."""
    return (
        transition.plan, version, transition.plan_hash, transition.from_step, transition.to_step,
        transition.from_phase.value, transition.to_phase.value, transition.action, transition.actor,
        transition.reason, transition.gates_json, transition.at, transition.summary_json,
    )


def journal_entry(r: Sequence[Any]) -> JournalEntry:
    """A journal row read back (``seq`` first, then the written columns), whichever store it came from."""
    return JournalEntry(
        seq=int(r[0]), plan=str(r[1]), version=int(r[2]), plan_hash=str(r[3]), from_step=int(r[4]),
        to_step=int(r[5]), from_state=Phase(r[6]), to_state=Phase(r[7]), action=str(r[8]),
        actor=str(r[9]), reason=str(r[10]), gates=json.loads(r[11]), at=float(r[12]),
        summary=json.loads(r[13]),
    )


class StoreUnavailable(Exception):
    """The store cannot be reached now (a shared store's server is down or unreachable).

    Routing keeps the state in force; transitions are refused until the store is back.
    """


@dataclass(frozen=True, slots=True)
class InstanceReport:
    """What one facade instance routes for one plan, as it last reported it (shared stores)."""

    instance: str  # host:pid
    admin: str  # its admin URL
    plan: str
    version: int
    phase: Phase
    step: int  # 0-based, like MigrationState.step
    seen_at: float  # wall clock of the report

    def to_json(self, *, now: float) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "admin": self.admin,
            "version": self.version,
            "state": self.phase.value,
            "step": self.step,
            "seen_ago": round(max(0.0, now - self.seen_at), 3),
        }


class StateStore(Protocol):
    """What the migration controller needs of a durable store (``MigrationStore``, ``PostgresStore``).

    The synchronous methods do blocking I/O (the controller runs them in a thread) and raise
    ``StoreUnavailable`` when the store cannot be reached; the async ones run on the event loop.
    """

    @property
    def location(self) -> str:
        """Where the state lives, for messages (never a password); equal locations = the same store."""
        ...

    @property
    def shared(self) -> bool:
        """True when other instances write to it too: the controller then follows its changes."""
        ...

    def commit(self, transition: Transition) -> MigrationState | Refusal: ...

    def state(self, name: str) -> MigrationState | None: ...

    def all_states(self) -> dict[str, MigrationState]: ...

    def journal(self, name: str, *, limit: int | None = None) -> list[JournalEntry]: ...

    def report_instance(self, instance: str, admin: str, states: Mapping[str, MigrationState], *, at: float) -> None:
        """Record the version of each plan this instance routes now (a heartbeat)."""
        ...

    def forget_instance(self, instance: str) -> None:
        """Drop this instance's reports (it is stopping)."""
        ...

    def instances(self, name: str, *, since: float) -> list[InstanceReport]:
        """The instances that reported on plan ``name`` at or after ``since``."""
        ...

    def publish_evidence(self, instance: str, windows: Mapping[EvidenceKey, str], *, at: float) -> None:
        """Record this instance's gate evidence (JSON) for each (plan, route, step epoch) window."""
        ...

    def evidence(self, keys: Collection[EvidenceKey]) -> dict[EvidenceKey, dict[str, Any]]:
        """Every instance's published evidence of each window: key -> {instance: decoded JSON}; each
        document also carries ``published_at``, the publisher's clock when it was stored (its staleness)."""
        ...

    async def wait_for_change(self, timeout: float) -> None:
        """Return when another instance may have committed a transition, or after ``timeout`` seconds."""
        ...

    async def lead(self) -> bool:
        """Try to be (or stay) the one instance that runs auto mode; True while this instance is it."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One committed transition, as read back from the journal."""

    seq: int
    plan: str
    version: int
    plan_hash: str
    from_step: int
    to_step: int
    from_state: Phase
    to_state: Phase
    action: str
    actor: str
    reason: str
    gates: Any  # the decoded gate report JSON, or None
    at: float
    summary: Any = None  # the decoded telemetry summary of the step left behind, or None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "plan": self.plan,
            "version": self.version,
            "plan_hash": self.plan_hash,
            "from_step": self.from_step,
            "to_step": self.to_step,
            "from_state": self.from_state.value,
            "to_state": self.to_state.value,
            "action": self.action,
            "actor": self.actor,
            "reason": self.reason,
            "gates": self.gates,
            "summary": self.summary,
            "at": self.at,
        }


class MigrationStore:
    """Current state per plan and the journal of transitions, in one SQLite file."""

    def __init__(self, path: str) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        with self._connect() as db:
            # WAL is a property of the database file: set once, every later connection uses it.
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OSError(f"{path}: SQLite refused WAL mode (got {mode!r}); put state_dir on a local disk")
            db.executescript(_SCHEMA)
            # Stores written before the journal kept step summaries: add the column in place.
            columns = {str(row[1]) for row in db.execute("PRAGMA table_info(journal)")}
            if "summary_json" not in columns:
                db.execute("ALTER TABLE journal ADD COLUMN summary_json TEXT NOT NULL DEFAULT 'null'")

    def __repr__(self) -> str:
        return f"MigrationStore({self.path!r})"

    @property
    def location(self) -> str:
        return self.path

    @property
    def shared(self) -> bool:
        return False  # one facade per file: nobody else commits, nothing to follow

    # One facade per file: it is alone, so it reports to nobody and always leads its auto mode.

    def report_instance(self, instance: str, admin: str, states: Mapping[str, MigrationState], *, at: float) -> None:
        return None

    def forget_instance(self, instance: str) -> None:
        return None

    def instances(self, name: str, *, since: float) -> list[InstanceReport]:
        return []

    def publish_evidence(self, instance: str, windows: Mapping[EvidenceKey, str], *, at: float) -> None:
        return None

    def evidence(self, keys: Collection[EvidenceKey]) -> dict[EvidenceKey, dict[str, Any]]:
        return {}

    async def wait_for_change(self, timeout: float) -> None:
        return None

    async def lead(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    def commit(self, transition: Transition) -> MigrationState | Refusal:
        """Write the new state and its journal entry atomically; ``conflict`` if the state moved meanwhile."""
        new = transition.state
        assert new.version == transition.expected_version + 1, "a transition advances the version by one"
        with self._connect() as db:
            # BEGIN IMMEDIATE takes the write lock now, so the version check and the writes see
            # the same database: no other writer can slip in between.
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT version FROM migration_state WHERE plan = ?", (transition.plan,)).fetchone()
                current = 0 if row is None else int(row[0])
                if current != transition.expected_version:
                    db.execute("ROLLBACK")
                    return Refusal(
                        f"{transition.plan} changed meanwhile (version {current}, expected "
                        f"{transition.expected_version}); look at its status and try again",
                        "conflict",
                    )
                db.execute(
                    "INSERT INTO migration_state (plan, version, state_json, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(plan) DO UPDATE SET version = excluded.version, "
                    "state_json = excluded.state_json, updated_at = excluded.updated_at",
                    (transition.plan, new.version, json.dumps(new.to_json(), sort_keys=True), transition.at),
                )
                db.execute(
                    "INSERT INTO journal (plan, version, plan_hash, from_step, to_step, from_state, to_state, "
                    "action, actor, reason, gates_json, at, summary_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    journal_row(transition, new.version),
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return new

    def state(self, name: str) -> MigrationState | None:
        """The committed state of plan ``name``; None if it never had a transition."""
        with self._connect() as db:
            row = db.execute("SELECT state_json FROM migration_state WHERE plan = ?", (name,)).fetchone()
        return None if row is None else MigrationState.from_json(json.loads(row[0]))

    def all_states(self) -> dict[str, MigrationState]:
        with self._connect() as db:
            rows = db.execute("SELECT plan, state_json FROM migration_state ORDER BY plan").fetchall()
        return {str(plan): MigrationState.from_json(json.loads(text)) for plan, text in rows}

    def journal(self, name: str, *, limit: int | None = None) -> list[JournalEntry]:
        """Transitions of plan ``name``, oldest first (the last ``limit`` when given)."""
        query = (
            "SELECT seq, plan, version, plan_hash, from_step, to_step, from_state, to_state, action, actor, "
            "reason, gates_json, at, summary_json FROM journal WHERE plan = ? ORDER BY seq DESC"
        )
        params: tuple[Any, ...] = (name,)
        if limit is not None:
            query += " LIMIT ?"
            params = (name, limit)
        with self._connect() as db:
            rows = db.execute(query, params).fetchall()
        return [journal_entry(r) for r in reversed(rows)]

