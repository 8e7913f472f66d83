"""Which store a config names (``state_store``), and what a user reads when it cannot be had."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from facade.config import load_config
from facade.errors import ConfigError
from facade.migration.store import MigrationStore
from facade.migration.stores import open_store, store_location


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "facade.yaml"
    path.write_text(textwrap.dedent("""\
        state_dir: state
        services: {monolith: {endpoints: ["http://127.0.0.1:9"]}}
        routes: [{name: default, match: {path: {prefix: /}}, backend: monolith}]
        """) + extra)
    return path


def test_without_state_store_it_is_the_sqlite_file_in_state_dir(tmp_path: Path) -> None:
    config = load_config(str(_config(tmp_path)))
    assert config.state_store is None
    store = open_store(config)
    assert isinstance(store, MigrationStore) and not store.shared
    assert store.location == store_location(config) == str(tmp_path / "state" / "migrations.sqlite3")


def test_state_store_must_be_a_postgresql_url_and_is_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(_config(tmp_path, "state_store: mysql://ann:hunter2@db/shop\n")))
    text = str(caught.value)
    assert "facade.yaml:4:14: state_store: must be a postgresql://" in text, text
    assert "hunter2" not in text


def test_a_missing_psycopg_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(str(_config(tmp_path, "state_store: postgresql://facade@127.0.0.1:9/shop\n")))
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now fails as when it is not installed
    monkeypatch.delitem(sys.modules, "facade.migration.pgstore", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'facade\[postgres\]'"):
        open_store(config)
