"""Migration state in PostgreSQL, shared by every replica of a facade (``state_store: postgresql://...``).

The same rules as the SQLite store (``facade.migration.store``): one transaction per transition,
checked against the version it was computed from (``SELECT ... FOR UPDATE``), so of two replicas'
concurrent ``next`` one commits and the other gets a ``conflict``. What sharing adds:

- every commit sends ``NOTIFY facade_migrations`` in its transaction (delivered at commit), and
  ``wait_for_change`` LISTENs on a connection of its own: the other replicas re-read the state at
  once (their controller also re-reads every second, in case a notification is lost);
- ``report_instance`` / ``instances``: each replica's heartbeat says which version of each plan it
  routes (``facade migrate status`` lists them);
- ``publish_evidence`` / ``evidence``: each replica's window of the current step (counts and
  latency histograms, ``facade.migration.evidence``), so gates judge every replica's traffic;
- ``lead``: a session-level advisory lock held on another connection of its own elects the one
  replica whose auto mode acts; when that replica dies its connection closes, PostgreSQL releases
  the lock and the next replica to ask takes it.

Every blocking call opens its own short connection (a reconnect after a server restart is then
nothing special) and maps every connection failure to ``StoreUnavailable``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .engine import MigrationState, Phase, Refusal, Transition
from .store import EvidenceKey, InstanceReport, JournalEntry, StoreUnavailable, journal_entry, journal_row

__all__ = ["CHANNEL", "LEADER_LOCK", "PostgresStore", "safe_location"]

CHANNEL = "facade_migrations"  # NOTIFY channel; the payload is the plan's name
LEADER_LOCK = 0x66616361_6465  # advisory lock key of the auto-mode leader ("facade")
_SCHEMA_LOCK = LEADER_LOCK + 1  # serializes schema creation by replicas starting together
CONNECT_TIMEOUT = 3  # seconds (libpq's unit): an unreachable server is reported quickly
FORGET_AFTER = 3600.0  # instance reports older than this are deleted by the next report

_SCHEMA = """
CREATE TABLE IF NOT EXISTS facade_migration_state (
    plan        TEXT PRIMARY KEY,
    version     BIGINT NOT NULL,
    state_json  TEXT NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS facade_migration_journal (
    seq          BIGSERIAL PRIMARY KEY,
    plan         TEXT NOT NULL,
    version      BIGINT NOT NULL,
    plan_hash    TEXT NOT NULL,
    from_step    INTEGER NOT NULL,
    to_step      INTEGER NOT NULL,
    from_state   TEXT NOT NULL,
    to_state     TEXT NOT NULL,
    action       TEXT NOT NULL,
    actor        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    gates_json   TEXT NOT NULL,
    at           DOUBLE PRECISION NOT NULL,
    summary_json TEXT NOT NULL DEFAULT 'null',
    UNIQUE (plan, version)
);
CREATE TABLE IF NOT EXISTS facade_instances (
    instance    TEXT NOT NULL,
    plan        TEXT NOT NULL,
    admin       TEXT NOT NULL,
    version     BIGINT NOT NULL,
    phase       TEXT NOT NULL,
    step        INTEGER NOT NULL,
    seen_at     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (instance, plan)
);
CREATE TABLE IF NOT EXISTS facade_evidence (
    plan          TEXT NOT NULL,
    route         TEXT NOT NULL,
    epoch         TEXT NOT NULL,
    instance      TEXT NOT NULL,
    evidence_json TEXT NOT NULL,
    published_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (plan, route, epoch, instance)
);
"""


def safe_location(url: str) -> str:
    """``url`` without its password, for messages and logs (``postgresql://user@host:port/db``)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host') or 'localhost'}{port}/{parts.get('dbname') or ''}"


class PostgresStore:
    """Current state per plan, the journal and the instances' reports, in one PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._location = safe_location(url)
        self._listener: psycopg.AsyncConnection[Any] | None = None
        self._leader: psycopg.AsyncConnection[Any] | None = None
        self._leading = False
        self._broken = False  # a blocking call failed: the listening connection is suspect too
        with self._connect() as db, db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            db.execute(_SCHEMA)

    def __repr__(self) -> str:
        return f"PostgresStore({self._location!r})"

    @property
    def location(self) -> str:
        return self._location

    @property
    def shared(self) -> bool:
        return True

    @contextmanager
    def _connect(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT) as db:
                yield db
        except psycopg.OperationalError as exc:
            self._broken = True
            raise StoreUnavailable(f"{self._location}: {_first_line(exc)}") from None
        except psycopg.ProgrammingError:
            # An unparsable URL (the config reader refuses those; its message would quote the password).
            raise StoreUnavailable(f"{self._location}: libpq cannot parse the URL") from None

    # -- the transactional part --------------------------------------------------------------------

    def commit(self, transition: Transition) -> MigrationState | Refusal:
        """Write the new state and its journal entry in one transaction; ``conflict`` if the state moved."""
        new = transition.state
        assert new.version == transition.expected_version + 1, "a transition advances the version by one"
        state_json = json.dumps(new.to_json(), sort_keys=True)
        with self._connect() as db, db.transaction():
            # FOR UPDATE holds the row until commit: a concurrent commit of the same plan waits here,
            # then reads the version this one wrote and is refused.
            row = db.execute("SELECT version FROM facade_migration_state WHERE plan = %s FOR UPDATE",
                             (transition.plan,)).fetchone()
            current = 0 if row is None else int(row[0])
            if current != transition.expected_version:
                return _conflict(transition, current)
            if row is None:
                # No row to lock yet: of two first commits, the second's insert waits for the first
                # and then does nothing.
                inserted = db.execute(
                    "INSERT INTO facade_migration_state (plan, version, state_json, updated_at) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (plan) DO NOTHING",
                    (transition.plan, new.version, state_json, transition.at),
                )
                if inserted.rowcount != 1:
                    return _conflict(transition, transition.expected_version + 1)
            else:
                db.execute("UPDATE facade_migration_state SET version = %s, state_json = %s, updated_at = %s "
                           "WHERE plan = %s", (new.version, state_json, transition.at, transition.plan))
            db.execute(
                "INSERT INTO facade_migration_journal (plan, version, plan_hash, from_step, to_step, from_state, "
                "to_state, action, actor, reason, gates_json, at, summary_json) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                journal_row(transition, new.version),
            )
            db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, transition.plan))
        return new

    def state(self, name: str) -> MigrationState | None:
        with self._connect() as db:
            row = db.execute("SELECT state_json FROM facade_migration_state WHERE plan = %s", (name,)).fetchone()
        return None if row is None else MigrationState.from_json(json.loads(row[0]))

    def all_states(self) -> dict[str, MigrationState]:
        with self._connect() as db:
            rows = db.execute("SELECT plan, state_json FROM facade_migration_state ORDER BY plan").fetchall()
        return {str(plan): MigrationState.from_json(json.loads(text)) for plan, text in rows}

    def journal(self, name: str, *, limit: int | None = None) -> list[JournalEntry]:
        query = (
            "SELECT seq, plan, version, plan_hash, from_step, to_step, from_state, to_state, action, actor, "
            "reason, gates_json, at, summary_json FROM facade_migration_journal WHERE plan = %s ORDER BY seq DESC"
        )
        params: tuple[Any, ...] = (name,)
        if limit is not None:
            query += " LIMIT %s"
            params = (name, limit)
        with self._connect() as db:
            rows = db.execute(query, params).fetchall()
        return [journal_entry(r) for r in reversed(rows)]

    # -- instances ---------------------------------------------------------------------------------

    def report_instance(self, instance: str, admin: str, states: Mapping[str, MigrationState], *, at: float) -> None:
        with self._connect() as db, db.transaction():
            for plan, state in states.items():
                db.execute(
                    "INSERT INTO facade_instances (instance, plan, admin, version, phase, step, seen_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (instance, plan) DO UPDATE SET "
                    "admin = excluded.admin, version = excluded.version, phase = excluded.phase, "
                    "step = excluded.step, seen_at = excluded.seen_at",
                    (instance, plan, admin, state.version, state.phase.value, state.step, at),
                )
            db.execute("DELETE FROM facade_instances WHERE seen_at < %s", (at - FORGET_AFTER,))

    def forget_instance(self, instance: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM facade_instances WHERE instance = %s", (instance,))

    def instances(self, name: str, *, since: float) -> list[InstanceReport]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT instance, admin, plan, version, phase, step, seen_at FROM facade_instances "
                "WHERE plan = %s AND seen_at >= %s ORDER BY instance", (name, since),
            ).fetchall()
        return [InstanceReport(str(r[0]), str(r[1]), str(r[2]), int(r[3]), Phase(r[4]), int(r[5]), float(r[6]))
                for r in rows]

    # -- gate evidence ---------------------------------------------------------------------------

    def publish_evidence(self, instance: str, windows: Mapping[EvidenceKey, str], *, at: float) -> None:
        with self._connect() as db, db.transaction():
            for (plan, route, epoch), text in windows.items():
                db.execute(
                    "INSERT INTO facade_evidence (plan, route, epoch, instance, evidence_json, published_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (plan, route, epoch, instance) DO UPDATE SET "
                    "evidence_json = excluded.evidence_json, published_at = excluded.published_at",
                    (plan, route, epoch, instance, text, at),
                )
            db.execute("DELETE FROM facade_evidence WHERE published_at < %s", (at - FORGET_AFTER,))

    def evidence(self, keys: Collection[EvidenceKey]) -> dict[EvidenceKey, dict[str, Any]]:
        if not keys:
            return {}
        found: dict[EvidenceKey, dict[str, Any]] = {}
        with self._connect() as db:
            for plan, route, epoch in keys:
                rows = db.execute("SELECT instance, evidence_json, published_at FROM facade_evidence "
                                  "WHERE plan = %s AND route = %s AND epoch = %s", (plan, route, epoch)).fetchall()
                found[(plan, route, epoch)] = {str(instance): {**json.loads(text), "published_at": float(at)}
                                               for instance, text, at in rows}
        return found

    # -- following and leading (on the event loop, each on a connection of its own) ----------------

    async def wait_for_change(self, timeout: float) -> None:
        """Return at the next NOTIFY, or after ``timeout``; at once after (re)connecting (changes may be missed)."""
        if self._broken:
            self._broken = False
            await _close(self._listener)
            self._listener = None
        try:
            if self._listener is None or self._listener.closed:
                self._listener = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
                await self._listener.execute(f"LISTEN {CHANNEL}")
                return
            async for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error as exc:
            await _close(self._listener)
            self._listener = None
            raise StoreUnavailable(f"{self._location}: {_first_line(exc)}") from None

    async def lead(self) -> bool:
        try:
            if self._leader is None or self._leader.closed:
                self._leading = False
                self._leader = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
            if self._leading:
                # The lock lives as long as this session: a round trip proves the session still does.
                await self._leader.execute("SELECT 1")
                return True
            cursor = await self._leader.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,))
            row = await cursor.fetchone()
            self._leading = bool(row and row[0])
        except psycopg.Error:
            await _close(self._leader)
            self._leader, self._leading = None, False
        return self._leading

    async def close(self) -> None:
        for connection in (self._listener, self._leader):
            await _close(connection)  # closing the leader's session releases the lock at once
        self._listener, self._leader, self._leading = None, None, False


def _conflict(transition: Transition, current: int) -> Refusal:
    return Refusal(f"{transition.plan} changed meanwhile (version {current}, expected {transition.expected_version}); "
                   "look at its status and try again", "conflict")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _close(connection: psycopg.AsyncConnection[Any] | None) -> None:
    if connection is not None and not connection.closed:
        try:
            await connection.close()
        except psycopg.Error:
            pass
