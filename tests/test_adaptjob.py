"""The JobSink adapt job, run the way JobSink runs it: `python -m training.adaptjob` as a process,
the request event in a file at JOBSINK_EVENT_PATH, the labelled CSV on a data volume (a temporary
directory), the real default model as the base, and a local receiver standing in for the Broker.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from functions import batchjob
from functions.sentiment.model import Classifier
from shared import modeldir
from shared.eventid import derived_id
from tests.receiver import Receiver

pytest.importorskip("torch", reason="the training dependency group is not installed")

from training import adaptjob, labelled

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "/tests/labelling-page"
GOOD = ("works wonderfully", "helped me a lot", "is the best I have tried", "made me feel great")
BAD = ("made me sick", "did nothing at all", "gave me awful headaches", "was a waste of money")
THINGS = ("This tablet", "The cream", "My new inhaler", "The syrup", "This patch")


def labelled_rows(n: int, positive_share: float = 0.6, seed: int = 3) -> list[dict[str, str]]:
    """Short made-up reviews: the phrase decides the label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i < round(n * positive_share)
        phrase = rng.choice(GOOD if positive else BAD)
        text = f"{rng.choice(THINGS)} {phrase}, week {i}."
        label = "positive" if positive else "negative"
        sample = "random" if i % 3 == 0 else "uncertain"
        rows.append({"id": f"t{i}", "text": text, "label": label, "guess": label, "sample": sample})
    rng.shuffle(rows)
    return rows


def write_labels(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["id", "text", "label", "guess", "sample"])
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def write_event(path: Path, data: dict[str, Any], event_id: str = "adapt-7") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    event = {
        "specversion": "1.0", "id": event_id, "source": SOURCE,
        "type": adaptjob.REQUESTED, "datacontenttype": "application/json", "data": data,
    }  # fmt: skip
    path.write_text(json.dumps(event), encoding="utf-8")
    return event_id


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def env(tmp_path: Path, receiver: Receiver) -> dict[str, str]:
    return {
        "JOBSINK_EVENT_PATH": str(tmp_path / "jobsink-event" / "event"),
        "ADAPT_DATA_ROOT": str(tmp_path / "data"),
        "K_SINK": receiver.url,
        "ADAPT_THREADS": "2",
    }


def run_job(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.adaptjob"],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip


def events(receiver: Receiver) -> list[tuple[dict[str, str], dict[str, Any]]]:
    return [(r.headers, json.loads(r.body)) for r in receiver.requests]


@pytest.mark.integration
def test_an_adapt_job_writes_the_model_reports_and_resumes(
    env: dict[str, str], receiver: Receiver, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    write_labels(data / "in" / "labels.csv", labelled_rows(60))
    request = {"labels": "in/labels.csv", "base_variant": "cpu-int8", "output": "models/a-1"}
    event_id = write_event(Path(env["JOBSINK_EVENT_PATH"]), request)
    # What a pod killed mid-run leaves behind: a staging directory and a sibling, no output.
    staging = data / "models" / ".a-1.adapt-staging"
    staging.mkdir(parents=True)
    (staging / "junk").write_text("x")
    (data / "models" / "a-1-fp32").mkdir()

    done = run_job(env)
    assert done.returncode == 0, done.stderr[-3000:]
    [(headers, body)] = events(receiver)
    assert headers["ce-type"] == adaptjob.COMPLETED
    assert headers["ce-id"] == derived_id(SOURCE, event_id, adaptjob.COMPLETED)
    assert headers["ce-subject"] == headers["ce-requestid"] == event_id
    assert body["status"] == "succeeded"
    assert body["request"] == {"source": SOURCE, "id": event_id}
    assert body["model_dir"] == "models/a-1"
    out = data / "models" / "a-1"
    assert body["model_uri"] == out.resolve().as_uri()
    manifest = modeldir.load(out)
    assert manifest.precision == "int8"
    assert body["model"] == {
        "name": "a-1", "version": manifest.version, "sha256": manifest.files["model.onnx"],
    }  # fmt: skip
    held = body["held_out"]
    assert held["n"] == 18  # a seeded 30 %: only 20 rows were sampled at random (< 40)
    assert held["labels"] == ["negative", "positive"]
    assert body["train_rows"] == 42
    for model in ("base", "adapted", "majority"):
        assert set(held[model]) >= {"accuracy", "balanced_accuracy", "macro_f1"}
    assert held["majority"]["label"] == "positive"
    assert held["majority"]["balanced_accuracy"] == 0.5
    assert held["adapted"]["balanced_accuracy"] >= 0.9  # the phrases are easy
    assert body["gate"]["passed"] is True
    assert abs(body["gate"]["fp32_accuracy"] - body["gate"]["int8_accuracy"]) <= 0.01
    assert (out.with_name("a-1-fp32") / "manifest.json").is_file()
    assert (out.with_name("a-1-checkpoint") / "trained.safetensors").is_file()
    assert not staging.exists()
    (p,) = Classifier.load(out, intra_op_threads=1).predict(["This syrup made me sick."])
    assert p.label == "negative"

    # The Job is retried (the event was lost, say): the finished output is found and verified,
    # nothing is trained again, and the same event (same id) is sent again.
    onnx = out / "model.onnx"
    before = onnx.stat().st_mtime_ns
    again = run_job(env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "not training again" in again.stderr
    assert onnx.stat().st_mtime_ns == before
    (_, first), (headers2, second) = events(receiver)
    assert headers2["ce-id"] == headers["ce-id"]
    assert second == first


@pytest.mark.parametrize(
    ("rows", "reason", "message"),
    [
        pytest.param(labelled_rows(12), "too_few_labels", "at least 20", id="too-few"),
        pytest.param(labelled_rows(30, positive_share=1.0), "one_class", "one label", id="one"),
    ],
)
def test_labels_that_cannot_make_a_model_fail_the_job_at_once(
    env: dict[str, str],
    receiver: Receiver,
    tmp_path: Path,
    rows: list[dict[str, str]],
    reason: str,
    message: str,
) -> None:
    write_labels(tmp_path / "data" / "in" / "labels.csv", rows)
    request = {"labels": "in/labels.csv", "base_variant": "cpu-int8", "output": "models/a"}
    event_id = write_event(Path(env["JOBSINK_EVENT_PATH"]), request)
    done = run_job(env)
    assert done.returncode == 2, done.stderr[-3000:]  # permanent: podFailurePolicy fails the Job
    [(headers, body)] = events(receiver)
    assert headers["ce-type"] == adaptjob.FAILED
    assert headers["ce-id"] == derived_id(SOURCE, event_id, adaptjob.FAILED)
    assert headers["ce-requestid"] == event_id
    assert (body["status"], body["reason"]) == ("failed", reason)
    assert message in body["message"]
    assert not (tmp_path / "data" / "models").exists()


def test_a_path_outside_the_data_root_fails_the_job_with_a_clear_event(
    env: dict[str, str], receiver: Receiver, tmp_path: Path
) -> None:
    write_labels(tmp_path / "data" / "in" / "labels.csv", labelled_rows(30))
    request = {"labels": "../in/labels.csv", "base_variant": "cpu-int8", "output": "m"}
    event_id = write_event(Path(env["JOBSINK_EVENT_PATH"]), request)
    done = run_job(env)
    assert done.returncode == 2, done.stderr[-3000:]
    [(headers, body)] = events(receiver)
    assert headers["ce-id"] == derived_id(SOURCE, event_id, adaptjob.FAILED)
    assert (body["reason"], body["request"]["id"]) == ("bad_request", event_id)
    assert "'..'" in body["message"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"labels": "/etc/hostname"}, "outside", id="absolute"),
        pytest.param({"output": "s3://bucket/m"}, "not supported", id="object-store"),
        pytest.param({"labels": "in/missing.csv"}, "does not exist", id="missing"),
        pytest.param({"base_variant": "gpu-fp16"}, "cannot be adapted", id="variant"),
        pytest.param({"min_labels": 1}, "min_labels", id="min-labels"),
        pytest.param({"holdout": 0.9}, "holdout", id="holdout"),
        pytest.param({"seed": 1.5}, "whole number", id="seed"),
        pytest.param({"labels": ""}, "non-empty", id="empty"),
        pytest.param({"extra": 1}, "unknown", id="extra"),
    ],
)
def test_a_bad_request_is_refused_with_a_sentence(
    tmp_path: Path, data: dict[str, Any], message: str
) -> None:
    write_labels(tmp_path / "data" / "in" / "labels.csv", labelled_rows(30))
    request = {"labels": "in/labels.csv", "base_variant": "cpu-int8", "output": "m", **data}
    path = tmp_path / "event"
    write_event(path, request)
    settings = adaptjob.AdaptSettings(event_path=path, data_root=tmp_path / "data")
    with pytest.raises(adaptjob.Failure, match=message) as failure:
        adaptjob.adapt_to(adaptjob.parse_request(batchjob.read_event(path)), settings)
    assert failure.value.reason == "bad_request"
    assert failure.value.code == 2


def test_an_output_of_another_request_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"not ours")
    request = adaptjob.AdaptRequest(SOURCE, "e1", "in/l.csv", "cpu-int8", "m")
    with pytest.raises(adaptjob.Failure, match="exists and is not a model"):
        adaptjob.completed_record(out, request)
    foreign = modeldir.Manifest(
        name="x", version="1", labels=("a", "b"), max_tokens=8, precision="int8"
    )
    modeldir.write_manifest(out, foreign)
    with pytest.raises(adaptjob.Failure, match="holds another model"):
        adaptjob.completed_record(out, request)
    assert (out / "model.onnx").read_bytes() == b"not ours"


def test_the_random_sample_is_the_held_out_share_when_large_enough() -> None:
    rows = [
        labelled.Row(f"text {i}", "positive" if i % 3 else "negative", sample)
        for i, sample in enumerate(["random"] * 45 + ["uncertain"] * 55)
    ]
    train, held, how = adaptjob.held_out_split(rows, 0.3, seed=1)
    assert all(r.sample == "random" for r in held)
    assert len(held) == 40  # at least 40, at most the asked share (30 of 100 < 40)
    assert "random" in how
    assert len(train) + len(held) == 100
    # Too few random rows: a seeded stratified share of all rows, the same for the same seed.
    few = [labelled.Row(r.text, r.label, "uncertain") for r in rows]
    _, held2, how2 = adaptjob.held_out_split(few, 0.3, seed=1)
    assert len(held2) == 30
    assert "stratified" in how2
    assert adaptjob.held_out_split(few, 0.3, seed=1)[1] == held2
