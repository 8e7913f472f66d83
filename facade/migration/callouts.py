"""The migration controller's outgoing calls: webhooks, notifications and Prometheus queries (the I/O edge).

Nothing here decides: a hook's answer becomes a ``HookOutcome`` and a query's a ``QueryResult``,
which ``facade.migration.gates`` judges. Every call is bounded: each attempt by its ``timeout``
(connect, read and the whole attempt), retries by their count (transport errors and 5xx only; a
4xx is an answer), with a short backoff between attempts. None of it runs on the proxy's hot
path: the controller calls these from transitions and auto-mode checks (httpx, as the control
plane's client).

The body of a hook or a notification is JSON; with a secret it is signed with HMAC-SHA256 over
the exact bytes sent, in ``X-Facade-Signature: sha256=<hex>`` (the GitHub / Flagger-loadtester
style), and ``X-Facade-Event`` names the event.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import httpx

from .engine import Phase, Transition, display_step
from .gates import GateReport, HookOutcome, QueryResult
from .hooks import Notification, PromGate, Webhook
from .plan import Plan

__all__ = [
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "call_bound",
    "call_hook",
    "event_payload",
    "is_rollback",
    "notification_body",
    "query_prometheus",
    "sample_value",
    "send_notification",
    "sign",
]

logger = logging.getLogger("facade.migration")

SIGNATURE_HEADER = "X-Facade-Signature"
EVENT_HEADER = "X-Facade-Event"
_BACKOFF = 0.2  # seconds before the second attempt, doubled each time, at most _MAX_BACKOFF
_MAX_BACKOFF = 2.0
_MAX_ANSWER = 1 << 20  # a Prometheus answer larger than this is not one value


def call_bound(timeout: float, retries: int) -> float:
    """The longest one hook call can take: every attempt's timeout and the backoffs between them (pure)."""
    return timeout * (retries + 1) + sum(min(_BACKOFF * 2.0**i, _MAX_BACKOFF) for i in range(retries))


def sign(body: bytes, secret: str) -> str:
    """The ``X-Facade-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def event_payload(
    plan: Plan, event: str, transition: Transition, gates: GateReport | Mapping[str, Any] | None, *, now: float,
    hook: Webhook | None = None,
) -> dict[str, Any]:
    """The JSON body of a hook call or a JSON notification (pure).

    ``step`` is the step the event is about, as people number it: the step being entered for
    ``confirm`` / ``pre_step``, the step being left for ``post_step`` / notifications of a transition
    away from it, the current step for ``rollout`` / ``rollback`` checks (a ``check`` transition, from
    the step to itself).
    """
    steps = len(plan.steps)
    before = display_step(transition.from_phase, transition.from_step, steps)
    after = display_step(transition.to_phase, transition.to_step, steps)
    entering = event in ("confirm", "pre_step")
    index = transition.to_step if entering else transition.from_step
    number = after if entering else before
    summary = plan.steps[index].summary() if 0 <= index < steps and number > 0 else ""
    body: dict[str, Any] = {
        "event": event,
        "plan": plan.name,
        "route": plan.routes[0],
        "routes": list(plan.routes),
        "from_service": plan.from_service,
        "to_service": plan.to_service,
        "step": number,
        "step_summary": summary,
        "transition": {
            "action": transition.action,
            "actor": transition.actor,
            "reason": transition.reason,
            "from_state": transition.from_phase.value,
            "from_step": before,
            "to_state": transition.to_phase.value,
            "to_step": after,
        },
        "gates": gates.to_json() if isinstance(gates, GateReport) else gates,
        "sent_at": now,
    }
    if hook is not None:
        body["hook"] = hook.name
        body["metadata"] = dict(hook.metadata)
    return body


def notification_body(target: Notification, payload: Mapping[str, Any]) -> dict[str, Any]:
    """What a notification target receives: the event as is (``json``), or Slack's ``{"text": ...}``."""
    if target.format == "json":
        return dict(payload)
    move = payload["transition"]
    text = (f"facade migration *{payload['plan']}* ({', '.join(payload['routes'])}): {payload['event']}: "
            f"{move['action']} by {move['actor']}: {move['from_state']} step {move['from_step']} -> "
            f"{move['to_state']} step {move['to_step']}")
    if move["reason"]:
        text += f"\n{move['reason']}"
    gates = payload.get("gates")
    if gates and gates.get("status") != "pass":
        bad = [r["message"] for r in gates.get("results", []) if r.get("status") != "pass"]
        text += "\ngates " + gates["status"] + (": " + "; ".join(bad) if bad else "")
    return {"text": text}


async def call_hook(
    client: httpx.AsyncClient, hook: Webhook, payload: Mapping[str, Any], *, environ: Mapping[str, str] | None = None
) -> HookOutcome:
    """POST the signed payload to ``hook.url``; retried on no answer or 5xx, at most ``hook.retries`` times."""
    secret = (os.environ if environ is None else environ).get(hook.secret_env, "")
    if not secret:  # validated at load; the variable was unset since
        return HookOutcome(hook, None, 0, f"environment variable {hook.secret_env} (the hook's secret) is not set")
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    # An event hook hears every event: the header names it (the other kinds are asked about one event, their own).
    event = str(payload.get("event") or hook.kind)
    headers = {"content-type": "application/json", SIGNATURE_HEADER: sign(body, secret), EVENT_HEADER: event}
    status, error = await _post(client, hook.url, body, headers, hook.timeout, hook.retries)
    return HookOutcome(hook, status[0], status[1], error)


async def send_notification(
    client: httpx.AsyncClient, target: Notification, payload: Mapping[str, Any],
    *, environ: Mapping[str, str] | None = None,
) -> bool:
    """POST one notification (one retry on no answer or 5xx); False, logged, when it did not get a 2xx."""
    body = json.dumps(notification_body(target, payload), sort_keys=True, separators=(",", ":")).encode()
    headers = {"content-type": "application/json", EVENT_HEADER: str(payload["event"])}
    if target.secret_env:
        secret = (os.environ if environ is None else environ).get(target.secret_env, "")
        if secret:
            headers[SIGNATURE_HEADER] = sign(body, secret)
    (status, attempts), error = await _post(client, target.url, body, headers, target.timeout, 1)
    if status is None or not 200 <= status < 300:
        logger.warning("notification to %s (%s) failed after %d attempt(s): %s", target.url, payload["event"],
                       attempts, error or f"status {status}")
        return False
    return True


async def _post(
    client: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str], timeout: float, retries: int
) -> tuple[tuple[int | None, int], str]:
    """((final status or None, attempts), why there was no answer)."""
    status: int | None = None
    error = ""
    attempts = 0
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(min(_BACKOFF * 2 ** (attempt - 1), _MAX_BACKOFF))
        attempts += 1
        try:
            # The per-phase timeouts bound connect / read; the outer one bounds a server that trickles.
            async with asyncio.timeout(timeout):
                response = await client.post(url, content=body, headers=headers, timeout=timeout)
            status, error = response.status_code, ""
        except (TimeoutError, httpx.TimeoutException):
            status, error = None, f"timed out after {timeout:g}s"
        except httpx.HTTPError as exc:
            status, error = None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if status is not None and status < 500:
            break
    return (status, attempts), error


async def query_prometheus(client: httpx.AsyncClient, gate: PromGate) -> QueryResult:
    """The gate's PromQL instant query (``GET /api/v1/query``) -> one value, or why there is none."""
    url = gate.url.rstrip("/") + "/api/v1/query"
    started = time.monotonic()
    try:
        async with asyncio.timeout(gate.timeout):
            response = await client.get(url, params={"query": gate.query}, timeout=gate.timeout)
    except (TimeoutError, httpx.TimeoutException):
        return QueryResult(None, f"Prometheus at {gate.url} did not answer within {gate.timeout:g}s")
    except httpx.HTTPError as exc:
        return QueryResult(None, f"Prometheus at {gate.url} is unreachable ({type(exc).__name__})")
    if len(response.content) > _MAX_ANSWER:
        return QueryResult(None, f"the query returned {len(response.content)} bytes; aggregate it to one value")
    try:
        doc = response.json()
    except ValueError:
        return QueryResult(None, f"Prometheus answered {response.status_code} without JSON")
    if not isinstance(doc, dict) or doc.get("status") != "success":
        error = doc.get("error", "") if isinstance(doc, dict) else ""
        return QueryResult(None, f"Prometheus answered {response.status_code}: {error or 'not a success'}")
    logger.debug("prometheus gate %s answered in %.3fs", gate.name, time.monotonic() - started)
    return sample_value(doc.get("data"))


def sample_value(data: Any) -> QueryResult:
    """The single value of a ``/api/v1/query`` result (``data``), or why there is none (pure)."""
    if not isinstance(data, dict):
        return QueryResult(None, "Prometheus answered without data")
    kind, result = data.get("resultType"), data.get("result")
    sample: Any = None
    if kind in ("scalar", "string"):
        sample = result
    elif kind == "vector" and isinstance(result, list):
        if not result:
            return QueryResult(None, "the query returned no series")
        if len(result) > 1:
            return QueryResult(None, f"the query returned {len(result)} series; aggregate it to one (sum, max, ...)")
        sample = result[0].get("value") if isinstance(result[0], dict) else None
    else:
        return QueryResult(None, f"the query returned a {kind}; a gate needs an instant vector or a scalar")
    try:
        value = float(sample[1])
    except (TypeError, ValueError, IndexError):
        return QueryResult(None, "the query's sample is not a number")
    if math.isnan(value):
        return QueryResult(None, "the query's value is NaN (e.g. 0/0: no traffic in the window)")
    return QueryResult(value)


def is_rollback(transition: Transition) -> bool:
    """A transition that moves traffic back (a rollback, an automatic rollback, an abort)."""
    return transition.action in ("rollback", "auto_rollback", "abort") or transition.to_phase in (
        Phase.ROLLED_BACK, Phase.ABORTED)
