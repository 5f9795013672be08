"""A server's whole process tree: spawn, CPU seconds, RSS, stop.

Every server is started in a new session (`start_new_session`). Its processes are the session's
members (Ray's actors change their process group but stay in the session) plus every descendant
by parent pid (BentoML's process manager starts its workers in sessions of their own): together
they find the HTTP server, workers, proxies and daemons alike, for RSS, CPU time and clean-up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from loadtests import local
from loadtests.local import LOOPBACK, ROOT, LocalFunction, free_port, launch

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command (which may hold spaces): state is index 0.
    return text.rsplit(")", 1)[1].split()


def session_pids(sid: int) -> list[int]:
    """Every live process in session `sid` (the leader's pid) or descending from its leader."""
    parent, members = {}, set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)) and fields[0] != "Z":
            parent[int(entry)] = int(fields[1])
            if int(fields[3]) == sid:
                members.add(int(entry))
    out = set(members)
    for pid in parent:
        chain, current = [], pid
        while current in parent and current not in out and current > 1:
            chain.append(current)
            current = parent[current]
        if current in out:
            out.update(chain)
    return sorted(out)


def cpu_seconds(sid: int) -> float:
    """User + system CPU of the session's processes, including their reaped children."""
    ticks = 0
    for pid in session_pids(sid):
        fields = _stat(str(pid))
        if fields:
            ticks += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / TICK


def rss_mib(sid: int) -> float:
    """Summed resident set of the session's processes, in MiB."""
    kib = 0
    for pid in session_pids(sid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
        except OSError:
            continue
    return kib / 1024


class PeakRss:
    """Samples a session's summed RSS every `interval_s` in a thread; `stop()` gives the peak."""

    def __init__(self, sid: int, interval_s: float = 0.1) -> None:
        self.sid, self.interval_s, self.peak = sid, interval_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.sid))
            self._stop.wait(self.interval_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def spawn(
    argv: Sequence[str], env: Mapping[str, str], log_dir: Path, name: str, *, module: str = ""
) -> LocalFunction:
    """Start a server on a free port in its own session; `{port}` in argv is replaced.

    With `module` and no argv, `python -m module` in the project's venv through
    loadtests.local.launch (the one way our function is started locally).
    """
    port = free_port()
    log_path = log_dir / f"{name}-{port}.log"
    child = {"HOST": LOOPBACK, "PYTHONPATH": str(ROOT), **env}
    if module and not argv:
        return launch(child, log_path=log_path, port=port, module=module)
    full = [a.format(port=port) for a in argv]
    with log_path.open("wb") as log:
        spawned_at = time.time()
        process = subprocess.Popen(
            full, cwd=ROOT, env={**os.environ, **child, "PORT": str(port)},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return LocalFunction(process, f"http://{LOOPBACK}:{port}", log_path, spawned_at)


def stop(function: LocalFunction, timeout_s: float = 20.0) -> None:
    """SIGTERM the leader, wait, then SIGKILL whatever is left in its session."""
    sid = function.process.pid
    local.stop(function, timeout_s)
    deadline = time.monotonic() + 10
    while (left := session_pids(sid)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
