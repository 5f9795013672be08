"""The adapted model's rollout decision: held-out gate, then live series against the SLO.

The live cases are recorded `query_range` answers of a real Prometheus 2.42 (tests/canary_record.py
backfills each traffic profile and saves what Prometheus answers to `deploy.canary.queries`). A
canary is replayed as the rollout job sees it: one poll a minute, each over the points up to then.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import canary
from deploy.canary import (
    PROMOTE,
    REJECT,
    ROLLBACK,
    WAIT,
    InvalidCompletion,
    Live,
    Policy,
    decide,
    judge_completion,
)
from tests import canary_record

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "canary_fixtures"
RULES = ROOT / "observability" / "prometheus"


def completion(
    base: float = 0.739, adapted: float = 0.781, accuracy: float = 0.80
) -> dict[str, Any]:
    """The data of a dev.kubesentiment.adapt.completed event (contract C)."""
    return {
        "status": "succeeded",
        "request": {"source": "/labelling", "id": "adapt-1"},
        "base_variant": "cpu-int8",
        "model_dir": "models/adapted-1",
        "model_uri": "file:///data/models/adapted-1",
        "model": {"name": "minilm-sentiment-adapted", "version": "1", "sha256": "3f9c2a7be1" * 6},
        "held_out": {
            "n": 120,
            "labels": ["negative", "positive"],
            "base": {"accuracy": 0.68, "balanced_accuracy": base, "macro_f1": 0.67},
            "adapted": {"accuracy": accuracy, "balanced_accuracy": adapted, "macro_f1": 0.77},
            "majority": {
                "label": "positive",
                "accuracy": 0.707,
                "balanced_accuracy": 0.5,
                "macro_f1": 0.41,
            },
        },
        "gate": {"fp32_accuracy": 0.805, "int8_accuracy": 0.80, "passed": True},
        "train_rows": 280,
        "seconds": 61.2,
    }


# --- the held-out gate ------------------------------------------------------------------------


def test_a_model_that_beats_the_base_by_the_margin_gets_a_canary() -> None:
    decision = judge_completion(completion(), Policy())
    assert decision.action == canary.CANARY
    assert "+4.2 points" in decision.reason


@pytest.mark.parametrize(
    ("adapted", "margin", "action"),
    [
        pytest.param(0.750, 0.02, REJECT, id="margin-too-small"),
        pytest.param(0.759, 0.02, canary.CANARY, id="exactly-the-margin"),
        pytest.param(0.720, 0.02, REJECT, id="worse-than-base"),
        pytest.param(0.750, 0.01, canary.CANARY, id="smaller-margin-configured"),
        pytest.param(0.781, 0.05, REJECT, id="larger-margin-configured"),
    ],
)
def test_the_margin_is_on_balanced_accuracy(adapted: float, margin: float, action: str) -> None:
    decision = judge_completion(completion(adapted=adapted), Policy(margin=margin))
    assert decision.action == action, decision.reason


def test_margin_too_small_is_rejected_with_both_figures() -> None:
    decision = judge_completion(completion(adapted=0.750), Policy())
    assert decision == canary.Decision(
        REJECT,
        "held-out balanced accuracy 0.750 vs base 0.739: +1.1 points, below the 2.0-point margin",
    )


def test_accuracy_below_the_majority_baseline_is_rejected() -> None:
    # Balanced accuracy rose, but always answering "positive" would still be right more often.
    decision = judge_completion(completion(accuracy=0.70), Policy())
    assert decision.action == REJECT
    assert "majority" in decision.reason


def test_a_model_that_failed_its_quantization_gate_is_rejected() -> None:
    data = completion()
    data["gate"]["passed"] = False
    assert judge_completion(data, Policy()).action == REJECT


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        pytest.param(("status",), "failed", "status", id="not-succeeded"),
        pytest.param(("held_out", "base"), None, "held_out.base.balanced_accuracy", id="no-base"),
        pytest.param(("held_out", "adapted", "accuracy"), "0.8", "must be a number", id="string"),
        pytest.param(("held_out", "majority", "accuracy"), True, "must be a number", id="bool"),
    ],
)
def test_a_completion_without_the_figures_is_refused(
    path: tuple[str, ...], value: Any, message: str
) -> None:
    data = completion()
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    with pytest.raises(InvalidCompletion, match=re.escape(message)):
        judge_completion(data, Policy())


def test_a_policy_that_cannot_decide_is_refused() -> None:
    with pytest.raises(ValueError, match="observe_s"):
        Policy(observe_s=7200, deadline_s=3600)
    with pytest.raises(ValueError, match="min_requests"):
        Policy(min_requests=0)


# --- the SLO is the one the alerts use --------------------------------------------------------


def test_the_slo_numbers_are_the_prometheus_rules() -> None:
    recording = yaml.safe_load((RULES / "kubesentiment-recording.yml").read_text())
    exprs = {r["record"]: r["expr"] for g in recording["groups"] for r in g["rules"]}
    slow = exprs["variant:kubesentiment_http_slow_requests:ratio_rate5m"]
    assert f'le="{canary.SLO_LATENCY_S}"' in slow
    alerts = (RULES / "kubesentiment-alerts.yml").read_text()
    assert f"(14.4 * {canary.SLO_ERROR_RATIO})" in alerts
    assert f"(14.4 * {round(1 - canary.SLO_LATENCY_QUANTILE, 6)})" in alerts
    assert Policy().max_error_ratio == canary.SLO_ERROR_RATIO
    assert Policy().max_p99_s == canary.SLO_LATENCY_S
    assert canary.INFERENCE_ROUTES in slow


def test_the_queries_name_the_functions_metrics_and_the_candidate_only() -> None:
    from prometheus_client import CollectorRegistry

    from shared.metrics import Metrics

    registry = CollectorRegistry()
    Metrics.create(registry)
    families = {m.name: m.type for m in registry.collect()}
    assert families[canary.REQUESTS_METRIC.removesuffix("_total")] == "counter"
    assert families[canary.LATENCY_METRIC.removesuffix("_bucket")] == "histogram"
    for query in canary.queries("rev-9", 60).values():
        assert 'knative_revision="rev-9"' in query
        assert "[60s]" in query


# --- live series ------------------------------------------------------------------------------


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def until(answer: dict[str, Any], end: float) -> dict[str, Any]:
    """The answer a query_range ending at `end` would have given."""
    cut = copy.deepcopy(answer)
    for series in cut["data"]["result"]:
        series["values"] = [v for v in series["values"] if v[0] <= end]
    return cut


def replay(name: str, policy: Policy, poll_s: int = 60) -> list[tuple[int, canary.Decision]]:
    """(elapsed seconds, decision) for each poll of a recorded canary, until one is not WAIT."""
    recorded = fixture(name)
    decisions = []
    elapsed = 0
    while True:
        elapsed += poll_s
        end = recorded["start"] + elapsed
        live = Live.from_answers(until(recorded["requests"], end), until(recorded["latency"], end))
        decision = decide(live, elapsed, policy)
        decisions.append((elapsed, decision))
        if decision.action != WAIT:
            return decisions
        assert elapsed < 2 * policy.deadline_s, "no decision after the deadline"


def test_healthy_canary_is_promoted_after_the_observation_window() -> None:
    decisions = replay("healthy", Policy())
    elapsed, last = decisions[-1]
    assert last.action == PROMOTE, last
    assert elapsed == 600  # enough requests long before; promoted once observed 10 minutes
    assert "inside the SLO" in last.reason


def test_error_burst_is_rolled_back_during_the_burst() -> None:
    elapsed, last = replay("error_burst", Policy())[-1]
    assert last.action == ROLLBACK, last
    assert 6 * 60 < elapsed <= 9 * 60  # the burst runs from minute 6 to minute 9
    assert "5xx" in last.reason


def test_p99_over_the_slo_is_rolled_back() -> None:
    _, last = replay("slow", Policy())[-1]
    assert last.action == ROLLBACK, last
    assert "slower than 0.5 s" in last.reason or "p99 latency" in last.reason
    recorded = fixture("slow")
    live = Live.from_answers(recorded["requests"], recorded["latency"])
    p99 = live.quantile(0.99)
    assert p99 is not None
    assert 0.5 < p99 < 1.0
    assert decide(live, 3600, Policy()).action == ROLLBACK


def test_too_little_traffic_waits_then_is_promoted_at_the_deadline() -> None:
    decisions = replay("low_traffic", Policy())
    elapsed, last = decisions[-1]
    assert [d.action for _, d in decisions[:-1]] == [WAIT] * (len(decisions) - 1)
    assert elapsed == 3600
    assert last.action == PROMOTE
    assert last.reason.startswith("deadline:")


def test_too_little_traffic_with_errors_is_rolled_back_before_the_deadline() -> None:
    elapsed, last = replay("low_traffic_errors", Policy())[-1]
    assert last.action == ROLLBACK
    assert elapsed < 3600
    assert "before 200 requests" in last.reason


def test_no_traffic_at_all_is_rolled_back_at_the_deadline() -> None:
    elapsed, last = replay("no_traffic", Policy())[-1]
    assert (elapsed, last.action) == (3600, ROLLBACK)
    assert "no request reached" in last.reason


def test_the_stable_revisions_series_and_health_checks_are_not_counted() -> None:
    # The recordings hold a stable revision failing every request and health-check traffic; the
    # queries select the candidate's inference routes only, so the healthy canary has no 5xx.
    recorded = fixture("healthy")
    assert (
        'knative_revision="' + recorded["revision"] + '"'
        in canary.queries(recorded["revision"], 60)["requests"]
    )
    statuses = {s["metric"]["status_class"] for s in recorded["requests"]["data"]["result"]}
    assert statuses <= {"2xx", "4xx", "5xx"}
    live = Live.from_answers(recorded["requests"], recorded["latency"])
    assert live.error_ratio < canary.SLO_ERROR_RATIO
    assert abs(live.requests - live.observed) / live.requests < 0.01


def matrix(series: dict[str, list[float]], label: str) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {"metric": {label: k}, "values": [[60 * (i + 1), str(v)] for i, v in enumerate(vs)]}
                for k, vs in series.items()
            ],
        },
    }


def test_quantile_interpolates_like_histogram_quantile() -> None:
    # 100 requests: 50 <= 0.1 s, 99 <= 0.5 s, 100 <= 1 s. p50 = 0.1, p99 = 0.5, and p99.5
    # halfway into (0.5, 1].
    latency = matrix({"0.1": [50], "0.5": [99], "1.0": [100], "+Inf": [100]}, "le")
    live = Live.from_answers(matrix({"2xx": [100]}, "status_class"), latency)
    assert live.quantile(0.5) == pytest.approx(0.1)
    assert live.quantile(0.99) == pytest.approx(0.5)
    assert live.quantile(0.995) == pytest.approx(0.75)
    assert live.slower_than(0.5) == pytest.approx(1)
    assert live.slower_than(0.75) == pytest.approx(0.5)
    # Everything in the +Inf bucket: the highest finite bound, as PromQL answers.
    assert Live.from_answers(
        matrix({}, "status_class"), matrix({"1.0": [0], "+Inf": [5]}, "le")
    ).quantile(0.99) == pytest.approx(1.0)


def test_summed_buckets_that_dip_are_made_monotonic() -> None:
    latency = matrix({"0.1": [60], "0.5": [59.5], "+Inf": [60]}, "le")
    live = Live.from_answers(matrix({"2xx": [60]}, "status_class"), latency)
    assert [count for _, count in live.buckets] == [60, 60, 60]


def test_a_failed_query_is_an_error_not_an_empty_canary() -> None:
    with pytest.raises(ValueError, match="bad_data"):
        Live.from_answers({"status": "error", "error": "bad_data"}, matrix({}, "le"))


# --- the fixtures are what Prometheus answers -------------------------------------------------


@pytest.mark.integration
def test_the_fixtures_are_a_real_prometheus_answer() -> None:
    if not (shutil.which("promtool") and shutil.which("prometheus")):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("prometheus is missing in CI: .ci/run must install the prometheus package")
        pytest.skip("promtool and prometheus not installed (apt-get install prometheus)")
    from loadtests.local import free_port

    case = next(c for c in canary_record.CASES if c.name == "error_burst")
    with tempfile.TemporaryDirectory() as tmp:
        answers = canary_record.record(case, Path(tmp), free_port())
    assert answers == fixture("error_burst")


def test_requests_without_a_latency_series_are_not_promoted_at_the_deadline() -> None:
    live = Live.from_answers(matrix({"2xx": [30]}, "status_class"), matrix({}, "le"))
    assert decide(live, 60, Policy()).action == WAIT
    last = decide(live, 3600, Policy())
    assert last == canary.Decision(ROLLBACK, "the candidate's latency histogram has no series")
