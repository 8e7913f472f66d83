"""Subsets (Istio DestinationRule style): labelled endpoints, ``service/subset`` targets, shared endpoint state."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import httpx
import pytest

from facade.config import Config, Subset, parse_config
from facade.errors import Problem
from facade.migration.plan import parse_plan
from facade.upstream import Outcome, Upstreams
from facade.yamlfile import YamlDocument
from tests.backends import EchoApp
from tests.harness import run_facade
from tests.servers import serve_app


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def run(text: str) -> tuple[Config | None, list[Problem]]:
    Path("facade.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return parse_config(YamlDocument.read("facade.yaml"), env={})


def messages(text: str) -> list[str]:
    return [str(p) for p in run(text)[1]]


SERVICES = """
services:
  catalog:
    endpoints:
      - http://127.0.0.1:8001
      - {url: http://127.0.0.1:8002, labels: {version: v2, zone: a}}
      - {url: http://127.0.0.1:8003, labels: {version: v2, zone: b}}
    subsets:
      - {name: v2, labels: {version: v2}}
      - {name: v2a, labels: {version: v2, zone: a}}
"""


def test_labelled_endpoints_and_subsets_parse() -> None:
    config, problems = run(SERVICES + "routes:\n  - {name: r, backend: catalog/v2a}\n")
    assert problems == [] and config is not None
    catalog = config.service("catalog")
    assert catalog is not None
    # The plain-string form keeps working next to the labelled one.
    assert catalog.groups[0].endpoints == ("http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003")
    assert catalog.groups[0].labels_of("http://127.0.0.1:8002") == {"version": "v2", "zone": "a"}
    assert catalog.groups[0].labels_of("http://127.0.0.1:8001") == {}
    assert catalog.subsets == (Subset("v2", (("version", "v2"),)), Subset("v2a", (("version", "v2"), ("zone", "a"))))
    assert catalog.subset_spec(catalog.subsets[0]).groups[0].endpoints == ("http://127.0.0.1:8002", "http://127.0.0.1:8003")
    assert catalog.subset_spec(catalog.subsets[1]).name == "catalog/v2a"
    assert config.backend_names == ["catalog", "catalog/v2", "catalog/v2a"]
    assert config.routes[0].backends[0].service == "catalog/v2a"


@pytest.mark.parametrize(
    ("subsets", "routes", "expected"),
    [
        (
            "{name: x, labels: {verison: v2}}",
            "{name: r, backend: catalog}",
            ("facade.yaml:10:37: services.catalog.subsets[2].labels.verison: no endpoint has the label 'verison'; "
            "did you mean 'version'?"),
        ),
        (
            "{name: x, labels: {version: v9}}",
            "{name: r, backend: catalog}",
            "facade.yaml:10:37: services.catalog.subsets[2].labels.version: no endpoint has version=v9 (values: v2)",
        ),
        (
            "{name: x, labels: {version: v2, zone: c}}",
            "{name: r, backend: catalog}",
            "facade.yaml:10:47: services.catalog.subsets[2].labels.zone: no endpoint has zone=c (values: a, b)",
        ),
        (
            "{name: v2, labels: {zone: b}}",
            "{name: r, backend: catalog}",
            "facade.yaml:10:16: services.catalog.subsets[2].name: duplicate subset name 'v2' (first at line 8)",
        ),
        (
            "{name: ok, labels: {zone: b}}",
            "{name: r, backend: catalog/v2b}",
            "facade.yaml:12:24: routes[0].backend: unknown subset 'v2b' of service 'catalog'; did you mean 'v2'?",
        ),
        (
            "{name: ok, labels: {zone: b}}",
            "{name: r, backends: [{service: catalog/v2, weight: 50}, {service: catalog/zz, weight: 50}]}",
            ("facade.yaml:12:71: routes[0].backends[1].service: unknown subset 'zz' of service 'catalog' "
            "(subsets: v2, v2a, ok)"),
        ),
    ],
)
def test_bad_subsets_are_positioned_errors(subsets: str, routes: str, expected: str) -> None:
    text = SERVICES + f"      - {subsets}\nroutes:\n  - {routes}\n"
    assert messages(text) == [expected]


def test_a_subset_whose_labels_match_no_single_endpoint_is_an_error() -> None:
    text = """
    services:
      svc:
        endpoints:
          - {url: http://127.0.0.1:8001, labels: {version: v1, zone: a}}
          - {url: http://127.0.0.1:8002, labels: {version: v2, zone: b}}
        subsets: [{name: odd, labels: {version: v1, zone: b}}]
    routes: [{name: r, backend: svc}]
    """
    assert messages(text) == [
        "facade.yaml:6:35: services.svc.subsets[0].labels: selects no endpoint: no endpoint carries all these labels"
    ]


def test_plans_may_target_a_subset() -> None:
    config, _ = run(SERVICES + "routes:\n  - {name: r, backend: catalog}\n")
    assert config is not None
    plan_text = "name: p\nroute: r\nfrom: catalog\nto: catalog/v2\nsteps: [{weight: 100}]\n"
    plan, problems = parse_plan(YamlDocument.load(plan_text, "p.yaml"), routes={"r"}, services=config.backend_names)
    assert problems == [] and plan is not None and plan.to_service == "catalog/v2"
    bad = plan_text.replace("catalog/v2", "catalog/v3")
    _, problems = parse_plan(YamlDocument.load(bad, "p.yaml"), routes={"r"}, services=config.backend_names)
    assert [str(p) for p in problems] == ["p.yaml:4:5: to: unknown service 'catalog/v3'; did you mean 'catalog/v2'?"]


def test_subset_pools_share_endpoint_state_with_their_service() -> None:
    config, _ = run(SERVICES.replace("    subsets:", "    outlier_detection: {consecutive_5xx: 1, max_ejection_percent: 100}\n"
                                     "    subsets:") + "routes:\n  - {name: r, backend: catalog}\n")
    assert config is not None
    upstreams = Upstreams(config.services, health_checks=False)
    service, v2, v2a = upstreams.get("catalog"), upstreams.get("catalog/v2"), upstreams.get("catalog/v2a")
    assert service is not None and v2 is not None and v2a is not None
    by_url = {ep.url: ep for ep in service.endpoints}
    assert [ep.url for ep in v2.endpoints] == ["http://127.0.0.1:8002", "http://127.0.0.1:8003"]
    assert all(ep is by_url[ep.url] for ep in (*v2.endpoints, *v2a.endpoints))  # the same objects
    # An ejection seen through a subset is the service's: every view stops picking the endpoint.
    ep = v2a.pick(now=0.0)
    v2a.report(ep, Outcome.from_status(500), now=0.0)
    assert not by_url["http://127.0.0.1:8002"].available
    assert {v2.pick(now=1.0).url for _ in range(6)} == {"http://127.0.0.1:8003"}
    assert "http://127.0.0.1:8002" not in {service.pick(now=1.0).url for _ in range(9)}
    assert service.stats["ejections"] == 1


def _shop(u1: str, u2: str, service_extra: str = "") -> str:
    """A facade config's head: service ``shop`` over two endpoints labelled v1 and v2, a subset for each
    (``service_extra``: one more key of the service); the caller adds ``routes:``."""
    return f"""
        listen: 127.0.0.1:0
        admin: {{listen: 127.0.0.1:0}}
        services:
          shop:
            endpoints:
              - {{url: {u1}, labels: {{version: v1}}}}
              - {{url: {u2}, labels: {{version: v2}}}}
            subsets:
              - {{name: v1, labels: {{version: v1}}}}
              - {{name: v2, labels: {{version: v2}}}}
            {service_extra}"""


async def test_routes_and_weighted_backends_reach_subsets_through_the_facade(tmp_path: Path) -> None:
    v1, v2 = EchoApp("v1"), EchoApp("v2")
    async with serve_app(v1) as u1, serve_app(v2) as u2:
        text = _shop(u1, u2) + """
        routes:
          - name: beta
            match: {path: {prefix: /beta}}
            backend: shop/v2
          - name: split
            match: {path: {prefix: /split}}
            backends: [{service: shop/v1, weight: 50}, {service: shop/v2, weight: 50}]
          - name: all
            backend: shop
        """
        async with run_facade(tmp_path, text) as rt, httpx.AsyncClient(base_url=rt.url, timeout=10) as client:
            beta = Counter([(await client.get("/beta")).json()["name"] for _ in range(6)])
            assert beta == {"v2": 6}
            split = Counter([(await client.get("/split")).json()["name"] for _ in range(60)])
            assert set(split) == {"v1", "v2"} and min(split.values()) >= 10
            everyone = Counter([(await client.get("/")).json()["name"] for _ in range(6)])
            assert everyone == {"v1": 3, "v2": 3}  # the service itself: round robin over both


def test_subsets_and_consistent_hashing_export_to_istio_and_are_refused_by_gateway_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from facade.cli import main

    Path("facade.yaml").write_text(textwrap.dedent(SERVICES).lstrip("\n") + (
        "    load_balancer: {consistent_hash: {cookie: {name: lb, ttl: 1h}}}\n"
        "routes:\n  - {name: beta, match: {path: {prefix: /beta}}, backend: catalog/v2}\n"
        "  - {name: all, backend: catalog}\n"
    ))
    assert main(["export", "istio", "-c", "facade.yaml", "-o", str(tmp_path / "istio")]) == 0
    docs = [d for f in sorted((tmp_path / "istio").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    dr = next(d for d in docs if d["kind"] == "DestinationRule")
    assert dr["spec"]["subsets"] == [{"name": "v2", "labels": {"version": "v2"}},
                                     {"name": "v2a", "labels": {"version": "v2", "zone": "a"}}]
    assert dr["spec"]["trafficPolicy"]["loadBalancer"] == {"consistentHash": {"httpCookie": {"name": "lb", "ttl": "1h"}}}
    vs = next(d for d in docs if d["kind"] == "VirtualService")
    assert [r["route"][0]["destination"] for r in vs["spec"]["http"]] == [
        {"host": "catalog", "subset": "v2"}, {"host": "catalog"}]
    capsys.readouterr()
    assert main(["export", "gateway-api", "-c", "facade.yaml", "-o", str(tmp_path / "gw")]) == 2
    assert "backend 'catalog/v2' is a subset: Gateway API has no subsets" in capsys.readouterr().err


async def test_a_reload_rebuilds_subsets_over_the_new_service_pool() -> None:
    config, _ = run(SERVICES + "routes:\n  - {name: r, backend: catalog}\n")
    assert config is not None
    upstreams = Upstreams(config.services, health_checks=False)
    relabelled, _ = run(SERVICES.replace("{version: v2, zone: b}", "{version: v1, zone: b}")
                        + "routes:\n  - {name: r, backend: catalog}\n")
    assert relabelled is not None
    await upstreams.update(relabelled.services)
    try:
        service, v2 = upstreams.get("catalog"), upstreams.get("catalog/v2")
        assert service is not None and v2 is not None
        assert [ep.url for ep in v2.endpoints] == ["http://127.0.0.1:8002"]  # 8003 left the subset
        assert v2.endpoints[0] is next(ep for ep in service.endpoints if ep.url == "http://127.0.0.1:8002")
    finally:
        await upstreams.close()


def test_an_mtls_step_of_a_plan_to_a_subset_switches_the_service_sidecars() -> None:
    services = ["monolith", "catalog", "catalog/v2"]
    text = "name: p\nroute: r\nfrom: monolith\nto: catalog/v2\nsteps: [{weight: 100}, {mtls: strict}]\n"
    plan, problems = parse_plan(YamlDocument.load(text, "p.yaml"), routes={"r"}, services=services, mesh=True)
    assert problems == [] and plan is not None and plan.steps[1].mtls_service == "catalog"
    bad = text.replace("{mtls: strict}", "{mtls: strict, service: catalog/v2}")
    _, problems = parse_plan(YamlDocument.load(bad, "p.yaml"), routes={"r"}, services=services, mesh=True)
    assert [str(p) for p in problems] == [
        "p.yaml:5:48: steps[1].service: names a subset; sidecars belong to the service: 'catalog'"
    ]


async def test_a_subsets_retries_count_in_its_services_metrics(tmp_path: Path) -> None:
    """Envoy counts a subset's requests in its cluster's stats: retries through ``shop/v2`` show in
    ``facade_upstream_retries_total{service="shop"}`` (they were counted on a pool /metrics never read)."""
    v1, v2 = EchoApp("v1"), EchoApp("v2")
    async with serve_app(v1) as u1, serve_app(v2) as u2:
        text = _shop(u1, u2, "retries: {attempts: 2, retry_on: [503]}") + """
        routes:
          - name: beta
            backend: shop/v2
        """
        async with run_facade(tmp_path, text) as rt, httpx.AsyncClient(base_url=rt.url, timeout=10) as client:
            for _ in range(3):
                assert (await client.get("/status/503")).status_code == 503
            metrics = (await client.get(rt.admin_url + "/metrics")).text
            assert 'facade_upstream_retries_total{service="shop"} 6' in metrics
            assert len(v1.requests) == 0
