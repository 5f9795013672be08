"""JobSink entry point: canary an adapted model as a new revision of its variant, then decide.

    python -m deploy.adapt_rollout [--percent 10] [--margin 0.02] [--min-requests 200]
        [--observe 600] [--deadline 3600] [--interval 30] [-n kubesentiment] [--dry-run]

The JobSink mounts a `dev.kubesentiment.adapt.completed` event at /etc/jobsink-event/event
(JOBSINK_EVENT_PATH). The job, for the Service `sentiment-<base_variant>`:

1. judges the held-out figures (deploy.canary): a rejected model gets no revision;
2. pins `stable` to the revision serving now (deploy.rollout.pin);
3. creates the revision `<service>-adapted-<first 10 hex of model.sha256>` whose only change is
   MODEL_URI = the event's model_uri (one merge patch of spec.template), and waits until it is
   Ready (a revision that fails, or is not Ready in --ready-timeout seconds, is rolled back);
4. gives it --percent % under the tag `candidate` (deploy.rollout.canary);
5. asks Prometheus (PROMETHEUS_URL) every --interval seconds for the candidate's requests, 5xx and
   latency since the canary began, until deploy.canary.decide promotes or rolls back;
6. promotes (deploy.rollout.promote) or rolls back (deploy.rollout.rollback), and sends
   dev.kubesentiment.adapt.rolledout, .rolledback or .rejected to K_SINK, with an id derived from
   the completion event (shared.eventid), so a redelivered completion gets the same answer id.

Exit status: 0 decided and reported; 1 a step a retry may fix (kubectl, the sink; the revision
name is deterministic, so a retried Job reuses the revision, and a retry after the decision
reports it again instead of redoing it); 2 an event no retry can fix. --dry-run runs the reads
and prints every change; it stops before waiting for the revision (none is created).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from deploy import adapt_events, canary, rollout
from deploy.adapt_events import (
    Completion,
    InvalidEvent,
    Outcome,
    answer,
    deliver,
    read_event,
)
from deploy.canary import Decision, InvalidCompletion, Live, Policy
from deploy.kube import Kubectl, KubectlError, readiness, revision_name, template_patch
from deploy.rollout import RolloutError, ServiceState

# Set on the Service with the rollback: a retried Job for the same completion reports it again.
ROLLED_BACK = "kubesentiment.dev/adapt-rolled-back"
log = logging.getLogger("kubesentiment.adapt_rollout")


@dataclass(frozen=True)
class Config:
    """The job's settings: flags, plus the environment read once in `main`."""

    policy: Policy
    percent: int
    interval_s: float
    step_s: float
    ready_timeout_s: float
    claim: str
    mount: str
    event_path: Path
    prometheus: str
    sink: str | None


Clock = Callable[[], float]
Sleep = Callable[[float], None]


def roll_out(
    done: Completion, config: Config, kube: Kubectl, clock: Clock, sleep: Sleep
) -> Outcome | None:
    """Steps 1-6 of the module docstring; None when a dry run stops before waiting."""
    verdict = canary.judge_completion(done.data, config.policy)
    log.info("held-out: %s: %s", verdict.action, verdict.reason)
    if verdict.action == canary.REJECT:
        return Outcome(verdict)
    revision = revision_name(done.service, done.sha256)
    live_service = kube.get("ksvc", done.service)
    if live_service is None:
        raise InvalidEvent(f"no Service {done.service} in namespace {kube.namespace}")
    state = ServiceState.from_json(live_service)
    annotations = (live_service.get("metadata") or {}).get("annotations") or {}
    if state.pinned_stable == revision:
        return Outcome(Decision(canary.PROMOTE, f"{revision} is already the stable revision"))
    if annotations.get(ROLLED_BACK) == done.id:
        return Outcome(Decision(canary.ROLLBACK, f"an earlier run rolled {revision} back"))
    stable = rollout.pin(state)[0].revision
    assert stable is not None
    kube.traffic(done.service, rollout.pin(state))
    marks = {"kubesentiment.dev/model-sha256": done.sha256, "kubesentiment.dev/adapt": done.id}
    body = template_patch(
        live_service, revision, str(done.data["model_uri"]), marks, config.claim, config.mount
    )
    kube.patch(done.service, body)
    if kube.dry_run:
        kube.traffic(done.service, rollout.canary(stable, config.percent, revision))
        return None
    failed = wait_ready(kube, revision, config, clock, sleep)
    if failed:
        return back_out(done, kube, stable, Outcome(Decision(canary.ROLLBACK, failed), revision))
    kube.traffic(done.service, rollout.canary(stable, config.percent, revision))
    log.info("%s: %d %% to %s, stable %s", done.service, config.percent, revision, stable)
    decision, live, seconds = observe(revision, config, clock, sleep)
    outcome = Outcome(decision, revision, stable, live, seconds)
    if decision.action == canary.PROMOTE:
        kube.traffic(done.service, rollout.promote(revision))
        return Outcome(decision, revision, revision, live, seconds)
    return back_out(done, kube, stable, outcome)


def back_out(done: Completion, kube: Kubectl, stable: str, outcome: Outcome) -> Outcome:
    """All traffic back to `stable`, marking the Service so a retry reports instead of redoing."""
    kube.traffic(done.service, rollout.rollback(stable), {ROLLED_BACK: done.id})
    return Outcome(outcome.decision, outcome.revision, stable, outcome.live, outcome.seconds)


def wait_ready(kube: Kubectl, revision: str, config: Config, clock: Clock, sleep: Sleep) -> str:
    """'' once the revision is Ready; else why it failed or timed out."""
    deadline = clock() + config.ready_timeout_s
    while True:
        state = readiness(kube.get("revision", revision))
        if state == "ready":
            return ""
        if state != "pending":
            return f"revision {revision} failed: {state}"
        if clock() >= deadline:
            return f"revision {revision} not Ready in {config.ready_timeout_s:.0f} s"
        sleep(min(config.interval_s, 5.0))


def observe(
    revision: str, config: Config, clock: Clock, sleep: Sleep
) -> tuple[Decision, Live | None, float]:
    """Poll Prometheus until the canary is promoted or rolled back."""
    began, live = clock(), None
    policy = config.policy
    while True:
        sleep(config.interval_s)
        now = clock()
        elapsed = now - began
        if elapsed < config.step_s:
            continue  # not one whole step yet: nothing to sum
        try:
            answers = {
                name: query_range(config.prometheus, query, began + config.step_s, now, config)
                for name, query in canary.queries(revision, config.step_s).items()
            }
            live = Live.from_answers(answers["requests"], answers["latency"])
        except (httpx.HTTPError, ValueError) as e:
            log.warning("no canary figures from Prometheus this time: %s", e)
            if elapsed >= policy.deadline_s:
                return Decision(canary.ROLLBACK, f"no figures from Prometheus: {e}"), live, elapsed
            continue
        decision = canary.decide(live, elapsed, policy)
        log.info(
            "canary %.0f s: %s %s: %s", elapsed, live.summary(), decision.action, decision.reason
        )
        if decision.action != canary.WAIT:
            return decision, live, elapsed


def query_range(url: str, query: str, start: float, end: float, config: Config) -> Any:
    """One Prometheus /api/v1/query_range answer (JSON), errors included."""
    params: dict[str, str | float] = {
        "query": query,
        "start": start,
        "end": max(end, start),
        "step": config.step_s,
    }
    response = httpx.get(f"{url.rstrip('/')}/api/v1/query_range", params=params, timeout=10.0)
    return response.json()


def parser() -> argparse.ArgumentParser:
    """The command-line interface; the policy's defaults are deploy.canary.Policy's."""
    d = Policy()
    p = argparse.ArgumentParser(prog="python -m deploy.adapt_rollout", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("-n", "--namespace", default="kubesentiment")
    p.add_argument("--percent", type=int, default=10, help="canary share for the candidate")
    p.add_argument("--margin", type=float, default=d.margin, help="balanced accuracy gain needed")
    p.add_argument("--min-requests", type=int, default=d.min_requests)
    p.add_argument("--max-error-ratio", type=float, default=d.max_error_ratio)
    p.add_argument("--max-p99", type=float, default=d.max_p99_s, help="seconds")
    p.add_argument("--observe", type=float, default=d.observe_s, help="seconds before promoting")
    p.add_argument("--deadline", type=float, default=d.deadline_s, help="seconds of canary")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between polls")
    p.add_argument("--step", type=float, default=60.0, help="query_range step, seconds (>= 30)")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds")
    p.add_argument("--model-claim", default="sentiment-batch-data", help="for file:// URIs")
    p.add_argument("--model-mount", default="/data", help="where file:// URIs are mounted")
    p.add_argument("--kubectl", default="kubectl")
    p.add_argument("--dry-run", action="store_true", help="print every change, make none")
    return p


def configure(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """The Config from parsed flags and the environment; ValueError for unusable values."""
    policy = Policy(
        margin=args.margin,
        min_requests=args.min_requests,
        max_error_ratio=args.max_error_ratio,
        max_p99_s=args.max_p99,
        observe_s=args.observe,
        deadline_s=args.deadline,
    )
    if not 0 < args.percent < 100:
        raise ValueError(f"--percent must be between 1 and 99, got {args.percent}")
    return Config(
        policy=policy,
        percent=args.percent,
        interval_s=args.interval,
        step_s=args.step,
        ready_timeout_s=args.ready_timeout,
        claim=args.model_claim,
        mount=args.model_mount,
        event_path=Path(environ.get("JOBSINK_EVENT_PATH") or adapt_events.EVENT_PATH),
        prometheus=environ.get("PROMETHEUS_URL")
        or "http://prometheus-operated.monitoring.svc:9090",
        sink=environ.get("K_SINK") or None,
    )


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] = os.environ,
    clock: Clock = time.time,
    sleep: Sleep = time.sleep,
) -> int:
    """Run the job once; the exit status (see the module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll otherwise
    args = parser().parse_args(argv)
    try:
        config = configure(args, environ)
        done = Completion.from_event(read_event(config.event_path))
        kube = Kubectl(args.namespace, args.kubectl, args.dry_run)
        outcome = roll_out(done, config, kube, clock, sleep)
    except (InvalidEvent, InvalidCompletion, ValueError) as e:
        print(f"adapt rollout: {e}: not retrying", file=sys.stderr)
        return 2
    except (KubectlError, RolloutError) as e:
        print(f"adapt rollout: {e}", file=sys.stderr)
        return 1
    if outcome is None:
        return 0
    event = answer(done, outcome, config.percent, config.policy.margin)
    log.info("%s %s: %s", event.get_type(), event.get_id(), outcome.decision.reason)
    return 0 if deliver(config.sink, event, sleep) else 1


if __name__ == "__main__":
    raise SystemExit(main())
