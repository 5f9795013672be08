"""Strict schema validation of Kubernetes, Knative and Prometheus-operator documents.

Three sources, so a fresh clone (and GitHub CI) validates every document without `../shared`:

- registry: the cloudcoil model packages from PyPI (`cloudcoil-models-knative-serving`,
  `-knative-eventing`, `-prometheus-operator`, locked in requirements/dev.txt). They are pydantic
  models generated from the projects' CRDs; their JSON Schema is closed here (every object allows
  only the fields it lists), so a typo fails instead of being pruned by the API server.
- core: kubernetes-validate in strict mode for built-in kinds (also for the Job that a JobSink
  embeds, which the JobSink CRD leaves open).
- crds: the official Knative CRDs in `../shared/knative/crds`, a second, stricter source, used
  when present (their own `x-kubernetes-preserve-unknown-fields` objects are closed only when
  `pedantic`).
- KServe kinds (serving.kserve.io): `kserve-reduced`, the official KServe CRDs' schemas committed
  in reduced form (knative/kserve/crd-schemas.json, written by `python -m scripts.kserve_schema`),
  always; and `kserve-crds`, the official CRDs in `../shared/kserve/crds`, when present.

A kind that no source knows is an error ("not validated"), never a silent pass.
"""

from __future__ import annotations

import importlib
import json
import warnings
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT.parent / "shared" / "knative" / "crds"
KSERVE_CRDS = ROOT.parent / "shared" / "kserve" / "crds"
KSERVE_REDUCED = ROOT / "knative" / "kserve" / "crd-schemas.json"
KSERVE_GROUP = "serving.kserve.io"
KUBE_VERSION = "1.33.0"
REGISTRY_MODULES = (
    "cloudcoil.models.knative_serving.serving.v1",
    "cloudcoil.models.knative_eventing.eventing.v1",
    "cloudcoil.models.knative_eventing.sinks.v1alpha1",
    "cloudcoil.models.knative_eventing.sources.v1",
    "cloudcoil.models.prometheus_operator.v1",
)
# Groups whose kinds are CRDs: kubernetes-validate has no schema for them.
CRD_GROUPS = ("knative.dev", "monitoring.coreos.com", KSERVE_GROUP)
ROOT_FIELDS: Mapping[str, Any] = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    "metadata": {"type": "object"},
}


def close_schema(schema: Any, *, pedantic: bool = False) -> Any:
    """A copy of a JSON schema in which objects with listed properties allow no others.

    Objects marked `x-kubernetes-preserve-unknown-fields` stay open (the API server keeps unknown
    fields there), unless `pedantic`: then they too allow only the properties they list.
    """
    if isinstance(schema, list):
        return [close_schema(s, pedantic=pedantic) for s in schema]
    if not isinstance(schema, dict):
        return schema
    alternatives = schema.get("anyOf")
    if isinstance(alternatives, list) and {"type": "null"} in alternatives:
        # pydantic writes an optional field as anyOf [X, null]; a manifest never holds null, and
        # unwrapping lets errors name the field instead of "not valid under any of the schemas".
        rest = [a for a in alternatives if a != {"type": "null"}]
        if len(rest) == 1 and isinstance(rest[0], dict):
            return close_schema(rest[0], pedantic=pedantic)
    out = {k: close_schema(v, pedantic=pedantic) for k, v in schema.items() if k != "properties"}
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {
            k: close_schema(v, pedantic=pedantic) for k, v in schema["properties"].items()
        }
        preserve = schema.get("x-kubernetes-preserve-unknown-fields") and not pedantic
        if "additionalProperties" not in schema and not preserve:
            out["additionalProperties"] = False
    return out


@cache
def registry_schemas() -> Mapping[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> closed schema for every resource of the registry model packages."""
    from cloudcoil.resources import Resource

    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for name in REGISTRY_MODULES:
        with warnings.catch_warnings():  # cloudcoil's Channel model shadows a field: harmless
            warnings.simplefilter("ignore", UserWarning)
            module = importlib.import_module(name)
        for obj in vars(module).values():
            if not (isinstance(obj, type) and issubclass(obj, Resource) and obj is not Resource):
                continue
            fields = obj.model_fields
            api, kind = fields["api_version"].default, fields["kind"].default
            if isinstance(api, str) and isinstance(kind, str) and not kind.endswith("List"):
                schema = obj.model_json_schema(by_alias=True)
                schemas[(api, kind)] = close_schema(schema)
    return schemas


@cache
def crd_schemas(crds: Path = CRDS, pedantic: bool = False) -> Mapping[tuple[str, str], Any]:
    """(apiVersion, kind) -> strict schema for every served version of every CRD under `crds`."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(crds.rglob("*.yaml")):
        # libyaml when present: the KServe InferenceService CRD alone is 2 MB of YAML.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        for crd in yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader):
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


@cache
def kserve_reduced_schemas(path: Path = KSERVE_REDUCED) -> Mapping[tuple[str, str], Any]:
    """(apiVersion, kind) -> strict schema from the committed reduced KServe CRD schemas."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    schemas: dict[tuple[str, str], Any] = {}
    for key, schema in doc["kinds"].items():
        api, kind = key.split(" ")
        # The `$ref`s point into `$defs` at the root of the schema they are resolved in.
        closed = close_schema({**schema, "$defs": doc["$defs"]})
        closed["properties"] = {**ROOT_FIELDS, **closed.get("properties", {})}
        schemas[(api, kind)] = closed
    return schemas


def sources(api: str = "") -> list[str]:
    """The schema sources available here for `api`: Knative and Prometheus-operator kinds always
    the registry, plus the Knative CRDs when present; KServe kinds always the committed reduced
    schemas, plus the official KServe CRDs when present."""
    if KSERVE_GROUP in api:
        return ["kserve-reduced", "kserve-crds"] if KSERVE_CRDS.is_dir() else ["kserve-reduced"]
    return ["registry", "crds"] if CRDS.is_dir() else ["registry"]


def _table(src: str, pedantic: bool) -> Mapping[tuple[str, str], Any]:
    if src == "registry":
        return registry_schemas()
    if src == "kserve-reduced":
        return kserve_reduced_schemas()
    return crd_schemas(KSERVE_CRDS if src == "kserve-crds" else CRDS, pedantic)


def _errors(schema: Mapping[str, Any], doc: Mapping[str, Any], label: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{label}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


def validate_core(doc: Mapping[str, Any], label: str) -> list[str]:
    """Strict kubernetes-validate; a kind it has no schema for is an error, not a pass."""
    try:
        kubernetes_validate.validate(dict(doc), KUBE_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{label}: kubernetes-validate has no schema for {doc.get('apiVersion')}"]
    except kubernetes_validate.ValidationError as e:
        return [f"{label}: {'/'.join(map(str, e.absolute_path))}: {e.message}"]
    return []


def validate(doc: Mapping[str, Any], *, source: str = "all", pedantic: bool = False) -> list[str]:
    """Every schema error of one document (empty when valid) from the given source(s)."""
    api, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
    label = f"{kind} {(doc.get('metadata') or {}).get('name', '?')}"
    if not any(group in api for group in CRD_GROUPS):
        return validate_core(doc, label)
    errors: list[str] = []
    wanted = sources(api) if source == "all" else [source]
    # The CRDs in ../shared/knative are Knative's only.
    for src in [s for s in wanted if s != "crds" or "knative.dev" in api]:
        schema = _table(src, pedantic).get((api, kind))
        if schema is None:
            errors.append(f"{label}: no {src} schema for {api} {kind}: not validated")
            continue
        errors += [f"{e} [{src}]" for e in _errors(schema, doc, label)]
    if kind == "JobSink" and isinstance((doc.get("spec") or {}).get("job"), dict):
        # The JobSink CRD keeps `spec.job` open; it is a batch/v1 Job template, checked as one.
        job = {"apiVersion": "batch/v1", "kind": "Job", **doc["spec"]["job"]}
        job.setdefault("metadata", {"name": "jobsink-job"})
        errors += validate_core(job, f"{label} spec.job")
    return errors
