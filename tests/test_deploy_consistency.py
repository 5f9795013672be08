"""The deployment files agree with the code: routes, settings, model directories, ports, limits.

The Knative manifests, the Dockerfile and the app are written separately; each check here names
one fact that must be the same in two places, so a rename on one side fails a test instead of a
rollout.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.routing import BaseRoute, Mount, Route

from shared.config import FIELDS, Settings

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "knative" / "base"
DOCKERFILE = ROOT / "Dockerfile"
VARIANTS = {
    "cpu-int8": "models/minilm-sentiment-int8",
    "cpu-fp32": "models/minilm-sentiment-fp32",
    "cpu-accurate-int8": "models/mpnet-sentiment-int8",
    "gpu-fp16": "models/mpnet-sentiment-fp16",
}
# Built, not committed (too large): variant -> (make target, committed checkpoint it is built
# from). tests/test_deploy_variants.py checks the Makefile, .gitignore and the image workflow.
ACCURATE_CHECKPOINT = "models/mpnet-sentiment-checkpoint"
GENERATED = {
    "cpu-accurate-int8": ("accurate", ACCURATE_CHECKPOINT),
    "gpu-fp16": ("accurate-fp16", ACCURATE_CHECKPOINT),
}
MODEL_FILES = ("model.onnx", "tokenizer.json", "manifest.json")
CHECKPOINT_FILES = ("trained.safetensors", "training.json")  # training/accurate.py save()
# Knative sets these itself and rejects a revision that sets them (runtime contract).
KNATIVE_RESERVED = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
REQUEST_TYPE = "dev.kubesentiment.sentiment.requested"
REPLY_TYPE = "dev.kubesentiment.sentiment.completed"


def base_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    return docs


def function_services() -> list[dict[str, Any]]:
    """The Knative Services that run our image (one per variant)."""
    return [
        d
        for d in base_documents()
        if d["kind"] == "Service" and "kubesentiment.dev/variant" in d["metadata"].get("labels", {})
    ]


def container(service: Mapping[str, Any]) -> dict[str, Any]:
    containers = service["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def env_of(service: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(service).get("env", [])}


def routes(items: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) for every route of the app, inside mounts too."""
    for item in items:
        if isinstance(item, Mount):
            yield from routes(list(item.routes), prefix + item.path)
        elif isinstance(item, Route):
            yield prefix + item.path, set(item.methods or ())


@pytest.fixture(scope="module")
def app_routes() -> dict[str, set[str]]:
    from functions.sentiment.app import create_app

    app = create_app(Settings())  # builds routes only: the lifespan (model load) does not run
    table: dict[str, set[str]] = {}
    for path, methods in routes(list(app.routes)):
        table.setdefault(path, set()).update(methods)
    return table


def service_ids() -> list[Any]:
    return [pytest.param(s, id=s["metadata"]["name"]) for s in function_services()]


def test_there_is_one_service_per_variant() -> None:
    variants = {s["metadata"]["labels"]["kubesentiment.dev/variant"] for s in function_services()}
    assert variants == set(VARIANTS)


@pytest.mark.parametrize("service", service_ids())
def test_probe_paths_are_get_routes_of_the_app(
    service: dict[str, Any], app_routes: dict[str, set[str]]
) -> None:
    c = container(service)
    for probe in ("readinessProbe", "livenessProbe"):
        path = c[probe]["httpGet"]["path"]
        assert "GET" in app_routes.get(path, set()), f"{probe} {path} is not a GET route"
        assert "port" not in c[probe]["httpGet"], "Knative probes the serving port"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/liveness"


def test_triggers_deliver_to_a_route_that_accepts_cloudevents(
    app_routes: dict[str, set[str]],
) -> None:
    """A Trigger POSTs to its subscriber's `uri` resolved against the ref's address (the root
    without one). A Broker's delivery carries no API key, so a Trigger to a function that requires
    keys must deliver to `/events/{key_id}`, the route that counts keyless events under a key."""
    services = {s["metadata"]["name"]: s for s in function_services()}
    checked = 0
    for trigger in (d for d in base_documents() if d["kind"] == "Trigger"):
        subscriber = trigger["spec"]["subscriber"]
        service = services.get(subscriber["ref"]["name"])
        if service is None:
            continue  # the results consumer, a JobSink: not a function
        uri = subscriber.get("uri", "/")
        if "API_KEYS" in env_of(service):
            match = re.fullmatch(r"/events/([a-z0-9][a-z0-9-]*)", uri)
            assert match, f"{trigger['metadata']['name']}: keyless delivery to {uri} gets 401"
            uri = "/events/{key_id}"
        assert "POST" in app_routes.get(uri, set()), f"the app has no POST {uri} for CloudEvents"
        checked += 1
    assert checked >= len(VARIANTS)


@pytest.mark.parametrize("service", service_ids())
def test_every_env_name_is_a_setting(service: dict[str, Any]) -> None:
    known = {var.env for var in FIELDS.values()}
    names = set(env_of(service))
    assert names <= known, f"not settings: {sorted(names - known)}"
    assert not names & KNATIVE_RESERVED, "Knative sets these itself"


@pytest.mark.parametrize("service", service_ids())
def test_env_values_parse_as_settings(service: dict[str, Any]) -> None:
    env = env_of(service)
    by_env = {var.env: var for var in FIELDS.values()}
    for name, value in env.items():
        by_env[name].parse(value)  # raises ValueError on a value the function would refuse
    settings = Settings.from_env(
        environ=env
    )  # cross-field rules too (e.g. vault: needs VAULT_ADDR)
    variant = service["metadata"]["labels"]["kubesentiment.dev/variant"]
    assert settings.variant == variant
    assert str(settings.model_dir) == VARIANTS[variant]


@pytest.mark.parametrize("service", service_ids())
def test_model_directory_exists_or_is_generated(service: dict[str, Any]) -> None:
    variant = service["metadata"]["labels"]["kubesentiment.dev/variant"]
    model_dir = ROOT / env_of(service)["MODEL_DIR"]
    if variant in GENERATED:
        # Not committed: `make accurate` / `make accurate-fp16` build it from the checkpoint.
        target, checkpoint = GENERATED[variant]
        for name in CHECKPOINT_FILES:
            path = ROOT / checkpoint / name
            assert path.is_file(), f"{path} is missing: `make {target}` builds {model_dir} from it"
        return
    for name in MODEL_FILES:
        assert (model_dir / name).is_file(), f"{model_dir / name} is missing"


@pytest.mark.parametrize("service", service_ids())
def test_image_and_names_follow_the_variant(service: dict[str, Any]) -> None:
    variant = service["metadata"]["labels"]["kubesentiment.dev/variant"]
    spec = service["spec"]["template"]["spec"]
    assert service["metadata"]["name"] == f"sentiment-{variant}"
    assert container(service)["image"].startswith(f"kubesentiment/sentiment-{variant}:")
    assert spec["serviceAccountName"] == f"sentiment-{variant}"
    env = env_of(service)
    assert env["VAULT_ROLE"] == spec["serviceAccountName"]
    assert env["OTEL_SERVICE_NAME"] == service["metadata"]["name"]


@pytest.mark.parametrize("service", service_ids())
def test_ports_match_the_app_and_the_image(service: dict[str, Any]) -> None:
    ports = container(service)["ports"]
    assert len(ports) == 1
    assert ports[0]["name"] in {"http1", "h2c"}
    port = ports[0]["containerPort"]
    assert port == Settings().port == int(FIELDS["port"].default)
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert f"EXPOSE {port}" in dockerfile
    assert f"PORT={port}" in dockerfile


@pytest.mark.parametrize("service", service_ids())
def test_limits_agree_with_the_function_settings(service: dict[str, Any]) -> None:
    spec = service["spec"]["template"]["spec"]
    c = container(service)
    env = env_of(service)
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    assert requests == limits, "requests == limits: guaranteed QoS, no CPU throttling surprises"
    # ORT threads = the CPU quota, never the node's cores (onnxruntime#29510).
    assert int(env["ORT_INTRA_OP_THREADS"]) == int(limits["cpu"])
    assert env["ORT_INTER_OP_THREADS"] == "1"
    # The function's own 429 limit is Knative's hard limit, so Knative queues first.
    assert int(env["MAX_CONCURRENCY"]) == spec["containerConcurrency"]
    assert int(env["BATCH_MAX_SIZE"]) <= spec["containerConcurrency"]
    # Knative gives the pod timeoutSeconds of termination grace; draining must fit in it.
    assert float(env["SHUTDOWN_TIMEOUT_SECONDS"]) < spec["timeoutSeconds"]
    annotations = service["spec"]["template"]["metadata"]["annotations"]
    target = int(annotations["autoscaling.knative.dev/target"])
    assert 0 < target <= spec["containerConcurrency"]
    assert annotations["autoscaling.knative.dev/metric"] == "concurrency"
    assert annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"


def test_gpu_variant_requests_a_gpu_with_cpu_fallback() -> None:
    gpu = next(s for s in function_services() if s["metadata"]["name"] == "sentiment-gpu-fp16")
    env = env_of(gpu)
    assert env["ORT_PROVIDERS"].split(",") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    spec = gpu["spec"]["template"]["spec"]
    assert spec["nodeSelector"]
    assert spec["tolerations"]
    features = next(d for d in base_documents() if d["kind"] == "ConfigMap")
    assert features["data"]["kubernetes.podspec-nodeselector"] == "enabled"
    assert features["data"]["kubernetes.podspec-tolerations"] == "enabled"


def test_triggers_route_every_variant_and_results_without_loops() -> None:
    docs = base_documents()
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    sinks = services | {d["metadata"]["name"] for d in docs if d["kind"] == "JobSink"}
    triggers = [d for d in docs if d["kind"] == "Trigger"]
    routed: dict[str, str] = {}
    for trigger in triggers:
        spec = trigger["spec"]
        assert spec["subscriber"]["ref"]["name"] in sinks
        assert spec["delivery"]["deadLetterSink"]["ref"]["name"] in services
        assert spec["delivery"]["backoffPolicy"] == "exponential"
        attributes = spec.get("filter", {}).get("attributes", {})
        if attributes.get("type") == REQUEST_TYPE and "variant" in attributes:
            routed[attributes["variant"]] = spec["subscriber"]["ref"]["name"]
    assert routed == {v: f"sentiment-{v}" for v in VARIANTS}
    default = next(t for t in triggers if t["metadata"]["name"] == "sentiment-requested-default")
    assert {"exact": {"type": REQUEST_TYPE}} in default["spec"]["filters"]
    results = next(t for t in triggers if t["metadata"]["name"] == "sentiment-completed")
    assert results["spec"]["filter"]["attributes"] == {"type": REPLY_TYPE}
    assert REQUEST_TYPE != REPLY_TYPE  # a reply with the request's type would loop


def test_event_types_are_the_ones_the_function_uses() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "functions").rglob("*.py"))
    assert REQUEST_TYPE in source
    assert REPLY_TYPE in source


def dockerfile_stages() -> dict[str, str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    parts = re.split(r"^FROM \S+ AS (\S+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize(("stage", "variant"), [("cpu", "cpu-int8"), ("gpu", "gpu-fp16")])
def test_dockerfile_runtime_stages(stage: str, variant: str) -> None:
    body = dockerfile_stages()[stage]
    assert f"ARG VARIANT={variant}" in body
    assert f"ARG MODEL_DIR={VARIANTS[variant]}" in body
    user = re.search(r"^USER (\S+)$", body, flags=re.M)
    assert user, "no USER"
    uid, _, gid = user.group(1).partition(":")
    assert uid.isdigit(), "USER must be numeric (runAsNonRoot can only check a number)"
    assert int(uid) != 0, "USER must not be root"
    assert not gid or int(gid) != 0
    assert 'CMD ["python", "-m", "functions.sentiment"]' in body  # exec form
    assert (ROOT / "functions" / "sentiment" / "__main__.py").is_file()
    assert "pip" not in re.sub(r"^#.*$", "", body, flags=re.M).replace("pip uninstall", "")


def test_dockerfile_copies_the_lock_before_the_source() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert text.index("COPY requirements/serving.txt") < text.index("COPY shared/")
    assert (ROOT / "requirements" / "serving.txt").is_file()
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for needed in ("!requirements/", "!shared/", "!functions/", "!models/"):
        assert needed in ignore
