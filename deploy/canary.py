"""Whether an adapted model goes live: its held-out figures first, then its canary's live series.

Pure functions over data, so they are tested against recorded answers:

1. `judge_completion` reads the `dev.kubesentiment.adapt.completed` data. The adapted model is
   canaried only when its held-out balanced accuracy beats the base model's on the same rows by
   `Policy.margin` and its accuracy is not below always answering the majority label; otherwise
   it is rejected and no revision is created.
2. `Live.from_answers` sums Prometheus `query_range` answers (the `queries` below, one point per
   step since the canary began) for the candidate revision: requests, 5xx responses and the
   latency histogram's buckets.
3. `decide` compares them with the SLO and answers promote, rollback or wait:
   - at least `min_requests` served: roll back when the 5xx ratio or the p99 latency breaks the
     SLO, else promote once the canary has been observed for `observe_s`;
   - fewer: roll back at once when the sample already holds more 5xx (or slow requests) than the
     SLO allows in `min_requests`, since the verdict at `min_requests` could only be a breach;
     otherwise wait, until `deadline_s`;
   - at the deadline with fewer than `min_requests` (too little traffic to judge by ratios):
     promote when the candidate served at least one request and the sample stays within that
     allowance, roll back when it served none (no evidence that the revision serves at all).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# The SLO, declared once for the rollout: the numbers of observability/prometheus (availability:
# 99.5 % of inference requests without a 5xx; latency: 99 % within 0.5 s), which a test checks.
SLO_ERROR_RATIO = 0.005
SLO_LATENCY_S = 0.5
SLO_LATENCY_QUANTILE = 0.99
# Inference routes only, as in the recording rules: health checks and scrapes are not traffic.
INFERENCE_ROUTES = 'route!~".*/health/.*|.*/ready|/metrics"'
REQUESTS_METRIC = "kubesentiment_http_requests_total"
LATENCY_METRIC = "kubesentiment_http_request_duration_seconds_bucket"

CANARY, PROMOTE, ROLLBACK, WAIT, REJECT = "canary", "promote", "rollback", "wait", "reject"


class InvalidCompletion(ValueError):
    """The completion event's data lacks the figures the decision needs."""


@dataclass(frozen=True)
class Policy:
    """The thresholds of a rollout; the defaults are the SLO's."""

    margin: float = 0.02  # balanced accuracy, as a fraction: 0.02 = 2 points
    min_requests: int = 200
    max_error_ratio: float = SLO_ERROR_RATIO
    max_p99_s: float = SLO_LATENCY_S
    observe_s: float = 600.0
    deadline_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.min_requests < 1:
            raise ValueError("min_requests must be at least 1")
        if not 0 <= self.max_error_ratio < 1:
            raise ValueError("max_error_ratio must be in [0, 1)")
        if self.max_p99_s <= 0:
            raise ValueError("max_p99_s must be positive")
        if not 0 <= self.observe_s <= self.deadline_s:
            raise ValueError("observe_s must lie between 0 and deadline_s")


@dataclass(frozen=True)
class Decision:
    """What to do now, and why in one sentence."""

    action: str
    reason: str


def _figure(data: Mapping[str, Any], *path: str) -> float:
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            raise InvalidCompletion(f"the completion data lacks {'.'.join(path)}")
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, int | float) or not math.isfinite(node):
        raise InvalidCompletion(f"{'.'.join(path)} must be a number, got {node!r}")
    return float(node)


def judge_completion(data: Mapping[str, Any], policy: Policy) -> Decision:
    """CANARY when the held-out figures earn the adapted model a canary, else REJECT."""
    if data.get("status") != "succeeded":
        raise InvalidCompletion(f"status is {data.get('status')!r}, not 'succeeded'")
    base = _figure(data, "held_out", "base", "balanced_accuracy")
    adapted = _figure(data, "held_out", "adapted", "balanced_accuracy")
    accuracy = _figure(data, "held_out", "adapted", "accuracy")
    majority = _figure(data, "held_out", "majority", "accuracy")
    gain = adapted - base
    if (data.get("gate") or {}).get("passed") is False:
        return Decision(REJECT, "the adapted model failed its int8 quantization gate")
    # A rounding tolerance: 0.757 - 0.737 must pass a 0.02 margin.
    if gain < policy.margin - 1e-9:
        return Decision(
            REJECT,
            f"held-out balanced accuracy {adapted:.3f} vs base {base:.3f}: "
            f"{100 * gain:+.1f} points, below the {100 * policy.margin:.1f}-point margin",
        )
    if accuracy < majority:
        return Decision(
            REJECT,
            f"held-out accuracy {accuracy:.3f} is below always answering the majority label "
            f"({majority:.3f})",
        )
    return Decision(
        CANARY,
        f"held-out balanced accuracy {adapted:.3f} vs base {base:.3f} "
        f"({100 * gain:+.1f} points), accuracy {accuracy:.3f} vs majority {majority:.3f}",
    )


def queries(revision: str, step_s: float) -> dict[str, str]:
    """PromQL for the candidate's requests by status class and its latency buckets, per step.

    Evaluated by `query_range` with the same step, each point is the increase over the step
    before it, so the points of a range add up to the range's total (Prometheus 2.42 PromQL).
    The step must span at least two scrapes (the PodMonitors scrape every 15 s)."""
    selector = f'{{knative_revision="{revision}",{INFERENCE_ROUTES}}}'
    window = f"{step_s:.0f}s" if step_s == int(step_s) else f"{round(step_s * 1000)}ms"
    return {
        "requests": f"sum by (status_class) (increase({REQUESTS_METRIC}{selector}[{window}]))",
        "latency": f"sum by (le) (increase({LATENCY_METRIC}{selector}[{window}]))",
    }


def _series(answer: Mapping[str, Any]) -> Iterable[tuple[Mapping[str, str], float]]:
    """(labels, sum of the finite values) for every series of a query_range answer."""
    if answer.get("status") != "success":
        raise ValueError(f"Prometheus answered {answer.get('status')!r}: {answer.get('error')}")
    data = answer.get("data") or {}
    if data.get("resultType") != "matrix":
        raise ValueError(f"expected a matrix, got {data.get('resultType')!r}")
    for series in data.get("result") or []:
        values = (float(v) for _, v in series.get("values") or [])
        yield series.get("metric") or {}, sum(v for v in values if math.isfinite(v))


@dataclass(frozen=True)
class Live:
    """What the candidate served since the canary began."""

    requests: float
    errors: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ascending

    @classmethod
    def from_answers(cls, requests: Mapping[str, Any], latency: Mapping[str, Any]) -> Live:
        """Totals from the `query_range` answers of `queries`."""
        total = errors = 0.0
        for labels, value in _series(requests):
            total += value
            if labels.get("status_class") == "5xx":
                errors += value
        counts: dict[float, float] = {}
        for labels, value in _series(latency):
            le = float(labels.get("le", "nan"))
            if not math.isnan(le):
                counts[le] = counts.get(le, 0.0) + value
        # increase() extrapolates per series, so summed buckets can dip: keep them monotonic
        # as histogram_quantile does.
        running, buckets = 0.0, []
        for le in sorted(counts):
            running = max(running, counts[le])
            buckets.append((le, running))
        return cls(requests=total, errors=errors, buckets=tuple(buckets))

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests > 0 else 0.0

    @property
    def observed(self) -> float:
        """Requests in the latency histogram (its +Inf bucket)."""
        return self.buckets[-1][1] if self.buckets and math.isinf(self.buckets[-1][0]) else 0.0

    def quantile(self, q: float) -> float | None:
        """The q-quantile latency, interpolated like PromQL's histogram_quantile; None if empty."""
        total = self.observed
        if total <= 0 or len(self.buckets) < 2:
            return None
        rank = q * total
        start, below = 0.0, 0.0
        for le, count in self.buckets:
            if count >= rank:
                if math.isinf(le):
                    return start  # in the +Inf bucket: the highest finite bound
                if count == below:
                    return le
                return start + (le - start) * (rank - below) / (count - below)
            start, below = le, count
        return start

    def slower_than(self, seconds: float) -> float:
        """Requests that took longer than `seconds` (interpolated inside a bucket)."""
        start, below = 0.0, 0.0
        for le, count in self.buckets:
            if seconds <= le:
                if math.isinf(le):
                    return self.observed - below
                within = below + (count - below) * (seconds - start) / (le - start)
                return self.observed - within
            start, below = le, count
        return 0.0

    def summary(self) -> dict[str, float | None]:
        """The figures an event or a log line reports."""
        p99 = self.quantile(SLO_LATENCY_QUANTILE)
        return {
            "requests": round(self.requests, 1),
            "errors": round(self.errors, 1),
            "error_ratio": round(self.error_ratio, 5),
            "p99_seconds": None if p99 is None else round(p99, 4),
        }


def decide(live: Live, elapsed_s: float, policy: Policy) -> Decision:
    """PROMOTE, ROLLBACK or WAIT for a canary observed for `elapsed_s` (rules: module docstring)."""
    n = round(live.requests)
    if live.requests >= policy.min_requests:
        p99 = live.quantile(SLO_LATENCY_QUANTILE)
        if live.error_ratio > policy.max_error_ratio:
            return Decision(
                ROLLBACK,
                f"{100 * live.error_ratio:.2f} % of {n} requests failed with a 5xx "
                f"(SLO {100 * policy.max_error_ratio:.2f} %)",
            )
        if p99 is not None and p99 > policy.max_p99_s:
            return Decision(
                ROLLBACK, f"p99 latency {p99:.3f} s over {n} requests (SLO {policy.max_p99_s} s)"
            )
        if p99 is not None and elapsed_s >= policy.observe_s:
            return Decision(
                PROMOTE,
                f"{n} requests, {100 * live.error_ratio:.2f} % 5xx, p99 {p99:.3f} s: "
                "inside the SLO",
            )
        if p99 is not None:
            return Decision(WAIT, f"inside the SLO so far; observing for {policy.observe_s:.0f} s")
    breach = _allowance_breach(live, policy)
    if breach:
        return Decision(ROLLBACK, breach)
    if elapsed_s < policy.deadline_s:
        return Decision(WAIT, f"{n} of the {policy.min_requests} requests needed to judge")
    if live.requests < 1:
        return Decision(ROLLBACK, f"no request reached the candidate in {policy.deadline_s:.0f} s")
    if live.observed < 1:
        return Decision(ROLLBACK, "the candidate's latency histogram has no series")
    return Decision(
        PROMOTE,
        f"deadline: {n} requests (fewer than {policy.min_requests}), "
        "within what the SLO allows for them",
    )


def _allowance_breach(live: Live, policy: Policy) -> str | None:
    """Why a sample below `min_requests` already breaks the SLO, or None."""
    allowed_errors = policy.max_error_ratio * policy.min_requests
    if live.errors > allowed_errors:
        return (
            f"{live.errors:.0f} 5xx responses before {policy.min_requests} requests "
            f"(the SLO allows {allowed_errors:.1f} in {policy.min_requests})"
        )
    allowed_slow = (1 - SLO_LATENCY_QUANTILE) * policy.min_requests
    slow = live.slower_than(policy.max_p99_s)
    if slow > allowed_slow:
        return (
            f"{slow:.0f} requests slower than {policy.max_p99_s} s before "
            f"{policy.min_requests} requests (the SLO allows {allowed_slow:.1f})"
        )
    return None
