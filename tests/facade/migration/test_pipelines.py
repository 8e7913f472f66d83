"""Webhooks and notifications of a running facade, against a real recording server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from facade.migration.callouts import EVENT_HEADER, SIGNATURE_HEADER
from tests.backends import never_answer, raw_server
from tests.facade.migration.stack import TOKEN, migration_stack
from tests.servers import serve_app

SECRET = "hook-s3cret"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Recorder:
    """A real Starlette app that records every request and answers ``statuses[path]`` (default 200)."""

    statuses: dict[str, int] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    delays: dict[str, float] = field(default_factory=dict)  # seconds before answering ``path``

    def app(self) -> Starlette:
        async def record(request: Request) -> Response:
            body = await request.body()
            path = request.url.path
            self.received.append(Received(path, dict(request.headers), body))
            await asyncio.sleep(self.delays.get(path, 0.0))
            return JSONResponse({"ok": True}, status_code=self.statuses.get(path, 200))

        return Starlette(routes=[Route("/{path:path}", record, methods=["POST"])])

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait_for(self, path: str, count: int, deadline: float = 10.0) -> list[Received]:
        end = time.monotonic() + deadline
        while len(self.at(path)) < count and time.monotonic() < end:
            await asyncio.sleep(0.02)
        assert len(self.at(path)) >= count, f"{path}: {len(self.at(path))} of {count} requests arrived"
        return self.at(path)


def verified(received: Received) -> Any:
    """The JSON body, after checking its signature the way a receiver would: HMAC of the raw bytes."""
    expected = "sha256=" + hmac.new(SECRET.encode(), received.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(received.headers[SIGNATURE_HEADER.lower()], expected)
    return received.json


def plan(hooks: str, *, notify: str = "", gates: str = "") -> str:
    return f"""\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    {notify}
    steps:
      - weight: 10
        {gates}
      - weight: 100
        webhooks:
{hooks}
    """


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACADE_TEST_HOOK_SECRET", SECRET)


def hook(kind: str, url: str, **extra: Any) -> str:
    options = "".join(f", {k}: {v}" for k, v in extra.items())
    return f"              - {{kind: {kind}, url: \"{url}\", secret_env: FACADE_TEST_HOOK_SECRET{options}}}"


async def test_a_confirm_hook_holds_the_step_until_it_answers_2xx(tmp_path: Path) -> None:
    rec = Recorder(statuses={"/approve": 403})
    async with serve_app(rec.app()) as url:
        text = plan(hook("confirm", f"{url}/approve", name="approve", metadata="{ticket: CHG-1}"))
        async with migration_stack(tmp_path, text) as s:
            assert (await s.act("shop", "start")).status_code == 200
            held = await s.act("shop", "next", actor="ann")
            assert held.status_code == 409 and held.json()["code"] == "gate_failed"
            assert held.json()["gates"]["status"] == "inconclusive"
            assert "webhook.confirm.approve: held, answered 403" in held.json()["error"]
            assert (await s.status("shop"))["step"] == 1  # still on the first step, 10 % on catalog

            asked = verified(rec.at("/approve")[0])
            assert rec.at("/approve")[0].headers[EVENT_HEADER.lower()] == "confirm"
            assert asked["event"] == "confirm" and asked["plan"] == "shop" and asked["route"] == "catalog"
            assert (asked["step"], asked["step_summary"]) == (2, "weight 100")
            assert asked["transition"]["actor"] == "ann" and asked["transition"]["from_step"] == 1
            assert asked["gates"]["status"] == "pass" and asked["metadata"] == {"ticket": "CHG-1"}

            rec.statuses["/approve"] = 200  # the approver says yes: the same `next` now proceeds
            moved = await s.act("shop", "next", actor="ann")
            assert moved.status_code == 200, moved.text
            assert moved.json()["step"] == 2
            entry = moved.json()["journal"][-1]
            assert entry["action"] == "next" and entry["to_step"] == 2
            assert {r["name"]: r["status"] for r in entry["gates"]["results"]} == {"webhook.confirm.approve": "pass"}
            assert len(rec.at("/approve")) == 2


async def test_a_failing_pre_step_hook_fails_the_gate_and_retries_are_bounded(tmp_path: Path) -> None:
    rec = Recorder(statuses={"/pre": 503})
    async with serve_app(rec.app()) as url:
        text = plan(hook("confirm", f"{url}/ok") + "\n" + hook("pre_step", f"{url}/pre", name="smoke", retries=2,
                                                                 timeout="2s"))
        async with migration_stack(tmp_path, text) as s:
            assert (await s.act("shop", "start")).status_code == 200
            refused = await s.act("shop", "next")
            assert refused.status_code == 409
            gates = {r["name"]: r for r in refused.json()["gates"]["results"]}
            assert refused.json()["gates"]["status"] == "fail"
            assert gates["webhook.pre_step.smoke"]["status"] == "fail"
            assert gates["webhook.pre_step.smoke"]["message"] == "webhook.pre_step.smoke: answered 503 after 3 attempts"
            assert gates["webhook.confirm.confirm"]["status"] == "pass"  # asked first, then the pre-step hook
            assert len(rec.at("/pre")) == 3 and len(rec.at("/ok")) == 1  # one try and two retries, no more
            for received in rec.at("/pre"):
                assert verified(received)["event"] == "pre_step"

            # A 4xx is an answer, not a reason to retry: one request, the gate still fails.
            rec.statuses["/pre"] = 400
            assert (await s.act("shop", "next")).status_code == 409
            assert len(rec.at("/pre")) == 4
            assert (await s.status("shop"))["step"] == 1

            rec.statuses["/pre"] = 204
            assert (await s.act("shop", "next")).status_code == 200


async def test_a_hanging_hook_times_out_within_its_bound(tmp_path: Path) -> None:
    async with raw_server(never_answer) as hanging:
        text = plan(hook("confirm", f"{hanging}/approve", name="slow", timeout="300ms", retries=1))
        async with migration_stack(tmp_path, text) as s:
            assert (await s.act("shop", "start")).status_code == 200
            started = time.monotonic()
            held = await s.act("shop", "next")
            elapsed = time.monotonic() - started
            assert held.status_code == 409 and held.json()["gates"]["status"] == "inconclusive"
            assert "webhook.confirm.slow: held, no answer (timed out after 0.3s) after 2 attempts" in held.json()["error"]
            # Two attempts of 0.3 s and one backoff of 0.2 s: the request came back long before the
            # test client's own 10 s timeout (a generous margin for a loaded machine).
            assert elapsed < 8.0


async def test_notifications_tell_of_every_transition_gate_failure_and_rollback(tmp_path: Path) -> None:
    rec = Recorder()
    async with serve_app(rec.app()) as url:
        notify = (f"notify:\n      - {{url: \"{url}/events\", secret_env: FACADE_TEST_HOOK_SECRET}}\n"
                  f"      - {{url: \"{url}/slack\", format: slack}}\n    webhooks:\n"
                  f"      - {{kind: event, url: \"{url}/every-event\", secret_env: FACADE_TEST_HOOK_SECRET, "
                  "metadata: {team: shop}}")
        text = plan(hook("post_step", f"{url}/post"), notify=notify,
                    gates="gates: {error_rate: {max: 1%}, min_requests: 5}")
        async with migration_stack(tmp_path, text) as s:
            assert (await s.act("shop", "start", actor="ann")).status_code == 200
            events = await rec.wait_for("/events", 1)
            first = verified(events[0])
            assert first["event"] == "transition" and first["transition"]["action"] == "start"
            assert first["transition"]["to_step"] == 1 and first["route"] == "catalog"

            # The candidate fails: a refused `next` is a gate failure, announced with its values.
            s.new.fail = True
            failed_answers = 0
            for _ in range(500):  # bounded: at 10 % on catalog, ~50 requests give the 5 min_requests
                if (await s.client.get("/catalog/x")).status_code == 500:
                    failed_answers += 1
                    if failed_answers >= 5:
                        break
            assert failed_answers == 5
            refused = await s.act("shop", "next")
            assert refused.status_code == 409 and refused.json()["gates"]["status"] == "fail"
            events = await rec.wait_for("/events", 2)
            failed = verified(events[1])
            assert failed["event"] == "gate_failed" and failed["gates"]["status"] == "fail"
            assert any(r["name"] == "error_rate.max" and r["status"] == "fail" for r in failed["gates"]["results"])
            assert rec.at("/post") == []  # hooks are asked only about a move the gates allow

            assert (await s.act("shop", "rollback", reason="candidate answers 500")).status_code == 200
            events = await rec.wait_for("/events", 3)
            rolled = verified(events[2])
            assert rolled["event"] == "rollback" and rolled["transition"]["reason"] == "candidate answers 500"
            assert rolled["transition"]["to_state"] == "rolled_back"
            # The event hook (Flagger's `event` kind) heard the same three events, signed, with its metadata.
            hooked = await rec.wait_for("/every-event", 3)
            assert [verified(h)["event"] for h in hooked] == ["transition", "gate_failed", "rollback"]
            assert [h.headers[EVENT_HEADER.lower()] for h in hooked] == ["transition", "gate_failed", "rollback"]
            assert verified(hooked[2])["step"] == 1 and verified(hooked[2])["metadata"] == {"team": "shop"}

            slack = await rec.wait_for("/slack", 3)
            texts = [m.json["text"] for m in slack]
            assert texts[0] == ("facade migration *shop* (catalog): transition: start by ann: pending step 0 -> "
                                "running step 1")
            assert texts[1].startswith("facade migration *shop* (catalog): gate_failed: next by api")
            assert "error_rate.max" in texts[1]
            assert "rollback by api: running step 1 -> rolled_back step 0\ncandidate answers 500" in texts[2]
            assert SIGNATURE_HEADER.lower() not in slack[0].headers  # no secret configured for that target


async def test_auto_mode_waits_for_a_confirm_hook(tmp_path: Path) -> None:
    rec = Recorder(statuses={"/approve": 409})
    async with serve_app(rec.app()) as url:
        text = plan(hook("confirm", f"{url}/approve"), notify=f"interval: 100ms\n    notify: [{{url: \"{url}/events\"}}]")
        async with migration_stack(tmp_path, text) as s:
            assert (await s.act("shop", "auto")).status_code == 200
            await rec.wait_for("/approve", 3)  # asked again at every check, and held
            status = await s.status("shop")
            assert status["step"] == 1 and status["state"] == "running" and status["failures"] == 0
            rec.statuses["/approve"] = 200
            deadline = time.monotonic() + 10
            while (await s.status("shop"))["state"] != "completed" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert (await s.status("shop"))["state"] == "completed"
            actions = [m.json["transition"]["action"] for m in await rec.wait_for("/events", 3)]
            assert actions == ["auto", "advance", "advance"]


async def test_plan_hooks_ask_about_every_step_from_start_to_completion(tmp_path: Path) -> None:
    rec = Recorder(statuses={"/approve": 403, "/post": 500})
    async with serve_app(rec.app()) as url:
        plan_hooks = ("webhooks:\n"
                      f"      - {{kind: confirm, url: \"{url}/approve\", secret_env: FACADE_TEST_HOOK_SECRET}}")
        text = plan(hook("post_step", f"{url}/post", name="cleanup"), notify=plan_hooks)
        async with migration_stack(tmp_path, text) as s:
            held = await s.act("shop", "start")  # entering step 1 asks the plan's confirm hook
            assert held.status_code == 409 and "webhook.confirm.confirm: held, answered 403" in held.json()["error"]
            assert (await s.status("shop"))["state"] == "pending"
            rec.statuses["/approve"] = 200
            assert (await s.act("shop", "start")).status_code == 200
            assert (await s.act("shop", "next")).status_code == 200  # step 2 confirmed too
            assert [verified(r)["step"] for r in rec.at("/approve")] == [1, 1, 2]

            # Completing asks the last step's post_step hook; its 500 fails the gate.
            failed = await s.act("shop", "next")
            assert failed.status_code == 409 and failed.json()["gates"]["status"] == "fail"
            post = verified(rec.at("/post")[0])
            assert (post["event"], post["step"], post["transition"]["to_state"]) == ("post_step", 2, "completed")
            rec.statuses["/post"] = 200
            assert (await s.act("shop", "next")).json()["state"] == "completed"
            assert len(rec.at("/approve")) == 3  # nothing is entered on completion: no confirm asked


async def _until(check: Any, *, within: float, what: str) -> None:
    """Poll the coroutine function ``check`` until it returns true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.05)


def staged(step_one_hooks: str, *, head: str = "") -> str:
    """A two-step plan whose first step carries ``step_one_hooks`` (a ``webhooks:`` list's entries)."""
    return f"""\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    {head}
    steps:
      - weight: 10
        webhooks:
{step_one_hooks}
      - weight: 100
    """


async def test_a_rollout_hook_fails_a_manual_next_and_counts_as_a_failed_check_in_auto_mode(tmp_path: Path) -> None:
    rec = Recorder(statuses={"/smoke": 500})
    async with serve_app(rec.app()) as url:
        text = staged(hook("rollout", f"{url}/smoke", name="smoke"), head="interval: 100ms\n    threshold: 3")
        async with migration_stack(tmp_path, text) as s:
            assert (await s.act("shop", "start")).status_code == 200
            refused = await s.act("shop", "next")  # the step's check asks its rollout hook: 500 fails it
            assert refused.status_code == 409 and refused.json()["gates"]["status"] == "fail"
            assert "webhook.rollout.smoke: answered 500" in refused.json()["error"]
            asked = verified(rec.at("/smoke")[0])
            assert (asked["event"], asked["step"]) == ("rollout", 1)  # about the step being checked
            assert rec.at("/smoke")[0].headers[EVENT_HEADER.lower()] == "rollout"

            # Auto mode asks it at every check, before the gates: each failure counts towards threshold.
            assert (await s.act("shop", "auto")).status_code == 200

            async def rolled_back() -> bool:
                return (await s.status("shop"))["state"] == "rolled_back"

            await _until(rolled_back, within=15, what="three failed rollout checks roll the plan back")
            journal = (await s.status("shop"))["journal"]
            assert [e["action"] for e in journal][-3:] == ["tick", "tick", "auto_rollback"]
            assert "webhook.rollout.smoke: answered 500" in journal[-1]["reason"]
            checks = [verified(r) for r in rec.at("/smoke")[1:]]
            assert len(checks) >= 3 and {c["transition"]["action"] for c in checks} == {"check"}


async def test_a_rollback_hook_answering_2xx_rolls_the_plan_back(tmp_path: Path) -> None:
    """Flagger's rollback hook is a manual-rollback gate polled during the step, not a notification."""
    rec = Recorder(statuses={"/abort": 404})
    async with serve_app(rec.app()) as url:
        text = staged(hook("rollback", f"{url}/abort", name="pager"),
                      head=f"interval: 100ms\n    notify: [{{url: \"{url}/events\"}}]")
        async with migration_stack(tmp_path, text) as s:
            assert (await s.act("shop", "start")).status_code == 200  # manual mode: still polled
            await rec.wait_for("/abort", 3)
            status = await s.status("shop")
            assert (status["state"], status["step"]) == ("running", 1)  # a non-2xx changes nothing
            polled = verified(rec.at("/abort")[0])
            assert (polled["event"], polled["step"], polled["transition"]["action"]) == ("rollback", 1, "check")

            rec.statuses["/abort"] = 200  # the on-call engineer presses the button

            async def rolled_back() -> bool:
                return (await s.status("shop"))["state"] == "rolled_back"

            await _until(rolled_back, within=10, what="the rollback hook's 2xx rolls the plan back")
            entry = (await s.status("shop"))["journal"][-1]
            assert (entry["action"], entry["actor"]) == ("rollback", "webhook:pager")
            assert entry["reason"] == "rollback hook pager answered 200"
            assert await s.served_by() == "monolith"
            events = [m.json for m in await rec.wait_for("/events", 2)]
            assert events[-1]["event"] == "rollback" and events[-1]["transition"]["actor"] == "webhook:pager"
            polls = len(rec.at("/abort"))
            await asyncio.sleep(0.5)  # five intervals: a rolled-back plan is polled no more
            assert len(rec.at("/abort")) == polls


async def test_a_slow_confirm_hook_does_not_block_a_rollback_which_wins(tmp_path: Path) -> None:
    rec = Recorder(delays={"/approve": 3.0})
    async with serve_app(rec.app()) as url:
        async with migration_stack(tmp_path, plan(hook("confirm", f"{url}/approve", timeout="10s"))) as s:
            assert (await s.act("shop", "start")).status_code == 200
            waiting = asyncio.create_task(s.act("shop", "next"))
            await rec.wait_for("/approve", 1)  # the hook is being asked (it answers in 3 s)
            rolled = await s.act("shop", "rollback", reason="page from on-call")
            assert rolled.status_code == 200, rolled.text
            assert not waiting.done()  # the rollback answered while the confirm hook still hangs
            assert rolled.json()["state"] == "rolled_back"
            late = await waiting  # the hook approved, but the plan moved meanwhile: the rollback stands
            assert late.status_code == 409 and late.json()["code"] == "conflict", late.text
            assert "while this action waited for its checks" in late.json()["error"]
            status = await s.status("shop")
            assert status["state"] == "rolled_back"
            assert [e["action"] for e in status["journal"]] == ["start", "rollback"]


@pytest.mark.slow
async def test_migrate_next_waits_as_long_as_the_steps_hooks_may_take(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's default admin timeout is 10 s; a confirm hook may take longer, and the CLI waits for it."""
    from facade.cli import main
    from facade.cli.console import EXIT_OK

    rec = Recorder(delays={"/approve": 11.0})
    async with serve_app(rec.app()) as url:
        text = plan(hook("confirm", f"{url}/approve", timeout="15s", retries=1))
        async with migration_stack(tmp_path, text) as s:
            assert (await s.act("shop", "start")).status_code == 200
            status = await s.status("shop")
            assert status["action_timeout"] == 15 * 2 + 0.2  # two attempts of 15 s and one backoff
            argv = ["migrate", "next", "shop", "--admin", s.runtime.admin_url, "--token", TOKEN, "-c", os.devnull]
            capsys.readouterr()
            code = await asyncio.to_thread(main, argv)
            out, err = capsys.readouterr()
            assert code == EXIT_OK, (out, err)
            assert "shop: running at 2/2" in out, out
            assert len(rec.at("/approve")) == 1  # one slow answer, no retry and no second request
