"""Before/after benchmark of the plain path, read against an A/A control: `make bench-regression`.

A feature that every request passes through (deadlines, priorities, dedup, monitoring ...) must not
slow down a plain /predict. This starts the function from two source trees on the same model: the
working tree ("head") and `--base`, a git revision extracted with `git archive` ("base"), plus a
second copy of head ("head2", the A/A control: two processes running identical code). Each set of
three fresh processes is measured at concurrency 1 and 32 in alternating rounds (ABC CBA ...), and
`--sets` sets are pooled. Printed and written to docs/regression.json: throughput and p50/p99 per
tree and level, the head/base ratios, the head2/head ratios per set (the noise floor), and the
verdict: a slowdown is "measurable" when head/base is worse than the largest A/A deviation.

    python -m benchmarks.regression --base REV [--sets 3] [--seconds 6] [--rounds 4] [--quick]

Not a test: the figures depend on the machine; run it on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.batching import Sample, measure_level, order, sample_texts
from loadtests.local import (
    LOOPBACK,
    ROOT,
    LocalFunction,
    launch_ready,
    stop,
)

LEVELS = (1, 32)
WARMUP_S = 2.0


def extract(rev: str, into: Path) -> str:
    """The serving code (functions/, shared/) of `rev` under `into`; returns the full hash."""
    full = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    archive = subprocess.run(
        ["git", "archive", "--format=tar", full, "functions", "shared"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return full


def start(tree: Path, model_dir: Path, log_dir: Path, name: str) -> LocalFunction:
    """One function process from `tree`, ready."""
    env = {
        "HOST": LOOPBACK,
        "MODEL_DIR": str(model_dir),
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "text",
        "MAX_CONCURRENCY": "256",
        # The source tree must come from `cwd`, not from an inherited path.
        "PYTHONPATH": str(tree),
    }
    return launch_ready(env, log_path=log_dir / f"regression-{name}.log", cwd=tree)


def pooled(samples: list[Sample]) -> dict[str, float]:
    """Throughput and latency quantiles over every sample of one tree at one level."""
    latencies = [x for s in samples for x in s.latencies]
    qs = statistics.quantiles(latencies, n=100, method="inclusive")
    ok = sum(s.requests - s.errors for s in samples)
    return {
        "requests": sum(s.requests for s in samples),
        "errors": sum(s.errors for s in samples),
        "rps": ok / sum(s.seconds for s in samples),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": qs[98] * 1000,
    }


def ratios(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """a/b for throughput and latencies."""
    return {k: a[k] / b[k] for k in ("rps", "p50_ms", "p99_ms")}


def verdict(result: dict[str, Any]) -> list[str]:
    """Per level: the head/base ratio against the A/A band (the largest head2/head deviation)."""
    lines = []
    for level in map(str, LEVELS):
        metric = "p50_ms" if level == "1" else "rps"
        hb = result["head_vs_base"][level][metric]
        band = max(abs(r[level][metric] - 1) for r in result["aa_per_set"])
        worse = hb - 1 if metric == "p50_ms" else 1 - hb
        measurable = worse > band
        lines.append(
            f"c={level} {metric} head/base {hb:.3f}; A/A band +-{band:.3f} "
            f"-> {'MEASURABLE slowdown' if measurable else 'no measurable slowdown'}"
        )
        result["verdict"][level] = {
            "metric": metric, "head_vs_base": hb, "aa_band": band, "slowdown": measurable,
        }  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--base", required=True, help="git revision to compare the working tree with")
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "minilm-sentiment-int8")
    p.add_argument("--seconds", type=float, default=6.0, help="per tree, level and set")
    p.add_argument("--sets", type=int, default=3)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="1 set, 1 s, 2 rounds: checks the harness")
    p.add_argument("--out", type=Path, default=None, help="default docs/regression.json")
    a = p.parse_args(argv)
    if a.quick:
        a.sets, a.seconds, a.rounds = 1, 1.0, 2
    out = a.out or (
        ROOT / "build" / "regression-quick.json" if a.quick else ROOT / "docs" / "regression.json"
    )
    texts = sample_texts()
    samples: dict[tuple[str, int], list[Sample]] = {}
    aa: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="regression-") as tmp:
        base_tree = Path(tmp) / "base"
        base_tree.mkdir()
        base_rev = extract(a.base, base_tree)
        trees = {"base": base_tree, "head": ROOT, "head2": ROOT}
        for n in range(a.sets):
            print(f"server set {n + 1}/{a.sets}", file=sys.stderr)
            servers = {k: start(t, a.model_dir, Path(tmp), f"{k}-{n}") for k, t in trees.items()}
            got: dict[tuple[str, int], list[Sample]] = {}
            try:
                for level in LEVELS:
                    for name in order(list(servers), a.rounds):
                        s = measure_level(
                            servers[name].base_url, level, a.seconds / a.rounds, texts,
                            WARMUP_S / a.rounds,
                        )  # fmt: skip
                        got.setdefault((name, level), []).append(s)
            finally:
                for server in servers.values():
                    stop(server, timeout_s=30)
            aa.append(
                {
                    str(lv): ratios(pooled(got["head2", lv]), pooled(got["head", lv]))
                    for lv in LEVELS
                }
            )
            for key, value in got.items():
                samples.setdefault(key, []).extend(value)
    trees_out = {k: {str(lv): pooled(samples[k, lv]) for lv in LEVELS} for k in trees}
    result: dict[str, Any] = {
        "base": base_rev,
        "head": "working tree",
        "model": a.model_dir.name,
        "cpus": os.cpu_count(),
        "sets": a.sets, "seconds": a.seconds, "rounds": a.rounds, "quick": a.quick,
        "trees": trees_out,
        "head_vs_base": {
            str(lv): ratios(trees_out["head"][str(lv)], trees_out["base"][str(lv)]) for lv in LEVELS
        },
        "aa_per_set": aa,
        "verdict": {},
    }  # fmt: skip
    print(f"base {base_rev[:12]} vs working tree, {a.model_dir.name}, {a.sets} sets")
    print(f"{'tree':<7}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for k, levels in trees_out.items():
        for lv, r in levels.items():
            print(
                f"{k:<7}{lv:>5}{r['rps']:>9.1f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}"
            )
    for line in verdict(result):
        print(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
