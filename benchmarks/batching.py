"""Micro-batching benchmark: throughput and p50/p99 at concurrency 1, 8 and 32, batching on and off.

Starts `python -m functions.sentiment` on a loopback port twice (BATCHING=true, then false), drives
each with closed-loop asyncio users (one keep-alive connection each) that POST one short text to
/predict, and prints a table plus the two targets of the batching design: at concurrency 32
batching on should give >= 1.5x the throughput of batching off, and at concurrency 1 its p50
should be within 10 % of off. The table's last column is the mean ONNX batch size (server side).

    python -m benchmarks.batching [--model-dir models/minilm-sentiment-int8] [--seconds 12]

Not a test: the figures depend on the machine. Bounded: about (2 + seconds) x 6 plus two start-ups.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtests.local import LOOPBACK, ROOT, LocalFunction, StartError, launch, stop, wait_ready

LEVELS = (1, 8, 32)
WARMUP_S = 2.0

_OPENERS = ["The film", "This phone", "Our stay", "The service", "The book", "Dinner", "The update"]
_MIDDLES = [
    "was far better than I expected",
    "fell apart after two days",
    "is fine, nothing special",
    "made the whole trip worthwhile",
    "crashes every time I open it",
    "arrived late and cold",
    "has a gripping plot and a moving ending",
]
_ENDINGS = ["", ".", "!", ", honestly.", " and I would do it again.", " but the price is too high."]


def sample_texts(n: int = 512, seed: int = 0) -> list[str]:
    """Short review-like texts (roughly 8-30 tokens), the same every run."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(_OPENERS)} {rng.choice(_MIDDLES)}{rng.choice(_ENDINGS)}" for _ in range(n)
    ]


@dataclass(frozen=True)
class Result:
    """One measured level."""

    batching: bool
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    mean_batch: float

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return (self.requests - self.errors) / self.seconds


def start(
    model_dir: Path, batching: bool, extra_env: dict[str, str], log_dir: Path
) -> LocalFunction:
    """The function on a loopback port, ready; SystemExit with its log tail if it is not."""
    env = {
        "HOST": LOOPBACK,
        "MODEL_DIR": str(model_dir),
        "BATCHING": "true" if batching else "false",
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "text",
        "MAX_CONCURRENCY": "256",
        **extra_env,
    }
    server = launch(env, log_path=log_dir / f"batching-{'on' if batching else 'off'}.log")
    try:
        wait_ready(server)
    except StartError as e:
        stop(server)
        raise SystemExit(str(e)) from e
    return server


def batch_totals(metrics: str) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    total = re.search(r"^kubesentiment_batch_size_sum\{[^}]*\} (\S+)$", metrics, re.M)
    count = re.search(r"^kubesentiment_batch_size_count\{[^}]*\} (\S+)$", metrics, re.M)
    return (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator shares the machine's cores with
    the server, so it must cost far less per request than the server does (httpx costs ~1 ms)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        """Connect to `http://HOST:PORT`."""
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer)

    async def post_json(self, path: str, body: bytes) -> int:
        """POST and read the whole response; the status code."""
        self.writer.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        """Close the socket."""
        self.writer.close()


async def drive(
    url: str, concurrency: int, seconds: float, texts: list[str]
) -> tuple[list[float], int, int]:
    """Closed-loop users for `seconds`: (latencies of 200s in s, requests, non-200 answers)."""
    latencies: list[float] = []
    counts = [0, 0]
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    connections = [await Connection.open(url) for _ in range(concurrency)]
    stop = time.perf_counter() + seconds

    async def user(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            status = await connections[k].post_json("/predict", bodies[i % len(bodies)])
            elapsed = time.perf_counter() - t0
            counts[0] += 1
            if status == 200:
                latencies.append(elapsed)
            else:
                counts[1] += 1
            i += concurrency

    try:
        await asyncio.gather(*(user(k) for k in range(concurrency)))
    finally:
        for c in connections:
            c.close()
    return latencies, counts[0], counts[1]


def measure_level(
    url: str, level: int, seconds: float, texts: list[str]
) -> tuple[list[float], int, int, float, float, float]:
    """One timed run at one concurrency: latencies, requests, errors, seconds, texts, runs."""
    asyncio.run(drive(url, level, WARMUP_S, texts))
    before = batch_totals(httpx.get(f"{url}/metrics").text)
    t0 = time.perf_counter()
    latencies, requests, errors = asyncio.run(drive(url, level, seconds, texts))
    elapsed = time.perf_counter() - t0
    after = batch_totals(httpx.get(f"{url}/metrics").text)
    return latencies, requests, errors, elapsed, after[0] - before[0], after[1] - before[1]


def measure(urls: dict[bool, str], seconds: float, texts: list[str]) -> list[Result]:
    """Every level against both servers, in on/off/off/on order (ABBA), half the time each.

    Alternating cancels drift on a shared machine (warm-up, other load) that would otherwise
    favour whichever server is measured second.
    """
    out = []
    for level in LEVELS:
        runs: dict[bool, list[tuple[list[float], int, int, float, float, float]]] = {
            True: [],
            False: [],
        }
        for batching in (True, False, False, True):
            runs[batching].append(measure_level(urls[batching], level, seconds / 2, texts))
            print(f"  measured batching={'on' if batching else 'off'} c={level}", file=sys.stderr)
        for batching in (True, False):
            latencies = [x for r in runs[batching] for x in r[0]]
            qs = statistics.quantiles(latencies, n=100, method="inclusive")
            texts_run = sum(r[4] for r in runs[batching])
            n_runs = sum(r[5] for r in runs[batching])
            out.append(
                Result(
                    batching=batching,
                    concurrency=level,
                    requests=sum(r[1] for r in runs[batching]),
                    errors=sum(r[2] for r in runs[batching]),
                    seconds=sum(r[3] for r in runs[batching]),
                    p50_ms=statistics.median(latencies) * 1000,
                    p99_ms=qs[98] * 1000,
                    mean_batch=texts_run / n_runs if n_runs else 0.0,
                )
            )
    return sorted(out, key=lambda r: (not r.batching, r.concurrency))


def table(results: list[Result]) -> str:
    """The printed table and the two target checks."""
    lines = [
        f"{'batching':<9}{'conc':>5}{'requests':>10}{'errors':>8}{'req/s':>9}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'mean batch':>12}"
    ]
    for r in results:
        lines.append(
            f"{'on' if r.batching else 'off':<9}{r.concurrency:>5}{r.requests:>10}{r.errors:>8}"
            f"{r.throughput:>9.1f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.mean_batch:>12.2f}"
        )
    by = {(r.batching, r.concurrency): r for r in results}
    speedup = by[True, 32].throughput / by[False, 32].throughput
    p50_ratio = by[True, 1].p50_ms / by[False, 1].p50_ms
    lines.append(
        f"c=32 throughput on/off: {speedup:.2f}x (target >= 1.5x: "
        f"{'met' if speedup >= 1.5 else 'MISSED'})"
    )
    lines.append(
        f"c=1 p50 on/off: {p50_ratio:.3f} (target <= 1.10: "
        f"{'met' if p50_ratio <= 1.10 else 'MISSED'})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run both servers, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "minilm-sentiment-int8")
    p.add_argument("--seconds", type=float, default=12.0, help="measured seconds per level")
    p.add_argument("--threads", default="", help="ORT_INTRA_OP_THREADS (default: CPU quota)")
    a = p.parse_args(argv)
    extra = {"ORT_INTRA_OP_THREADS": a.threads} if a.threads else {}
    texts = sample_texts()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="batching-") as tmp:
        # Both servers run throughout; the one not being measured is idle.
        servers = {b: start(a.model_dir, b, extra, Path(tmp)) for b in (True, False)}
        try:
            results += measure({b: s.base_url for b, s in servers.items()}, a.seconds, texts)
        finally:
            for server in servers.values():
                stop(server, timeout_s=30)
    print(f"model: {a.model_dir.name}, {a.seconds:.0f} s per level, cpus: {os.cpu_count()}")
    print(table(results))


if __name__ == "__main__":
    main()
