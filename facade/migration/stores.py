"""Which ``StateStore`` a config names: its ``state_store`` URL (PostgreSQL), else the SQLite file in state_dir.

Apart from ``store.py`` so that the PostgreSQL store (which imports the contract from there) is imported
only here, and only when a config asks for it: psycopg is an optional dependency.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .store import DEFAULT_STORE_FILE, MigrationStore, StateStore

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["open_store", "store_location"]


def store_location(config: Config) -> str:
    """Where ``config`` keeps migration state (``StateStore.location``: a URL without its password, else
    the SQLite file in state_dir): a reload that names the same store keeps the one already open."""
    if config.state_store is None:
        return os.path.join(config.state_dir, DEFAULT_STORE_FILE)
    try:
        from .pgstore import safe_location
    except ModuleNotFoundError:  # open_store says what to install
        return config.state_store
    return safe_location(config.state_store)


def open_store(config: Config) -> StateStore:
    """The store ``config`` names, opened (schema created); OSError / StoreUnavailable / ImportError if it cannot be.

    ``state_store: postgresql://...`` needs psycopg (``pip install 'facade[postgres]'``).
    """
    if config.state_store is None:
        return MigrationStore(store_location(config))
    try:
        from .pgstore import PostgresStore
    except ModuleNotFoundError as exc:
        raise ImportError(f"state_store: postgresql:// needs psycopg ({exc}); pip install 'facade[postgres]'") from None
    return PostgresStore(config.state_store)
