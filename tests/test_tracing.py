"""Tracing: spans over real OTLP/HTTP from a live function, traceparent in and out, CE context.

The integration test runs the function as a uvicorn subprocess whose OTLP/HTTP exporter posts to
an in-test receiver: a small HTTP server decoding `ExportTraceServiceRequest` protobufs with
opentelemetry-proto, exactly what a collector's OTLP/HTTP receiver accepts.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.testclient import TestClient

from functions.sentiment.app import create_app
from shared import tracing
from shared.config import Settings
from tests.conftest import ROOT, LiveServer, free_port, wait_ready
from tests.openbao import OpenBao
from tests.receiver import Receiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived over the wire."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    service: str


class OtlpReceiver:
    """An OTLP/HTTP traces receiver on a free loopback port (POST /v1/traces, protobuf)."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver.add(ExportTraceServiceRequest.FromString(body))
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        for rs in request.resource_spans:
            resource = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs: dict[str, Any] = {}
                    for a in s.attributes:
                        kind = a.value.WhichOneof("value")
                        attrs[a.key] = getattr(a.value, kind) if kind else None
                    span = ReceivedSpan(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        kind=s.kind,
                        attributes=attrs,
                        service=resource.get("service.name", ""),
                    )
                    with self.lock:
                        self.spans.append(span)

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], deadline_s: float = 20.0
    ) -> list[ReceivedSpan]:
        """Poll until `predicate(spans)` holds or the deadline passes."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            with self.lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            time.sleep(0.05)
        raise AssertionError(f"spans not received in {deadline_s}s: {self.spans}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.stop()


@pytest.mark.integration
def test_spans_arrive_over_otlp_with_parent_links(
    receiver: OtlpReceiver, live_server: Callable[..., LiveServer]
) -> None:
    server = live_server(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_SERVICE_NAME": "kubesentiment-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "LOG_FORMAT": "json",
        }
    )
    r = httpx.post(
        f"{server.url}/predict",
        json={"text": "The service was wonderful."},
        headers={"traceparent": TRACEPARENT},
        timeout=10,
    )
    assert r.status_code == 200, r.text

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {s.name for s in spans if s.trace_id == TRACE_ID}
        return {"POST /predict", "tokenize", "inference", "batch_queue_wait"} <= names

    spans = [s for s in receiver.wait_for(complete) if s.trace_id == TRACE_ID]
    by_name = {s.name: s for s in spans}
    server_span = by_name["POST /predict"]
    assert server_span.kind == 2  # SPAN_KIND_SERVER
    assert server_span.parent_id == PARENT_ID  # the incoming traceparent is the parent
    assert server_span.service == "kubesentiment-test"
    assert server_span.attributes.get("http.route") == "/predict"
    for child in ("tokenize", "batch_queue_wait", "inference"):
        assert by_name[child].parent_id == server_span.span_id, child
    assert by_name["inference"].attributes["kubesentiment.batch_size"] >= 1
    # The response names the server span, so a caller can find its trace.
    assert r.headers["traceparent"] == f"00-{TRACE_ID}-{server_span.span_id}-01"
    # Probes polled while starting are excluded: no span for them ever arrives.
    assert not [s for s in receiver.spans if "health" in s.name]


SPAN_CLIENT = 3  # SPAN_KIND_CLIENT in OTLP


def client_spans_to(spans: list[ReceivedSpan], port: int) -> list[ReceivedSpan]:
    """The httpx client spans of requests to 127.0.0.1:`port`."""
    return [
        s
        for s in spans
        if s.kind == SPAN_CLIENT
        and f"127.0.0.1:{port}/" in str(s.attributes.get("http.url", s.attributes.get("url.full")))
    ]


@pytest.mark.integration
def test_one_trace_from_a_cloudevent_through_the_k_sink_delivery(
    receiver: OtlpReceiver, live_server: Callable[..., LiveServer], openbao: OpenBao
) -> None:
    # Issue 28 item 4: a CloudEvent POSTed with a traceparent; the reply goes back and to K_SINK
    # (a real HTTP server), the request is payload-logged to another, the API key comes from a
    # real OpenBao: every call out of the function is a client span, the two deliveries in the
    # request's trace.
    openbao.put("kubesentiment/traced", {"keys": "trace-key"})
    sink, payload_sink = Receiver().start(), Receiver().start()
    try:
        server = live_server(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
                "OTEL_SERVICE_NAME": "kubesentiment-test",
                "OTEL_BSP_SCHEDULE_DELAY": "50",
                "K_SINK": sink.url,
                "PAYLOAD_LOG_SAMPLE": "1",
                "PAYLOAD_LOG_SINK": payload_sink.url,
                "VAULT_ADDR": openbao.url,
                "VAULT_AUTH_METHOD": "token",
                "VAULT_TOKEN": openbao.token(),
                "API_KEYS": "vault:secret/kubesentiment/traced#keys",
            }
        )
        r = httpx.post(
            f"{server.url}/",
            json={"texts": ["The service was wonderful."]},
            headers={
                "traceparent": TRACEPARENT,
                "x-api-key": "trace-key",
                "ce-specversion": "1.0",
                "ce-id": "traced-1",
                "ce-source": "/tests/tracing",
                "ce-type": "dev.kubesentiment.sentiment.requested",
                "content-type": "application/json",
            },
            timeout=10,
        )
        assert r.status_code == 200, r.text
        [delivered] = sink.wait_for(1, deadline_s=20.0)
        [logged] = payload_sink.wait_for(1, deadline_s=20.0)

        def complete(spans: list[ReceivedSpan]) -> bool:
            ours = [s for s in spans if s.trace_id == TRACE_ID]
            names = {s.name for s in ours}
            return (
                {"POST /", "tokenize", "inference"} <= names
                and any(n.startswith("process ") for n in names)
                and len(client_spans_to(ours, sink.port)) == 1
                and len(client_spans_to(ours, payload_sink.port)) == 1
                and {"vault login", "vault read"} <= {s.name for s in spans}
            )

        spans = receiver.wait_for(complete)
    finally:
        sink.stop()
        payload_sink.stop()
    ours = [s for s in spans if s.trace_id == TRACE_ID]
    by_name = {s.name: s for s in ours}
    server_span = by_name["POST /"]
    assert server_span.parent_id == PARENT_ID  # the incoming request's traceparent
    [process] = [s for s in ours if s.name == "process dev.kubesentiment.sentiment.requested"]
    assert process.parent_id == server_span.span_id
    for model_span in ("tokenize", "batch_queue_wait", "inference"):
        assert by_name[model_span].parent_id == process.span_id, model_span

    # The reply continues the trace from the span that computed it ...
    assert r.headers["ce-traceparent"] == f"00-{TRACE_ID}-{process.span_id}-01"
    # ... and its K_SINK delivery is a client span under that span, sending the same event
    # (ce-traceparent) and the client span's own context (traceparent) to the sink.
    [delivery] = client_spans_to(ours, sink.port)
    assert delivery.parent_id == process.span_id
    assert delivery.service == "kubesentiment-test"
    assert (
        delivery.attributes.get(
            "http.status_code", delivery.attributes.get("http.response.status_code")
        )
        == 202
    )
    assert delivered.headers["ce-traceparent"] == r.headers["ce-traceparent"]
    assert delivered.headers["traceparent"] == f"00-{TRACE_ID}-{delivery.span_id}-01"
    assert delivered.headers["ce-id"] == r.headers["ce-id"]

    # The payload log event carries the request's server span; its delivery hangs under it.
    [log_delivery] = client_spans_to(ours, payload_sink.port)
    assert log_delivery.parent_id == server_span.span_id
    assert logged.headers["ce-traceparent"] == f"00-{TRACE_ID}-{server_span.span_id}-01"
    assert logged.headers["traceparent"] == f"00-{TRACE_ID}-{log_delivery.span_id}-01"

    # Vault calls at start-up: client spans naming the call and the path, never a value.
    vault = [s for s in spans if s.name.startswith("vault ")]
    login = next(s for s in vault if s.name == "vault login")
    read = next(s for s in vault if s.name == "vault read")
    assert login.kind == read.kind == SPAN_CLIENT
    assert login.attributes["vault.auth_method"] == "token"
    assert (read.attributes["vault.mount"], read.attributes["vault.path"]) == (
        "secret",
        "kubesentiment/traced",
    )
    assert read.attributes["server.port"] == int(openbao.url.rsplit(":", 1)[1])
    for s in vault:
        assert "trace-key" not in repr(s.attributes)


@pytest.fixture
def memory_traced(settings: Settings) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    """An in-process app instrumented with a local provider (the global one stays unset)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(replace(settings, warmup=False))
    tracing.instrument(app, provider)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client, exporter
    provider.shutdown()


def test_traceparent_returned_and_honoured(
    memory_traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = memory_traced
    r = client.get("/model", headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200
    version, trace_id, span_id, flags = r.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    [span] = [s for s in exporter.get_finished_spans() if s.name == "GET /model"]
    assert span.context is not None
    assert span.parent is not None
    assert format(span.context.span_id, "016x") == span_id
    assert format(span.parent.span_id, "016x") == PARENT_ID


def test_new_trace_without_incoming_traceparent(
    memory_traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, _ = memory_traced
    r = client.get("/model")
    _, trace_id, _, _ = r.headers["traceparent"].split("-")
    assert trace_id != TRACE_ID
    assert int(trace_id, 16) != 0
    assert "traceparent" not in client.get("/health/readiness").headers  # excluded: no span


def test_no_traceparent_header_when_tracing_is_off(client: TestClient) -> None:
    r = client.get("/model", headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200
    assert "traceparent" not in r.headers


@pytest.mark.parametrize(
    "attributes",
    [
        pytest.param({"traceparent": TRACEPARENT}, id="structured-attribute"),
        pytest.param({"ce-traceparent": TRACEPARENT, "ce-id": "1"}, id="binary-header"),
        pytest.param({"Ce-Traceparent": TRACEPARENT, "ce-tracestate": "k=v"}, id="header-case"),
    ],
)
def test_extract_event_context(attributes: dict[str, Any]) -> None:
    ctx = tracing.extract_event_context(attributes)
    assert ctx is not None
    span_ctx = trace.get_current_span(ctx).get_span_context()
    assert format(span_ctx.trace_id, "032x") == TRACE_ID
    assert format(span_ctx.span_id, "016x") == PARENT_ID
    assert span_ctx.is_remote


@pytest.mark.parametrize(
    "attributes",
    [
        pytest.param({}, id="absent"),
        pytest.param({"traceparent": "garbage"}, id="malformed"),
        pytest.param({"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"}, id="zero-trace-id"),
        pytest.param({"traceparent": 42}, id="not-a-string"),
    ],
)
def test_extract_event_context_rejects(attributes: dict[str, Any]) -> None:
    assert tracing.extract_event_context(attributes) is None


def test_client_span_names_the_server_and_scrubs_a_failure() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    attrs = {"vault.path": "kubesentiment/api"}

    def scrub(text: str) -> str:
        return text.replace("s3cret", "***")

    with tracing.client_span("vault read", "http://127.0.0.1:8200", attrs, scrub, tracer=tracer):
        pass
    with (
        pytest.raises(PermissionError),
        tracing.client_span("vault login", "https://vault.example", {}, scrub, tracer=tracer),
    ):
        raise PermissionError("denied for token s3cret")
    ok, failed = exporter.get_finished_spans()
    assert ok.kind == failed.kind == trace.SpanKind.CLIENT
    assert dict(ok.attributes or {}) == {
        "server.address": "127.0.0.1",
        "server.port": 8200,
        "vault.path": "kubesentiment/api",
    }
    assert ok.status.status_code == trace.StatusCode.UNSET
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert failed.status.description == "PermissionError: denied for token ***"
    assert (failed.attributes or {})["error.type"] == "PermissionError"
    assert "server.port" not in (failed.attributes or {})
    assert not failed.events  # no exception event carrying the unscrubbed text


def test_service_name_fallbacks() -> None:
    assert tracing.service_name(Settings(service_name="a", k_service="b")) == "a"
    assert tracing.service_name(Settings(k_service="b")) == "b"
    assert tracing.service_name(Settings()) == "kubesentiment"


def test_without_endpoint_nothing_heavy_is_imported_and_nothing_warns() -> None:
    # A fresh interpreter, warnings as errors: build the app and "set up" tracing with no
    # endpoint, as the entry point does.
    code = (
        "import sys\n"
        "from shared import tracing\n"
        "from shared.config import Settings\n"
        "from functions.sentiment.app import create_app\n"
        "s = Settings.from_env({})\n"
        "assert tracing.setup(s) is None\n"
        "create_app(s)\n"
        # The K_SINK / payload log sender (httpx) and the Vault client module are loaded too:
        # their client spans go through the API only, no instrumentation package is imported.
        "from prometheus_client import CollectorRegistry\n"
        "from shared.metrics import Metrics\n"
        "from shared import vault\n"
        "from functions.sentiment.sink import EventSink\n"
        "EventSink('http://127.0.0.1:9/', Metrics.create(CollectorRegistry()), 'v')\n"
        "assert 'httpx' in sys.modules\n"
        "heavy = [m for m in sys.modules if m.startswith(('opentelemetry.sdk', "
        "'opentelemetry.exporter', 'opentelemetry.instrumentation', 'hvac', 'requests'))]\n"
        "assert not heavy, heavy\n"
        "from opentelemetry import trace\n"
        "assert type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider'\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
