"""Graceful shutdown: on SIGTERM readiness turns false and every accepted request is answered."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from starlette.testclient import TestClient

from functions.sentiment.lifecycle import begin_drain
from tests.conftest import LiveServer

# A large batch of medium texts keeps the inference thread busy for a while per request.
BATCH = [
    f"Review {i}: the plot wanders but the acting is strong and the ending works."
    for i in range(256)
]


def in_flight(metrics: str) -> float:
    match = re.search(r"^kubesentiment_http_requests_in_flight\{[^}]*\} (\S+)$", metrics, re.M)
    return float(match.group(1)) if match else 0.0


def wait_until(predicate: Callable[[], bool], deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.integration
@pytest.mark.slow
def test_sigterm_answers_every_request_in_flight(live_server: Callable[..., LiveServer]) -> None:
    server = live_server({"ORT_INTRA_OP_THREADS": "1", "SHUTDOWN_TIMEOUT_SECONDS": "120"})
    n = 6
    with (
        httpx.Client(base_url=server.url, timeout=180) as client,
        ThreadPoolExecutor(n) as pool,
    ):
        futures = [pool.submit(client.post, "/predict", json={"texts": BATCH}) for _ in range(n)]
        # All n requests are inside the app (the metrics scrape itself is one more).
        wait_until(
            lambda: in_flight(client.get("/metrics").text) >= n + 1, 60, "requests in flight"
        )
        server.proc.send_signal(signal.SIGTERM)

        # Readiness turns false at once: the probe gets 503, or no connection at all once the
        # listener is closed; never 200.
        try:
            probe = httpx.get(f"{server.url}/health/readiness", timeout=5)
            assert probe.status_code == 503
        except httpx.TransportError:
            pass
        responses = [f.result() for f in futures]

    assert [r.status_code for r in responses] == [200] * n
    for r in responses:
        assert len(r.json()["results"]) == len(BATCH)
    assert server.proc.wait(120) == 0
    assert "draining" in server.logs()


def test_draining_refuses_new_work_while_accepted_work_completes(client: TestClient) -> None:
    state = client.app.state.kubesentiment  # type: ignore[attr-defined]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client.post, "/predict", json={"texts": BATCH}) for _ in range(4)]
        wait_until(lambda: state.in_flight >= 1, 30, "a request in flight")
        begin_drain(state)
        ready = client.get("/health/readiness")
        refused = client.post("/predict", json={"text": "too late"})
        responses = [f.result() for f in futures]
    assert ready.status_code == 503
    assert "shutting down" in ready.json()["error"]["message"]
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == str(state.settings.retry_after_s)
    # Requests already admitted finish; any that reached the app after the drain began got 503.
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 1
