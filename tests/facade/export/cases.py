"""The configs and plans the export tests run over: every shipped plan of both sample configs, plus
a fixture that uses every routing feature; and the CRD schemas from ../shared/schemas."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from facade.config import Config, load_config
from facade.migration.plan import Plan, load_plans

REPO = Path(__file__).resolve().parents[3]
SCHEMAS = REPO / ".." / "shared" / "schemas"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# (config, migrations folder): the shipped plans of both sample configs, and the feature fixture.
CASES = {
    "sample": (REPO / "sample_monolith" / "facade.yaml", REPO / "sample_monolith" / "migrations"),
    "sample+migrations": (REPO / "sample_monolith" / "facade.yaml", REPO / "migrations"),
    "mesh": (REPO / "sample_monolith" / "facade-mesh.yaml", REPO / "sample_monolith" / "migrations-mesh"),
    "rich": (FIXTURES / "rich.yaml", FIXTURES / "migrations"),
    "precedence": (FIXTURES / "gateway.yaml", FIXTURES / "migrations-gateway"),
}
# What each target can export (rich.yaml has a direct response, a regex path and a prefix ending
# in "/", which the Gateway API cannot express: tested as refusals instead).
TARGET_CASES = {
    "istio": sorted(CASES),
    "gateway-api": ["mesh", "precedence", "sample", "sample+migrations"],
}


@dataclass(frozen=True)
class Case:
    name: str
    config: Config
    plans: tuple[Plan, ...]

    def points(self) -> Iterator[tuple[Plan | None, int]]:
        """(None, 0) for the config as is, then every step of every plan (0 = before it starts)."""
        yield None, 0
        for plan in self.plans:
            for step in range(len(plan.steps) + 1):
                yield plan, step


@functools.cache
def case(name: str) -> Case:
    config_path, plans_dir = CASES[name]
    config = load_config(str(config_path))
    plans, problems = load_plans(str(plans_dir), routes=[r.name for r in config.routes],
                                 services=[s.name for s in config.services], mesh=config.mesh is not None)
    assert not [p for p in problems if p.severity == "error"], problems
    return Case(name, config, tuple(plans[n] for n in sorted(plans)))


# -- CRD schemas -----------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Kubernetes prunes (and ``kubectl --validate=strict`` rejects) fields a structural schema does
    not declare; plain JSON Schema allows them. Close every object that lists its properties."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _crds() -> dict[tuple[str, str, str], Any]:
    if not SCHEMAS.is_dir():
        pytest.skip(f"CRD schemas not found at {SCHEMAS} (CI puts shared/ beside the clone)")
    out: dict[tuple[str, str, str], Any] = {}
    for path in sorted(SCHEMAS.rglob("*.yaml")):
        with open(path, encoding="utf-8") as fh:
            for doc in yaml.safe_load_all(fh):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
                for version in doc["spec"]["versions"]:
                    if version.get("served"):
                        out[(group, version["name"], kind)] = version["schema"]["openAPIV3Schema"]
    return out


def validate(doc: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError unless ``doc`` fits its CRD's served version."""
    import jsonschema

    group, _, version = doc["apiVersion"].rpartition("/")
    schema = _crds().get((group, version, doc["kind"]))
    assert schema is not None, f"no served CRD version for {doc['apiVersion']} {doc['kind']}"
    closed = _strict(schema)
    # The object's own envelope (Istio's CRDs describe only spec and status).
    envelope = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
    closed["properties"] = envelope | closed["properties"]
    jsonschema.Draft7Validator(closed).validate(doc)
