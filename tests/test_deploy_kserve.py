"""The KServe manifests (knative/kserve/): strictly valid against KServe's CRD schemas, and in
step with the Knative Services they mirror and with the code they start.

Validation (tests/schemas.py): always against the reduced schemas committed in
knative/kserve/crd-schemas.json, so a fresh clone and GitHub CI check every field; when the
official CRDs are beside the checkout (`../shared/kserve/crds`) also against them, and then the
committed file must be exactly what `python -m scripts.kserve_schema` writes from them and must
judge every document (and every broken copy of one) as the CRDs do.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from functions.sentiment.v2 import routes
from scripts import kserve_schema
from shared.config import FIELDS, ConfigError, Settings
from shared.modeldir import FORMAT_VERSION
from tests import schemas
from tests.test_deploy_manifests import render, render_path

ROOT = Path(__file__).resolve().parent.parent
KSERVE = ROOT / "knative" / "kserve"
TARGETS = ("knative/kserve", "knative/kserve/storage-uri")
VARIANTS = ("cpu-int8", "cpu-fp32", "cpu-accurate-int8")
FORMAT = "kubesentiment-onnx"
MOUNT = "/mnt/models"  # where KServe's storage initializer puts a storageUri's model
SHARED = pytest.mark.skipif(
    not schemas.KSERVE_CRDS.is_dir(),
    reason="the official KServe CRDs (../shared/kserve) are absent",
)


def docs(target: str = "knative/kserve") -> tuple[dict[str, Any], ...]:
    return render_path(target)


def all_docs() -> list[dict[str, Any]]:
    return [d for t in TARGETS for d in docs(t)]


def kserve_docs() -> list[dict[str, Any]]:
    return [d for d in all_docs() if d["apiVersion"].startswith(schemas.KSERVE_GROUP)]


def named(kind: str, name: str, target: str = "knative/kserve") -> dict[str, Any]:
    return next(d for d in docs(target) if d["kind"] == kind and d["metadata"]["name"] == name)


def runtime(variant: str) -> dict[str, Any]:
    return named("ServingRuntime", f"kubesentiment-{variant}")


def container(doc: dict[str, Any]) -> dict[str, Any]:
    (c,) = doc["spec"]["containers"]
    return dict(c)


def env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", [])}


def knative_service(variant: str) -> dict[str, Any]:
    return next(
        d
        for d in render("base")
        if d["kind"] == "Service" and d["metadata"]["name"] == f"sentiment-{variant}"
    )


def all_paths(node: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every path to a mapping key or list item in `node`."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        yield (*prefix, key)
        if isinstance(value, dict | list):
            yield from all_paths(value, (*prefix, key))


def broken_copies(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Copies of `doc` with one key misspelt, or one value of the wrong type, at every path."""
    for path in all_paths(doc):
        if path[0] in ("apiVersion", "kind"):  # another kind altogether, not a broken one
            continue
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and path[:1] != ("metadata",):
            broken = copy.deepcopy(doc)
            node: Any = broken
            for key in path[:-1]:
                node = node[key]
            node[f"{path[-1]}x"] = node.pop(path[-1])
            yield f"rename {path}", broken
        leaf = parent[path[-1]]
        if not isinstance(leaf, dict | list):
            broken = copy.deepcopy(doc)
            node = broken
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = {"wrong": "type"}
            yield f"retype {path}", broken


@pytest.mark.parametrize("target", TARGETS)
def test_every_document_is_valid(target: str) -> None:
    rendered = docs(target)
    assert rendered
    errors = [e for d in rendered for e in schemas.validate(d)]
    assert errors == [], "\n".join(["schema errors:", *errors])
    for d in rendered:
        assert d["metadata"].get("namespace") or d["kind"] == "Namespace", d["metadata"]
        assert d["metadata"].get("namespace", "kubesentiment-kserve") == "kubesentiment-kserve"


def test_kserve_kinds_are_validated_by_the_committed_schema_always() -> None:
    assert "kserve-reduced" in schemas.sources("serving.kserve.io/v1beta1")
    kinds = {(d["apiVersion"], d["kind"]) for d in kserve_docs()}
    assert kinds == {
        ("serving.kserve.io/v1alpha1", "ServingRuntime"),
        ("serving.kserve.io/v1beta1", "InferenceService"),
    }
    assert kinds <= set(schemas.kserve_reduced_schemas())
    unknown = {"apiVersion": "serving.kserve.io/v1", "kind": "InferenceService", "metadata": {}}
    assert any("not validated" in e for e in schemas.validate(unknown, source="kserve-reduced"))


def test_the_kustomizations_list_every_manifest() -> None:
    for folder in (KSERVE, KSERVE / "storage-uri"):
        listed = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
        present = sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")
        assert sorted(listed) == present, folder


# Misspelt or mistyped fields a reader could write; each must fail every source.
MISTAKES = [
    pytest.param(("spec", "supportedModelFormat"), [], "ServingRuntime", id="runtime-spec-typo"),
    pytest.param(
        ("spec", "containers", 0, "readinessProbe", "httpGet", "paht"),
        "/",
        "ServingRuntime",
        id="runtime-probe-typo",
    ),
    pytest.param(("spec", "protocolVersions"), "v2", "ServingRuntime", id="runtime-wrong-type"),
    pytest.param(
        ("spec", "predictor", "containerConcurency"), 4, "InferenceService", id="isvc-typo"
    ),
    pytest.param(
        ("spec", "predictor", "model", "storageURI"), "pvc://x/y", "InferenceService", id="isvc-uri"
    ),
    pytest.param(
        ("spec", "predictor", "scaleMetric"), "latency", "InferenceService", id="isvc-enum"
    ),
]


@pytest.mark.parametrize("source", schemas.sources(schemas.KSERVE_GROUP))
@pytest.mark.parametrize(("path", "value", "kind"), MISTAKES)
def test_validation_rejects_misspelt_and_mistyped_fields(
    source: str, path: tuple[str | int, ...], value: Any, kind: str
) -> None:
    doc = next(d for d in docs() if d["kind"] == kind)
    assert schemas.validate(doc, source=source) == []
    broken = copy.deepcopy(doc)
    node: Any = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert schemas.validate(broken, source=source) != []


@SHARED
def test_the_committed_schema_is_what_the_generator_writes() -> None:
    assert kserve_schema.main(["--check"]) == 0, "run python -m scripts.kserve_schema"
    committed = json.loads(kserve_schema.OUT.read_text())
    for path in sorted(schemas.KSERVE_CRDS.glob("*.yaml")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert committed["sources"][path.name] == digest


@SHARED
def test_the_committed_schema_expands_to_the_official_crds_exactly() -> None:
    # The CRDs hold no `$ref` of their own, so every one in the committed file is a reduction.
    assert "$ref" not in "".join(p.read_text() for p in schemas.KSERVE_CRDS.glob("*.yaml"))
    committed = json.loads(kserve_schema.OUT.read_text())
    official = kserve_schema.served_schemas(schemas.KSERVE_CRDS)
    assert set(committed["kinds"]) == set(official)
    for key, schema in committed["kinds"].items():
        assert kserve_schema.expand(schema, committed["$defs"]) == official[key], key
    # Reduced enough to commit: a small fraction of the CRDs it stands for.
    size = kserve_schema.OUT.stat().st_size
    assert size < sum(p.stat().st_size for p in schemas.KSERVE_CRDS.glob("*.yaml")) / 10


@SHARED
def test_the_committed_schema_judges_every_broken_copy_as_the_official_crds_do() -> None:
    checked = 0
    for doc in kserve_docs():
        for what, broken in [("as written", doc), *broken_copies(doc)]:
            reduced = schemas.validate(broken, source="kserve-reduced")
            full = schemas.validate(broken, source="kserve-crds")
            strip = [e.rsplit(" [", 1)[0] for e in reduced], [e.rsplit(" [", 1)[0] for e in full]
            assert strip[0] == strip[1], (doc["metadata"]["name"], what)
            checked += 1
    assert checked > 300  # every key and leaf of every KServe document, renamed and retyped


# The settings a runtime shares with the Knative Service of its variant: same image, same model,
# same capacity. Vault, OTLP and K_SINK stay with the Knative path (README "Run under KServe").
SHARED_ENV = (
    "VARIANT",
    "MODEL_DIR",
    "ORT_PROVIDERS",
    "ORT_INTRA_OP_THREADS",
    "ORT_INTER_OP_THREADS",
    "MAX_CONCURRENCY",
    "BATCHING",
    "BATCH_MAX_SIZE",
    "BATCH_MAX_WAIT_MS",
    "SHUTDOWN_TIMEOUT_SECONDS",
    "LOG_LEVEL",
    "LOG_FORMAT",
)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_runtime_runs_its_knative_services_image_and_settings(variant: str) -> None:
    ksvc = knative_service(variant)
    kc = ksvc["spec"]["template"]["spec"]["containers"][0]
    rc = container(runtime(variant))
    assert rc["name"] == "kserve-container"  # the container KServe merges the predictor into
    assert rc["image"] == kc["image"]
    assert rc["resources"] == kc["resources"]
    assert rc["securityContext"] == kc["securityContext"]
    assert rc["volumeMounts"] == kc["volumeMounts"]
    assert runtime(variant)["spec"]["volumes"] == ksvc["spec"]["template"]["spec"]["volumes"]
    assert {k: env(rc)[k] for k in SHARED_ENV} == {k: env(kc)[k] for k in SHARED_ENV}
    assert set(env(rc)) == {*SHARED_ENV, "MODEL_NAME"}
    live = {k: v for k, v in rc["livenessProbe"].items() if k != "httpGet"}
    assert live == {k: v for k, v in kc["livenessProbe"].items() if k != "httpGet"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_inferenceservice_scales_like_its_knative_service(variant: str) -> None:
    template = knative_service(variant)["spec"]["template"]
    notes = template["metadata"]["annotations"]
    predictor = named("InferenceService", f"sentiment-{variant}")["spec"]["predictor"]
    assert predictor["containerConcurrency"] == template["spec"]["containerConcurrency"]
    assert predictor["scaleMetric"] == notes["autoscaling.knative.dev/metric"]
    assert predictor["scaleTarget"] == int(notes["autoscaling.knative.dev/target"])
    assert predictor["maxReplicas"] == int(notes["autoscaling.knative.dev/max-scale"])
    assert predictor["timeout"] == template["spec"]["timeoutSeconds"]
    model = predictor["model"]
    assert model["runtime"] == f"kubesentiment-{variant}"
    assert model["protocolVersion"] == "v2"
    assert "storageUri" not in model  # the model baked into the image
    assert "env" not in model


def test_the_runtimes_start_the_images_command_on_kserves_port() -> None:
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert cmd is not None
    v2 = {route.path for route in routes()}  # type: ignore[attr-defined]
    for variant in VARIANTS:
        rc = container(runtime(variant))
        assert rc["command"] == json.loads(cmd.group(1))
        assert rc["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
        assert Settings().port == 8080  # KServe's HTTP port is the function's default PORT
        assert runtime(variant)["spec"]["protocolVersions"] == ["v2"]
        for probe in ("readinessProbe", "livenessProbe"):
            get = rc[probe]["httpGet"]
            assert get["path"] in v2, (variant, probe)
            assert get["port"] == 8080, (variant, probe)
        assert rc["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_every_env_name_is_a_setting_and_model_name_is_kserves_placeholder() -> None:
    known = {var.env for var in FIELDS.values()}
    for doc in kserve_docs():
        spec = doc["spec"]
        cs = spec["containers"] if "containers" in spec else [spec["predictor"]["model"]]
        for c in cs:
            assert set(env(c)) <= known, (doc["metadata"]["name"], set(env(c)) - known)
    for variant in VARIANTS:
        # KServe fills `{{.Name}}` (a Go template over the container) with the InferenceService's
        # name; unfilled, the function refuses to start rather than serve under "{{.Name}}".
        assert env(container(runtime(variant)))["MODEL_NAME"] == "{{.Name}}"
    with pytest.raises(ConfigError, match="MODEL_NAME"):
        Settings.from_env({"MODEL_NAME": "{{.Name}}"})
    for doc in kserve_docs():
        if doc["kind"] == "InferenceService":
            name = doc["metadata"]["name"]
            assert Settings.from_env({"MODEL_NAME": name}).model_name == name


def test_model_formats_name_our_model_directory_format() -> None:
    formats = {v: runtime(v)["spec"]["supportedModelFormats"] for v in VARIANTS}
    for supported in formats.values():
        assert [(f["name"], f["version"]) for f in supported] == [(FORMAT, str(FORMAT_VERSION))]
    # One runtime is picked for an InferenceService that names only the format: the default.
    auto = [v for v, supported in formats.items() if supported[0].get("autoSelect")]
    assert auto == ["cpu-int8"]
    assert formats["cpu-int8"][0]["priority"] == 1
    for doc in kserve_docs():
        if doc["kind"] == "InferenceService":
            model = doc["spec"]["predictor"]["model"]
            assert model["modelFormat"] == {"name": FORMAT, "version": str(FORMAT_VERSION)}
            assert model["runtime"] in {f"kubesentiment-{v}" for v in VARIANTS}


def test_a_storage_uri_model_is_served_from_where_kserve_puts_it() -> None:
    stored = [
        d
        for d in kserve_docs()
        if "storageUri" in d.get("spec", {}).get("predictor", {}).get("model", {})
    ]
    assert stored, "the storage-uri example is gone"
    for doc in stored:
        model = doc["spec"]["predictor"]["model"]
        assert env(model) == {"MODEL_DIR": MOUNT}, doc["metadata"]["name"]
        assert re.fullmatch(r"(pvc|s3|gs|https)://\S+", model["storageUri"])
