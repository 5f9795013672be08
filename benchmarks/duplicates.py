"""Duplicate work done once: throughput with 50 % duplicate texts, DEDUP on and off, cache on.

Starts `python -m functions.sentiment` four times on loopback ports: `off` (DEDUP=off), `off2`
(the same again: the A/A control, the noise floor every other ratio should be read against),
`dedup` (DEDUP=on) and `cache` (DEDUP=on, CACHE_SIZE=4096). Closed-loop asyncio users (one
keep-alive connection each) drive each server with these workloads:

- `batch`: /predict with 8 texts per request at concurrency 8;
- `single`: /predict with one text per request at concurrency 32;
- `unique c1` / `unique c32`: one text per request, no duplicates at all: what sharing costs the
  plain path when it has nothing to share.

In the duplicate workloads every text is, with probability 1/2, a repeat of one of the last 16
fresh texts, otherwise a fresh text never sent before (a numbered review-like sentence), so about
half of all texts are duplicates: some inside one batch, some of texts in flight, some of texts
answered a moment ago. Each (round, workload) has its own seed and numbering, identical for every
server, so a cache never sees texts from an earlier measurement and every server gets the same
stream. Servers are measured in alternating rounds (ABBA...) within each of `--sets` fresh sets.

    python -m benchmarks.duplicates [--sets 2] [--rounds 4] [--seconds 8]  (docs/duplicates.json)
    python -m benchmarks.duplicates --quick      (seconds; build/duplicates-quick.json, a check)
    python -m benchmarks.duplicates --readme     (README section from docs/duplicates.json)

Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.batching import _ENDINGS, _MIDDLES, _OPENERS, Connection, order
from loadtests.local import (
    LOOPBACK,
    ROOT,
    LocalFunction,
    launch_ready,
    stop,
)
from scripts import readme_blocks

RESULTS = ROOT / "docs" / "duplicates.json"
QUICK_RESULTS = ROOT / "build" / "duplicates-quick.json"
SERVERS: dict[str, dict[str, str]] = {
    "off": {"DEDUP": "off", "CACHE_SIZE": "0"},
    "off2": {"DEDUP": "off", "CACHE_SIZE": "0"},
    "dedup": {"DEDUP": "on", "CACHE_SIZE": "0"},
    "cache": {"DEDUP": "on", "CACHE_SIZE": "4096"},
}


@dataclass(frozen=True)
class Workload:
    """What the users send: texts per request, concurrency and the share of repeats."""

    name: str
    texts: int
    concurrency: int
    duplicates: float


WORKLOADS = (
    Workload("batch", 8, 8, 0.5),
    Workload("single", 1, 32, 0.5),
    Workload("unique c1", 1, 1, 0.0),
    Workload("unique c32", 1, 32, 0.0),
)
RECENT = 16  # a repeat is one of the last RECENT fresh texts


class Stream:
    """Texts for one (round, workload): fresh ones numbered, repeats of recent fresh ones."""

    def __init__(self, seed: int, duplicates: float) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.duplicates = duplicates
        self.recent: list[str] = []
        self.fresh = 0

    def next(self) -> str:
        """One text: a repeat with probability `duplicates` (once there is one), else fresh."""
        if self.recent and self.rng.random() < self.duplicates:
            return self.rng.choice(self.recent)
        self.fresh += 1
        r = self.rng
        review = f"{r.choice(_OPENERS)} {r.choice(_MIDDLES)}{r.choice(_ENDINGS)}"
        text = f"{review} ({self.seed}-{self.fresh})"
        self.recent = [*self.recent[-(RECENT - 1) :], text]
        return text


@dataclass
class Sample:
    """One timed run of one workload against one server."""

    requests: int
    errors: int
    texts: int
    seconds: float
    shared: float  # texts answered by another's computation (server side)
    cache_hits: float


def server_counters(url: str) -> tuple[float, float]:
    """(deduplicated texts, cache hits) so far, from the server's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    shared = sum(
        float(v)
        for v in re.findall(r"^kubesentiment_deduplicated_texts_total\{.*\} (\S+)$", text, re.M)
    )
    hits = re.search(r"^kubesentiment_cache_hits_total\{.*\} (\S+)$", text, re.M)
    return shared, float(hits.group(1)) if hits else 0.0


async def drive(url: str, w: Workload, seconds: float, stream: Stream) -> tuple[int, int, int]:
    """Closed-loop users for `seconds`: (requests, non-200 answers, texts answered)."""
    counts = [0, 0, 0]
    connections = [await Connection.open(url) for _ in range(w.concurrency)]
    stop_at = time.perf_counter() + seconds

    def body() -> bytes:
        if w.texts == 1:
            return json.dumps({"text": stream.next()}).encode()
        return json.dumps({"texts": [stream.next() for _ in range(w.texts)]}).encode()

    async def user(k: int) -> None:
        while time.perf_counter() < stop_at:
            status = await connections[k].post_json("/predict", body())
            counts[0] += 1
            if status == 200:
                counts[2] += w.texts
            else:
                counts[1] += 1

    try:
        await asyncio.gather(*(user(k) for k in range(w.concurrency)))
    finally:
        for c in connections:
            c.close()
    return counts[0], counts[1], counts[2]


def measure(url: str, w: Workload, seconds: float, seed: int) -> Sample:
    """Warm up briefly on a stream of its own, then one timed run on the stream `seed`."""
    asyncio.run(drive(url, w, min(1.0, seconds / 4), Stream(seed + 500_000, w.duplicates)))
    before = server_counters(url)
    t0 = time.perf_counter()
    requests, errors, texts = asyncio.run(drive(url, w, seconds, Stream(seed, w.duplicates)))
    elapsed = time.perf_counter() - t0
    after = server_counters(url)
    return Sample(requests, errors, texts, elapsed, after[0] - before[0], after[1] - before[1])


def start_server(
    name: str, env: dict[str, str], log_dir: Path, extra: dict[str, str]
) -> LocalFunction:
    """One function, ready; SystemExit with its log tail if it is not."""
    return launch_ready(
        {
            "HOST": LOOPBACK,
            "LOG_LEVEL": "warning",
            "LOG_FORMAT": "text",
            "MAX_CONCURRENCY": "256",
            # Repeats are 50 % of a stream that never comes back, so the guard must not switch
            # the cache off during a measurement it is meant to show; it still bounds memory.
            "CACHE_MIN_HIT_RATE": "0",
            **env,
            **extra,
        },
        log_path=log_dir / f"duplicates-{name}.log",
    )


def run(sets: int, rounds: int, seconds: float, extra: dict[str, str]) -> dict[str, Any]:
    """Every workload against every server, alternating; pooled samples per (server, workload)."""
    pooled: dict[str, dict[str, list[Sample]]] = {
        s: {w.name: [] for w in WORKLOADS} for s in SERVERS
    }
    seed = 0
    with tempfile.TemporaryDirectory(prefix="duplicates-") as tmp:
        for n in range(sets):
            print(f"server set {n + 1}/{sets}", file=sys.stderr)
            servers = {k: start_server(k, env, Path(tmp), extra) for k, env in SERVERS.items()}
            try:
                for w in WORKLOADS:
                    for r in range(rounds):
                        seed += 1
                        names = order(list(servers), rounds)[
                            r * len(servers) : (r + 1) * len(servers)
                        ]
                        for name in names:
                            sample = measure(servers[name].base_url, w, seconds / rounds, seed)
                            pooled[name][w.name].append(sample)
                    print(f"  measured {w.name}", file=sys.stderr)
            finally:
                for server in servers.values():
                    stop(server, timeout_s=30)
    return summarise(pooled)


def summarise(pooled: dict[str, dict[str, list[Sample]]]) -> dict[str, Any]:
    """Per server and workload: req/s, texts/s, errors, shared and cached shares; ratios to off."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for server, workloads in pooled.items():
        for name, samples in workloads.items():
            secs = sum(s.seconds for s in samples)
            texts = sum(s.texts for s in samples)
            ok = sum(s.requests - s.errors for s in samples)
            table.setdefault(name, {})[server] = {
                "requests": sum(s.requests for s in samples),
                "errors": sum(s.errors for s in samples),
                "seconds": round(secs, 3),
                "req_per_s": round(ok / secs, 2) if secs else 0.0,
                "texts_per_s": round(texts / secs, 2) if secs else 0.0,
                "shared_share": round(sum(s.shared for s in samples) / texts, 4) if texts else 0.0,
                "cache_hit_share": round(sum(s.cache_hits for s in samples) / texts, 4)
                if texts
                else 0.0,
            }
    ratios = {
        name: {
            s: round(by[s]["texts_per_s"] / by["off"]["texts_per_s"], 3)
            for s in SERVERS
            if s != "off" and by["off"]["texts_per_s"]
        }
        for name, by in table.items()
    }
    return {"workloads": table, "throughput_vs_off": ratios}


def render(result: dict[str, Any]) -> str:
    """The printed table (also the README's)."""
    lines = [
        "| Workload | Server | req/s | texts/s | vs off | shared | cache hits | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by in result["workloads"].items():
        for server, r in by.items():
            ratio = result["throughput_vs_off"][name].get(server)
            lines.append(
                f"| {name} | {server} | {r['req_per_s']:.1f} | {r['texts_per_s']:.1f} | "
                f"{'1' if ratio is None else f'{ratio:.2f}'}x | {r['shared_share']:.0%} | "
                f"{r['cache_hit_share']:.0%} | {r['errors']} |"
            )
    return "\n".join(lines)


BEGIN = "<!-- duplicates: generated by `python -m benchmarks.duplicates --readme`; do not edit -->"
END = "<!-- /duplicates -->"


def readme_section(result: dict[str, Any] | None) -> str:
    """The README's figures, from a results file (or a note that there is none yet)."""
    if result is None:
        body = "Not measured yet: run `make bench-duplicates`."
    else:
        m = result["meta"]
        body = (
            f"`make bench-duplicates` on {m['cpus']} CPUs, model {m['model']}, {m['sets']} server "
            f"sets x {m['rounds']} alternating rounds x {m['seconds']:.0f} s per server and "
            "workload. Servers: `off` (DEDUP=off), `off2` (the same: A/A, its ratio is the noise "
            "floor), `dedup` (DEDUP=on), `cache` (DEDUP=on, CACHE_SIZE=4096, guard off). "
            "`shared`: texts answered by another text's computation; `cache hits`: by the cache."
            "\n\n" + render(result)
        )
    return f"{BEGIN}\n{body}\n{END}"


def write_readme(result: dict[str, Any] | None, readme: Path = ROOT / "README.md") -> None:
    """Replace the section between the markers in the README."""
    readme_blocks.replace(readme_section(result), BEGIN, END, readme)


def main(argv: list[str] | None = None, *, now: Callable[[], float] = time.time) -> None:
    """Measure (or, with --readme, only regenerate the README section)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "minilm-sentiment-int8")
    p.add_argument("--sets", type=int, default=2, help="fresh server sets (processes)")
    p.add_argument("--rounds", type=int, default=4, help="alternating passes per workload and set")
    p.add_argument(
        "--seconds", type=float, default=8.0, help="measured s per server, workload, set"
    )
    p.add_argument("--threads", default="", help="ORT_INTRA_OP_THREADS (default: CPU quota)")
    p.add_argument("--quick", action="store_true", help="a few seconds in all: checks the harness")
    p.add_argument("--out", type=Path, default=None, help="results file")
    p.add_argument("--readme", action="store_true", help="update README.md from the results file")
    a = p.parse_args(argv)
    out = a.out or (QUICK_RESULTS if a.quick else RESULTS)
    if a.readme:
        write_readme(json.loads(out.read_text()) if out.exists() else None)
        return
    if a.quick:
        a.sets, a.rounds, a.seconds = 1, 2, 1.0
    extra = {"MODEL_DIR": str(a.model_dir)}
    if a.threads:
        extra["ORT_INTRA_OP_THREADS"] = a.threads
    started, load = now(), os.getloadavg()[0]
    result = run(a.sets, a.rounds, a.seconds, extra)
    result["meta"] = {
        "model": a.model_dir.name,
        "sets": a.sets,
        "rounds": a.rounds,
        "seconds": a.seconds,
        "cpus": os.cpu_count(),
        "load_average_at_start": round(load, 2),
        "duration_s": round(now() - started, 1),
        "quick": a.quick,
        "servers": SERVERS,
        "workloads": [asdict(w) for w in WORKLOADS],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
