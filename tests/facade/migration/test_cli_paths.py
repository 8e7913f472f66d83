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
