from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from facade.migration.engine import Action, MigrationState, Phase, Refusal, Transition, apply
from facade.migration.gates import GateReport, GateStatus
from facade.migration.store import MigrationStore
from tests.facade.migration.test_engine import PLAN

NOW = 1_000_000.0


def step(store: MigrationStore, action: Action, now: float = NOW) -> MigrationState:
    state = store.state("shop") or MigrationState.initial("shop")
    t = apply(state, action, plan=PLAN, now=now, gate_report=GateReport(GateStatus.PASS))
    assert isinstance(t, Transition), t
    committed = store.commit(t)
    assert isinstance(committed, MigrationState), committed
    return committed


def test_commit_state_and_journal_roundtrip(tmp_path: Path) -> None:
    store = MigrationStore(str(tmp_path / "state" / "m.sqlite3"))
    assert store.state("shop") is None and store.all_states() == {} and store.journal("shop") == []
    step(store, Action("start", actor="ann", reason="go"))
    step(store, Action("next", actor="bob"), now=NOW + 1)
    step(store, Action("pause", actor="bob", reason="lunch"), now=NOW + 2)
    state = store.state("shop")
    assert state is not None and (state.phase, state.step, state.version) == (Phase.PAUSED, 1, 3)
    assert state.step_hashes == PLAN.step_hashes
    assert store.all_states() == {"shop": state}
    journal = store.journal("shop")
    assert [(e.version, e.action, e.actor, e.from_step, e.to_step, e.to_state) for e in journal] == [
        (1, "start", "ann", 0, 0, Phase.RUNNING),
        (2, "next", "bob", 0, 1, Phase.RUNNING),
        (3, "pause", "bob", 1, 1, Phase.PAUSED),
    ]
    assert journal[0].reason == "go" and journal[0].plan_hash == PLAN.content_hash
    assert journal[1].gates == {"status": "pass", "results": []}
    assert [e.version for e in store.journal("shop", limit=2)] == [2, 3]
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_stale_transition_is_a_conflict(tmp_path: Path) -> None:
    store = MigrationStore(str(tmp_path / "m.sqlite3"))
    start = apply(MigrationState.initial("shop"), Action("start"), plan=PLAN, now=NOW)
    assert isinstance(start, Transition)
    assert isinstance(store.commit(start), MigrationState)
    again = store.commit(start)
    assert isinstance(again, Refusal) and again.code == "conflict"
    assert len(store.journal("shop")) == 1


def test_two_concurrent_next_advance_one_step(tmp_path: Path) -> None:
    path = str(tmp_path / "m.sqlite3")
    step(MigrationStore(path), Action("start"))
    barrier = threading.Barrier(2, timeout=10)
    results: list[MigrationState | Refusal] = []

    def worker() -> None:
        store = MigrationStore(path)
        state = store.state("shop")
        assert state is not None
        t = apply(state, Action("next", actor=threading.current_thread().name), plan=PLAN, now=NOW + 1)
        assert isinstance(t, Transition)
        barrier.wait()  # both computed from the same version; now race to commit
        results.append(store.commit(t))

    threads = [threading.Thread(target=worker, name=f"op{i}") for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=20)
    assert len(results) == 2
    wins = [r for r in results if isinstance(r, MigrationState)]
    conflicts = [r for r in results if isinstance(r, Refusal)]
    assert len(wins) == 1 and len(conflicts) == 1 and conflicts[0].code == "conflict"
    final = MigrationStore(path).state("shop")
    assert final is not None and final.step == 1 and final.version == 2
    assert [e.action for e in MigrationStore(path).journal("shop")] == ["start", "next"]


CHILD = textwrap.dedent(
    """
    import sys
    from facade.migration.engine import Action, MigrationState, Transition, apply
    from facade.migration.store import MigrationStore
    from tests.facade.migration.test_engine import PLAN

    store = MigrationStore(sys.argv[1])
    # start, then pause/resume forever: every commit is one transition, acknowledged on stdout.
    actions = ["start"] + ["pause", "resume"] * 10_000
    for i, name in enumerate(actions):
        state = store.state("shop") or MigrationState.initial("shop")
        t = apply(state, Action(name, actor="child", reason=f"#{i}"), plan=PLAN, now=1000.0 + i)
        assert isinstance(t, Transition), t
        store.commit(t)
        print(t.state.version, flush=True)
    """
)


def test_kill_9_mid_sequence_keeps_state_and_full_journal(tmp_path: Path) -> None:
    path = str(tmp_path / "m.sqlite3")
    repo = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE, text=True, cwd=repo, env=env)
    acked = 0
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 30
        while acked < 5 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acked = int(line)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert acked >= 5, "the child never committed"
    store = MigrationStore(path)
    state = store.state("shop")
    assert state is not None
    # Every acknowledged commit survived; the state and the journal agree, with no gaps.
    assert state.version >= acked
    journal = store.journal("shop")
    assert [e.version for e in journal] == list(range(1, state.version + 1))
    assert journal[0].action == "start" and journal[-1].to_state is state.phase
    assert journal[-1].reason == f"#{state.version - 1}"
    assert state.phase in (Phase.RUNNING, Phase.PAUSED)


def test_journal_keeps_the_step_summary(tmp_path: Path) -> None:
    import dataclasses
    import json

    store = MigrationStore(str(tmp_path / "m.sqlite3"))
    start = apply(MigrationState.initial("shop"), Action("start"), plan=PLAN, now=NOW)
    assert isinstance(start, Transition)
    summary = {"catalog": {"step": "stable", "backends": {"monolith": {"requests": 3}}}}
    committed = store.commit(dataclasses.replace(start, summary_json=json.dumps(summary)))
    assert isinstance(committed, MigrationState)
    assert store.journal("shop")[0].summary == summary
    assert store.journal("shop")[0].to_json()["summary"] == summary
    assert start.to_json()["summary"] is None  # nothing taken: null, not a missing key


def test_a_store_from_before_step_summaries_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the journal as the first release wrote it
        db.executescript("""
            CREATE TABLE migration_state (plan TEXT PRIMARY KEY, version INTEGER NOT NULL,
                                          state_json TEXT NOT NULL, updated_at REAL NOT NULL);
            CREATE TABLE journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, plan TEXT NOT NULL, version INTEGER NOT NULL,
                plan_hash TEXT NOT NULL, from_step INTEGER NOT NULL, to_step INTEGER NOT NULL,
                from_state TEXT NOT NULL, to_state TEXT NOT NULL, action TEXT NOT NULL, actor TEXT NOT NULL,
                reason TEXT NOT NULL, gates_json TEXT NOT NULL, at REAL NOT NULL, UNIQUE (plan, version));
            INSERT INTO journal (plan, version, plan_hash, from_step, to_step, from_state, to_state, action, actor,
                                 reason, gates_json, at)
                VALUES ('shop', 1, 'h', 0, 0, 'pending', 'running', 'start', 'ann', '', 'null', 1.0);
        """)
    db.close()
    store = MigrationStore(str(path))
    old = store.journal("shop")
    assert [(e.action, e.summary) for e in old] == [("start", None)]
