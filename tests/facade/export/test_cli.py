"""facade export (the command): output layout, determinism, bad input -> exit 2 and nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from facade.cli import main

from .cases import CASES, FIXTURES, validate

SAMPLE = str(CASES["sample"][0])
MESH = str(CASES["mesh"][0])
RICH = str(FIXTURES / "rich.yaml")


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_all_steps_writes_one_directory_per_step_in_apply_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k8s"
    assert main(["export", "istio", "-c", MESH, "--plan", "extract-catalog", "--all-steps", "-o", str(out)]) == 0
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == ["00-baseline", "01-shadow-100", "02-canary", "03-weight-5", "04-weight-25", "05-weight-50",
                    "06-pause", "07-weight-100", "08-mtls-strict"]
    readme = (out / "README.md").read_text()
    for d in dirs:
        assert f"`{d}/`" in readme
    assert "approval is applying the next step" in readme  # the pause step
    # The last step holds the catalog's sidecars STRICT; the one before does not.
    strict = _docs((out / "08-mtls-strict" / "manifests.yaml").read_text())
    before = _docs((out / "07-weight-100" / "manifests.yaml").read_text())
    modes = lambda docs: {d["metadata"]["name"]: d["spec"]["mtls"]["mode"] for d in docs
                          if d["kind"] == "PeerAuthentication"}
    assert modes(strict) == {"default": "PERMISSIVE", "catalog": "STRICT"}
    assert modes(before) == {"default": "PERMISSIVE"}
    err = capsys.readouterr().err
    assert "sticky cohorts by cookie session_id" in err and "Flagger/Argo Rollouts" in err


def test_output_is_deterministic_and_a_rerun_replaces_the_directory(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    args = ["export", "istio", "-c", RICH, "--plan", "move-catalog", "--all-steps", "-o", str(out)]
    assert main(args) == 0
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "01-shadow-50" / "stale.yaml").write_text("left over")
    assert main(args) == 0
    second = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert first == second
    assert [p.name for p in tmp_path.iterdir()] == ["k8s"]  # no staging directories left behind


def test_single_step_to_stdout_is_a_kubectl_stream(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "istio", "-c", SAMPLE, "--plan", "extract-catalog", "--step", "3",
                 "--namespace", "shop", "--service-host", "monolith=legacy.shop.svc.cluster.local"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# facade export istio from facade.yaml: plan extract-catalog, step 3: weight 5\n---\n")
    docs = _docs(out)
    assert {d["metadata"]["namespace"] for d in docs} == {"shop"}
    vs = next(d for d in docs if d["kind"] == "VirtualService")
    catalog = next(h for h in vs["spec"]["http"] if h["name"] == "catalog")
    assert catalog["route"] == [{"destination": {"host": "legacy.shop.svc.cluster.local"}, "weight": 95},
                                {"destination": {"host": "catalog"}, "weight": 5}]
    assert catalog["match"] == [{"uri": {"exact": "/catalog"}}, {"uri": {"prefix": "/catalog/"}}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plan", "nope", "--step", "1"], "unknown plan 'nope' (plans in"),
        (["--plan", "extract-catalog", "--step", "8"], "plan 'extract-catalog' has steps 1-7 (0 = before it starts), got step 8"),
        (["--plan", "extract-catalog", "--step", "-1"], "got step -1"),
        (["--step", "2"], "--step needs --plan NAME"),
        (["--plan", "extract-catalog"], "needs --step N or --all-steps"),
        (["--service-host", "shop=x"], "unknown service 'shop'"),
        (["--service-host", "catalog=Not A Host"], "is not a DNS host name"),
        (["--namespace", "Bad_NS"], "is not a Kubernetes namespace name"),
    ],
)
def test_bad_input_exits_2_naming_it_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "k8s"
    assert main(["export", "istio", "-c", SAMPLE, "-o", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facade export: ") and message in err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_all_steps_needs_an_output_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "istio", "-c", SAMPLE, "--plan", "extract-catalog", "--all-steps"]) == 2
    captured = capsys.readouterr()
    assert "--all-steps writes one directory per step: give -o DIR" in captured.err and captured.out == ""


def test_a_feature_with_no_safe_translation_is_refused_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "facade.yaml"
    config.write_text(
        "services: {app: {endpoints: ['http://10.0.0.1:80']}}\n"
        "routes:\n"
        "  - name: no-debug\n"
        "    match: {path: {prefix: /}, query: {debug: {absent: true}}}\n"
        "    backend: app\n"
    )
    out = tmp_path / "k8s"
    assert main(["export", "istio", "-c", str(config), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "route 'no-debug': query parameter 'debug' absent has no Istio equivalent" in err
    assert "nothing was written" in err and not out.exists()


def test_an_invalid_config_exits_2_with_its_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "facade.yaml"
    config.write_text("routes: [{name: r, backend: missing}]\n")
    assert main(["export", "istio", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facade export: invalid config:") and "unknown service 'missing'" in err


def test_a_folder_of_other_files_is_never_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k8s"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["export", "istio", "-c", SAMPLE, "-o", str(out)]) == 2
    assert "was not written by facade export" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_gateway_api_all_steps_and_a_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gw"
    assert main(["export", "gateway-api", "-c", SAMPLE, "--plan", "extract-orders", "--all-steps", "-o", str(out),
                 "--gateway", "infra/edge"]) == 0
    step = _docs((out / "03-weight-5" / "manifests.yaml").read_text())
    assert [d["kind"] for d in step] == ["HTTPRoute"]
    assert step[0]["spec"]["parentRefs"] == [{"name": "edge", "namespace": "infra"}]
    orders = [r for r in step[0]["spec"]["rules"] if r["matches"][0]["path"]["value"] == "/orders"]
    # The canary of step 2 persists: testers first (all to orders), then everyone else by weight.
    assert [r["backendRefs"] for r in orders] == [
        [{"name": "orders", "port": 80, "weight": 100}],
        [{"name": "monolith", "port": 80, "weight": 95}, {"name": "orders", "port": 80, "weight": 5}],
    ]
    assert "headers" in orders[0]["matches"][0] and "headers" not in orders[1]["matches"][0]
    capsys.readouterr()
    refused = tmp_path / "refused"
    assert main(["export", "gateway-api", "-c", RICH, "-o", str(refused)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facade export: gateway-api: route 'health': direct_response has no Gateway API equivalent")
    assert "nothing was written" in err and not refused.exists()


def test_services_sharing_a_host_become_subsets_in_istio_and_are_refused_by_gateway_api(
    capsys: pytest.CaptureFixture[str],
) -> None:
    shared = ["--service-host", "catalog=shop-backend", "--service-host", "monolith=shop-backend:8080"]
    assert main(["export", "istio", "-c", SAMPLE, "--plan", "extract-catalog", "--step", "3", *shared]) == 0
    captured = capsys.readouterr()
    docs = _docs(captured.out)
    for doc in docs:
        validate(doc)
    (dr,) = [d for d in docs if d["kind"] == "DestinationRule" and d["spec"]["host"] == "shop-backend"]
    assert [(s["name"], s["labels"]) for s in dr["spec"]["subsets"]] == [
        ("monolith", {"version": "monolith"}), ("catalog", {"version": "catalog"})]
    vs = next(d for d in docs if d["kind"] == "VirtualService")
    catalog = next(h for h in vs["spec"]["http"] if h["name"] == "catalog")
    assert catalog["route"] == [
        {"destination": {"host": "shop-backend", "subset": "monolith", "port": {"number": 8080}}, "weight": 95},
        {"destination": {"host": "shop-backend", "subset": "catalog"}, "weight": 5}]
    assert "each is a subset selected by the pod label version=<service name>" in captured.err
    assert main(["export", "gateway-api", "-c", SAMPLE, *shared]) == 2
    assert "services 'monolith' and 'catalog' both map to 'shop-backend'" in capsys.readouterr().err
