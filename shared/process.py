"""When this process started, for the cold-start metric (process start to ready)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def process_start_time(proc: Path = Path("/proc")) -> float:
    """Wall-clock start of this process from /proc, else the time of the first call."""
    try:
        stat = (proc / "self" / "stat").read_text()
        uptime = float((proc / "uptime").read_text().split()[0])
        # Field 22 (starttime, in clock ticks since boot) follows the ")" that ends the comm field.
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        ticks = os.sysconf("SC_CLK_TCK")
        return time.time() - (uptime - start_ticks / ticks)
    except (OSError, ValueError, IndexError):
        return time.time()
