"""The admin API's body parsing (pure); the routes themselves run in test_controller.py."""

from __future__ import annotations

from facade.migration.api import parse_action
from facade.migration.engine import Action


def test_parse_action_defaults_and_fields() -> None:
    assert parse_action("next", {}) == (Action("next", actor="api"), None)
    assert parse_action("next", None) == (Action("next", actor="api"), None)
    body = {"force": True, "reason": "flaky", "to": None, "actor": "ann", "version": 4}
    assert parse_action("next", body) == (Action("next", actor="ann", reason="flaky", force=True), 4)
    assert parse_action("rollback", {"to": 0}) == (Action("rollback", actor="api", to=0), None)
    # The CLI sends null for what it does not set.
    assert parse_action("start", {"force": False, "reason": "", "to": None, "actor": None}) == (
        Action("start", actor="api"), None)


def test_parse_action_rejects_what_it_cannot_apply() -> None:
    assert parse_action("next", [1]) == "the body must be a JSON object: {force, reason, to, actor, version}"
    assert parse_action("next", {"forse": True}) == "unknown field 'forse' (expected force, reason, to, actor, version)"
    assert parse_action("next", {"force": "yes"}) == "force must be true or false, got 'yes'"
    assert parse_action("rollback", {"to": "2"}) == "to must be a step number, got '2'"
    assert parse_action("rollback", {"to": True}) == "to must be a step number, got True"
    assert parse_action("next", {"reason": 5}) == "reason and actor must be strings"
    assert parse_action("next", {"version": 1.5}) == "version must be the integer version of the status, got 1.5"
