"""Failures a pod survives, each shown with real processes: a uvicorn subprocess of the function,
a real OpenBao, a dead OTLP endpoint, a K_SINK receiver that comes and goes, the batch client
killed with SIGKILL. Each live test prints its outcome (run with -s to see it).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cloudevents.core.bindings import http as ce_http
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from functions.sentiment.app import create_app
from functions.sentiment.sink import EventSink
from shared.config import Settings
from shared.errors import SinkFull
from shared.metrics import Metrics
from tests.conftest import ROOT, LiveServer, free_port
from tests.openbao import OpenBao

T = TypeVar("T")
REQUEST_TYPE = "dev.kubesentiment.sentiment.requested"
V2_INFER = "/v2/models/minilm-sentiment/infer"


def poll(probe: Callable[[], T | None], deadline_s: float, what: str) -> T:
    """The first truthy value of `probe()` within the deadline (connection errors count as no)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            value = probe()
        except httpx.TransportError:
            value = None
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The sum of the samples of `name` with these labels in a live /metrics scrape."""
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def post_event(client: httpx.Client, event_id: str, **headers: str) -> httpx.Response:
    """A binary-mode request CloudEvent with one text."""
    ce = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/faults",
        "ce-type": REQUEST_TYPE,
        "content-type": "application/json",
    }
    return client.post("/", headers={**ce, **headers}, json={"texts": [f"event {event_id}"]})


# -- Vault (OpenBao) ------------------------------------------------------------------------------


def retrying(client: httpx.Client, min_attempt: int) -> str | None:
    """Readiness's message once it reports a retried step at attempt `min_attempt` or later."""
    r = client.get("/health/readiness")
    found = re.search(r"\(attempt (\d+), retrying\)$", r.json()["error"]["message"])
    if r.status_code == 503 and found and int(found.group(1)) >= min_attempt:
        return str(r.json()["error"]["message"])
    return None


@pytest.mark.integration
def test_vault_down_at_start_then_up_becomes_ready_without_restart(
    live_server: Callable[..., LiveServer],
) -> None:
    port = free_port()  # OpenBao will listen here, once it is started
    token_id = f"fault-{uuid.uuid4().hex[:12]}"
    server = live_server(
        {
            "VAULT_ADDR": f"http://127.0.0.1:{port}",
            "VAULT_AUTH_METHOD": "token",
            "VAULT_TOKEN": token_id,
            "VAULT_TIMEOUT_SECONDS": "2",
            "API_KEYS": "vault:secret/kubesentiment/faults#keys",
            "STARTUP_TIMEOUT_SECONDS": "60",
        },
        ready=False,
    )
    pid = server.proc.pid
    with httpx.Client(base_url=server.url, timeout=5) as c:
        message = poll(lambda: retrying(c, 3), 30, "readiness naming a retried step")
        # The step and the attempt, never the connection error's text or the address.
        assert re.fullmatch(
            r"not ready: logging in to Vault \(token\) \(attempt \d+, retrying\)", message
        ), message
        assert c.get("/health/liveness").status_code == 200  # alive: Kubernetes must wait
        assert c.post("/predict", json={"text": "x"}).status_code == 503
        bao = OpenBao.start(port=port)
        try:
            bao.token(token_id=token_id)
            bao.put("kubesentiment/faults", {"keys": "fault-key-1"})
            up = time.monotonic()
            server.wait_ready(30)
            waited = time.monotonic() - up
            assert server.proc.poll() is None
            assert server.proc.pid == pid
            auth = {"Authorization": "Bearer fault-key-1"}
            assert c.post("/predict", json={"text": "fine"}, headers=auth).status_code == 200
            assert c.post("/predict", json={"text": "fine"}).status_code == 401
            failed = metric(c, "kubesentiment_secret_failures_total", operation="login")
        finally:
            bao.stop()
    assert failed >= 3
    assert "fault-key-1" not in server.logs()
    assert token_id not in server.logs()
    print(
        f"\n(a) Vault down at start: readiness said {message!r}; ready {waited:.2f} s after "
        f"OpenBao was up with the token and secret, same pid, {failed:g} failed logins counted"
    )


@pytest.mark.integration
def test_vault_stopped_mid_run_keeps_serving_on_cached_secrets(
    live_server: Callable[..., LiveServer],
) -> None:
    bao = OpenBao.start()  # its own server: this test stops it
    try:
        bao.put("kubesentiment/faults", {"keys": "cached-key-1"})
        # A 3 s token is renewed at 2/3 of its TTL (then logged in again): Vault is needed mid-run.
        role_id, secret_id = bao.approle(ttl="3s", max_ttl="1h")
        server = live_server(
            {
                "VAULT_ADDR": bao.url,
                "VAULT_AUTH_METHOD": "approle",
                "VAULT_ROLE_ID": role_id,
                "VAULT_SECRET_ID": secret_id,
                "API_KEYS": "vault:secret/kubesentiment/faults#keys",
            }
        )
        auth = {"Authorization": "Bearer cached-key-1"}
        v2 = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}]}
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert c.post("/predict", json={"text": "good"}, headers=auth).status_code == 200
            bao.stop()
            poll(
                lambda: metric(c, "kubesentiment_secret_failures_total") >= 2,
                20,
                "failed renewals or logins",
            )
            answers = {
                "/predict": c.post("/predict", json={"text": "still"}, headers=auth).status_code,
                "/v2": c.post(V2_INFER, json=v2, headers=auth).status_code,
                "/": post_event(c, "cached-1", **auth).status_code,
                "no key": c.post("/predict", json={"text": "x"}).status_code,
                "readiness": c.get("/health/readiness").status_code,
                "liveness": c.get("/health/liveness").status_code,
            }
            failures = metric(c, "kubesentiment_secret_failures_total")
    finally:
        bao.stop()
    expected = {"/predict": 200, "/v2": 200, "/": 200, "no key": 401}
    assert answers == {**expected, "readiness": 200, "liveness": 200}
    logs = server.logs()
    assert "vault renew failed" in logs or "vault login failed" in logs
    assert "cached-key-1" not in logs
    assert secret_id not in logs
    print(f"\n(b) Vault stopped mid-run: {failures:g} failed renewals/logins; answers {answers}")


def test_a_start_step_that_cannot_succeed_fails_liveness_after_the_deadline(
    settings: Settings,
) -> None:
    bad = replace(
        settings, model_dir=settings.model_dir.parent / "does-not-exist", startup_timeout_s=0.3
    )
    with TestClient(create_app(bad), raise_server_exceptions=False) as c:
        assert c.get("/health/liveness").status_code == 200  # before the deadline
        poll(lambda: c.get("/health/liveness").status_code == 503, 10, "liveness to fail")
        assert c.get("/v2/health/live").status_code == 503
        message = c.get("/health/readiness").json()["error"]["message"]
    assert message.startswith("not ready: start-up did not finish within 0.3 s (start-up failed")
    assert "loading the model" in message
    assert "does-not-exist" not in message


# -- OTLP collector -------------------------------------------------------------------------------


@pytest.mark.integration
def test_dead_otlp_collector_leaves_requests_prompt(live_server: Callable[..., LiveServer]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every export is refused
    common = {"ORT_INTRA_OP_THREADS": "1", "SHUTDOWN_TIMEOUT_SECONDS": "3"}
    traced = live_server(
        {
            **common,
            "OTEL_EXPORTER_OTLP_ENDPOINT": dead,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
            # Export every 100 ms into a small bounded queue, so failed exports and a full
            # queue both happen while requests are measured.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_BSP_MAX_QUEUE_SIZE": "64",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "32",
        }
    )
    plain = live_server(common)
    seconds: dict[str, list[float]] = {"traced": [], "plain": []}
    traceparents = 0
    with httpx.Client(timeout=10) as c:
        for i in range(160):
            for name, server in (("traced", traced), ("plain", plain)):
                t0 = time.perf_counter()
                r = c.post(f"{server.url}/predict", json={"text": f"request {i} was fine"})
                elapsed = time.perf_counter() - t0
                assert r.status_code == 200, r.text
                traceparents += name == "traced" and "traceparent" in r.headers
                if i >= 10:  # the first requests warm connections and caches
                    seconds[name].append(elapsed)
    assert traceparents == 160  # tracing really is on in the traced function
    median = {name: statistics.median(v) * 1000 for name, v in seconds.items()}
    # A correctness bound, not a timing goal: exports happen on the SDK's own thread.
    assert median["traced"] - median["plain"] <= 50, median
    t0 = time.monotonic()
    status = traced.stop(30)
    stop_s = time.monotonic() - t0
    # The span flush gets only what is left of the 3 s shutdown deadline.
    assert status == 0, traced.logs()[-2000:]
    assert stop_s < 3 + 2, (stop_s, traced.logs()[-2000:])
    print(
        f"\n(c) OTLP collector down: median {median['traced']:.2f} ms traced to a dead "
        f"endpoint vs {median['plain']:.2f} ms untraced (150 requests each); SIGTERM to exit "
        f"{stop_s:.2f} s, status {status}"
    )


# -- K_SINK ---------------------------------------------------------------------------------------


class SinkReceiver:
    """A local K_SINK on a given port that records every event posted to it."""

    def __init__(self, port: int) -> None:
        self.events: list[Any] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                message = ce_http.HTTPMessage(headers=headers, body=body)
                receiver.events.append(ce_http.from_binary_event(message))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.integration
def test_k_sink_down_then_up_delivers_with_a_bounded_queue(
    live_server: Callable[..., LiveServer],
) -> None:
    port = free_port()  # the sink will listen here, later
    server = live_server(
        {"K_SINK": f"http://127.0.0.1:{port}/", "SINK_MAX_PENDING": "4", "RETRY_AFTER_SECONDS": "1"}
    )
    pending = "kubesentiment_sink_pending"
    with httpx.Client(base_url=server.url, timeout=10) as c:
        accepted = [f"e{i}" for i in range(4)]
        for event_id in accepted:
            assert post_event(c, event_id).status_code == 200
        refused = [post_event(c, f"x{i}") for i in range(6)]
        peak = metric(c, pending)
        assert [r.status_code for r in refused] == [503] * 6
        assert {r.headers["retry-after"] for r in refused} == {"1"}
        assert {r.json()["error"]["type"] for r in refused} == {"sink_full"}
        assert peak == 4  # memory bounded: never more than SINK_MAX_PENDING
        assert metric(c, "kubesentiment_rejected_requests_total", reason="sink_full") == 6
        receiver = SinkReceiver(port)
        try:
            poll(lambda: len(receiver.events) >= 4, 20, "the held events to reach the sink")
            poll(lambda: metric(c, pending) == 0, 10, "the queue to empty")
            assert post_event(c, "late").status_code == 200  # room again
            poll(lambda: len(receiver.events) >= 5, 20, "the late event to reach the sink")
            # Counted once the sink's answer is back, a moment after the receiver saw the event.
            sent_total = "kubesentiment_events_sent_total"
            poll(lambda: metric(c, sent_total, outcome="success") == 5, 10, "5 events counted")
            sent = {o: metric(c, sent_total, outcome=o) for o in ("success", "failure")}
        finally:
            receiver.close()
    delivered = sorted(e.get_extension("requestid") for e in receiver.events)
    assert delivered == sorted([*accepted, "late"])  # each accepted event once, none refused
    assert sent == {"success": 5, "failure": 0}
    print(
        f"\n(d) K_SINK down then up: 4 events held (pending peaked at {peak:g} = "
        f"SINK_MAX_PENDING), 6 more answered 503 sink_full with Retry-After 1, then "
        f"{len(delivered)} delivered once the sink listened: {delivered}"
    )


def test_sink_reservations_are_bounded_and_given_back() -> None:
    async def body() -> None:
        registry = CollectorRegistry()
        sink = EventSink("http://127.0.0.1:9/", Metrics.create(registry), "v", max_pending=2)
        with sink.reserve(), sink.reserve():
            assert sink.pending == 2
            with pytest.raises(SinkFull) as refused, sink.reserve():
                pass
            assert refused.value.status == 503
            assert refused.value.headers == {"Retry-After": "1"}
        assert sink.pending == 0  # unused reservations (failed requests) are given back
        assert registry.get_sample_value("kubesentiment_sink_pending", {"variant": "v"}) == 0
        await sink.close(0)

    asyncio.run(body())


# -- the batch client -----------------------------------------------------------------------------


@pytest.mark.integration
def test_batch_client_killed_mid_file_then_rerun_writes_every_id_once(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = live_server({"ORT_INTRA_OP_THREADS": "1"})
    n = 1000
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    with source.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"r{i}", "text": f"row {i}: good value, would buy"}) + "\n")
    command = [
        *(sys.executable, "-m", "functions.client", str(source), "-o", str(output)),
        *("--url", server.url, "--batch-size", "8", "--concurrency", "2", "--no-progress"),
    ]

    def lines() -> int:
        return output.read_bytes().count(b"\n") if output.exists() else 0

    first = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: lines() >= 100, 60, "the client to write 100 rows")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    killed_at = lines()
    assert first.returncode == -signal.SIGKILL
    assert killed_at < n, killed_at
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr
    ids = Counter(json.loads(line)["id"] for line in output.read_text().splitlines())
    assert set(ids) == {f"r{i}" for i in range(n)}
    assert set(ids.values()) == {1}, [i for i, k in ids.items() if k > 1][:5]
    print(
        f"\n(e) batch client SIGKILLed after {killed_at} of {n} rows; the rerun said: "
        f"{rerun.stderr.strip().splitlines()[-1]}; {len(ids)} ids, each exactly once"
    )
