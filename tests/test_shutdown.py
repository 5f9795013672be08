"""Graceful shutdown: on SIGTERM readiness turns false, every accepted request is answered, and
every shutdown step shares one deadline that ends before the pod's termination grace period."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from functions.sentiment.app import create_app
from functions.sentiment.lifecycle import begin_drain, remaining
from shared.config import Settings
from tests.conftest import ROOT, LiveServer, free_port, model_dir, wait_ready
from tests.test_deploy_manifests import OVERLAYS, render

KNATIVE_DEFAULT_TIMEOUT_S = 300

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
    texts = BATCH[:64]  # about half a second of inference per request on one thread
    n = 4
    event = {
        "ce-specversion": "1.0",
        "ce-id": "late",
        "ce-source": "/test",
        "ce-type": "dev.kubesentiment.sentiment.requested",
    }
    v2 = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["late"]}]}
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(client.post, "/predict", json={"texts": texts}) for _ in range(n)]
        # Every request is admitted (counted in flight) before the drain begins.
        wait_until(lambda: state.in_flight == n, 30, "every request admitted")
        begin_drain(state)
        accepted_at_drain = state.in_flight
        ready = client.get("/health/readiness")
        late = [
            client.post("/predict", json={"text": "too late"}),
            client.post("/", headers=event, json={"texts": ["too late"]}),
            client.post("/v2/models/minilm-sentiment/infer", json=v2),
        ]
        responses = [f.result() for f in futures]
    assert accepted_at_drain == n  # none had finished: the drain really met work in flight
    # Work accepted before the drain: every request answered 200 with every result.
    assert [r.status_code for r in responses] == [200] * n
    for r in responses:
        results = r.json()["results"]
        assert len(results) == len(texts)
        assert all(res["label"] in ("negative", "neutral", "positive") for res in results)
    # Work arriving after it: 503 with Retry-After, on every protocol.
    assert ready.status_code == 503
    assert "shutting down" in ready.json()["error"]["message"]
    assert [r.status_code for r in late] == [503] * 3
    assert {r.headers["retry-after"] for r in late} == {str(state.settings.retry_after_s)}


def test_every_shutdown_step_gets_what_is_left_of_one_deadline(settings: Settings) -> None:
    app = create_app(replace(settings, shutdown_timeout_s=0.5, warmup=False))
    state = app.state.kubesentiment
    given: list[float] = []

    async def stuck_closer() -> None:  # a flush that would never end on its own
        given.append(remaining(state))
        await asyncio.sleep(60)

    state.closers.append(stuck_closer)
    with TestClient(app) as c:
        wait_ready(c)
        begin_drain(state)  # SIGTERM: the deadline is set here, once
        deadline = state.drain_deadline
        begin_drain(state)
        assert state.drain_deadline == deadline
        t0 = time.monotonic()
    took = time.monotonic() - t0  # leaving the block runs the lifespan shutdown
    assert 0 < given[0] <= 0.5
    assert took < 0.5 + 0.3, took


@pytest.mark.integration
def test_sigterm_with_work_beyond_the_deadline_exits_in_time(
    live_server: Callable[..., LiveServer],
) -> None:
    server = live_server({"ORT_INTRA_OP_THREADS": "1", "SHUTDOWN_TIMEOUT_SECONDS": "1"})
    n = 4  # about 9 s of inference: far more than the 1 s deadline
    with (
        httpx.Client(base_url=server.url, timeout=30) as client,
        ThreadPoolExecutor(n) as pool,
    ):
        futures = [pool.submit(client.post, "/predict", json={"texts": BATCH}) for _ in range(n)]
        wait_until(
            lambda: in_flight(client.get("/metrics").text) >= n + 1, 30, "requests in flight"
        )
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        status = server.proc.wait(30)
        took = time.monotonic() - t0
        for f in futures:
            f.exception()  # answered or cut off; only the exit time is asserted here
    assert status == 0
    # Every step shared the 1 s deadline: uvicorn's drain used it, the rest got what was left.
    assert took < 1 + 1.0, (took, server.logs()[-2000:])


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        *(
            pytest.param(var, value, id=f"{var}={value}")
            for var in ("SHUTDOWN_TIMEOUT_SECONDS", "STARTUP_TIMEOUT_SECONDS")
            for value in ("0", "-5", "inf", "nan")
        ),
        # The OpenTelemetry SDK's own variables are checked at start too.
        pytest.param("OTEL_BSP_MAX_QUEUE_SIZE", "-3", id="OTEL_BSP_MAX_QUEUE_SIZE=-3"),
    ],
)
def test_bad_timeouts_are_refused_at_start(variable: str, value: str) -> None:
    env = {**os.environ, "MODEL_DIR": str(model_dir()), "PORT": str(free_port()), variable: value}
    if variable.startswith("OTEL_"):
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"
    done = subprocess.run(
        [sys.executable, "-m", "functions.sentiment"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert variable in done.stderr
    assert "Traceback" not in done.stderr


def services() -> list[Any]:
    """Every rendered Knative Service that runs the function, in every overlay."""
    params = []
    for overlay in OVERLAYS:
        for doc in render(overlay):
            labels = doc["metadata"].get("labels", {})
            if doc["kind"] == "Service" and "kubesentiment.dev/variant" in labels:
                name = f"{overlay}/{doc['metadata']['name']}"
                params.append(pytest.param(doc, id=name))
    return params


@pytest.mark.parametrize("service", services())
def test_shutdown_deadline_is_below_the_termination_grace(service: dict[str, Any]) -> None:
    spec = service["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    timeouts = ("SHUTDOWN_TIMEOUT_SECONDS", "STARTUP_TIMEOUT_SECONDS")
    settings = Settings.from_env({k: v for k, v in env.items() if k in timeouts})
    # Knative gives the pod terminationGracePeriodSeconds = the revision's timeoutSeconds
    # (default 300, config-defaults revision-timeout-seconds); SIGKILL follows at its end.
    grace = float(spec.get("timeoutSeconds", KNATIVE_DEFAULT_TIMEOUT_S))
    assert settings.shutdown_timeout_s < grace
    # Liveness fails once start-up outlives STARTUP_TIMEOUT_SECONDS; the kubelet restarts the pod
    # after failureThreshold failed probes, which must come before Knative gives up on the
    # revision (its progress deadline).
    probe = container["livenessProbe"]
    assert probe["httpGet"]["path"] in ("/health/liveness", "/v2/health/live")
    restart_after = max(
        settings.startup_timeout_s, probe.get("initialDelaySeconds", 0)
    ) + probe.get("failureThreshold", 3) * probe.get("periodSeconds", 10)
    annotations = service["spec"]["template"].get("metadata", {}).get("annotations", {})
    deadline = annotations.get("serving.knative.dev/progress-deadline", "600s")
    assert restart_after < float(deadline.removesuffix("s")), (restart_after, deadline)
