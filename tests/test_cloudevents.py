"""CloudEvents at `POST /`, sent and read with the CloudEvents SDK (`cloudevents.core`)."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from functions.sentiment.events import REQUEST_TYPE, RESPONSE_TYPE
from functions.sentiment.sink import EventSink
from shared.backoff import Backoff
from shared.config import Settings
from shared.metrics import Metrics

SOURCE = "/tests/producer"


def request_event(data: Any, **attributes: Any) -> CloudEvent:
    return CloudEvent({"type": REQUEST_TYPE, "source": SOURCE, **attributes}, data)


def send(client: TestClient, event: CloudEvent, *, structured: bool) -> httpx.Response:
    message = ce_http.to_structured_event(event) if structured else ce_http.to_binary_event(event)
    return client.post("/", headers=message.headers, content=message.body)


def reply_of(response: httpx.Response) -> BaseCloudEvent:
    assert response.status_code == 200, response.text
    return ce_http.from_http_event(
        ce_http.HTTPMessage(headers=dict(response.headers), body=response.content)
    )


def results(event: BaseCloudEvent) -> list[dict[str, Any]]:
    data = event.get_data()
    assert isinstance(data, dict)
    out: list[dict[str, Any]] = data["results"]
    return out


@pytest.fixture
def ce_settings(settings: Settings) -> Settings:
    return replace(settings, max_texts=1000)


@pytest.fixture
def ce_client(ce_settings: Settings, make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(ce_settings)


@pytest.mark.parametrize(
    "structured", [pytest.param(False, id="binary"), pytest.param(True, id="structured")]
)
def test_reply_event_links_to_the_request(
    ce_client: TestClient, ce_settings: Settings, structured: bool
) -> None:
    event = request_event({"texts": ["I love it", "I hate it"]}, subject="batch-7")
    response = send(ce_client, event, structured=structured)
    reply = reply_of(response)

    # The reply comes back in the request's content mode.
    if structured:
        assert response.headers["content-type"].startswith("application/cloudevents+json")
    else:
        assert response.headers["ce-type"] == RESPONSE_TYPE
    assert reply.get_type() == RESPONSE_TYPE != REQUEST_TYPE
    assert reply.get_source() == ce_settings.event_source
    assert reply.get_specversion() == "1.0"
    assert reply.get_subject() == "batch-7"
    assert reply.get_extension("requestid") == event.get_id()
    assert reply.get_id() != event.get_id()
    out = results(reply)
    assert len(out) == 2
    for r in out:
        assert r["label"] in r["probabilities"]
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert r["variant"] == ce_settings.variant


def test_subject_defaults_to_the_request_id(ce_client: TestClient) -> None:
    event = request_event({"items": [{"id": "a", "text": "fine"}]})
    reply = reply_of(send(ce_client, event, structured=True))
    assert reply.get_subject() == event.get_id()
    assert results(reply)[0]["id"] == "a"


def test_bad_items_get_per_item_errors_and_the_rest_are_answered(ce_client: TestClient) -> None:
    items = [
        {"id": 1, "text": "good"},
        {"id": 2, "text": ""},
        {"id": 3, "text": "   "},
        {"id": 4},
        {"id": 5, "text": "also good"},
        {"id": 6, "text": 42},
    ]
    out = results(reply_of(send(ce_client, request_event({"items": items}), structured=False)))
    assert [r.get("id") for r in out] == [1, 2, 3, 4, 5, 6]
    assert ["error" in r for r in out] == [False, True, True, True, False, True]
    assert out[1]["error"]["type"] == "invalid_input"
    assert "empty" in out[1]["error"]["message"]
    assert "missing 'text'" in out[3]["error"]["message"]
    assert "label" in out[4]


def test_a_thousand_items_are_each_answered_once_in_order(ce_client: TestClient) -> None:
    bad = {17, 500, 999}
    items = [
        {"id": i, "text": "" if i in bad else f"review number {i}: {'great ' * (i % 7)}film"}
        for i in range(1000)
    ]
    out = results(reply_of(send(ce_client, request_event({"items": items}), structured=True)))
    assert [r["id"] for r in out] == list(range(1000))
    assert {r["id"] for r in out if "error" in r} == bad
    assert all("label" in r for r in out if r["id"] not in bad)


def test_concurrent_events_each_get_their_own_items_back_in_order(ce_client: TestClient) -> None:
    def one(k: int) -> tuple[str, str | None, list[Any]]:
        items = [
            {"id": f"{k}-{i}", "text": f"event {k} text {i} " * (1 + i % 5)} for i in range(40)
        ]
        event = request_event({"items": items})
        reply = reply_of(send(ce_client, event, structured=k % 2 == 0))
        return event.get_id(), reply.get_extension("requestid"), [r["id"] for r in results(reply)]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(16)))
    for k, (sent_id, reply_to, ids) in enumerate(answers):
        assert reply_to == sent_id
        assert ids == [f"{k}-{i}" for i in range(40)]


BINARY = {
    "ce-id": "e1",
    "ce-source": SOURCE,
    "ce-type": REQUEST_TYPE,
    "ce-specversion": "1.0",
    "content-type": "application/json",
}


@pytest.mark.parametrize(
    ("headers", "body", "status", "error_type"),
    [
        pytest.param(
            {**BINARY, "ce-id": None}, b'{"texts": ["a"]}', 400, "invalid_event", id="no-id"
        ),
        pytest.param(
            {**BINARY, "ce-specversion": "0.3"}, b'{"texts": ["a"]}', 400, "invalid_event", id="v03"
        ),
        pytest.param(BINARY, b'{"texts": ["a"', 400, "invalid_event", id="data-not-json"),
        pytest.param(BINARY, b'["a"]', 400, "invalid_event", id="data-not-object"),
        pytest.param(BINARY, b'{"texts": []}', 400, "invalid_event", id="no-texts"),
        pytest.param(BINARY, b'{"texts": "a"}', 400, "invalid_event", id="texts-not-list"),
        pytest.param(BINARY, b'{"text": "a"}', 400, "invalid_event", id="wrong-field"),
        pytest.param(
            BINARY, b'{"texts": ["a"], "items": []}', 400, "invalid_event", id="texts-and-items"
        ),
        pytest.param(
            {"content-type": "application/cloudevents+json"},
            b'{"id": "x", "source": "/s", "type": "t"',
            400,
            "invalid_event",
            id="structured-bad-json",
        ),
        pytest.param(
            {"content-type": "application/cloudevents+json"},
            json.dumps({"source": "/s", "type": REQUEST_TYPE, "specversion": "1.0"}).encode(),
            400,
            "invalid_event",
            id="structured-no-id",
        ),
        pytest.param(
            {"content-type": "application/json"},
            b'{"texts": ["a"]}',
            400,
            "invalid_event",
            id="not-a-cloudevent",
        ),
        pytest.param(
            {**BINARY, "ce-type": "com.example.other"},
            b'{"texts": ["a"]}',
            400,
            "unsupported_event_type",
            id="unknown-type",
        ),
        pytest.param(
            {**BINARY, "ce-type": RESPONSE_TYPE},
            b'{"results": []}',
            400,
            "unsupported_event_type",
            id="own-reply-type",
        ),
    ],
)
def test_malformed_events_get_400_in_the_one_error_shape(
    ce_client: TestClient,
    headers: dict[str, str | None],
    body: bytes,
    status: int,
    error_type: str,
) -> None:
    sent = {k: v for k, v in headers.items() if v is not None}
    response = ce_client.post("/", headers=sent, content=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


def test_too_many_items_is_a_malformed_event(
    settings: Settings, make_client: Callable[..., TestClient]
) -> None:
    client = make_client(replace(settings, max_texts=3))
    response = send(client, request_event({"texts": ["a", "b", "c", "d"]}), structured=False)
    assert response.status_code == 400
    assert "limit of 3" in response.json()["error"]["message"]


def test_overload_and_draining_answer_retryable_statuses_with_retry_after(
    ce_client: TestClient,
) -> None:
    state = ce_client.app.state.kubesentiment  # type: ignore[attr-defined]
    event = request_event({"texts": ["ok"]})
    state.in_flight = state.settings.max_concurrency
    try:
        response = send(ce_client, event, structured=False)
    finally:
        state.in_flight = 0
    assert response.status_code == 429
    assert response.headers["retry-after"] == str(state.settings.retry_after_s)
    assert response.json()["error"]["type"] == "overloaded"

    state.draining = True
    response = send(ce_client, event, structured=True)
    state.draining = False
    assert response.status_code == 503
    assert "retry-after" in response.headers


def test_a_traceparent_on_the_event_continues_in_the_reply(ce_client: TestClient) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    event = request_event({"texts": ["ok"]}, traceparent=f"00-{trace_id}-00f067aa0ba902b7-01")
    reply = reply_of(send(ce_client, event, structured=False))
    traceparent = reply.get_extension("traceparent")
    assert isinstance(traceparent, str)
    assert traceparent.split("-")[1] == trace_id


def test_openapi_describes_the_cloudevents_and_v2_routes(ce_client: TestClient) -> None:
    paths = ce_client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/"]
    for path in ("/v2", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/infer"):
        assert path in paths


class SinkReceiver:
    """A loopback HTTP server standing in for a Broker: fails the first `failures` posts."""

    def __init__(self, failures: int, status: int = 503) -> None:
        self.failures = failures
        self.status = status
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.attempts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.attempts += 1
                if receiver.attempts <= receiver.failures:
                    self.send_response(receiver.status)
                    self.send_header("Retry-After", "0")
                else:
                    receiver.received.append(
                        ({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[SinkReceiver]:
    r = SinkReceiver(failures=2)
    yield r
    r.close()


def test_results_also_go_to_k_sink_with_retries(
    settings: Settings, make_client: Callable[..., TestClient], receiver: SinkReceiver
) -> None:
    client = make_client(replace(settings, k_sink=receiver.url))
    # A request header cannot redirect the results: K_SINK comes only from the settings.
    event = request_event({"texts": ["nice"]})
    message = ce_http.to_binary_event(event)
    response = client.post(
        "/", headers={**message.headers, "K-Sink": "http://127.0.0.1:9/"}, content=message.body
    )
    reply = reply_of(response)
    deadline = time.monotonic() + 20
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(receiver.received) == 1, f"attempts seen: {receiver.attempts}"
    assert receiver.attempts == 3  # two 503s, then accepted
    headers, body = receiver.received[0]
    sent = ce_http.from_binary_event(ce_http.HTTPMessage(headers=headers, body=body))
    assert sent.get_id() == reply.get_id()
    assert sent.get_type() == RESPONSE_TYPE
    assert sent.get_extension("requestid") == event.get_id()
    metrics = client.get("/metrics").text
    assert 'kubesentiment_events_sent_total{outcome="success",variant="cpu-int8"} 1.0' in metrics


def test_sink_gives_up_on_a_non_retryable_status() -> None:
    receiver = SinkReceiver(failures=10, status=400)
    registry = CollectorRegistry()

    async def main() -> bool:
        sink = EventSink(receiver.url, Metrics.create(registry), "v", backoff_s=0.01)
        try:
            return await sink.deliver(CloudEvent({"type": RESPONSE_TYPE, "source": "/s"}, {}))
        finally:
            await sink.close(5)

    try:
        assert asyncio.run(main()) is False
        assert receiver.attempts == 1  # 400 is final (Knative delivery rules)
    finally:
        receiver.close()
    value = registry.get_sample_value(
        "kubesentiment_events_sent_total", {"outcome": "failure", "variant": "v"}
    )
    assert value == 1.0


def test_sink_sleeps_its_jittered_backoff_between_attempts() -> None:
    # The receiver fails four times (503, Retry-After: 0): the sink sleeps before retries 1-4
    # exactly the draws a Backoff with the same seed makes (tests/test_backoff.py checks bounds).
    receiver = SinkReceiver(failures=4)
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    async def main() -> bool:
        sink = EventSink(
            receiver.url,
            Metrics.create(CollectorRegistry()),
            "v",
            backoff_s=0.2,
            max_backoff_s=0.5,
            sleep=sleep,
            rng=random.Random(11),
        )
        try:
            return await sink.deliver(CloudEvent({"type": RESPONSE_TYPE, "source": "/s"}, {}))
        finally:
            await sink.close(5)

    try:
        assert asyncio.run(main()) is True
    finally:
        receiver.close()
    expected = Backoff(0.2, 0.5, random.Random(11))
    assert slept == [expected.delay(retry, "0") for retry in range(4)]
    assert len(set(slept)) == 4  # jittered: no two retries wait the same
    assert all(0 <= s <= min(0.5, 0.2 * 2**i) for i, s in enumerate(slept))
