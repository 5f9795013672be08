"""Cold start of a function: time from process spawn to the first successful `/predict`.

    python -m benchmarks.coldstart --runs 5 models/minilm-sentiment-int8

Each run spawns `python -m functions.sentiment` on a free loopback port and posts a prediction
every 5 ms until one answers 200 (connection refused and 503 count as "not yet"). Peak RSS is the
process's VmHWM from /proc after that first answer. Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from loadtests.local import LOOPBACK, free_port, launch, status_kib, stop


def one_run(
    model_dir: Path, extra_env: dict[str, str], deadline_s: float = 60.0
) -> tuple[float, float]:
    """(seconds from spawn to the first 200 from /predict, peak RSS in MB)."""
    port = free_port()
    env = {"HOST": LOOPBACK, "MODEL_DIR": str(model_dir), "LOG_LEVEL": "warning", **extra_env}
    body = json.dumps({"text": "I love it"}).encode()
    url = f"http://{LOOPBACK}:{port}/predict"
    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
        log_path = Path(tmp) / "function.log"
        started = time.perf_counter()
        function = launch(env, log_path=log_path, port=port)
        proc = function.process
        try:
            while time.perf_counter() - started < deadline_s:
                req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
                try:
                    # The URL is built above from the fixed loopback prefix.
                    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
                        if resp.status == 200:
                            elapsed = time.perf_counter() - started
                            return elapsed, status_kib(proc.pid, "VmHWM") / 1024
                except (urllib.error.URLError, ConnectionError, OSError):
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}")
                time.sleep(0.005)
            raise TimeoutError(f"no successful /predict within {deadline_s}s")
        finally:
            stop(function, timeout_s=30)


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
