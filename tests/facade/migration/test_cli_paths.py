"""`facade migrate plan` finds the plans of a config given by a relative path, from any directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from facade.cli import main

SHOP = Path(__file__).resolve().parents[3] / "sample_monolith"


def test_relative_config_path_resolves_the_plans_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(SHOP.parent)
    assert main(["migrate", "plan", "extract-catalog", "-c", "sample_monolith/facade.yaml"]) == 0
    out = capsys.readouterr().out
    assert "plan extract-catalog" in out and str(SHOP / "migrations") in out


def test_validate_refuses_an_mtls_step_in_a_config_without_a_mesh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = (SHOP / "facade.yaml").read_text().replace("migrations: migrations/", f"migrations: {SHOP / 'migrations-mesh'}")
    (tmp_path / "facade.yaml").write_text(config)
    assert main(["validate", "-c", str(tmp_path / "facade.yaml")]) == 2
    err = capsys.readouterr().err
    assert "001-extract-catalog.yaml:" in err and "mtls" in err
    assert main(["validate", "-c", str(SHOP / "facade-mesh.yaml")]) == 0
