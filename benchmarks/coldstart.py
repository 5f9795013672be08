"""Cold start of a function: time from process spawn to the first successful `/predict`.

    python -m benchmarks.coldstart --runs 5 models/minilm-sentiment-int8

Each run spawns `python -m functions.sentiment` on a free loopback port and posts a prediction
every 5 ms until one answers 200 (connection refused and 503 count as "not yet"). Peak RSS is the
process's VmHWM from /proc after that first answer. Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(
    model_dir: Path, extra_env: dict[str, str], deadline_s: float = 60.0
) -> tuple[float, float]:
    """(seconds from spawn to the first 200 from /predict, peak RSS in MB)."""
    port = _free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "MODEL_DIR": str(model_dir),
           "LOG_LEVEL": "warning", **extra_env}  # fmt: skip
    body = json.dumps({"text": "I love it"}).encode()
    url = f"http://127.0.0.1:{port}/predict"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "functions.sentiment"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while time.perf_counter() - started < deadline_s:
            req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            try:
                # The URL is built above from a fixed http://127.0.0.1 prefix.
                with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
                    if resp.status == 200:
                        elapsed = time.perf_counter() - started
                        return elapsed, _peak_rss_mb(proc.pid)
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            time.sleep(0.005)
        raise TimeoutError(f"no successful /predict within {deadline_s}s")
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model_dir", type=Path, nargs="?", default=Path("models/minilm-sentiment-int8")
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    starts, rss = [], []
    for i in range(args.runs):
        seconds, peak = one_run(args.model_dir, {})
        starts.append(seconds)
        rss.append(peak)
        print(f"run {i + 1}: cold start {seconds:.3f} s, peak RSS {peak:.0f} MB", flush=True)
    print(
        f"{args.model_dir}: median cold start {statistics.median(starts):.3f} s, "
        f"median peak RSS {statistics.median(rss):.0f} MB over {args.runs} runs"
    )


if __name__ == "__main__":
    main()
