"""The benchmark's modes: a quiet machine, and one with a fixed background load (a neighbour).

A Knative pod shares its node's cores with other pods: their threads take CPU slices on the same
cores the pod's threads run on, at moments the pod does not choose, and a pod at its CPU limit is
throttled by the CFS quota for the rest of the period. The contended mode models the first, which
is the normal case (every pod has neighbours) and hits every system the same way: Debian's
`stress-ng` runs one CPU worker, not pinned to a core, busy for half of every 10 ms slice and
asleep for the other half, so it holds half of one of the two cores, wherever the scheduler puts
it, in slices as short as a neighbour's request. The same load runs under every system of the
mode (and under the in-process ceiling), started before and stopped after each of them, so no
system inherits another's.

`make tools` installs stress-ng; without it the contended mode is reported as not measured.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    """One measuring condition: its name, the background load's command and what it models."""

    name: str
    argv: tuple[str, ...]
    description: str

    def available(self) -> str | None:
        """None when the mode can run here, else why not."""
        if self.argv and shutil.which(self.argv[0]) is None:
            return f"`{self.argv[0]}` is not installed (`make tools` installs it)"
        return None


QUIET = Mode("quiet", (), "no background load (the harness and the load generator only)")
CONTENDED = Mode(
    "contended",
    ("stress-ng", "--cpu", "1", "--cpu-load", "50", "--cpu-load-slice", "10", "--timeout", "3600s",
     "--quiet"),
    "stress-ng --cpu 1 --cpu-load 50 --cpu-load-slice 10: one CPU worker, not pinned, busy 5 ms "
    "of every 10 ms, i.e. half of one core taken in short slices on whichever core the scheduler "
    "picks (a neighbour pod on the node), started before and stopped after each system",
)  # fmt: skip
MODES = {m.name: m for m in (QUIET, CONTENDED)}


@contextlib.contextmanager
def background(mode: Mode) -> Iterator[None]:
    """Run the mode's background load for the duration of the block (nothing for quiet)."""
    if not mode.argv:
        yield
        return
    load = subprocess.Popen(
        mode.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        time.sleep(0.3)  # the worker is forked and busy before anything is measured
        if load.poll() is not None:
            raise RuntimeError(f"{mode.argv[0]} exited with {load.returncode}")
        yield
    finally:
        if load.poll() is None:
            # stress-ng's workers are its children, in the session it leads: stop them all.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(load.pid, signal.SIGTERM)
            try:
                load.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(load.pid, signal.SIGKILL)
                load.wait(timeout=10)
