"""The cold start by phase: where the seconds from process start to ready went.

Start-up is one critical path: the interpreter starts and imports the web stack (the entry point
loads the model on a thread meanwhile, `preload.py`), then the start steps run in order
(`lifecycle.startup`). `Phases` cuts that path into consecutive intervals, so the phases add up to
the cold start exactly:

- `imports`: process start until the start steps begin (interpreter, imports, the app built,
  the server listening);
- `model_pull`: the oci:// MODEL_URI step (with the entry point's preload thread, the wait for
  the pull and the load it runs right after: that thread does both);
- `model_load`: the wait for the model after that (the part of its load not hidden behind the
  imports; `kubesentiment_model_load_seconds` has the whole load);
- `warmup`: the warm-up inference;
- `secrets`: Vault login and secret reads, with their retries;
- `other`: every other start step (batcher, K_SINK and payload log senders).

Exported as `kubesentiment_cold_start_phase_seconds{phase, variant, revision}` beside
`kubesentiment_cold_start_seconds{variant, revision}`; `revision` is Knative's K_REVISION
("local" outside Knative).
"""

from __future__ import annotations

import time
from collections.abc import Callable

PHASES = ("imports", "model_pull", "model_load", "warmup", "secrets", "other")
LOCAL_REVISION = "local"


class Phases:
    """Consecutive intervals from `started_at` (wall clock): each `mark` closes one."""

    def __init__(self, started_at: float, clock: Callable[[], float] = time.time) -> None:
        self.started_at = started_at
        self.clock = clock
        self.last = started_at
        self.seconds: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        """The time since the previous mark (or process start) goes to `phase`."""
        if phase not in PHASES:
            raise ValueError(f"unknown cold-start phase {phase!r}")
        now = max(self.clock(), self.last)  # a wall clock stepped back adds nothing
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now

    @property
    def total(self) -> float:
        """Seconds from process start to the last mark: the sum of the phases."""
        return self.last - self.started_at


def revision(k_revision: str) -> str:
    """The `revision` label: Knative's K_REVISION, else "local"."""
    return k_revision or LOCAL_REVISION
