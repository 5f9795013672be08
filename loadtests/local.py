"""Start a KubeSentiment function as a local subprocess on loopback and wait until it is ready.

Used by the k6 runner, the benchmarks and the integration tests: one place knows how a variant maps
to a model directory and environment, how the process is started on a free port with its output in a
log file, how readiness is polled (with a deadline, never a bare sleep) and how the process is
stopped (SIGTERM first, as Knative does, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"

# Variants are data: a name and the model directory it serves (see shared/config.py MODEL_DIR).
VARIANTS: Mapping[str, Path] = {
    "cpu-int8": ROOT / "models" / "minilm-sentiment-int8",
    "cpu-fp32": ROOT / "models" / "minilm-sentiment-fp32",
    # Built by `make accurate`, not committed.
    "cpu-accurate-int8": ROOT / "models" / "mpnet-sentiment-int8",
}


class StartError(RuntimeError):
    """The function exited or never became ready; the message ends with its log tail."""


@dataclass(frozen=True)
class LocalFunction:
    """A running function: its process, loopback URL and log file."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    spawned_at: float  # time.time() just before the spawn, for cold-start measurements

    @property
    def port(self) -> int:
        """The loopback port the function listens on."""
        return int(self.base_url.rsplit(":", 1)[1])

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the function's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def model_dir(variant: str) -> Path:
    """The model directory of a known variant."""
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}") from None


def model_override(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """MODEL_DIR from KUBESENTIMENT_TEST_MODEL_DIR when set (as tests/conftest.py honours it)."""
    override = environ.get("KUBESENTIMENT_TEST_MODEL_DIR")
    return {"MODEL_DIR": override} if override else {}


def launch(
    env: Mapping[str, str],
    *,
    log_path: Path,
    port: int | None = None,
    module: str = "functions.sentiment",
    cwd: Path = ROOT,
) -> LocalFunction:
    """Start `python -m module` with os.environ + PORT + `env`, output to `log_path` (no wait);
    `cwd` picks the source tree (another revision's checkout, for a before/after benchmark)."""
    port = port or free_port()
    child_env = {**os.environ, "PORT": str(port), **env}
    with log_path.open("wb") as log:
        spawned_at = time.time()
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=cwd,
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return LocalFunction(process, f"http://{LOOPBACK}:{port}", log_path, spawned_at)


def spawn(
    variant: str = "cpu-int8",
    *,
    env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
    port: int | None = None,
) -> LocalFunction:
    """Start `python -m functions.sentiment` for `variant` on a free loopback port (not waiting)."""
    port = port or free_port()
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="kubesentiment-"))
    function_env = {
        "HOST": LOOPBACK,
        "MODEL_DIR": str(model_dir(variant)),
        "VARIANT": variant,
        "SHUTDOWN_TIMEOUT_SECONDS": "2",
        **(env or {}),
    }
    return launch(function_env, log_path=log_dir / f"function-{variant}-{port}.log", port=port)


def wait_ready(function: LocalFunction, timeout_s: float = 90.0) -> None:
    """Poll GET /health/readiness until 200; raise StartError on exit or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if function.process.poll() is not None:
                raise StartError(
                    f"function exited with {function.process.returncode}:\n{function.log_tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{function.base_url}/health/readiness").status_code == 200:
                    return
            time.sleep(0.05)  # poll interval inside a deadline loop
    raise StartError(f"not ready after {timeout_s:.0f} s:\n{function.log_tail()}")


def launch_ready(env: Mapping[str, str], *, log_path: Path, cwd: Path = ROOT) -> LocalFunction:
    """`launch` and `wait_ready` for a benchmark: the function, ready, or it is stopped and the
    run ends (SystemExit) with its log tail."""
    function = launch(env, log_path=log_path, cwd=cwd)
    try:
        wait_ready(function)
    except StartError as e:
        stop(function)
        raise SystemExit(str(e)) from e
    return function


def stop(function: LocalFunction, timeout_s: float = 15.0) -> int:
    """SIGTERM (Knative's shutdown signal), then SIGKILL after `timeout_s`; the exit code."""
    process = function.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return int(process.returncode)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 (after the parenthesised command, which may hold spaces) is the parent pid.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def status_kib(pid: int, key: str) -> int:
    """A `KEY: N kB` field of /proc/PID/status (VmRSS, VmHWM), 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(pid: int) -> int:
    """Resident set of a process and all its descendants, in KiB."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += status_kib(current, "VmRSS")
        todo.extend(_children(current))
    return total


@contextlib.contextmanager
def running(
    variant: str = "cpu-int8",
    *,
    env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
    timeout_s: float = 90.0,
) -> Iterator[LocalFunction]:
    """A ready function for the duration of the block, stopped afterwards whatever happens."""
    function = spawn(variant, env=env, log_dir=log_dir)
    try:
        wait_ready(function, timeout_s)
        yield function
    finally:
        stop(function)
