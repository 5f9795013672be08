"""Print what importing a module adds to a cold start: `python -m scripts.import_cost MODULE`.

Each run is a fresh interpreter (bytecode caches as they are) that first imports the `--after`
modules (what is already loaded at that point of start-up), then times the import of MODULE alone
and `--then`, a statement run after it; the median of `--runs` runs is printed in milliseconds,
with the modules the import added. Example, the httpx client instrumentation that tracing loads:

    python -m scripts.import_cost opentelemetry.instrumentation.httpx \\
        --after functions.sentiment.app shared.tracing opentelemetry.sdk.trace httpx \\
        --then "m.HTTPXClientInstrumentor().instrument()"
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import importlib, json, sys, time
for name in {after!r}:
    importlib.import_module(name)
before = set(sys.modules)
t0 = time.perf_counter()
importlib.import_module({module!r})
m = sys.modules[{module!r}]
{then}
seconds = time.perf_counter() - t0
print(json.dumps({{"s": seconds, "added": sorted(set(sys.modules) - before)}}))
"""


def measure(module: str, after: list[str], runs: int, then: str = "") -> dict[str, object]:
    """Median milliseconds of importing `module` after `after` (and running `then`, which sees
    the module as `m`), over `runs` fresh interpreters."""
    code = PROBE.format(module=module, after=after, then=then or "pass")
    times: list[float] = []
    added: list[str] = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        times.append(result["s"] * 1000)
        added = result["added"]
    return {
        "module": module,
        "after": after,
        "then": then,
        "median_ms": round(statistics.median(times), 1),
        "runs_ms": [round(t, 1) for t in times],
        "modules_added": len(added),
        "top_level_added": sorted({m.split(".")[0] for m in added}),
    }


def main(argv: list[str] | None = None) -> None:
    """Measure and print one module's import cost as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module")
    parser.add_argument("--after", nargs="*", default=[], help="modules imported first")
    parser.add_argument("--then", default="", help="a statement timed with the import (m: module)")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.module, args.after, args.runs, args.then), indent=2))


if __name__ == "__main__":
    main()
