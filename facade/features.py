"""Attach the optional features (mesh control plane, shadow traffic, migrations) to a runtime.

Each feature is an extension object: it may add admin routes (``admin_routes()``), react to a
config reload (``config_changed(config)``), veto a config (``check_config(config)`` raising
ConfigError) and run background work (``start()`` / ``stop()``). Telemetry is built into the
runtime (``runtime.telemetry``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["attach_features"]


def _feature(module: str) -> Any:
    """The module of an optional feature, or None when this build does not have it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            return None
        raise


def attach_features(runtime: Any) -> None:
    """Wire every feature present in this build into ``runtime`` (before ``runtime.start()``).

    Order matters: the mesh replaces ``runtime.upstreams`` (mTLS pools), so it goes first and the
    shadow sender, which sends over the runtime's pools, is built on the final ones. Migrations
    come last: their start swaps in the splits of the durable state.
    """
    mesh = _feature("mesh.controlplane")
    if mesh is not None:
        mesh.MeshFeature.attach(runtime)
    shadow = _feature("facade.shadow")
    if shadow is not None:
        # The config's shadow: section (limits, host suffix, noise learning, redaction) sizes the sender.
        shadow.ShadowFeature.attach(runtime, **shadow.sender_options(getattr(runtime.config, "shadow", None)))
    from .migration.controller import MigrationController

    runtime.extensions.append(MigrationController(runtime))
    dashboard = _feature("facade.dashboard")
    if dashboard is not None:  # the /ui page over the APIs above (reads the controller, the shadow ring)
        dashboard.DashboardFeature.attach(runtime)
