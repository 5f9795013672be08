"""Recorded canary series: scrapes of a candidate revision's pods, answered by a real Prometheus.

Each case is a traffic profile (requests per second, the share of 5xx, the latency mix, pods
coming and going) turned into the samples two pods of the candidate revision would expose every
15 s, in OpenMetrics: `kubesentiment_http_requests_total` and the latency histogram, with the
labels the PodMonitor adds (`knative_revision`), health-check traffic and a stable revision's
series beside them (which the queries must leave out). `promtool tsdb create-blocks-from
openmetrics` backfills them into a TSDB, the Debian `prometheus` 2.42 serves it, and the
`query_range` answers to `deploy.canary.queries` are saved in tests/canary_fixtures/ as the
fixtures tests/test_deploy_canary.py decides on. Re-record (needs promtool and prometheus):

    .venv/bin/python -m tests.canary_record
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deploy.canary import Live, queries
from shared.metrics import LATENCY_BUCKETS

FIXTURES = Path(__file__).resolve().parent / "canary_fixtures"
REVISION = "sentiment-cpu-int8-adapted-3f9c2a7be1"
STABLE = "sentiment-cpu-int8-00007"
START = 1_765_152_000  # the canary's start (2025-12-08 00:00 UTC), on a step boundary
SCRAPE_S = 15
STEP_S = 60


@dataclass(frozen=True)
class Phase:
    """A stretch of the canary with one traffic mix."""

    minutes: float
    rps: float  # inference requests per second reaching the candidate
    error_share: float = 0.0  # share answered 5xx
    slow_share: float = 0.0  # share taking 0.6-1.0 s instead of 10-40 ms


@dataclass(frozen=True)
class Case:
    """A recorded profile and what it is meant to show."""

    name: str
    phases: tuple[Phase, ...]
    pods: int = 2
    late_pod_minute: float | None = None  # a pod that scales up mid-canary (counters from 0)
    meaning: str = ""
    seed: int = 7
    extra: dict[str, Any] = field(default_factory=dict)


CASES = (
    Case(
        "healthy",
        (Phase(20, 2.5, error_share=0.001),),
        late_pod_minute=6,
        meaning="2.5 req/s for 20 min, 0.1 % 5xx, p99 well under 0.5 s: promote",
    ),
    Case(
        "error_burst",
        (Phase(6, 2.5), Phase(3, 2.5, error_share=0.2), Phase(3, 2.5)),
        meaning="healthy, then 20 % 5xx for 3 min: rollback",
    ),
    Case(
        "slow",
        (Phase(12, 2.5, slow_share=0.03),),
        meaning="3 % of requests take 0.6-1.0 s, so p99 is over 0.5 s: rollback",
    ),
    Case(
        "low_traffic",
        (Phase(60, 0.04),),
        pods=1,
        meaning="~160 requests in an hour (fewer than 200), all fast: wait, then promote at the "
        "deadline",
    ),
    Case(
        "low_traffic_errors",
        (Phase(10, 0.05), Phase(5, 0.05, error_share=0.8)),
        pods=1,
        meaning="a trickle of traffic, then most of it 5xx: more 5xx than the SLO allows in "
        "200 requests, rollback before 200 arrive",
    ),
    Case(
        "no_traffic",
        (Phase(60, 0.0),),
        pods=1,
        meaning="nothing reached the candidate: rollback at the deadline",
    ),
)


def _latency(rng: random.Random, slow: bool) -> float:
    return rng.uniform(0.6, 1.0) if slow else rng.lognormvariate(-3.9, 0.35)  # ~20 ms


def _scrapes(case: Case) -> Iterator[tuple[int, str, dict[tuple[str, ...], float]]]:
    """(timestamp, pod, cumulative counters) for every scrape of every pod of the candidate."""
    rng = random.Random(case.seed)
    pods = [f"{REVISION}-deployment-7d9f-{i}" for i in range(case.pods)]
    if case.late_pod_minute is not None:
        pods.append(f"{REVISION}-deployment-7d9f-late")
    counters: dict[str, dict[tuple[str, ...], float]] = {p: {} for p in pods}
    late_s = 60 * case.late_pod_minute if case.late_pod_minute is not None else 0.0
    t, elapsed = START - 5 * SCRAPE_S, -5 * SCRAPE_S  # the pods started before the canary
    phases = [(p, p.minutes * 60) for p in case.phases]
    end = sum(seconds for _, seconds in phases)
    while elapsed <= end:
        phase = _phase_at(phases, max(elapsed, 0.0))
        live = [p for p in pods if not p.endswith("late") or elapsed >= late_s]
        for pod in live:
            c = counters[pod]
            c[("health", "2xx")] = c.get(("health", "2xx"), 0.0) + SCRAPE_S / 10
            arrivals = _poisson(rng, phase.rps * SCRAPE_S / len(live)) if elapsed > 0 else 0
            for _ in range(arrivals):
                status = "5xx" if rng.random() < phase.error_share else "2xx"
                if rng.random() < 0.01:
                    status = "4xx"  # a client's mistake: traffic, not an error of the revision
                key = ("predict", status)
                c[key] = c.get(key, 0.0) + 1
                seconds = _latency(rng, rng.random() < phase.slow_share)
                c[("sum",)] = c.get(("sum",), 0.0) + seconds
                for le in LATENCY_BUCKETS:
                    if seconds <= le:
                        c[("le", repr(le))] = c.get(("le", repr(le)), 0.0) + 1
                c[("le", "+Inf")] = c.get(("le", "+Inf"), 0.0) + 1
            yield t, pod, dict(c)
        t += SCRAPE_S
        elapsed += SCRAPE_S


def _phase_at(phases: list[tuple[Phase, float]], elapsed: float) -> Phase:
    for phase, seconds in phases:
        if elapsed < seconds:
            return phase
        elapsed -= seconds
    return phases[-1][0]


def _poisson(rng: random.Random, mean: float) -> int:
    count, total = 0, rng.expovariate(1.0) if mean > 0 else float("inf")
    while total < mean:
        count += 1
        total += rng.expovariate(1.0)
    return count


def openmetrics(case: Case) -> str:
    """The candidate's and a stable revision's samples as one OpenMetrics file."""
    rows = list(_scrapes(case))
    requests: list[str] = []
    buckets: list[str] = []
    series_keys = sorted({(pod, key) for _, pod, c in rows for key in c})
    for pod, key in series_keys:
        base = f'knative_revision="{REVISION}",pod="{pod}",variant="cpu-int8"'
        points = [(t, c[key]) for t, p, c in rows if p == pod and key in c]
        if key[0] in ("health", "predict"):
            route = "/health/readiness" if key[0] == "health" else "/predict"
            method = "GET" if key[0] == "health" else "POST"
            labels = f'{base},route="{route}",method="{method}",status_class="{key[1]}"'
            requests += [
                f"kubesentiment_http_requests_total{{{labels}}} {v} {t}" for t, v in points
            ]
        elif key[0] == "le":
            labels = f'{base},route="/predict",method="POST",le="{key[1]}"'
            buckets += [
                f"kubesentiment_http_request_duration_seconds_bucket{{{labels}}} {v} {t}"
                for t, v in points
            ]
    # The stable revision serves the other 90 %, with errors the candidate's queries must not see.
    for t, _, _ in rows[:: case.pods]:
        n = (t - START + 100) * 20
        labels = f'knative_revision="{STABLE}",pod="{STABLE}-a",variant="cpu-int8"'
        labels += ',route="/predict",method="POST",status_class="5xx"'
        requests.append(f"kubesentiment_http_requests_total{{{labels}}} {n} {t}")
    return "\n".join(
        [
            "# TYPE kubesentiment_http_requests counter",
            *requests,
            "# TYPE kubesentiment_http_request_duration_seconds histogram",
            *buckets,
            "# EOF",
            "",
        ]
    )


def _wait(ready: Callable[[], bool], what: str, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready in {deadline_s} s")


def record(case: Case, workdir: Path, port: int) -> dict[str, Any]:
    """Backfill one case into a fresh TSDB, serve it, and return the query_range answers."""
    data = workdir / case.name
    data.mkdir()
    source = workdir / f"{case.name}.om"
    source.write_text(openmetrics(case), encoding="utf-8")
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", str(source), str(data)],
        check=True,
        capture_output=True,
    )
    (workdir / "prometheus.yml").write_text("global: {}\n", encoding="utf-8")
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=100y",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _ok(f"{url}/-/ready"), "prometheus")
        end = START + int(sum(p.minutes for p in case.phases) * 60)
        answers: dict[str, Any] = {
            "case": case.name,
            "meaning": case.meaning,
            "revision": REVISION,
            "start": START,
            "end": end,
            "step": STEP_S,
        }
        for name, query in queries(REVISION, STEP_S).items():
            params = {"query": query, "start": START + STEP_S, "end": end, "step": STEP_S}
            answer = httpx.get(f"{url}/api/v1/query_range", params=params, timeout=30).json()
            assert answer["status"] == "success", answer
            answers[name] = answer
        return answers
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def main() -> None:
    """Record every case into tests/canary_fixtures/."""
    if not (shutil.which("promtool") and shutil.which("prometheus")):
        raise SystemExit("needs promtool and prometheus (apt-get install prometheus)")
    from loadtests.local import free_port

    FIXTURES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            answers = record(case, Path(tmp), free_port())
            path = FIXTURES / f"{case.name}.json"
            path.write_text(json.dumps(answers, indent=1) + "\n", encoding="utf-8")
            live = Live.from_answers(answers["requests"], answers["latency"])
            print(f"{path.name}: {case.meaning}\n  whole recording: {live.summary()}")


if __name__ == "__main__":
    main()
