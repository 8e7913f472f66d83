"""``PostgresStore`` on a real (throwaway) PostgreSQL: the SQLite store's rules, plus following and leading."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from facade.migration.engine import Action, MigrationState, Phase, Refusal, Transition, apply
from facade.migration.gates import GateReport, GateStatus
from facade.migration.store import StateStore, StoreUnavailable
from tests.facade.migration.test_engine import PLAN
from tests.postgres import PostgresCluster

pgstore = pytest.importorskip("facade.migration.pgstore", reason="psycopg is not installed")
PostgresStore = pgstore.PostgresStore

NOW = 1_000_000.0


def step(store: StateStore, action: Action, now: float = NOW) -> MigrationState:
    state = store.state("shop") or MigrationState.initial("shop")
    t = apply(state, action, plan=PLAN, now=now, gate_report=GateReport(GateStatus.PASS))
    assert isinstance(t, Transition), t
    committed = store.commit(t)
    assert isinstance(committed, MigrationState), committed
    return committed


def test_commit_state_and_journal_roundtrip(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    assert store.shared and "@" in store.location
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
    assert [e.version for e in store.journal("shop", limit=2)] == [2, 3]
    # A second store on the same database (another replica) reads the same thing.
    assert PostgresStore(postgres_url).all_states() == {"shop": state}


def test_the_location_never_shows_the_password() -> None:
    assert pgstore.safe_location("postgresql://ann:hunter2@db.local:5433/shop") == "postgresql://ann@db.local:5433/shop"


def test_stale_transition_is_a_conflict(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    start = apply(MigrationState.initial("shop"), Action("start"), plan=PLAN, now=NOW)
    assert isinstance(start, Transition)
    assert isinstance(store.commit(start), MigrationState)
    again = store.commit(start)
    assert isinstance(again, Refusal) and again.code == "conflict"
    assert len(store.journal("shop")) == 1


@pytest.mark.parametrize("first", [True, False], ids=["first-transition", "later-transition"])
def test_concurrent_commits_of_one_version_commit_once(postgres_url: str, first: bool) -> None:
    """Two replicas compute a transition from the same version at once: one commits, the other is refused."""
    stores = [PostgresStore(postgres_url), PostgresStore(postgres_url)]
    if not first:
        step(stores[0], Action("start"))
    seen = stores[0].state("shop") or MigrationState.initial("shop")
    action = Action("start") if first else Action("next", force=True, reason="test")
    transitions = [apply(seen, action, plan=PLAN, now=NOW + i, gate_report=GateReport(GateStatus.PASS))
                   for i in range(2)]
    results: list[MigrationState | Refusal] = []
    barrier = threading.Barrier(2)

    def commit(store: StateStore, transition: Transition | Refusal) -> None:
        assert isinstance(transition, Transition)
        barrier.wait(10)
        results.append(store.commit(transition))

    threads = [threading.Thread(target=commit, args=pair) for pair in zip(stores, transitions, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(type(r).__name__ for r in results) == ["MigrationState", "Refusal"]
    refusal = next(r for r in results if isinstance(r, Refusal))
    assert refusal.code == "conflict"
    assert [e.version for e in stores[1].journal("shop")] == ([1] if first else [1, 2])


def test_an_unreachable_store_raises_store_unavailable_and_recovers(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    store = PostgresStore(postgres_url)
    step(store, Action("start"))
    postgres_cluster.stop()
    with pytest.raises(StoreUnavailable, match="127.0.0.1"):
        store.all_states()
    with pytest.raises(StoreUnavailable):
        step(store, Action("next", force=True, reason="x"))
    postgres_cluster.start()
    state = store.state("shop")
    assert state is not None and state.version == 1  # the refused transition left nothing behind


def test_instances_report_what_they_route(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    running = MigrationState("shop", Phase.RUNNING, step=1, version=2)
    store.report_instance("a:1", "http://127.0.0.1:1", {"shop": running}, at=NOW)
    store.report_instance("b:2", "http://127.0.0.1:2", {"shop": MigrationState.initial("shop")}, at=NOW - 30)
    assert [(r.instance, r.version, r.phase, r.step) for r in store.instances("shop", since=NOW - 10)] == [
        ("a:1", 2, Phase.RUNNING, 1)]
    assert [r.instance for r in store.instances("shop", since=0)] == ["a:1", "b:2"]
    store.forget_instance("a:1")
    assert [r.instance for r in store.instances("shop", since=0)] == ["b:2"]


async def test_a_commit_wakes_another_stores_listener(postgres_url: str) -> None:
    listener, writer = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        await listener.wait_for_change(5)  # connects and LISTENs; returns at once
        waiting = asyncio.create_task(listener.wait_for_change(30))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await asyncio.to_thread(step, writer, Action("start"))
        await asyncio.wait_for(waiting, 10)
        assert time.monotonic() - started < 5  # woken by the notification, not by the 30 s timeout
    finally:
        await listener.close()
        await writer.close()


async def test_one_leader_at_a_time_and_the_next_takes_over(postgres_url: str) -> None:
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        assert await a.lead() is True
        assert await b.lead() is False
        assert await a.lead() is True  # stays the leader while its session lives
        await a.close()  # its session ends: PostgreSQL releases the lock once the backend has exited
        deadline = time.monotonic() + 10
        while not await b.lead() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await b.lead() is True
        assert await a.lead() is False
    finally:
        await a.close()
        await b.close()


async def test_leadership_is_lost_with_the_server_and_taken_again_after(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    store = PostgresStore(postgres_url)
    try:
        assert await store.lead() is True
        await asyncio.to_thread(postgres_cluster.stop)
        assert await store.lead() is False
        with pytest.raises(StoreUnavailable):
            await store.wait_for_change(1)
        await asyncio.to_thread(postgres_cluster.start)
        assert await store.lead() is True
        await store.wait_for_change(1)  # reconnects
    finally:
        await store.close()
