"""Priorities: interactive /predict latency alone and beside a bulk CloudEvents backfill.

Starts `python -m functions.sentiment` with PRIORITIES=on and with PRIORITIES=off (separate
processes, `--sets` fresh pairs). For each server, in alternating rounds (ABBA...):

- `alone`: `--concurrency` closed-loop users send /predict, one text each (the interactive load);
- `bulk`: the same interactive users while `--bulk` senders post binary-mode CloudEvents of
  `--event-texts` texts each, back to back (a Broker delivering a backfill; no `priority`
  extension, so the events take the CloudEvents default lane, low).

Reported per server and scenario: interactive p50/p99 latency (ms) and req/s, bulk texts/s, and
errors. With priorities on, an interactive text waits for the run in progress, not for the bulk
queue; PRIORITY_MAX_WAIT_MS still bounds how long a bulk text is overtaken.

    python -m benchmarks.priorities [--sets 2] [--rounds 4] [--seconds 8]  (docs/priorities.json)
    python -m benchmarks.priorities --quick      (seconds; build/priorities-quick.json, a check)
    python -m benchmarks.priorities --readme     (README section from docs/priorities.json)

Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.batching import Connection, order, sample_texts
from loadtests.local import (
    LOOPBACK,
    ROOT,
    LocalFunction,
    launch_ready,
    stop,
)
from scripts import readme_blocks

RESULTS = ROOT / "docs" / "priorities.json"
QUICK_RESULTS = ROOT / "build" / "priorities-quick.json"
SERVERS: dict[str, dict[str, str]] = {"on": {"PRIORITIES": "on"}, "off": {"PRIORITIES": "off"}}
SCENARIOS = ("alone", "bulk")
REQUEST_TYPE = "dev.kubesentiment.sentiment.requested"


class EventConnection(Connection):
    """The benchmarks' keep-alive client, also posting binary-mode CloudEvents."""

    async def post_event(self, body: bytes, event_id: str) -> int:
        """POST / with the ce-* headers of a request event; the status code."""
        head = (
            "POST / HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"ce-specversion: 1.0\r\nce-id: {event_id}\r\nce-source: /bench/backfill\r\n"
            f"ce-type: {REQUEST_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        reply = await self.reader.readuntil(b"\r\n\r\n")
        status = int(reply.split(b" ", 2)[1])
        length = 0
        for line in reply.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status


async def connect(url: str) -> EventConnection:
    """A keep-alive connection to `http://HOST:PORT`."""
    c = await Connection.open(url)
    return EventConnection(c.reader, c.writer)


@dataclass
class Sample:
    """One timed run of one scenario against one server."""

    latencies_ms: list[float] = field(default_factory=list)  # interactive, successful
    errors: int = 0
    bulk_texts: int = 0
    bulk_errors: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Load:
    """The interactive and bulk load of one measurement."""

    concurrency: int
    bulk: int
    event_texts: int


async def drive(url: str, load: Load, scenario: str, seconds: float, seed: int) -> Sample:
    """Closed-loop interactive users (and bulk senders in `bulk`) for `seconds`."""
    rng = random.Random(seed)
    texts = sample_texts(512, seed)
    sample = Sample()
    users = [await connect(url) for _ in range(load.concurrency)]
    senders = [await connect(url) for _ in range(load.bulk if scenario == "bulk" else 0)]
    stop_at = time.perf_counter() + seconds

    async def user(c: EventConnection) -> None:
        while time.perf_counter() < stop_at:
            body = json.dumps({"text": rng.choice(texts)}).encode()
            t0 = time.perf_counter()
            status = await c.post_json("/predict", body)
            if status == 200:
                sample.latencies_ms.append((time.perf_counter() - t0) * 1000)
            else:
                sample.errors += 1

    async def sender(k: int, c: EventConnection) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            n += 1
            body = json.dumps({"texts": rng.sample(texts, load.event_texts)}).encode()
            if await c.post_event(body, f"bulk-{seed}-{k}-{n}") == 200:
                sample.bulk_texts += load.event_texts
            else:
                sample.bulk_errors += 1

    t0 = time.perf_counter()
    try:
        await asyncio.gather(
            *(user(c) for c in users), *(sender(k, c) for k, c in enumerate(senders))
        )
    finally:
        for c in (*users, *senders):
            c.close()
    sample.seconds = time.perf_counter() - t0
    return sample


def start_server(
    name: str, env: dict[str, str], log_dir: Path, extra: dict[str, str]
) -> LocalFunction:
    """One function, ready; SystemExit with its log tail if it is not."""
    return launch_ready(
        {"HOST": LOOPBACK, "LOG_LEVEL": "warning", "LOG_FORMAT": "text", **env, **extra},
        log_path=log_dir / f"priorities-{name}.log",
    )


def run(
    sets: int, rounds: int, seconds: float, load: Load, extra: dict[str, str]
) -> dict[str, Any]:
    """Both scenarios against both servers, alternating; pooled samples per (server, scenario)."""
    pooled: dict[str, dict[str, list[Sample]]] = {s: {c: [] for c in SCENARIOS} for s in SERVERS}
    seed = 0
    with tempfile.TemporaryDirectory(prefix="priorities-") as tmp:
        for n in range(sets):
            print(f"server set {n + 1}/{sets}", file=sys.stderr)
            servers = {k: start_server(k, env, Path(tmp), extra) for k, env in SERVERS.items()}
            try:
                for name in servers:  # warm-up: connections, thread pools, first runs
                    asyncio.run(drive(servers[name].base_url, load, "bulk", 1.0, 0))
                for r in range(rounds):
                    names = order(list(servers), rounds)[r * len(servers) : (r + 1) * len(servers)]
                    scenarios = SCENARIOS if r % 2 == 0 else SCENARIOS[::-1]
                    for scenario in scenarios:
                        seed += 1
                        for name in names:
                            url = servers[name].base_url
                            sample = asyncio.run(drive(url, load, scenario, seconds / rounds, seed))
                            pooled[name][scenario].append(sample)
                    print(f"  round {r + 1}/{rounds}", file=sys.stderr)
            finally:
                for server in servers.values():
                    stop(server, timeout_s=30)
    return summarise(pooled)


def _percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def summarise(pooled: dict[str, dict[str, list[Sample]]]) -> dict[str, Any]:
    """Per server and scenario: interactive p50/p99 and req/s, bulk texts/s, errors."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for server, scenarios in pooled.items():
        for scenario, samples in scenarios.items():
            latencies = [x for s in samples for x in s.latencies_ms]
            secs = sum(s.seconds for s in samples)
            table.setdefault(scenario, {})[server] = {
                "requests": len(latencies),
                "p50_ms": round(_percentile(latencies, 0.5), 2),
                "p99_ms": round(_percentile(latencies, 0.99), 2),
                "req_per_s": round(len(latencies) / secs, 2) if secs else 0.0,
                "bulk_texts_per_s": round(sum(s.bulk_texts for s in samples) / secs, 1)
                if secs
                else 0.0,
                "errors": sum(s.errors + s.bulk_errors for s in samples),
                "seconds": round(secs, 2),
            }
    return {"scenarios": table}


def render(result: dict[str, Any]) -> str:
    """The printed table (also the README's)."""
    lines = [
        "| Scenario | PRIORITIES | interactive p50 ms | p99 ms | req/s | bulk texts/s | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for scenario, by in result["scenarios"].items():
        for server, r in by.items():
            lines.append(
                f"| {scenario} | {server} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['req_per_s']:.1f} | {r['bulk_texts_per_s']:.0f} | {r['errors']} |"
            )
    return "\n".join(lines)


BEGIN = "<!-- priorities: generated by `python -m benchmarks.priorities --readme`; do not edit -->"
END = "<!-- /priorities -->"


def readme_section(result: dict[str, Any] | None) -> str:
    """The README's figures, from a results file (or a note that there is none yet)."""
    if result is None:
        body = "Not measured yet: run `make bench-priorities`."
    else:
        m = result["meta"]
        body = (
            f"`make bench-priorities` on {m['cpus']} CPUs, model {m['model']}, {m['sets']} server "
            f"pairs x {m['rounds']} alternating rounds x {m['seconds']:.0f} s per server and "
            f"scenario: {m['concurrency']} interactive users (/predict, one text), and in `bulk` "
            f"also {m['bulk']} senders of CloudEvents with {m['event_texts']} texts each, back "
            "to back (default lane: low)."
            + (" A quick run: indicative only." if m["quick"] else "")
            + "\n\n"
            + render(result)
        )
    return f"{BEGIN}\n{body}\n{END}"


def write_readme(result: dict[str, Any] | None, readme: Path = ROOT / "README.md") -> None:
    """Replace the section between the markers in the README."""
    readme_blocks.replace(readme_section(result), BEGIN, END, readme)


def main(argv: list[str] | None = None, *, now: Callable[[], float] = time.time) -> None:
    """Measure (or, with --readme, only regenerate the README section)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "minilm-sentiment-int8")
    p.add_argument("--sets", type=int, default=2, help="fresh server pairs (processes)")
    p.add_argument("--rounds", type=int, default=4, help="alternating passes per set")
    p.add_argument(
        "--seconds", type=float, default=8.0, help="measured s per server, scenario, set"
    )
    p.add_argument("--concurrency", type=int, default=4, help="interactive users")
    p.add_argument("--bulk", type=int, default=2, help="bulk CloudEvents senders")
    p.add_argument("--event-texts", type=int, default=64, help="texts per bulk event")
    p.add_argument("--threads", default="", help="ORT_INTRA_OP_THREADS (default: CPU quota)")
    p.add_argument(
        "--max-wait-ms", default="", help="PRIORITY_MAX_WAIT_MS (default: the setting's)"
    )
    p.add_argument("--quick", action="store_true", help="a few seconds in all: checks the harness")
    p.add_argument("--out", type=Path, default=None, help="results file")
    p.add_argument("--readme", action="store_true", help="update README.md from the results file")
    a = p.parse_args(argv)
    out = a.out or (QUICK_RESULTS if a.quick else RESULTS)
    if a.readme:
        write_readme(json.loads(out.read_text()) if out.exists() else None)
        return
    if a.quick:
        a.sets, a.rounds, a.seconds = 1, 2, 2.0
    extra = {"MODEL_DIR": str(a.model_dir)}
    if a.threads:
        extra["ORT_INTRA_OP_THREADS"] = a.threads
    if a.max_wait_ms:
        extra["PRIORITY_MAX_WAIT_MS"] = a.max_wait_ms
    load = Load(a.concurrency, a.bulk, a.event_texts)
    started, loadavg = now(), os.getloadavg()[0]
    result = run(a.sets, a.rounds, a.seconds, load, extra)
    result["meta"] = {
        "model": a.model_dir.name,
        "sets": a.sets,
        "rounds": a.rounds,
        "seconds": a.seconds,
        "concurrency": a.concurrency,
        "bulk": a.bulk,
        "event_texts": a.event_texts,
        "cpus": os.cpu_count(),
        "load_average_at_start": round(loadavg, 2),
        "duration_s": round(now() - started, 1),
        "quick": a.quick,
        "servers": SERVERS,
        "priority_max_wait_ms": a.max_wait_ms or "default",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
