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

    python -m benchmarks.coldstart --model-uri --runs 5 models/minilm-sentiment-int8 --out ...

`--model-uri` measures instead the cold start with the model pulled at start-up (MODEL_URI) from a
local registry (Debian's `docker-registry` on loopback; the directory pushed once with oras),
each run with an empty MODEL_CACHE_DIR, beside the same directory baked in (MODEL_DIR) and beside
a warm cache (the entry already pulled: no network), the three alternating run by run; plus the
pull and verification alone (`modelstore.fetch` into an empty cache in a fresh interpreter, its
imports included). It writes them under the key "model_uri" of the `--out` file and leaves the
other keys as they are (and the default mode keeps that key and `make image`'s `container`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from loadtests.local import LOOPBACK, free_port, launch, status_kib, stop
from shared import modelstore
from shared.progress import Progress


def one_run(
    model_dir: Path, extra_env: dict[str, str], deadline_s: float = 60.0
) -> tuple[float, float]:
    """(seconds from spawn to the first 200 from /predict, peak RSS in MiB); `extra_env` may set
    MODEL_URI, which then wins over `model_dir`."""
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


# The pull alone as the function's preload thread does it: a fresh interpreter (imports included).
_PULL = """
import sys
from pathlib import Path
from shared import modelstore
modelstore.fetch(sys.argv[1], Path(sys.argv[2]))
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


def model_uri(model_dir: Path, runs: int) -> dict[str, Any]:
    """Cold start pulled from a local registry vs baked vs a warm cache, alternating (seconds)."""
    from loadtests.registry import LocalRegistry

    registry = LocalRegistry.create().start()
    starts: dict[str, list[float]] = {"baked": [], "pulled": [], "cached": []}
    fetches: list[float] = []
    with tempfile.TemporaryDirectory(prefix="coldstart-uri-") as tmp:
        try:
            uri = modelstore.push(model_dir, f"oci://{registry.host}/kubesentiment/coldstart:v1")
            warm = Path(tmp) / "warm"
            modelstore.fetch(uri, warm)  # the warm cache's entry
            shown = Progress(runs, "cold starts (baked, pulled, cached)", unit="run")
            for i in range(runs):
                empty = Path(tempfile.mkdtemp(prefix="cache-", dir=tmp))
                arms = {
                    "baked": {},
                    "pulled": {"MODEL_URI": uri, "MODEL_CACHE_DIR": str(empty)},
                    "cached": {"MODEL_URI": uri, "MODEL_CACHE_DIR": str(warm)},
                }
                order = list(arms) if i % 2 == 0 else list(reversed(arms))  # no arm always first
                for arm in order:
                    seconds, _ = one_run(model_dir, arms[arm])
                    starts[arm].append(seconds)
                print(f"run {i + 1}: " + ", ".join(f"{a} {starts[a][-1]:.3f} s" for a in arms))
                fresh = tempfile.mkdtemp(prefix="fetch-", dir=tmp)
                fetches.append(_spawn_s(_PULL, uri, fresh)[0])
                shown.update(1)
            shown.close()
        finally:
            registry.stop()
            shutil.rmtree(registry.root, ignore_errors=True)
    size = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_at_end": round(os.getloadavg()[0], 2),
        # A shared machine: `nice -n -10 make coldstart-uri` keeps the others' load from
        # dominating; every arm (and the registry) runs at the same niceness.
        "nice": os.nice(0),
        "model_dir": model_dir.name,
        "model_mib": round(size / 2**20, 1),
        "registry": "docker-registry (distribution) on loopback, plain HTTP",
        "runs": runs,
    }
    for arm, values in starts.items():
        out[f"{arm}_s"] = [round(v, 3) for v in values]
        out[f"median_{arm}_s"] = round(statistics.median(values), 3)
    out["median_fetch_s"] = round(statistics.median(fetches), 3)
    return out


# Keys of the results file that other runs write: `--model-uri` here, and `container` by
# scripts/container_coldstart.py (`make image`).
OTHER_RUNS = ("model_uri", "container")


def _write(path: Path, result: dict[str, Any]) -> None:
    """Write `result` to `path`, keeping the existing file's figures from other runs."""
    old = json.loads(path.read_text()) if path.exists() else {}
    kept = {k: old[k] for k in OTHER_RUNS if k in old and k not in result}
    path.write_text(json.dumps({**result, **kept}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model_dir", type=Path, nargs="?", default=Path("models/minilm-sentiment-int8")
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "--model-uri", action="store_true", help="pulled from a local registry vs baked"
    )
    args = parser.parse_args(argv)
    command = "python -m benchmarks.coldstart " + " ".join(argv or sys.argv[1:])
    if args.model_uri:
        figures = {"command": command, **model_uri(args.model_dir, args.runs)}
        print(
            f"{args.model_dir}: median cold start baked {figures['median_baked_s']:.3f} s, "
            f"pulled from the registry {figures['median_pulled_s']:.3f} s, from a warm cache "
            f"{figures['median_cached_s']:.3f} s over {args.runs} runs each; the pull and "
            f"verification alone {figures['median_fetch_s']:.3f} s"
        )
        if args.out:
            old = json.loads(args.out.read_text()) if args.out.exists() else {}
            args.out.write_text(json.dumps({**old, "model_uri": figures}, indent=2) + "\n")
        return
    starts, rss = [], []
    with Progress(args.runs, "cold starts", unit="run") as shown:
        for i in range(args.runs):
            seconds, peak = one_run(args.model_dir, {})
            starts.append(seconds)
            rss.append(peak)
            print(f"run {i + 1}: cold start {seconds:.3f} s, peak RSS {peak:.0f} MiB", flush=True)
            shown.update(1)
    median = statistics.median(starts)
    print(
        f"{args.model_dir}: median cold start {median:.3f} s, "
        f"median peak RSS {statistics.median(rss):.0f} MiB over {args.runs} runs"
    )
    phases = breakdown(args.model_dir, median)
    print("where the time goes (s): " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))
    if args.out:
        result = {
            "command": command,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "loadavg_at_end": round(os.getloadavg()[0], 2),
            "model_dir": args.model_dir.name,
            "runs": args.runs,
            "cold_start_s": [round(s, 3) for s in starts],
            "median_cold_start_s": round(median, 3),
            "median_peak_rss_mib": round(statistics.median(rss), 1),
            "breakdown_s": phases,
        }
        _write(args.out, result)


if __name__ == "__main__":
    main()
