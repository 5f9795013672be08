"""The JobSink batch job, run the way JobSink runs it.

The event JSON sits at the path JobSink mounts it (here in a temporary directory, through
JOBSINK_EVENT_PATH), the Job's command `python -m functions.batchjob` runs as a process against
a live function (uvicorn subprocess, real model), and the completion event goes to a local
receiver standing in for the Broker ingress.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from functions import batchjob
from tests.receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [
    "I love this, it works perfectly",
    "Terrible, it broke after a day",
    "The package arrived on Tuesday",
    "Absolutely wonderful experience",
    "Worst customer service ever",
    "",  # the function refuses an empty text: an error row, not a failure
    "Quite good value for the price",
]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def write_event(path: Path, data: dict[str, Any], *, type_: str = batchjob.REQUESTED) -> str:
    event_id = "batch-42"
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": "/tests/uploader",
        "type": type_,
        "datacontenttype": "application/json",
        "data": data,
    }
    path.write_text(json.dumps(event), encoding="utf-8")
    return event_id


def run_job(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "functions.batchjob"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def job_env(tmp_path: Path, receiver: Receiver) -> dict[str, str]:
    data = tmp_path / "data"
    (data / "in").mkdir(parents=True)
    rows = [{"id": f"r{i}", "text": t} for i, t in enumerate(TEXTS)]
    (data / "in" / "reviews.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    return {
        "JOBSINK_EVENT_PATH": str(tmp_path / "jobsink-event" / "event"),
        "BATCH_DATA_ROOT": str(data),
        "K_SINK": receiver.url,
        "BATCH_SIZE": "3",
        "BATCH_RETRIES": "1",
    }


def completed_events(receiver: Receiver) -> list[tuple[dict[str, str], dict[str, Any]]]:
    return [(r.headers, json.loads(r.body)) for r in receiver.requests]


def results(path: Path) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    by_id = {r["id"]: r for r in lines}
    assert len(by_id) == len(lines), "a row was written twice"
    return by_id


@pytest.mark.integration
def test_a_batch_job_classifies_the_input_and_reports_to_the_broker(
    live_server: Callable[..., Any], job_env: dict[str, str], receiver: Receiver, tmp_path: Path
) -> None:
    server = live_server()
    event_path = Path(job_env["JOBSINK_EVENT_PATH"])
    event_path.parent.mkdir()
    event_id = write_event(event_path, {"input": "in/reviews.jsonl", "output": "out/r.jsonl"})

    done = run_job({**job_env, "KUBESENTIMENT_URL": server.url})
    assert done.returncode == 0, done.stderr

    out = results(tmp_path / "data" / "out" / "r.jsonl")
    assert set(out) == {f"r{i}" for i in range(len(TEXTS))}
    assert out["r0"]["label"] == "positive"
    assert out["r1"]["label"] == "negative"
    assert out["r5"]["error"]["type"] == "invalid_input"
    [(headers, data)] = completed_events(receiver)
    assert headers["ce-type"] == batchjob.COMPLETED
    assert headers["ce-subject"] == event_id
    assert headers["ce-requestid"] == event_id
    assert data["status"] == "complete"
    assert data["output"] == "out/r.jsonl"
    assert (data["rows"], data["written"], data["item_errors"], data["failed"]) == (7, 7, 1, 0)

    # The Job retried after everything was written: nothing is redone, the event is sent again.
    again = run_job({**job_env, "KUBESENTIMENT_URL": server.url})
    assert again.returncode == 0, again.stderr
    _, data = completed_events(receiver)[-1]
    assert (data["skipped"], data["written"], data["status"]) == (7, 0, "complete")
    assert len(results(tmp_path / "data" / "out" / "r.jsonl")) == len(TEXTS)


@pytest.mark.integration
def test_a_retried_job_resumes_where_the_failed_pod_stopped(
    live_server: Callable[..., Any], job_env: dict[str, str], receiver: Receiver, tmp_path: Path
) -> None:
    event_path = Path(job_env["JOBSINK_EVENT_PATH"])
    event_path.parent.mkdir()
    write_event(event_path, {"input": "in/reviews.jsonl", "output": "out/r.jsonl"})
    # First pod: the function is unreachable, every batch fails after its retries -> exit 1
    # (Kubernetes retries the Job). A tiny retry budget keeps this quick.
    unreachable = "http://127.0.0.1:9"
    first = run_job({**job_env, "KUBESENTIMENT_URL": unreachable})
    assert first.returncode == 1, first.stderr
    _, data = completed_events(receiver)[0]
    assert data["status"] == "incomplete"
    assert data["failed"] == len(TEXTS)

    # Simulate a pod killed mid-write: two rows done and a cut-off third line.
    out = tmp_path / "data" / "out" / "r.jsonl"
    server = live_server()
    ok = run_job({**job_env, "KUBESENTIMENT_URL": server.url})
    assert ok.returncode == 0, ok.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10], encoding="utf-8")

    retried = run_job({**job_env, "KUBESENTIMENT_URL": server.url})
    assert retried.returncode == 0, retried.stderr
    _, data = completed_events(receiver)[-1]
    assert (data["skipped"], data["written"], data["status"]) == (2, 5, "complete")
    assert set(results(out)) == {f"r{i}" for i in range(len(TEXTS))}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"input": "../etc/passwd", "output": "o.jsonl"}, "'..'", id="traversal"),
        pytest.param({"input": "/etc/hostname", "output": "o.jsonl"}, "outside", id="absolute"),
        pytest.param(
            {"input": "s3://bucket/in.jsonl", "output": "o.jsonl"}, "object-store", id="s3"
        ),
        pytest.param({"output": "o.jsonl"}, "lacks 'input'", id="no-input"),
        pytest.param(
            {"input": "in/missing.jsonl", "output": "o.jsonl"}, "does not exist", id="gone"
        ),
        pytest.param({"input": "in/reviews.jsonl", "output": "o", "x": 1}, "unknown", id="extra"),
    ],
)
def test_a_request_that_cannot_succeed_fails_the_job_at_once(
    job_env: dict[str, str], receiver: Receiver, data: dict[str, Any], message: str
) -> None:
    event_path = Path(job_env["JOBSINK_EVENT_PATH"])
    event_path.parent.mkdir()
    write_event(event_path, data)
    done = run_job({**job_env, "KUBESENTIMENT_URL": "http://127.0.0.1:9"})
    assert done.returncode == 2, done.stderr  # podFailurePolicy: FailJob, no retries
    [(headers, body)] = completed_events(receiver)
    assert headers["ce-type"] == batchjob.COMPLETED
    assert body["status"] == "invalid"
    assert message in body["error"]


def test_an_event_of_another_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "event"
    write_event(path, {"input": "a", "output": "b"}, type_="dev.kubesentiment.other")
    with pytest.raises(batchjob.InvalidRequest, match="is not"):
        batchjob.parse_request(batchjob.read_event(path))


def test_locations_resolve_inside_the_volume(tmp_path: Path) -> None:
    assert batchjob.locate("in/a.jsonl", tmp_path) == tmp_path.resolve() / "in" / "a.jsonl"
    inside = str(tmp_path.resolve() / "b.jsonl")
    assert batchjob.locate(inside, tmp_path) == Path(inside)
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(batchjob.InvalidRequest, match="outside"):
        batchjob.locate("link/hostname", tmp_path)


def test_the_jobsink_runs_this_module_with_the_settings_it_reads() -> None:
    docs = yaml.safe_load_all((ROOT / "knative" / "base" / "batch.yaml").read_text("utf-8"))
    sink = next(d for d in docs if d and d["kind"] == "JobSink")
    [container] = sink["spec"]["job"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "functions.batchjob"]
    source = (ROOT / "functions" / "batchjob.py").read_text("utf-8")
    for env in container["env"]:
        assert f'"{env["name"]}"' in source, f"{env['name']} is not read by functions.batchjob"
    rule = sink["spec"]["job"]["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"] == {"containerName": "batch", "operator": "In", "values": [2]}
    assert batchjob.EVENT_PATH == "/etc/jobsink-event/event"
