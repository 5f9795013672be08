"""Cold start of a function: time from process spawn to the first successful `/predict`.

    python -m benchmarks.coldstart --runs 5 models/minilm-sentiment-int8 [--out docs/coldstart.json]

Each run spawns `python -m functions.sentiment` on a free loopback port and posts a prediction
every 5 ms until one answers 200 (connection refused and 503 count as "not yet"). Peak RSS is the
process's VmHWM from /proc after that first answer, in MiB. Prints each run and the medians, then
where the time goes (median of 3 each, measured apart from the server): the interpreter alone,
the function's imports, model verification (checksums), session and tokenizer creation, the
warm-up run; "serving and first request" is the rest of the median cold start (uvicorn start-up,
the lifespan, the first HTTP request). `--out` writes it all as JSON, the source of the README's
cold-start figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from loadtests.local import LOOPBACK, free_port, launch, status_kib, stop


def one_run(
    model_dir: Path, extra_env: dict[str, str], deadline_s: float = 60.0
) -> tuple[float, float]:
    """(seconds from spawn to the first 200 from /predict, peak RSS in MiB)."""
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


# Run in a fresh interpreter per sample, so every phase starts as cold as the server's does.
_PHASES = """
import json, sys, time
t0 = time.perf_counter()
import functions.sentiment.app, functions.sentiment.model
t1 = time.perf_counter()
from pathlib import Path
from functions.sentiment.model import Classifier
from shared import modeldir
d = Path(sys.argv[1])
modeldir.load(d)
t2 = time.perf_counter()
c = Classifier.load(d)
t3 = time.perf_counter()
c.predict(["warm up"])
t4 = time.perf_counter()
verify = t2 - t1  # Classifier.load verifies again: count that once
print(json.dumps({"imports": t1 - t0, "model verification": verify,
                  "session and tokenizer": t3 - t2 - verify, "warm-up run": t4 - t3}))
"""


def _spawn_s(code: str, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    return time.perf_counter() - started, done.stdout


def breakdown(model_dir: Path, cold_start_s: float, samples: int = 3) -> dict[str, float]:
    """Seconds per start-up phase (medians); the remainder is serving and the first request."""
    interpreter = statistics.median(_spawn_s("pass")[0] for _ in range(samples))
    phases = [json.loads(_spawn_s(_PHASES, str(model_dir))[1]) for _ in range(samples)]
    out = {"interpreter": interpreter}
    out.update({k: statistics.median(p[k] for p in phases) for k in phases[0]})
    out["serving and first request"] = max(0.0, cold_start_s - sum(out.values()))
    return {k: round(v, 3) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model_dir", type=Path, nargs="?", default=Path("models/minilm-sentiment-int8")
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    starts, rss = [], []
    for i in range(args.runs):
        seconds, peak = one_run(args.model_dir, {})
        starts.append(seconds)
        rss.append(peak)
        print(f"run {i + 1}: cold start {seconds:.3f} s, peak RSS {peak:.0f} MiB", flush=True)
    median = statistics.median(starts)
    print(
        f"{args.model_dir}: median cold start {median:.3f} s, "
        f"median peak RSS {statistics.median(rss):.0f} MiB over {args.runs} runs"
    )
    phases = breakdown(args.model_dir, median)
    print("where the time goes (s): " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))
    if args.out:
        result = {
            "command": "python -m benchmarks.coldstart " + " ".join(argv or sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "loadavg_at_end": round(os.getloadavg()[0], 2),
            "model_dir": args.model_dir.name,
            "runs": args.runs,
            "cold_start_s": [round(s, 3) for s in starts],
            "median_cold_start_s": round(median, 3),
            "median_peak_rss_mib": round(statistics.median(rss), 1),
            "breakdown_s": phases,
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
