"""Fixtures of the migration tests: one throwaway PostgreSQL cluster for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres import PostgresCluster, find_binaries


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster on a loopback ephemeral port, started once; skips when the binaries are missing."""
    folder, why = find_binaries()
    if folder is None:
        pytest.skip(why)
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'facade[postgres]')")
    cluster = PostgresCluster.create()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh database of the session's cluster; the cluster runs again after the test (even if it stopped it)."""
    yield postgres_cluster.new_database()
    if not (postgres_cluster.data / "postmaster.pid").exists():
        postgres_cluster.start()
