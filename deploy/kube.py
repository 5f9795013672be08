"""The Kubernetes side of an adapted model's rollout: one kubectl runner and the objects it patches.

Every kubectl call goes through `Kubectl`: reads (`get`) always run; changes (`patch`) are printed
instead of run when `dry_run` is set, like `python -m deploy.rollout --dry-run`. Patches are JSON
merge patches (RFC 7386), which replace lists whole: so a template change copies the live
Service's containers and volumes and changes only what it must.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from deploy.rollout import Target, kubectl_patch

Runner = Callable[..., subprocess.CompletedProcess[str]]
# Knative names a Service's revisions `<service>-<suffix>`; a name is a DNS label (63 characters).
NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
MODEL_VOLUME = "adapted-models"


class KubectlError(Exception):
    """A kubectl call failed (the API server, permissions, a conflict): a retry may succeed."""


@dataclass(frozen=True)
class Kubectl:
    """Runs kubectl in one namespace; with `dry_run`, prints every change instead."""

    namespace: str
    binary: str = "kubectl"
    dry_run: bool = False
    run: Runner = subprocess.run
    out: TextIO = field(default=sys.stdout)

    def _call(self, argv: Sequence[str]) -> str:
        try:
            done = self.run(list(argv), capture_output=True, text=True, check=False)
        except OSError as e:
            raise KubectlError(f"cannot run {self.binary}: {e}") from e
        if done.returncode != 0:
            raise KubectlError(f"{shlex.join(argv)} failed: {done.stderr.strip()}")
        return str(done.stdout)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object as JSON, or None when it does not exist (yet)."""
        argv = [self.binary, "get", kind, name, "-n", self.namespace, "-o", "json"]
        try:
            out = self._call(argv)
        except KubectlError as e:
            if "NotFound" in str(e) or "not found" in str(e):
                return None
            raise
        obj: dict[str, Any] = json.loads(out)
        return obj

    def patch(self, service: str, body: Mapping[str, Any]) -> None:
        """`kubectl patch ksvc SERVICE --type merge -p BODY`, or print it (dry run)."""
        text = json.dumps(body, separators=(",", ":"))
        argv = [self.binary, "patch", "ksvc", service, "-n", self.namespace]
        self._change([*argv, "--type", "merge", "-p", text])

    def traffic(
        self, service: str, targets: Sequence[Target], annotations: Mapping[str, str] | None = None
    ) -> None:
        """Set `spec.traffic` (deploy.rollout's patch), with Service annotations in the same
        patch when given."""
        argv = kubectl_patch(service, self.namespace, targets, self.binary)
        if annotations:
            body = json.loads(argv[-1])
            body["metadata"] = {"annotations": dict(annotations)}
            argv[-1] = json.dumps(body, separators=(",", ":"))
        self._change(argv)

    def _change(self, argv: Sequence[str]) -> None:
        if self.dry_run:
            print(shlex.join(argv), file=self.out, flush=True)
            return
        self._call(argv)


def revision_name(service: str, sha256: str) -> str:
    """The adapted revision's name: the same model on the same Service is the same revision."""
    digest = sha256.lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"model.sha256 must be 64 hex digits, got {sha256!r}")
    name = f"{service}-adapted-{digest[:10]}"
    if len(name) > 63 or not NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid revision name")
    return name


def template_patch(
    service: Mapping[str, Any],
    revision: str,
    model_uri: str,
    annotations: Mapping[str, str],
    claim: str,
    mount: str,
) -> dict[str, Any]:
    """The merge patch that makes `revision` the Service's template with MODEL_URI = model_uri.

    A `file://` URI names a directory on the adapt job's volume: the claim is mounted read-only
    at `mount` (Knative feature flag kubernetes.podspec-persistent-volume-claim)."""
    spec = copy.deepcopy(service["spec"]["template"]["spec"])
    containers = spec["containers"]
    env = [e for e in containers[0].get("env", []) if e.get("name") != "MODEL_URI"]
    containers[0]["env"] = [*env, {"name": "MODEL_URI", "value": model_uri}]
    patch_spec: dict[str, Any] = {"containers": containers}
    if model_uri.startswith("file://"):
        if not model_uri.startswith(f"file://{mount.rstrip('/')}/"):
            raise ValueError(f"{model_uri} is not on the model volume (mounted at {mount})")
        mounts = [m for m in containers[0].get("volumeMounts", []) if m["name"] != MODEL_VOLUME]
        containers[0]["volumeMounts"] = [
            *mounts,
            {"name": MODEL_VOLUME, "mountPath": mount, "readOnly": True},
        ]
        volumes = [v for v in spec.get("volumes", []) if v["name"] != MODEL_VOLUME]
        patch_spec["volumes"] = [
            *volumes,
            {"name": MODEL_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
        ]
    metadata = {"name": revision, "annotations": dict(annotations)}
    return {"spec": {"template": {"metadata": metadata, "spec": patch_spec}}}


def readiness(revision: Mapping[str, Any] | None) -> str:
    """`ready`, `pending` (not created or still starting), or why the revision failed."""
    if revision is None:
        return "pending"
    generation = (revision.get("metadata") or {}).get("generation")
    status = revision.get("status") or {}
    if generation is not None and status.get("observedGeneration") not in (None, generation):
        return "pending"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            if condition.get("status") == "True":
                return "ready"
            if condition.get("status") == "False":
                why = condition.get("reason") or "not ready"
                return f"{why}: {condition.get('message', '')}".rstrip(": ")
    return "pending"
