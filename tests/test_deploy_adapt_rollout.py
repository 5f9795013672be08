"""The adapt rollout job end to end, as the process its JobSink runs.

`python -m deploy.adapt_rollout` reads a completion event from the mount path, talks to a stand-in
`kubectl` on PATH (tests/fake_kubectl.py: no Kubernetes API server can run on our machines; it
keeps the Service as the real cpu-int8 manifest plus a status, and applies merge patches as the API
server would), to a Prometheus HTTP API serving the recorded query_range answers of
tests/canary_fixtures (real Prometheus answers; replayed with the canary's clock sped up, so a
60-minute canary takes seconds), and sends its answer to a local receiver standing in for the
Broker (tests/receiver.py).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from deploy import adapt_events, adapt_rollout, canary, kube, rollout
from shared.eventid import derived_id
from tests import fake_kubectl
from tests.receiver import Receiver
from tests.test_deploy_canary import completion, until

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "canary_fixtures"
SERVICE = "sentiment-cpu-int8"
STABLE = "sentiment-cpu-int8-00007"
SHA = "3f9c2a7be1" + "0" * 54
REVISION = f"{SERVICE}-adapted-3f9c2a7be1"
SPEED = 1200.0  # recorded seconds per real second: observe 600 s -> 0.5 s, deadline 3600 s -> 3 s
STEP = 60 / SPEED  # the recorded answers' 60-second step, in the job's seconds
COMPLETION_SOURCE = "/kubesentiment/adapt"
COMPLETION_ID = "5b0e7a51-6c1a-4c64-9d7e-0d5c1b0a9e11"


@dataclass
class FakePrometheus:
    """/api/v1/query_range answering the candidate's exact queries from one recorded canary."""

    case: str
    queries: list[dict[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        recorded = json.loads((FIXTURES / f"{self.case}.json").read_text(encoding="utf-8"))
        wanted = canary.queries(REVISION, STEP)
        name = next((k for k, q in wanted.items() if q == params.get("query")), None)
        if name is None or float(params.get("step", 0)) != STEP:
            return 400, {"status": "error", "errorType": "bad_data", "error": "unexpected query"}
        # The recorded step (60 s) is STEP of the job's clock: elapsed recorded time is SPEED
        # times the job's.
        began = float(params["start"]) - STEP
        elapsed = (float(params["end"]) - began) * SPEED
        return 200, until(recorded[name], recorded["start"] + elapsed)

    def start(self) -> FakePrometheus:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(url.query))
                fake.queries.append(params)
                status, body = (
                    fake.answer(params) if url.path == "/api/v1/query_range" else (404, {})
                )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def live_service() -> dict[str, Any]:
    """The cpu-int8 Service from its manifest, as the API server shows it after the first deploy."""
    manifest = yaml.safe_load((ROOT / "knative" / "base" / "service-cpu-int8.yaml").read_text())
    service = copy.deepcopy(manifest)
    service["metadata"]["resourceVersion"] = "4711"
    service["status"] = {
        "latestCreatedRevisionName": STABLE,
        "latestReadyRevisionName": STABLE,
        "traffic": [
            {"tag": "stable", "revisionName": STABLE, "percent": 100, "latestRevision": True},
            {"tag": "candidate", "revisionName": STABLE, "percent": 0, "latestRevision": True},
        ],
    }
    return service


@dataclass
class Job:
    """One run of the job's process and everything it touched."""

    returncode: int
    stdout: str
    stderr: str
    calls: list[list[str]]
    service: dict[str, Any]
    events: list[CloudEvent]
    queries: list[dict[str, str]]

    def patches(self) -> list[dict[str, Any]]:
        return [json.loads(c[c.index("-p") + 1]) for c in self.calls if c[0] == "patch"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def run_job(
    tmp_path: Path,
    receiver: Receiver,
    *,
    case: str = "healthy",
    data: dict[str, Any] | None = None,
    ready: str = "True",
    args: tuple[str, ...] = (),
    service: dict[str, Any] | None = None,
    event_type: str = adapt_events.COMPLETED,
    prometheus_url: str | None = None,
) -> Job:
    state = tmp_path / "kube"
    state.mkdir(exist_ok=True)
    (state / f"ksvc-{SERVICE}.json").write_text(json.dumps(service or live_service()))
    bin_dir = tmp_path / "bin"
    fake_kubectl.install(bin_dir)
    event_path = tmp_path / "jobsink-event" / "event"
    event_path.parent.mkdir(exist_ok=True)
    body = data or completion()
    body["model"]["sha256"] = SHA
    event = {
        "specversion": "1.0",
        "id": COMPLETION_ID,
        "source": COMPLETION_SOURCE,
        "type": event_type,
        "subject": "adapt-1",
        "requestid": "adapt-1",
        "datacontenttype": "application/json",
        "data": body,
    }
    event_path.write_text(json.dumps(event), encoding="utf-8")
    prometheus = FakePrometheus(case).start()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "FAKE_KUBECTL_DIR": str(state),
        "FAKE_REVISION_READY": ready,
        "JOBSINK_EVENT_PATH": str(event_path),
        "PROMETHEUS_URL": prometheus_url or prometheus.url,
        "K_SINK": receiver.url,
    }
    timing = ["--interval", str(STEP), "--step", str(STEP), "--observe", str(600 / SPEED)]
    timing += ["--deadline", str(3600 / SPEED), "--ready-timeout", "5"]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "deploy.adapt_rollout", *timing, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        prometheus.stop()
    calls_file = state / "calls.jsonl"
    calls = (
        [json.loads(line) for line in calls_file.read_text().splitlines()]
        if calls_file.is_file()
        else []
    )
    events = [
        ce_http.from_binary_event(ce_http.HTTPMessage(headers=r.headers, body=r.body))
        for r in receiver.requests
    ]
    return Job(
        done.returncode,
        done.stdout,
        done.stderr,
        calls,
        json.loads((state / f"ksvc-{SERVICE}.json").read_text()),
        events,
        prometheus.queries,
    )


def traffic(targets: list[rollout.Target]) -> dict[str, Any]:
    return rollout.patch_body(targets)


def the_answer(job: Job, kind: str) -> dict[str, Any]:
    assert job.returncode == 0, job.stderr
    assert len(job.events) == 1, job.stderr
    event = job.events[0]
    assert event.get_type() == kind
    assert event.get_id() == derived_id(COMPLETION_SOURCE, COMPLETION_ID, kind)
    assert event.get_source() == adapt_events.SOURCE
    assert event.get_subject() == "adapt-1"
    assert event.get_extension("requestid") == "adapt-1"
    data = event.get_data()
    assert isinstance(data, dict)
    return data


def test_healthy_canary_is_promoted(tmp_path: Path, receiver: Receiver) -> None:
    job = run_job(tmp_path, receiver, case="healthy")
    data = the_answer(job, adapt_events.ROLLEDOUT)
    assert [c[:2] for c in job.calls] == [
        ["get", "ksvc"],
        ["patch", "ksvc"],  # pin
        ["patch", "ksvc"],  # the adapted template
        ["get", "revision"],
        ["patch", "ksvc"],  # canary
        ["patch", "ksvc"],  # promote
    ]
    pin, template, canary_patch, promote = job.patches()
    assert pin == traffic(rollout.pin(rollout.ServiceState.from_json(live_service())))
    assert pin["spec"]["traffic"][0]["revisionName"] == STABLE
    assert canary_patch == traffic(rollout.canary(STABLE, 10, REVISION))
    assert promote == traffic(rollout.promote(REVISION))
    # The template: the live containers with MODEL_URI added, under the deterministic name.
    meta = template["spec"]["template"]["metadata"]
    assert meta["name"] == REVISION
    assert meta["annotations"]["kubesentiment.dev/model-sha256"] == SHA
    container = template["spec"]["template"]["spec"]["containers"][0]
    before = live_service()["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == before["image"]
    assert container["env"] == [
        *before["env"],
        {"name": "MODEL_URI", "value": "file:///data/models/adapted-1"},
    ]
    assert {"name": "adapted-models", "mountPath": "/data", "readOnly": True} in container[
        "volumeMounts"
    ]
    volumes = {v["name"]: v for v in job.service["spec"]["template"]["spec"]["volumes"]}
    assert volumes["adapted-models"]["persistentVolumeClaim"] == {
        "claimName": "sentiment-batch-data",
        "readOnly": True,
    }
    assert "tmp" in volumes  # the merge patch replaced the list: the old volumes were copied
    assert job.service["spec"]["traffic"][0] == {
        "tag": "stable",
        "latestRevision": False,
        "revisionName": REVISION,
        "percent": 100,
    }
    assert data["status"] == "promoted"
    assert data["revision"] == data["stable"] == REVISION
    assert data["canary"]["percent"] == 10
    assert data["canary"]["requests"] >= 200
    assert data["canary"]["p99_seconds"] < canary.SLO_LATENCY_S
    assert data["held_out"]["adapted_balanced_accuracy"] == 0.781
    assert data["request"] == {"source": "/labelling", "id": "adapt-1"}
    # Promoted only after the observation window (10 recorded minutes), polling meanwhile.
    assert data["canary"]["seconds"] >= 600 / SPEED
    assert len(job.queries) >= 2 * 2


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        pytest.param("error_burst", "5xx", id="error-burst"),
        pytest.param("slow", "0.5 s", id="p99-over-slo"),
        pytest.param("low_traffic_errors", "before 200 requests", id="errors-in-thin-traffic"),
        pytest.param("no_traffic", "no request reached", id="no-traffic"),
    ],
)
def test_a_canary_that_breaks_the_slo_is_rolled_back(
    tmp_path: Path, receiver: Receiver, case: str, reason: str
) -> None:
    job = run_job(tmp_path, receiver, case=case)
    data = the_answer(job, adapt_events.ROLLEDBACK)
    assert data["status"] == "rolled_back"
    assert reason in data["reason"]
    last = job.patches()[-1]
    assert last["spec"] == traffic(rollout.rollback(STABLE))["spec"]
    assert job.service["spec"]["traffic"][0]["revisionName"] == STABLE
    assert job.service["spec"]["traffic"][0]["percent"] == 100
    assert job.service["metadata"]["annotations"][adapt_rollout.ROLLED_BACK] == COMPLETION_ID
    assert data["stable"] == STABLE
    assert data["revision"] == REVISION


def test_thin_traffic_waits_then_is_promoted_at_the_deadline(
    tmp_path: Path, receiver: Receiver
) -> None:
    job = run_job(tmp_path, receiver, case="low_traffic")
    data = the_answer(job, adapt_events.ROLLEDOUT)
    assert data["reason"].startswith("deadline:")
    assert data["canary"]["requests"] < 200
    assert data["canary"]["seconds"] >= 3600 / SPEED
    # It kept polling while it waited.
    assert len(job.queries) >= 2 * 5


def test_a_margin_too_small_is_rejected_without_a_revision(
    tmp_path: Path, receiver: Receiver
) -> None:
    job = run_job(tmp_path, receiver, data=completion(adapted=0.75))
    data = the_answer(job, adapt_events.REJECTED)
    assert job.calls == []  # nothing read or changed in the cluster
    assert job.queries == []
    assert data["status"] == "rejected"
    assert "below the 2.0-point margin" in data["reason"]
    assert data["revision"] is None
    assert data["canary"] is None


def test_the_margin_is_a_flag(tmp_path: Path, receiver: Receiver) -> None:
    job = run_job(tmp_path, receiver, data=completion(adapted=0.75), args=("--margin", "0.01"))
    assert the_answer(job, adapt_events.ROLLEDOUT)["held_out"]["margin"] == 0.01


def test_a_revision_that_never_gets_ready_is_rolled_back_without_a_canary(
    tmp_path: Path, receiver: Receiver
) -> None:
    job = run_job(tmp_path, receiver, ready="False")
    data = the_answer(job, adapt_events.ROLLEDBACK)
    assert "ExitCode1" in data["reason"]
    assert job.queries == []
    shares = [p["spec"]["traffic"][1]["percent"] for p in job.patches() if "traffic" in p["spec"]]
    assert shares == [0, 0]  # pinned, then rolled back: the candidate never got traffic


def test_a_retry_after_the_decision_reports_it_again_without_changes(
    tmp_path: Path, receiver: Receiver
) -> None:
    first = run_job(tmp_path, receiver, case="error_burst")
    assert first.returncode == 0
    (tmp_path / "kube" / "calls.jsonl").unlink()
    second = run_job(tmp_path, receiver, case="healthy", service=first.service)
    assert [c[0] for c in second.calls] == ["get"]
    assert second.events[0].get_id() == first.events[0].get_id()
    assert second.events[1].get_id() == first.events[0].get_id()


def test_dry_run_prints_every_change_and_makes_none(tmp_path: Path, receiver: Receiver) -> None:
    job = run_job(tmp_path, receiver, args=("--dry-run",))
    assert job.returncode == 0, job.stderr
    assert [c[0] for c in job.calls] == ["get"]
    printed = [line for line in job.stdout.splitlines() if line.startswith("kubectl patch")]
    assert len(printed) == 3  # pin, template, canary
    assert REVISION in printed[1]
    assert job.service == live_service()
    assert job.events == []
    assert job.queries == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"event_type": "dev.kubesentiment.adapt.failed"}, "is not", id="wrong-type"),
        pytest.param({"data": {**completion(), "model_uri": "http://x/m"}}, "model_uri", id="uri"),
        pytest.param({"data": {**completion(), "status": "failed"}}, "status", id="failed"),
        pytest.param({"data": {**completion(), "base_variant": "nope"}}, "no Service", id="svc"),
        pytest.param({"data": {**completion(), "base_variant": "../x"}}, "variant", id="name"),
    ],
)
def test_an_event_no_retry_can_fix_exits_2(
    tmp_path: Path, receiver: Receiver, change: dict[str, Any], message: str
) -> None:
    job = run_job(tmp_path, receiver, **change)
    assert job.returncode == 2, job.stderr
    assert message in job.stderr
    assert job.events == []
    assert not [c for c in job.calls if c[0] == "patch"]


def test_every_kubectl_call_is_allowed_by_the_jobs_role(tmp_path: Path, receiver: Receiver) -> None:
    calls = run_job(tmp_path, receiver).calls + run_job(tmp_path, receiver, case="slow").calls
    docs = list(yaml.safe_load_all((ROOT / "knative" / "base" / "adapt-rollout.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "Role")
    kinds = {
        "ksvc": ("serving.knative.dev", "services"),
        "revision": ("serving.knative.dev", "revisions"),
    }
    for verb, kind, name, *_ in calls:
        group, resource = kinds[kind]
        assert any(
            group in rule["apiGroups"]
            and resource in rule["resources"]
            and verb in rule["verbs"]
            and name in rule.get("resourceNames", [name])
            for rule in role["rules"]
        ), (verb, kind, name)


# --- the pieces, in process -------------------------------------------------------------------


def test_an_oci_model_changes_only_model_uri_and_mounts_nothing() -> None:
    service = live_service()
    uri = "oci://registry.local:5000/models/adapted@sha256:" + "ab" * 32
    body = kube.template_patch(service, REVISION, uri, {}, "sentiment-batch-data", "/data")
    spec = body["spec"]["template"]["spec"]
    assert set(spec) == {"containers"}
    before = service["spec"]["template"]["spec"]["containers"][0]
    after = spec["containers"][0]
    assert {**after, "env": before["env"]} == before
    assert after["env"] == [*before["env"], {"name": "MODEL_URI", "value": uri}]
    # A second rollout replaces MODEL_URI instead of adding another.
    service["spec"]["template"]["spec"]["containers"] = spec["containers"]
    again = kube.template_patch(service, REVISION, "oci://r/m@sha256:" + "cd" * 32, {}, "c", "/d")
    names = [e["name"] for e in again["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert names.count("MODEL_URI") == 1


def test_a_file_uri_outside_the_model_volume_is_refused() -> None:
    with pytest.raises(ValueError, match="not on the model volume"):
        kube.template_patch(live_service(), REVISION, "file:///etc/m", {}, "claim", "/data")


@pytest.mark.parametrize(
    ("sha", "ok"),
    [
        pytest.param(SHA, True, id="hex"),
        pytest.param(SHA.upper(), True, id="upper"),
        pytest.param(SHA[:-1], False, id="short"),
        pytest.param("z" * 64, False, id="not-hex"),
    ],
)
def test_the_revision_name_comes_from_the_models_sha256(sha: str, ok: bool) -> None:
    if ok:
        assert kube.revision_name(SERVICE, sha) == REVISION
    else:
        with pytest.raises(ValueError, match="sha256"):
            kube.revision_name(SERVICE, sha)
    # The longest Service name still makes a valid revision name (63 characters at most).
    assert len(kube.revision_name("sentiment-cpu-accurate-int8", SHA)) <= 63


@pytest.mark.parametrize(
    ("revision", "state"),
    [
        pytest.param(None, "pending", id="not-created"),
        pytest.param({"status": {}}, "pending", id="no-conditions"),
        pytest.param(
            {"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}},
            "pending",
            id="unknown",
        ),
        pytest.param(
            {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, "ready", id="ready"
        ),
        pytest.param(
            {
                "metadata": {"generation": 2},
                "status": {
                    "observedGeneration": 1,
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            },
            "pending",
            id="stale-status",
        ),
        pytest.param(
            {
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "False",
                            "reason": "ImagePullBackOff",
                            "message": "no such image",
                        }
                    ]
                }
            },
            "ImagePullBackOff: no such image",
            id="failed",
        ),
    ],
)
def test_revision_readiness(revision: dict[str, Any] | None, state: str) -> None:
    assert kube.readiness(revision) == state


def test_an_oci_uri_without_a_digest_is_refused(tmp_path: Path, receiver: Receiver) -> None:
    data = {**completion(), "model_uri": "oci://registry.local:5000/models/adapted:v1"}
    job = run_job(tmp_path, receiver, data=data)
    assert job.returncode == 2
    assert "digest" in job.stderr
    assert job.calls == []


def test_prometheus_down_until_the_deadline_is_rolled_back(
    tmp_path: Path, receiver: Receiver
) -> None:
    job = run_job(tmp_path, receiver, prometheus_url="http://127.0.0.1:9")
    data = the_answer(job, adapt_events.ROLLEDBACK)
    assert data["reason"].startswith("no figures from Prometheus")
    assert job.service["spec"]["traffic"][0]["revisionName"] == STABLE


def test_a_service_whose_traffic_the_manifests_leave_alone_is_pinned_from_its_status(
    tmp_path: Path, receiver: Receiver
) -> None:
    # The prod overlay removes spec.traffic: the live Service routes 100 % to the latest ready
    # revision, untagged, and the job pins that revision before creating the adapted one.
    service = live_service()
    del service["spec"]["traffic"]
    service["status"]["traffic"] = [
        {"revisionName": STABLE, "percent": 100, "latestRevision": True}
    ]
    job = run_job(tmp_path, receiver, case="healthy", service=service)
    the_answer(job, adapt_events.ROLLEDOUT)
    pin = job.patches()[0]
    assert pin == traffic(rollout.pin(rollout.ServiceState.from_json(service)))
    assert pin["spec"]["traffic"][0]["revisionName"] == STABLE
