"""The one load generator: closed-loop keep-alive users, fixed concurrency, warm-up, fixed duration.

    python -m benchmarks.peers.loadgen SPEC.json   # prints one JSON result per phase

SPEC: {"url", "bodies": [JSON strings], "headers", "phases": [{"concurrency", "warmup_s",
"duration_s"}]}. Runs in its own process (uvloop + aiohttp, one keep-alive connection per user),
so its CPU time is its own and is reported (`client_cpu_ms_per_request`) next to each phase.
Every user cycles through the bodies from its own offset, so all systems see the same requests in
the same proportions. Only 200 answers count as successes; other statuses and transport errors are
counted by kind. Throughput and latencies are those of answers completed inside the measured
window; users stop sending at its end and the run waits for answers still in flight.

Why aiohttp: on 2 cores the client takes CPU from the server under test, so the cheapest client
wins, and its own cost is printed with every phase so it can be checked. aiohttp parses HTTP in C
(llhttp) and runs on uvloop; httpx's HTTP/1.1 stack (h11) is pure Python. k6 costs about the same
CPU per request on a trivial server here, but it cannot open the measured window on the server's
steady state or return per-phase latency quantiles and client CPU from one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def quantiles(values: list[float], points: int = 100) -> list[float]:
    """`points` + 1 evenly spaced quantiles (0 = min, points = max) of `values`."""
    if not values:
        return []
    ordered = sorted(values)
    last = len(ordered) - 1
    return [ordered[round(i * last / points)] for i in range(points + 1)]


async def phase(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[bytes],
    headers: dict[str, str],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    settle_limit_s: float = 60.0,
) -> dict[str, Any]:
    """One closed-loop run: warm-up, then the measured window.

    The window opens after `warmup_s` and once every user has had an answer (a slow server at
    high concurrency needs longer than `warmup_s` to reach its steady state), but no later than
    `settle_limit_s`.
    """
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    ok = ok_total = 0
    answered: set[int] = set()
    settled = asyncio.Event()
    window = [float("inf"), float("inf")]  # start, end: set when the warm-up is over
    cpu_at_window: list[float] = []

    async def user(index: int) -> None:
        nonlocal ok, ok_total
        i = index * 7919
        while time.perf_counter() < window[1]:
            body = bodies[i % len(bodies)]
            i += 1
            sent = time.perf_counter()
            kind = ""
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError) as e:
                status, kind = -1, type(e).__name__
            done = time.perf_counter()
            ok_total += status == 200
            answered.add(index)
            if len(answered) == concurrency:
                settled.set()
            # Completions inside the window count (a slow server's answers straddle its start).
            if window[0] <= done <= window[1]:
                if status == 200:
                    ok += 1
                    latencies.append((done - sent) * 1000)
                else:
                    errors[kind or str(status)] += 1

    async def mark() -> None:
        await asyncio.sleep(warmup_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settled.wait(), max(0.0, settle_limit_s - warmup_s))
        window[0] = time.perf_counter()
        window[1] = window[0] + duration_s
        cpu_at_window.append(_cpu_s())

    await asyncio.gather(mark(), *(user(i) for i in range(concurrency)))
    cpu = _cpu_s() - cpu_at_window[0]
    total = ok + sum(errors.values())
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return (
            ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else 0.0
        )

    return {
        "concurrency": concurrency,
        "ok": ok,
        "ok_total": ok_total,
        "errors": dict(errors),
        "seconds": duration_s,
        "rps": ok / duration_s,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "mean_ms": sum(ordered) / len(ordered) if ordered else 0.0,
        "quantiles_ms": quantiles(latencies),
        "client_cpu_ms_per_request": cpu * 1000 / total if total else 0.0,
    }


async def run(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every phase of SPEC, one after another, on one keep-alive connection pool."""
    bodies = [b.encode() for b in spec["bodies"]]
    headers = {"content-type": "application/json", **spec.get("headers", {})}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=spec.get("timeout_s", 60))
    results = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for p in spec["phases"]:
            results.append(
                await phase(
                    session,
                    spec["url"],
                    bodies,
                    headers,
                    int(p["concurrency"]),
                    float(p["warmup_s"]),
                    float(p["duration_s"]),
                )
            )
    return results


def main(argv: list[str]) -> int:
    """Read the spec file, run, print the results as one JSON array."""
    spec = json.loads(Path(argv[0]).read_text())
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is in the serving lock
        pass
    print(json.dumps(asyncio.run(run(spec))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
