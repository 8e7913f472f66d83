"""The dashboard's HTML, rendered on the server from the admin API's JSON documents (pure).

Every value that comes from a config, a plan, a request or a response (route names, hosts,
header values, reasons, diff samples) goes through ``_e`` (``html.escape`` with quotes): the page
holds the admin token in the browser, so markup injected through a route name would hand it over.
The markup has no inline scripts, styles or event handlers: the Content-Security-Policy the
dashboard sends allows scripts and styles from its own static files only.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "ACTION_BUTTONS",
    "action_enabled",
    "page",
    "render_carve_out",
    "render_diffs",
    "render_migrations",
    "render_routes",
    "route_options",
]

# The buttons of a migration card, and the phases in which the engine accepts each action.
ACTION_BUTTONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("start", ("pending", "rolled_back")),
    ("next", ("running",)),
    ("pause", ("running",)),
    ("resume", ("paused",)),  # and on a running pause step: the approval it waits for
    ("rollback", ("running", "paused", "completed")),
    ("abort", ("pending", "running", "paused", "rolled_back")),
)


_AUTO_BADGE = ' <span class="badge">auto</span>'


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(at: float | None) -> str:
    if at is None:
        return ""
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:.4g}{unit}"


# -- routes ------------------------------------------------------------------------------------------


def _match_text(match: Mapping[str, Any]) -> str:
    parts = []
    for kind, path in match.get("path", {}).items():
        parts.append(f"{kind} {path}")
    if match.get("hosts"):
        parts.append("host " + ", ".join(match["hosts"]))
    if match.get("methods"):
        parts.append(" ".join(match["methods"]))
    for name, cond in (match.get("headers") or {}).items():
        parts.append(f"header {name} " + " ".join(f"{k} {v}" for k, v in cond.items()))
    for name, cond in (match.get("query") or {}).items():
        parts.append(f"query {name} " + " ".join(f"{k} {v}" for k, v in cond.items()))
    return "; ".join(parts)


def _pool_text(pool: Mapping[str, Any] | None) -> tuple[str, str]:
    """(endpoint health, css class) of a pool snapshot."""
    if pool is None:
        return "no pool", "bad"
    ejected = sum(1 for g in pool.get("groups", ()) for ep in g.get("endpoints", ()) if ep.get("ejected"))
    unhealthy = sum(1 for g in pool.get("groups", ()) for ep in g.get("endpoints", ()) if not ep.get("healthy", True))
    text = f"{pool.get('available', 0)}/{pool.get('total', 0)} endpoints up"
    if ejected:
        text += f", {ejected} ejected"
    if unhealthy:
        text += f", {unhealthy} failing health checks"
    cls = "ok" if pool.get("available", 0) == pool.get("total", 0) else ("warn" if pool.get("available") else "bad")
    return text, cls


def render_routes(routes: Sequence[Mapping[str, Any]]) -> str:
    """The routes table: match -> backends with weights and endpoint health, and the migration step."""
    rows = []
    for route in routes:
        match = "<br>".join(_e(_match_text(m)) for m in route.get("match", ())) or "any"
        if "action" in route:
            backends = _e(", ".join(f"{k} {v}" for k, v in route["action"].items()))
        else:
            items = []
            for b in route.get("backends", ()):
                health, cls = _pool_text(b.get("pool"))
                items.append(
                    f'<li><span class="svc">{_e(b["service"])}</span> <span class="weight">{_number(b["weight"])}%</span>'
                    f' <span class="health {cls}">{_e(health)}</span></li>'
                )
            backends = f'<ul class="backends">{"".join(items)}</ul>'
        migration = route.get("migration")
        step = _e(migration["step"]) if migration else '<span class="muted">not migrating</span>'
        rows.append(
            f'<tr data-route="{_e(route["name"])}"><td class="name">{_e(route["name"])}</td>'
            f"<td>{match}</td><td>{backends}</td><td>{step}</td></tr>"
        )
    return (
        '<table class="routes"><thead><tr><th>route</th><th>match</th><th>backends</th><th>step</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# -- migrations --------------------------------------------------------------------------------------


def _gates(gates: Mapping[str, Any] | None) -> str:
    if gates is None:
        return '<p class="muted">no gates evaluated: no step is live</p>'
    rows = []
    for r in gates.get("results", ()):
        rows.append(
            f'<tr class="gate {_e(r["status"])}"><td>{_e(r["name"])}</td>'
            f'<td><span class="badge {_e(r["status"])}">{_e(r["status"])}</span></td>'
            f"<td>{_number(r.get('value'))}</td><td>{_number(r.get('threshold'))}</td>"
            f"<td>{_number(r.get('old'))}</td><td>{_number(r.get('new'))}</td><td>{_e(r.get('message'))}</td></tr>"
        )
    if not rows:
        return f'<p>gates: <span class="badge {_e(gates["status"])}">{_e(gates["status"])}</span> (this step has none)</p>'
    return (
        f'<p>gates: <span class="badge {_e(gates["status"])}">{_e(gates["status"])}</span></p>'
        '<table class="gates"><thead><tr><th>gate</th><th>result</th><th>measured</th><th>threshold</th>'
        f"<th>old</th><th>new</th><th>why</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _journal(entries: Sequence[Mapping[str, Any]]) -> str:
    if not entries:
        return '<p class="muted">no transitions yet</p>'
    rows = []
    for j in reversed(entries):  # the API lists oldest first; the card shows what just happened on top
        gates = j.get("gates") or {}
        values = "; ".join(
            f"{r.get('name')} {_number(r.get('value'))} ({r.get('status')})" for r in gates.get("results", ())
        )
        rows.append(
            f"<tr><td>{_e(_when(j.get('at')))}</td><td>{_e(j.get('actor'))}</td><td>{_e(j.get('action'))}</td>"
            f"<td>{_e(j.get('from_state'))} {int(j.get('from_step', 0))} → {_e(j.get('to_state'))} "
            f"{int(j.get('to_step', 0))}</td><td>{_e(j.get('reason'))}</td><td>{_e(values)}</td></tr>"
        )
    return (
        '<table class="journal"><thead><tr><th>when</th><th>who</th><th>action</th><th>state · step</th>'
        f"<th>why</th><th>gate values</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def action_enabled(action: str, phases: tuple[str, ...], status: Mapping[str, Any]) -> bool:
    """Whether the engine would consider ``action`` in this status (it still checks holds and gates)."""
    if action == "resume" and status["state"] == "running":
        return str(status.get("step_summary", "")).startswith("pause")
    return status["state"] in phases


def _buttons(status: Mapping[str, Any]) -> str:
    out = []
    for action, phases in ACTION_BUTTONS:
        enabled = action_enabled(action, phases, status)
        out.append(
            f'<button type="button" class="action" data-plan="{_e(status["name"])}" data-action="{action}" '
            f'data-version="{int(status["version"])}" data-step="{int(status["step"])}"'
            f"{'' if enabled else ' disabled'}>{action}</button>"
        )
    return f'<div class="actions">{"".join(out)}</div>'


def _migration_card(status: Mapping[str, Any]) -> str:
    hold = status.get("hold_left")
    hold_text = f"hold: {hold:.0f} s left" if hold else ("hold: done" if hold == 0 else "")
    routing = "; ".join(
        f"{route}: {r['to_percent']:g}% to {status['to']}" + (f", shadow {r['shadow_percent']:g}%" if r["shadow_percent"]
                                                              else "")
        + (f", canary {r['canary']}" if r.get("canary") else "")
        for route, r in status.get("routing", {}).items()
    )
    return (
        f'<article class="migration" data-plan="{_e(status["name"])}" data-state="{_e(status["state"])}" '
        f'data-step="{int(status["step"])}" data-version="{int(status["version"])}">'
        f'<header><h3>{_e(status["name"])}</h3> <span class="badge state {_e(status["state"])}">'
        f'{_e(status["state"])}</span>{_AUTO_BADGE if status.get("auto") else ""}</header>'
        f'<p>{_e(", ".join(status["routes"]))}: {_e(status["from"])} → {_e(status["to"])}</p>'
        f'<p class="step">step {int(status["step"])} of {int(status["steps"])}: {_e(status["step_summary"])}</p>'
        f'<progress max="{int(status["steps"])}" value="{int(status["step"])}"></progress>'
        f'<p class="routing">{_e(routing)} <span class="hold">{_e(hold_text)}</span></p>'
        + (f'<p class="reason">{_e(status["reason"])}</p>' if status.get("reason") else "")
        + _gates(status.get("gates"))
        + _buttons(status)
        + f"<details><summary>journal</summary>{_journal(status.get('journal', ()))}</details>"
        "</article>"
    )


def render_migrations(statuses: Sequence[Mapping[str, Any]]) -> str:
    """One card per migration plan."""
    if not statuses:
        return '<p class="muted">no migration plans (the config has no <code>migrations:</code> folder)</p>'
    return "".join(_migration_card(s) for s in statuses)


# -- diffs and carve-out ---------------------------------------------------------------------------


def _side(value: Any) -> str:
    return _e(value if isinstance(value, str) else json.dumps(value, sort_keys=True))


def render_diffs(doc: Mapping[str, Any] | None) -> str:
    """Recent diff samples of a route (``GET /diffs`` as it is, already redacted) side by side."""
    if doc is None:
        return '<p class="muted">shadow diffing is not enabled in this facade</p>'
    samples = doc.get("samples", ())
    if not samples:
        return f'<p class="muted">no differing shadow responses on {_e(doc.get("route"))}</p>'
    out = [f'<p>{int(doc.get("seen", 0))} differing responses seen, newest first</p>']
    for s in samples:
        rows = "".join(
            f'<tr><td class="path">{_e(d.get("path"))}</td><td class="kind">{_e(d.get("kind"))}</td>'
            f'<td class="old">{_side(d.get("primary"))}</td><td class="new">{_side(d.get("candidate"))}</td></tr>'
            for d in s.get("differences", ())
        )
        more = f'<p class="muted">… and {int(s["omitted"])} more</p>' if s.get("omitted") else ""
        status = s.get("status", {})
        out.append(
            f'<div class="diff"><p><code>{_e(s.get("request"))}</code> at {_e(_when(s.get("at")))} · '
            f'{_e(s.get("step"))} · status {_e(status.get("primary"))} vs {_e(status.get("candidate"))}</p>'
            '<table class="fields"><thead><tr><th>field</th><th>kind</th><th>old (primary)</th><th>new (candidate)</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>{more}</div>"
        )
    return "".join(out)


def render_carve_out(doc: Mapping[str, Any]) -> str:
    """The latest carve-out share per route and in total, as a table (the chart plots the history)."""
    def latest(points: Sequence[Sequence[Any]]) -> float | None:
        for _, share in reversed(points):
            if share is not None:
                return float(share)
        return None

    carved = ", ".join(doc.get("carved_services", ())) or "none yet"
    rows = [
        f'<tr data-route="{_e(route)}"><td>{_e(route)}</td><td class="share">{_pct(latest(r["points"]))}</td>'
        f"<td>{int(r['requests'])}</td></tr>"
        for route, r in sorted(doc.get("routes", {}).items())
    ]
    total = latest(doc.get("total", ()))
    return (
        f'<p>carved services: {_e(carved)}. Served by them now: <strong class="total-share">{_pct(total)}</strong>'
        " of all requests.</p>"
        '<table class="carve"><thead><tr><th>route</th><th>share on carved services</th><th>requests sampled</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.1f}%"


def route_options(routes: Iterable[str], chosen: str | None) -> str:
    return "".join(
        f'<option value="{_e(r)}"{" selected" if r == chosen else ""}>{_e(r)}</option>' for r in routes
    )


# -- the page -----------------------------------------------------------------------------------------


def page(*, routes_html: str, migrations_html: str, options_html: str, carve_html: str, version: int) -> str:
    """The whole page; the script refreshes each section from ``/ui/fragment/*`` and draws the charts."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>facade dashboard</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/static/dashboard.css">
<script src="/ui/static/dashboard.js" defer></script>
</head>
<body>
<header class="top">
  <h1>facade</h1>
  <span class="muted">config v{int(version)}</span>
  <form id="token-form" class="token" autocomplete="off">
    <label for="token">admin token</label>
    <input id="token" type="password" placeholder="kept in this tab only">
    <button type="submit" id="token-save">use</button>
    <button type="button" id="token-forget">forget</button>
    <span id="token-state" class="muted">no token</span>
  </form>
</header>
<p id="message" role="status" class="message"></p>
<main>
<section id="routes-section"><h2>Routes</h2><div id="routes">{routes_html}</div></section>
<section id="migrations-section"><h2>Migrations</h2><div id="migrations">{migrations_html}</div></section>
<section id="live-section"><h2>Old vs new, live</h2>
  <p><label for="route-select">route</label> <select id="route-select">{options_html}</select>
  <span id="live-legend" class="legend"></span></p>
  <div id="charts" class="charts"></div>
  <h3>Recent diff samples</h3><div id="diffs"></div>
</section>
<section id="carve-section"><h2>Carve-out progress</h2>
  <div id="carve-chart" class="charts"></div>
  <p class="legend">green: all routes; grey: one line per route with traffic (hover for its name)</p>
  <div id="carve">{carve_html}</div>
</section>
</main>
</body>
</html>
"""
