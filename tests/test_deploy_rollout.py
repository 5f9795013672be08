"""The rollout command: traffic splits, their `kubectl patch`, and reading a Service's state."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deploy import rollout
from deploy.rollout import RolloutError, ServiceState, Target


def live_service(
    *,
    pinned: str | None = "sentiment-cpu-int8-00001",
    latest_created: str = "sentiment-cpu-int8-00002",
    latest_ready: str = "sentiment-cpu-int8-00002",
) -> dict[str, Any]:
    """A Service as `kubectl get ksvc -o json` shows it, mid-release."""
    stable: dict[str, Any] = {"tag": "stable", "percent": 100}
    if pinned:
        stable.update(revisionName=pinned, latestRevision=False)
    else:
        stable["latestRevision"] = True
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "sentiment-cpu-int8", "namespace": "kubesentiment"},
        "spec": {"traffic": [stable, {"tag": "candidate", "latestRevision": True, "percent": 0}]},
        "status": {
            "latestCreatedRevisionName": latest_created,
            "latestReadyRevisionName": latest_ready,
            "traffic": [
                {"tag": "stable", "revisionName": pinned or latest_ready, "percent": 100},
                {"tag": "candidate", "revisionName": latest_ready, "percent": 0},
            ],
        },
    }


def patch_of(argv: list[str]) -> dict[str, Any]:
    assert argv[:4] == ["kubectl", "patch", "ksvc", "sentiment-cpu-int8"]
    assert argv[4:8] == ["-n", "kubesentiment", "--type", "merge"]
    assert argv[8] == "-p"
    body: dict[str, Any] = json.loads(argv[9])
    return body


@pytest.mark.parametrize("percent", [0, 1, 10, 50, 99, 100])
def test_canary_splits_between_pinned_stable_and_latest(percent: int) -> None:
    targets = rollout.canary("rev-1", percent)
    assert targets == [
        Target("stable", 100 - percent, "rev-1"),
        Target("candidate", percent, None),
    ]
    assert sum(t.percent for t in targets) == 100


@pytest.mark.parametrize("percent", [-1, 101, 1000])
def test_canary_refuses_impossible_percentages(percent: int) -> None:
    with pytest.raises(RolloutError, match="between 0 and 100"):
        rollout.canary("rev-1", percent)


def test_promote_pins_the_candidate_as_stable_with_all_traffic() -> None:
    assert rollout.promote("rev-2") == [Target("stable", 100, "rev-2"), Target("candidate", 0)]


def test_rollback_gives_everything_back_to_stable() -> None:
    assert rollout.rollback("rev-1") == [Target("stable", 100, "rev-1"), Target("candidate", 0)]


def test_targets_render_as_knative_traffic_targets() -> None:
    body = rollout.patch_body(rollout.canary("rev-1", 10))
    assert body == {
        "spec": {
            "traffic": [
                {"tag": "stable", "latestRevision": False, "revisionName": "rev-1", "percent": 90},
                {"tag": "candidate", "latestRevision": True, "percent": 10},
            ]
        }
    }


def test_patch_body_refuses_splits_that_do_not_add_up() -> None:
    with pytest.raises(RolloutError, match="add up to 90"):
        rollout.patch_body([Target("stable", 80, "a"), Target("candidate", 10)])


def test_state_is_read_from_kubectl_json() -> None:
    state = ServiceState.from_json(live_service())
    assert state == ServiceState(
        name="sentiment-cpu-int8",
        namespace="kubesentiment",
        pinned_stable="sentiment-cpu-int8-00001",
        serving_stable="sentiment-cpu-int8-00001",
        latest_created="sentiment-cpu-int8-00002",
        latest_ready="sentiment-cpu-int8-00002",
    )


def test_pin_takes_the_revision_serving_now() -> None:
    state = ServiceState.from_json(live_service(pinned=None, latest_ready="rev-7"))
    assert rollout.pin(state) == [Target("stable", 100, "rev-7"), Target("candidate", 0)]


def test_dry_run_prints_the_kubectl_patch_and_runs_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_run(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise AssertionError("dry run must not run anything")

    code = rollout.main(
        ["canary", "sentiment-cpu-int8", "--percent", "25", "--stable", "rev-1", "--dry-run"],
        run=no_run,
    )
    assert code == 0
    printed = capsys.readouterr().out.strip()
    body = patch_of(shlex.split(printed))
    assert body["spec"]["traffic"][0] == {
        "tag": "stable",
        "latestRevision": False,
        "revisionName": "rev-1",
        "percent": 75,
    }
    assert body["spec"]["traffic"][1]["percent"] == 25


def test_without_dry_run_the_patch_is_run(capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        if argv[1] == "get":
            return subprocess.CompletedProcess(argv, 0, json.dumps(live_service()), "")
        return subprocess.CompletedProcess(argv, 0, "service patched", "")

    assert rollout.main(["promote", "sentiment-cpu-int8"], run=fake_run) == 0
    get, patch = calls
    assert get[:4] == ["kubectl", "get", "ksvc", "sentiment-cpu-int8"]
    body = patch_of(patch)
    assert body["spec"]["traffic"][0]["revisionName"] == "sentiment-cpu-int8-00002"
    assert body["spec"]["traffic"][0]["percent"] == 100


def test_state_file_replaces_the_live_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "ksvc.json"
    state.write_text(json.dumps(live_service()), encoding="utf-8")
    assert rollout.main(["rollback", "sentiment-cpu-int8", "--state", str(state), "--dry-run"]) == 0
    body = patch_of(shlex.split(capsys.readouterr().out.strip()))
    assert body["spec"]["traffic"][0]["revisionName"] == "sentiment-cpu-int8-00001"
    assert body["spec"]["traffic"][0]["percent"] == 100


def test_canary_needs_a_pinned_stable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "ksvc.json"
    state.write_text(json.dumps(live_service(pinned=None)), encoding="utf-8")
    code = rollout.main(["canary", "sentiment-cpu-int8", "--state", str(state), "--dry-run"])
    assert code == 2
    assert "run `pin`" in capsys.readouterr().err


def test_promote_refuses_a_latest_revision_that_is_not_ready(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "ksvc.json"
    broken = live_service(latest_created="rev-3", latest_ready="rev-2")
    state.write_text(json.dumps(broken), encoding="utf-8")
    assert rollout.main(["promote", "sentiment-cpu-int8", "--state", str(state), "--dry-run"]) == 2
    assert "rev-3 is not ready" in capsys.readouterr().err


def test_kubectl_failure_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    def failing(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "", "services.serving.knative.dev not found")

    assert rollout.main(["pin", "sentiment-cpu-int8", "--dry-run"], run=failing) == 2
    assert "not found" in capsys.readouterr().err


def test_module_runs_as_a_command() -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.rollout",
            "rollback",
            "sentiment-gpu-fp16",
            "--stable",
            "sentiment-gpu-fp16-00003",
            "--dry-run",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("kubectl patch ksvc sentiment-gpu-fp16 -n kubesentiment")
