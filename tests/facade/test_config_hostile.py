"""Bad values for the newest keys (issues 15-17), by class: each is an error naming the file, the key
path and what is wrong; `facade validate` exits 2 with it, and a reload with it changes nothing."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from facade.config import check_config
from facade.config.regex import regex_problem
from facade.migration.plan import parse_plan
from facade.yamlfile import MAX_DURATION, MAX_INT, YamlDocument, parse_duration
from tests.backends import EchoApp
from tests.harness import run_facade
from tests.servers import serve_app

REPO = Path(__file__).parents[2]
BASE: dict[str, Any] = {
    "listen": "127.0.0.1:0",
    "admin": {"listen": "127.0.0.1:0", "token": "s3cret"},
    "services": {
        "monolith": {"endpoints": ["http://127.0.0.1:8001"]},
        "catalog": {
            "endpoints": ["http://127.0.0.1:8002", {"url": "http://127.0.0.1:8003", "labels": {"version": "v2"}}],
            "subsets": [{"name": "v2", "labels": {"version": "v2"}}],
            "load_balancer": {"consistent_hash": {"header": "x-user"}},
            "outlier_detection": {"consecutive_5xx": 3, "failure_percentage_threshold": 50},
            "retries": {"attempts": 2, "retry_budget": {"budget_percent": 20}},
            "connection_pool": {"max_connections": 64, "max_pending_requests": 10},
        },
    },
    "routes": [
        {
            "name": "catalog",
            "match": {"path": {"prefix": "/catalog"}},
            "backend": "catalog",
            "rewrite": {"regex": {"pattern": "^/catalog/(.*)$", "substitution": "/v2/\\1"}},
            "rate_limit": {"requests_per_unit": 100, "key": "header:x-api-key"},
            "fault": {"delay": {"fixed": "2s", "percent": 10}},
            "cors": {"allow_origins": ["https://shop.example", {"regex": "https://[a-z]+\\.shop\\.test"}]},
        },
        {"name": "beta", "match": {"path": {"prefix": "/beta"}}, "backend": "catalog/v2"},
        {"name": "default", "backend": "monolith"},
    ],
}
SVC = "services.catalog"
ROUTE = "routes.0"
TOO_LONG = "1" * 400 + "h"  # float("1" * 400) is infinity


def _with(document: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(document)
    *parents, last = dotted.split(".")
    node: Any = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


def _errors(tmp_path: Path, document: dict[str, Any]) -> list[str]:
    path = tmp_path / "facade.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    config, problems = check_config(str(path))
    errors = [str(p) for p in problems if p.severity == "error"]
    assert (config is None) == bool(errors)
    return errors


def test_the_base_document_is_valid(tmp_path: Path) -> None:
    assert _errors(tmp_path, BASE) == []


# (key, bad value, the key path the error names, what it says)
CONFIG_CASES: list[tuple[str, Any, str, str]] = [
    # durations: huge, infinite (400 digits), without unit
    (f"{SVC}.connection_pool.idle_timeout", "99999999h", f"{SVC}.connection_pool.idle_timeout", "too long"),
    (f"{SVC}.outlier_detection.interval", TOO_LONG, f"{SVC}.outlier_detection.interval", "too long"),
    (f"{SVC}.timeouts", {"request": TOO_LONG}, f"{SVC}.timeouts.request", "too long"),
    (f"{ROUTE}.fault", {"delay": {"fixed": "99999999h"}}, f"{ROUTE}.fault.delay.fixed", "too long"),
    (f"{ROUTE}.cors", {"allow_origins": ["*"], "max_age": TOO_LONG}, f"{ROUTE}.cors.max_age", "too long"),
    (f"{SVC}.load_balancer", {"consistent_hash": {"cookie": {"name": "lb", "ttl": TOO_LONG}}},
     f"{SVC}.load_balancer.consistent_hash.cookie.ttl", "too long"),
    # integers beyond what Envoy / Istio fields hold
    (f"{ROUTE}.rate_limit", {"requests_per_unit": 10**30}, f"{ROUTE}.rate_limit.requests_per_unit", "at most"),
    (f"{ROUTE}.rate_limit", {"requests_per_unit": 10, "burst": 10**12}, f"{ROUTE}.rate_limit.burst", "at most"),
    (f"{SVC}.connection_pool.max_pending_requests", 10**20, f"{SVC}.connection_pool.max_pending_requests", "at most"),
    (f"{SVC}.connection_pool.max_connections", 2**31, f"{SVC}.connection_pool.max_connections", "at most"),
    (f"{SVC}.retries.retry_budget", {"min_retry_concurrency": 10**12},
     f"{SVC}.retries.retry_budget.min_retry_concurrency", "at most"),
    (f"{SVC}.outlier_detection.failure_percentage_minimum_hosts", 10**30,
     f"{SVC}.outlier_detection.failure_percentage_minimum_hosts", "at most"),
    # header and cookie names the facade reads or writes on the wire
    (f"{SVC}.load_balancer", {"consistent_hash": {"header": "x user"}},
     f"{SVC}.load_balancer.consistent_hash.header", "invalid header name"),
    (f"{SVC}.load_balancer", {"consistent_hash": {"cookie": {"name": "lb;Domain=evil.test"}}},
     f"{SVC}.load_balancer.consistent_hash.cookie.name", "invalid cookie name"),
    (f"{SVC}.load_balancer", {"consistent_hash": {"cookie": {"name": "名"}}},
     f"{SVC}.load_balancer.consistent_hash.cookie.name", "invalid cookie name"),
    # regexes: empty, catastrophic, in every place a route takes one
    (f"{ROUTE}.match.path", {"regex": ""}, f"{ROUTE}.match.path.regex", "must not be empty"),
    (f"{ROUTE}.match.path", {"regex": "/(a+)+$"}, f"{ROUTE}.match.path.regex", "backtrack catastrophically"),
    (f"{ROUTE}.match", {"headers": {"x-v": {"regex": "(\\w+\\s?)*"}}}, f"{ROUTE}.match.headers.x-v.regex",
     "backtrack catastrophically"),
    (f"{ROUTE}.match", {"query": {"q": {"regex": "(x*y*)+"}}}, f"{ROUTE}.match.query.q.regex",
     "backtrack catastrophically"),
    (f"{ROUTE}.rewrite", {"regex": {"pattern": "", "substitution": "/"}}, f"{ROUTE}.rewrite.regex.pattern",
     "must not be empty"),
    (f"{ROUTE}.rewrite", {"regex": {"pattern": "^/(a|b+)+$", "substitution": "/"}}, f"{ROUTE}.rewrite.regex.pattern",
     "backtrack catastrophically"),
    (f"{ROUTE}.cors", {"allow_origins": [{"regex": "https://(a+)+\\.test"}]}, f"{ROUTE}.cors.allow_origins[0].regex",
     "backtrack catastrophically"),
    # CORS origins that can never match, or are not text
    (f"{ROUTE}.cors", {"allow_origins": [""]}, f"{ROUTE}.cors.allow_origins[0]", "must not be empty"),
    (f"{ROUTE}.cors", {"allow_origins": [5]}, f"{ROUTE}.cors.allow_origins[0]", "must be a string"),
    (f"{ROUTE}.cors", {"allow_origins": ["https://shop.example/"]}, f"{ROUTE}.cors.allow_origins[0]",
     "did you mean 'https://shop.example'"),
    (f"{ROUTE}.cors", {"allow_origins": ["shop.example"]}, f"{ROUTE}.cors.allow_origins[0]", "scheme://host"),
    (f"{ROUTE}.cors", {"allow_origins": ["https://a.example\r\nx-injected: 1"]}, f"{ROUTE}.cors.allow_origins[0]",
     "control character"),
    (f"{ROUTE}.cors", {"allow_origins": [{"prefix": "https://a\tb"}]}, f"{ROUTE}.cors.allow_origins[0].prefix",
     "no spaces or tabs"),
    # an authority with a port no socket has
    (f"{ROUTE}.rewrite", {"authority": "catalog.internal:99999"}, f"{ROUTE}.rewrite.authority", "port"),
]


@pytest.mark.parametrize(("key", "value", "path", "says"), CONFIG_CASES, ids=[f"{c[0]}={c[1]!r}"[:60] for c in CONFIG_CASES])
def test_a_bad_value_is_an_error_at_its_key(tmp_path: Path, key: str, value: Any, path: str, says: str) -> None:
    errors = _errors(tmp_path, _with(BASE, key, value))
    assert errors, f"{key}={value!r} was accepted"
    where = re.escape(str(tmp_path / "facade.yaml")) + r":\d+:\d+: "
    path = re.sub(r"\.(\d+)", r"[\1]", path)  # routes.0.x is written routes[0].x
    assert any(re.match(where + re.escape(path) + ": .*" + re.escape(says), e) for e in errors), errors


@pytest.mark.parametrize("url", ["postgresql://u:s3cretpw@[::1/db", "postgresql://u:s3cretpw@db/x?bogus_option=1"])
def test_an_unparsable_state_store_is_an_error_that_never_shows_the_password(tmp_path: Path, url: str) -> None:
    # It passed validation and `facade serve` died with psycopg's traceback, quoting the password.
    errors = _errors(tmp_path, {**BASE, "state_store": url})
    assert len(errors) == 1 and ": state_store: not a valid PostgreSQL URL: " in errors[0]
    assert "s3cretpw" not in errors[0]


@pytest.mark.parametrize("origin", ["https://Shop.example", {"exact": "HTTPS://shop.example:8443"}, {"prefix": "https://Preview-"}])
def test_an_origin_in_upper_case_warns_that_it_never_matches(tmp_path: Path, origin: Any) -> None:
    path = tmp_path / "facade.yaml"
    path.write_text(yaml.safe_dump(_with(BASE, f"{ROUTE}.cors", {"allow_origins": [origin]}), sort_keys=False))
    config, problems = check_config(str(path))
    assert config is not None
    assert [p.path.split(".allow_origins")[0] for p in problems] == ["routes[0].cors"]
    assert "never matches; write 'https://" in problems[0].message and problems[0].severity == "warning"


def test_an_empty_retry_on_warns_that_nothing_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "facade.yaml"
    path.write_text(yaml.safe_dump(_with(BASE, f"{SVC}.retries", {"attempts": 3, "retry_on": []}), sort_keys=False))
    config, problems = check_config(str(path))
    assert config is not None and config.services[1].retries.retry_on == ()
    assert [p.path for p in problems if p.severity == "warning"] == [f"{SVC}.retries.retry_on"]
    assert "retries nothing" in problems[0].message


def test_durations_and_integers_have_one_documented_ceiling() -> None:
    assert parse_duration("8760h") == MAX_DURATION
    with pytest.raises(ValueError, match="at most 8760h"):
        parse_duration("8760h1s")
    with pytest.raises(ValueError, match="too long"):
        parse_duration(TOO_LONG)
    assert MAX_INT == 2**31 - 1
    text = (REPO / "docs" / "configuration.md").read_text()
    assert "8760h" in text and "2147483647" in text


@pytest.mark.parametrize(
    "pattern",
    ["(/[a-z]+)*", "^/orders/\\d+$", "(,\\d+)+", "https://.*\\.shop\\.test", "(\\d+)?", "(\\.[a-z]+)+", "(a|ab)*",
     "(/[^/]*)*", "(\\w+\\.)*\\w+", "^/api/(v\\d+/)*items$", "(/(ab)+)*", "(/[a-z0-9._-]+)*"],
)
def test_unambiguous_repeats_stay_allowed(pattern: str) -> None:
    assert regex_problem(pattern) is None


@pytest.mark.parametrize(
    "pattern",
    ["(a+)+", "((a+))+", "(?:a*)*", "(a{1,10})+", "(a+b?)+", "(x+x+)+y", "(a|b+)+", "(?:x|(?:y*z*))*",
     "(/.*)*", "(a.*)+", "(.*,)*", "(/\\S+)*", "(-?\\d+)*"],
)
def test_repeats_made_only_of_repeats_are_refused(pattern: str) -> None:
    problem = regex_problem(pattern)
    assert problem is not None and "catastrophically" in problem


# -- migration plans ---------------------------------------------------------------------------------------------

PLAN = yaml.safe_load((REPO / "migrations" / "001-extract-catalog.yaml").read_text())
HOOK = {"kind": "rollout", "url": "http://127.0.0.1:9/hook", "secret_env": "HOOK_SECRET"}
PLAN_CASES: list[tuple[str, Any, str, str]] = [
    ("sticky", {"cookie": "sid; Domain=evil.test"}, "sticky.cookie", "invalid cookie name"),
    ("sticky", {"cookie": "名"}, "sticky.cookie", "invalid cookie name"),
    ("sticky", {"header": "x user"}, "sticky.header", "invalid header name"),
    ("steps.1.canary", {"header": {"x canary": "1"}}, "steps[1].canary.header.x canary", "invalid header name"),
    ("steps.1.canary", {"header": {"": "1"}}, "steps[1].canary.header.", "must not be empty"),
    ("steps.1.canary", {"cookie": {"beta;x": "1"}}, "steps[1].canary.cookie.beta;x", "invalid cookie name"),
    ("steps.1.canary", {"header": {"x-canary": "1\r\nx: 2"}}, "steps[1].canary.header.x-canary", "control character"),
    ("steps.1.canary", {"header": {"x-canary": "✓"}}, "steps[1].canary.header.x-canary", "ASCII"),
    ("interval", "99999999h", "interval", "too long"),
    ("steps.0.hold", TOO_LONG, "steps[0].hold", "too long"),
    ("threshold", 10**30, "threshold", "at most"),
    ("steps.2.gates", {"min_requests": 10**30}, "steps[2].gates.min_requests", "at most"),
    ("steps.2.webhooks", [dict(HOOK, url="http://127.0.0.1/a b")], "steps[2].webhooks[0].url", "space"),
    ("webhooks", [dict(HOOK, kind="rollback", url="http://127.0.0.1/\r\nx")], "webhooks[0].url", "control"),
    ("steps.2.webhooks", [dict(HOOK, name="")], "steps[2].webhooks[0].name", "must not be empty"),
    ("steps.2.gates", {"prometheus": [{"url": "http://127.0.0.1:9090/a b", "query": "up", "max": 1}]},
     "steps[2].gates.prometheus[0].url", "space"),
]


@pytest.mark.parametrize(("key", "value", "path", "says"), PLAN_CASES, ids=[f"{c[0]}={c[1]!r}"[:60] for c in PLAN_CASES])
def test_a_bad_plan_value_is_an_error_at_its_key(key: str, value: Any, path: str, says: str) -> None:
    text = yaml.safe_dump(_with(PLAN, key, value), sort_keys=False, allow_unicode=True)
    plan, problems = parse_plan(
        YamlDocument.load(text, "plan.yaml"), routes=["catalog"], services=["monolith", "catalog"],
        environ={"HOOK_SECRET": "x"},
    )
    errors = [str(p) for p in problems if p.severity == "error"]
    assert plan is None and errors, f"{key}={value!r} was accepted"
    assert any(re.match(r"plan\.yaml:\d+:\d+: " + re.escape(path) + ": .*" + re.escape(says), e) for e in errors), errors


def test_a_duplicate_hook_name_is_reported_at_the_duplicate_even_after_a_bad_hook() -> None:
    hooks = [dict(HOOK, url="ftp://x"), dict(HOOK, name="a"), dict(HOOK, name="a")]
    text = yaml.safe_dump(_with(PLAN, "steps.2.webhooks", hooks), sort_keys=False)
    _, problems = parse_plan(YamlDocument.load(text, "plan.yaml"), routes=["catalog"],
                             services=["monolith", "catalog"], environ={"HOOK_SECRET": "x"})
    duplicate = [p for p in problems if "used twice" in p.message]
    assert [p.path for p in duplicate] == ["steps[2].webhooks[2].name"]


# -- the CLI and a running facade ---------------------------------------------------------------------------------


def test_validate_exits_2_naming_file_line_key_and_problem(tmp_path: Path) -> None:
    path = tmp_path / "facade.yaml"
    path.write_text(yaml.safe_dump(_with(BASE, f"{ROUTE}.match.path", {"regex": "/(a+)+$"}), sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "facade", "validate", "-c", str(path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr + done.stdout
    assert re.search(re.escape(str(path)) + r":\d+:\d+: routes\[0\]\.match\.path\.regex: .*catastrophically",
                     done.stdout + done.stderr)


async def test_a_reload_with_a_catastrophic_regex_is_refused_and_the_old_table_serves(tmp_path: Path) -> None:
    async with serve_app(EchoApp("a")) as upstream:
        good = _with(BASE, "services", {"monolith": {"endpoints": [upstream]}})
        good["routes"] = [{"name": "all", "match": {"path": {"regex": "/[a-z]+(/[a-z]+)*"}}, "backend": "monolith"}]
        async with run_facade(tmp_path, yaml.safe_dump(good, sort_keys=False)) as rt:
            auth = {"authorization": "Bearer s3cret"}
            async with httpx.AsyncClient(base_url=rt.url) as client, httpx.AsyncClient(base_url=rt.admin_url) as admin:
                assert (await client.get("/abc")).status_code == 200
                bad = _with(good, "routes.0.match.path.regex", "/(a+)+$")
                bad["routes"][0]["rate_limit"] = {"requests_per_unit": 10**30}
                (tmp_path / "facade.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
                r = await admin.post("/reload", headers=auth)
                assert r.status_code == 422
                paths = {p["path"] for p in r.json()["problems"]}
                assert paths == {"routes[0].match.path.regex", "routes[0].rate_limit.requests_per_unit"}
                # Nothing of the refused file was applied: the old regex still routes, no rate limit appeared.
                assert (await client.get("/abc")).status_code == 200
                assert (await client.get("/a" * 5 + "!")).status_code == 404
                statuses = {(await client.get("/abc")).status_code for _ in range(20)}
                assert statuses == {200}
                cfg = (await admin.get("/config")).json()
                assert cfg["version"] == 1 and cfg["last_reload"]["ok"] is False


async def test_a_reload_with_a_plan_turned_invalid_is_refused_and_the_running_plan_stays(tmp_path: Path) -> None:
    from .migration.stack import migration_stack

    plan = "name: shop\nroute: catalog\nfrom: monolith\nto: catalog\nsticky: {cookie: sid}\nsteps: [{weight: 10}, {weight: 30}]\n"
    async with migration_stack(tmp_path, plan) as s:
        assert (await s.act("shop", "start")).status_code == 200
        before = s.runtime.holder.current.splits["catalog"]
        for bad in (
            plan.replace("{cookie: sid}", "{cookie: 'sid; Domain=evil.test'}"),  # a step not applied yet is editable,
            plan.replace("{weight: 30}", "{weight: 30, hold: 99999999h}"),  # but not into an invalid plan
            plan.replace("steps:", "steps: 5\nbogus:"),
        ):
            s.write_plan(bad)
            s.touch_config(bad[-20:])
            result = await s.runtime.reload("test")
            assert not result.ok and any(p.severity == "error" for p in result.problems), bad
            assert s.controller.plans["shop"].steps[1].hold == 0.0 and s.controller.plans["shop"].sticky is not None
            assert s.runtime.holder.current.splits["catalog"] == before
            assert (await s.status("shop"))["step"] == 1
        served = {(await s.client.get("/catalog/item", headers={"cookie": f"sid=user-{i}"})).status_code for i in range(10)}
        assert served == {200}
