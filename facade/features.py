"""Attach the optional features (telemetry, migrations, mesh control plane) to a runtime.

Each feature is an extension object: it may add admin routes (``admin_routes()``), react to a
config reload (``config_changed(config)``), veto a config (``check_config(config)`` raising
ConfigError) and run background work (``start()`` / ``stop()``).

Telemetry is built into the runtime (``runtime.telemetry``); migrations are an extension.
"""

from __future__ import annotations

from typing import Any

__all__ = ["attach_features"]


def attach_features(runtime: Any) -> None:
    """Wire every feature present in this build into ``runtime`` (before ``runtime.start()``)."""
    from .migration.controller import MigrationController

    runtime.extensions.append(MigrationController(runtime))
