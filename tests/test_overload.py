"""Backpressure: many clients against small limits get 200, or 429/503 with Retry-After."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer

CLIENTS = 48
REQUESTS_PER_CLIENT = 4
TEXTS = [f"Item {i}: decent value, though delivery took far too long this time." for i in range(8)]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


async def storm(url: str) -> list[httpx.Response | BaseException]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one_client(k: int) -> list[httpx.Response | BaseException]:
            out: list[httpx.Response | BaseException] = []
            for _ in range(REQUESTS_PER_CLIENT):
                try:
                    out.append(await client.post("/predict", json={"texts": TEXTS}))
                except httpx.HTTPError as e:
                    out.append(e)
            return out

        per_client = await asyncio.gather(*(one_client(k) for k in range(CLIENTS)))
    return [r for rs in per_client for r in rs]


@pytest.mark.integration
@pytest.mark.slow
def test_overload_answers_every_request_with_200_or_a_retryable_status(
    live_server: Callable[..., LiveServer],
) -> None:
    server = live_server(
        {
            "ORT_INTRA_OP_THREADS": "1",
            "MAX_CONCURRENCY": "4",
            "MAX_QUEUED_TEXTS": "24",
            "BATCH_MAX_SIZE": "16",
        }
    )
    asyncio.run(storm(server.url))  # first storm: arenas and pools reach their working size
    before = rss_kib(server.proc.pid)
    results: list[httpx.Response | BaseException] = []
    for _ in range(3):
        results += asyncio.run(storm(server.url))
    after = rss_kib(server.proc.pid)

    # No lost request: every one got an HTTP answer (no reset, no timeout).
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    responses = [r for r in results if isinstance(r, httpx.Response)]
    assert len(responses) == 3 * CLIENTS * REQUESTS_PER_CLIENT
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] > 0
    assert statuses[429] > 0, "the limits were never reached: the test did not overload"
    for r in responses:
        if r.status_code == 200:
            assert len(r.json()["results"]) == len(TEXTS)
        else:
            assert int(r.headers["retry-after"]) >= 0
            assert r.json()["error"]["type"] in {"overloaded", "not_ready"}
    # Bounded memory: three more storms do not grow the process beyond noise.
    assert after - before < 64 * 1024, f"RSS grew from {before} KiB to {after} KiB"
    assert "unexpected error" not in server.logs()
