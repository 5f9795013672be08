"""How many CPUs this container may use, from its cgroup quota.

ONNX Runtime's default intra-op thread count is the host's physical core count, not the
container's CPU limit (onnxruntime#29510): in a pod with a 2-CPU limit on a 64-core node that
oversubscribes the quota and the kernel throttles the pod, which wrecks tail latency. Knative sets
the limit through the pod's cgroup, so read it from there: cgroup v2 `cpu.max`, else cgroup v1
`cpu.cfs_quota_us` / `cpu.cfs_period_us`, else the CPUs this process may run on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return None


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota, or None when there is no quota."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota_v2, _, period = v2.partition(" ")
        if quota_v2 != "max" and period:
            return int(quota_v2) / int(period)
        return None
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        quota_text = _read(v1 / "cpu.cfs_quota_us")
        period_text = _read(v1 / "cpu.cfs_period_us")
        if quota_text is not None and period_text is not None:
            quota = int(quota_text)
            return quota / int(period_text) if quota > 0 else None
    return None


def available_cpus(root: Path = Path("/sys/fs/cgroup")) -> int:
    """Whole CPUs this process may use: the quota rounded up, capped by the affinity mask."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        affinity = os.cpu_count() or 1
    quota = cgroup_quota(root)
    if quota is None:
        return max(1, affinity)
    return max(1, min(affinity, math.ceil(quota)))
