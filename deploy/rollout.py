"""Traffic changes for a Knative Service (pin, canary N %, promote, roll back) as a `kubectl patch`.

A Service's `spec.traffic` has two tagged targets (knative/base/service-*.yaml): `stable`, what
clients of the Service URL get, and `candidate`, the latest revision, always reachable at its
tag URL (`candidate-<service>.<namespace>.<domain>`). A release pins `stable` to the revision now
serving, applies the new template, shifts N % to the candidate, then promotes it or rolls back.
Each step is one JSON merge patch of `spec.traffic`; a merge patch replaces the whole list
(RFC 7386), so the result never depends on what the list held before.

    python -m deploy.rollout pin SERVICE [-n NAMESPACE]
    python -m deploy.rollout canary SERVICE --percent 10 [--stable REVISION]
    python -m deploy.rollout promote SERVICE [--candidate REVISION]
    python -m deploy.rollout rollback SERVICE [--stable REVISION]

Revisions not given on the command line are read from the live Service (`kubectl get ksvc -o
json`) or from a saved copy of it (`--state FILE`). `--dry-run` prints the command instead of
running it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STABLE = "stable"
CANDIDATE = "candidate"


class RolloutError(Exception):
    """The requested traffic change cannot be made from the Service's current state."""


@dataclass(frozen=True)
class Target:
    """One entry of `spec.traffic`: a tag, a share, and a revision (None = the latest ready)."""

    tag: str
    percent: int
    revision: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as Knative's TrafficTarget object."""
        entry: dict[str, Any] = {"tag": self.tag}
        if self.revision is None:
            entry["latestRevision"] = True
        else:
            entry["latestRevision"] = False
            entry["revisionName"] = self.revision
        entry["percent"] = self.percent
        return entry


@dataclass(frozen=True)
class ServiceState:
    """What the rollout needs to know about a live Service."""

    name: str
    namespace: str
    pinned_stable: str | None
    serving_stable: str | None
    latest_created: str | None
    latest_ready: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServiceState:
        """Read the state from a Service object as `kubectl get ksvc NAME -o json` prints it."""
        meta = data.get("metadata") or {}
        spec_traffic = (data.get("spec") or {}).get("traffic") or []
        status = data.get("status") or {}
        pinned = next((t.get("revisionName") for t in spec_traffic if t.get("tag") == STABLE), None)
        serving = next(
            (t.get("revisionName") for t in status.get("traffic") or [] if t.get("tag") == STABLE),
            None,
        )
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "default")),
            pinned_stable=pinned,
            serving_stable=serving,
            latest_created=status.get("latestCreatedRevisionName"),
            latest_ready=status.get("latestReadyRevisionName"),
        )


def _split(stable: str, candidate: str | None, percent: int) -> list[Target]:
    return [Target(STABLE, 100 - percent, stable), Target(CANDIDATE, percent, candidate)]


def pin(state: ServiceState) -> list[Target]:
    """Stable := the revision serving now (100 %); candidate := latest (0 %). Run before apply."""
    revision = state.pinned_stable or state.serving_stable or state.latest_ready
    if not revision:
        raise RolloutError(f"{state.name} has no ready revision to pin")
    return _split(revision, None, 0)


def canary(stable: str, percent: int, candidate: str | None = None) -> list[Target]:
    """Send `percent` % to the candidate (tag candidate), the rest to `stable`. The candidate is
    the latest ready revision unless named (the adapt rollout names the revision it watches)."""
    if not 0 <= percent <= 100:
        raise RolloutError(f"percent must be between 0 and 100, got {percent}")
    return _split(stable, candidate, percent)


def promote(candidate: str) -> list[Target]:
    """Make `candidate` the stable revision with 100 %, pinned so a later apply cannot move it."""
    return _split(candidate, None, 0)


def rollback(stable: str) -> list[Target]:
    """All traffic back to `stable`; the candidate keeps only its tag URL."""
    return _split(stable, None, 0)


def patch_body(targets: Sequence[Target]) -> dict[str, Any]:
    """The JSON merge patch that sets `spec.traffic` to `targets`."""
    total = sum(t.percent for t in targets)
    if total != 100:
        raise RolloutError(f"traffic percentages add up to {total}, not 100")
    return {"spec": {"traffic": [t.to_json() for t in targets]}}


def kubectl_patch(
    service: str, namespace: str, targets: Sequence[Target], kubectl: str = "kubectl"
) -> list[str]:
    """The `kubectl patch` argv that applies `targets` to the Service."""
    body = json.dumps(patch_body(targets), separators=(",", ":"))
    return [kubectl, "patch", "ksvc", service, "-n", namespace, "--type", "merge", "-p", body]


def plan(args: argparse.Namespace, state: ServiceState | None) -> list[Target]:
    """The traffic for the requested action, from explicit revisions or the Service's state."""
    if args.action == "pin":
        if state is None:
            raise RolloutError("pin needs the Service's state (live or --state)")
        return pin(state)
    if args.action == "promote":
        candidate = args.candidate or _ready_latest(state)
        return promote(candidate)
    stable = args.stable or (state.pinned_stable if state else None)
    if not stable:
        raise RolloutError(
            "the stable target follows the latest revision: run `pin` before applying a new "
            "revision, or pass --stable REVISION"
        )
    if args.action == "canary":
        if state is not None and not args.stable:
            _ready_latest(state)
        return canary(stable, args.percent)
    return rollback(stable)


def _ready_latest(state: ServiceState | None) -> str:
    if state is None or not state.latest_ready:
        raise RolloutError("no ready latest revision known: pass --candidate REVISION")
    if state.latest_created and state.latest_created != state.latest_ready:
        raise RolloutError(
            f"latest revision {state.latest_created} is not ready "
            f"(latest ready is {state.latest_ready}): fix it or roll back"
        )
    return state.latest_ready


def _needs_state(args: argparse.Namespace) -> bool:
    if args.action == "pin":
        return True
    if args.action == "promote":
        return not args.candidate
    return not args.stable


def load_state(
    args: argparse.Namespace, run: Callable[..., subprocess.CompletedProcess[str]]
) -> ServiceState | None:
    """The Service's state from --state FILE, the live cluster, or None when not needed."""
    if args.state:
        return ServiceState.from_json(json.loads(Path(args.state).read_text(encoding="utf-8")))
    if not _needs_state(args):
        return None
    argv = [args.kubectl, "get", "ksvc", args.service, "-n", args.namespace, "-o", "json"]
    try:
        done = run(argv, capture_output=True, text=True, check=False)
    except OSError as e:
        raise RolloutError(f"cannot run {args.kubectl}: {e}") from e
    if done.returncode != 0:
        raise RolloutError(f"{shlex.join(argv)} failed: {done.stderr.strip()}")
    return ServiceState.from_json(json.loads(done.stdout))


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m deploy.rollout", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["pin", "canary", "promote", "rollback"])
    p.add_argument("service", help="Knative Service name, e.g. sentiment-cpu-int8")
    p.add_argument("-n", "--namespace", default="kubesentiment")
    p.add_argument("--percent", type=int, default=10, help="canary: share for the candidate")
    p.add_argument("--stable", help="revision that keeps (or gets back) the traffic")
    p.add_argument("--candidate", help="promote: revision to promote (default: latest ready)")
    p.add_argument("--state", help="JSON of the Service (kubectl get ksvc -o json) to read")
    p.add_argument("--kubectl", default="kubectl")
    p.add_argument("--dry-run", action="store_true", help="print the kubectl patch, run nothing")
    return p


def main(
    argv: Sequence[str] | None = None,
    *,
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
) -> int:
    """Compute the traffic change, then print it (--dry-run) or apply it with kubectl patch."""
    args = parser().parse_args(argv)
    try:
        targets = plan(args, load_state(args, run))
        command = kubectl_patch(args.service, args.namespace, targets, args.kubectl)
    except RolloutError as e:
        print(f"rollout: {e}", file=sys.stderr)
        return 2
    print(shlex.join(command))
    if args.dry_run:
        return 0
    return run(command, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
