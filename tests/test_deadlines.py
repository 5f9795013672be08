"""Deadlines and priorities on the three protocols, through a live uvicorn.

A deadline that has passed before the texts reach the batcher is refused without a run (504,
counted, the batch-size histogram unchanged). A slowed-down server (tests/slow_server.py: every
ONNX run lasts SLOW_RUN_SECONDS, one text per run) shows the rest: the texts of a batch that ran
before the deadline keep their results and the others get per-item errors, the server-wide cap
applies without a client deadline, and a high-priority text overtakes a queued low one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtests import local
from shared.config import Settings
from tests.conftest import LiveServer, model_dir
from tests.test_shutdown import services

pytestmark = pytest.mark.integration

REQUEST_TYPE = "dev.kubesentiment.sentiment.requested"
V2 = "/v2/models/cpu-int8/infer"


def ce_headers(**extensions: str) -> dict[str, str]:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "e-1",
        "ce-source": "/tests",
        "ce-type": REQUEST_TYPE,
        "content-type": "application/json",
    }
    headers.update({f"ce-{k}": v for k, v in extensions.items()})
    return headers


def v2_body(texts: list[str], **parameters: Any) -> dict[str, Any]:
    tensor = {"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}
    return {"inputs": [tensor], "parameters": parameters}


def rfc3339(seconds_from_now: float) -> str:
    at = datetime.now(UTC) + timedelta(seconds=seconds_from_now)
    return at.isoformat().replace("+00:00", "Z")


def metric(url: str, name: str, **labels: str) -> float:
    """The value of one sample on /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def runs(url: str) -> float:
    return metric(url, "kubesentiment_batch_size_count")


def expired(url: str, priority: str) -> float:
    return metric(url, "kubesentiment_deadline_exceeded_total", priority=priority)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("deadlines") / "server.log"
    s = LiveServer({"ORT_INTRA_OP_THREADS": "1", "LOG_FORMAT": "text"}, log)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def test_a_passed_deadline_is_504_and_never_computed_on_predict(server: LiveServer) -> None:
    before_runs, before = runs(server.url), expired(server.url, "high")
    r = httpx.post(
        f"{server.url}/predict",
        json={"texts": ["fine", "awful"]},
        headers={"X-Request-Timeout": "0.000001", "X-Priority": "high"},
    )
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "deadline_exceeded"
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
    assert expired(server.url, "high") == before + 2
    assert runs(server.url) == before_runs  # nothing reached the model
    no_deadline = {"X-Priority": "low", "X-Request-Timeout": "0"}  # 0: no deadline of its own
    ok = httpx.post(f"{server.url}/predict", json={"text": "fine"}, headers=no_deadline)
    assert ok.status_code == 200
    assert runs(server.url) == before_runs + 1


def test_a_passed_deadline_is_504_on_v2_in_its_error_shape(server: LiveServer) -> None:
    before_runs, before = runs(server.url), expired(server.url, "low")
    r = httpx.post(f"{server.url}{V2}", json=v2_body(["fine"], timeout=1, priority=3))
    assert r.status_code == 504
    assert set(r.json()) == {"error"}
    assert "deadline" in r.json()["error"]
    assert expired(server.url, "low") == before + 1  # priority 3 is the low lane
    assert runs(server.url) == before_runs
    ok = httpx.post(f"{server.url}{V2}", json=v2_body(["fine"], timeout=0, priority=1))
    assert ok.status_code == 200, ok.text
    assert ok.json()["outputs"][0]["data"]


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_a_passed_deadline_is_504_on_cloudevents(server: LiveServer, structured: bool) -> None:
    before_runs, before = runs(server.url), expired(server.url, "low")
    data = {"texts": ["fine", "awful", "ok"]}
    if structured:
        event = {
            "specversion": "1.0",
            "id": "e-2",
            "source": "/tests",
            "type": REQUEST_TYPE,
            "deadline": rfc3339(-1),
            "data": data,
        }
        headers = {"content-type": "application/cloudevents+json"}
        r = httpx.post(server.url + "/", json=event, headers=headers)
    else:
        r = httpx.post(server.url + "/", json=data, headers=ce_headers(deadline=rfc3339(-1)))
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "deadline_exceeded"
    assert expired(server.url, "low") == before + 3  # CloudEvents default to the low lane
    assert runs(server.url) == before_runs
    ok = httpx.post(
        server.url + "/", json=data, headers=ce_headers(deadline=rfc3339(60), priority="high")
    )
    assert ok.status_code == 200
    assert [("label" in x) for x in ok.json()["results"]] == [True, True, True]


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"X-Request-Timeout": "-1"}, "X-Request-Timeout"),
        ({"X-Request-Timeout": "123456"}, "X-Request-Timeout"),
        ({"X-Request-Timeout": "0.1234567"}, "X-Request-Timeout"),
        ({"X-Request-Timeout": "soon"}, "X-Request-Timeout"),
        ({"X-Request-Timeout": "1e3"}, "X-Request-Timeout"),
        ({"X-Request-Timeout": "nan"}, "X-Request-Timeout"),
        ({"X-Request-Timeout": "100000"}, "X-Request-Timeout"),
        ({"X-Priority": "urgent"}, "X-Priority"),
        ({"X-Priority": "1"}, "X-Priority"),
        ({"X-Priority": "HIGH"}, "X-Priority"),
    ],
)
def test_bad_predict_headers_are_422_naming_the_header(
    server: LiveServer, headers: Mapping[str, str], field: str
) -> None:
    r = httpx.post(f"{server.url}/predict", json={"text": "fine"}, headers=dict(headers))
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "invalid_input"
    assert field in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"timeout": -1}, "parameters.timeout"),
        ({"timeout": "1000"}, "parameters.timeout"),
        ({"timeout": 1.5}, "parameters.timeout"),
        ({"timeout": True}, "parameters.timeout"),
        ({"timeout": 10**12}, "parameters.timeout"),
        ({"priority": "high"}, "parameters.priority"),
        ({"priority": -1}, "parameters.priority"),
        ({"priority": None}, "parameters.priority"),
    ],
)
def test_bad_v2_parameters_are_400_naming_the_field(
    server: LiveServer, parameters: dict[str, Any], field: str
) -> None:
    r = httpx.post(f"{server.url}{V2}", json=v2_body(["fine"], **parameters))
    assert r.status_code == 400
    assert field in r.json()["error"]


@pytest.mark.parametrize(
    ("extensions", "field"),
    [
        ({"deadline": "tomorrow"}, "deadline"),
        ({"deadline": "2026-13-45T99:00:00Z"}, "deadline"),
        ({"deadline": "2026-01-01T00:00:00"}, "deadline"),  # RFC 3339 needs an offset
        ({"priority": "urgent"}, "priority"),
    ],
)
def test_bad_cloudevents_extensions_are_400_naming_them(
    server: LiveServer, extensions: dict[str, str], field: str
) -> None:
    r = httpx.post(server.url + "/", json={"texts": ["fine"]}, headers=ce_headers(**extensions))
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_event"
    assert field in r.json()["error"]["message"]


def test_a_structured_event_priority_must_be_a_string(server: LiveServer) -> None:
    event = {"specversion": "1.0", "id": "e", "source": "/t", "type": REQUEST_TYPE, "priority": 1}
    event["data"] = {"texts": ["fine"]}
    headers = {"content-type": "application/cloudevents+json"}
    r = httpx.post(server.url + "/", json=event, headers=headers)
    assert r.status_code == 400
    assert "priority" in r.json()["error"]["message"]


class SlowServer:
    """tests/slow_server.py as a live uvicorn: every run lasts SLOW_RUN_SECONDS."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        base = {"HOST": local.LOOPBACK, "MODEL_DIR": str(model_dir()), "LOG_FORMAT": "text"}
        base.update(ORT_INTRA_OP_THREADS="1", BATCH_MAX_SIZE="1", WARMUP="false", DEDUP="off")
        self.function = local.launch({**base, **env}, log_path=log_path, module="tests.slow_server")
        self.url = self.function.base_url
        local.wait_ready(self.function, 90)

    def stop(self) -> None:
        local.stop(self.function, 15)


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowServer]:
    """One text per 1 s run, and every request's deadline at most 0.5 s away."""
    env = {"SLOW_RUN_SECONDS": "1", "MAX_REQUEST_TIMEOUT_SECONDS": "0.5"}
    s = SlowServer(env, tmp_path_factory.mktemp("capped") / "server.log")
    try:
        yield s
    finally:
        s.stop()


def late_items(results: list[dict[str, Any]]) -> list[int]:
    return [x["index"] for x in results if x.get("error", {}).get("type") == "deadline_exceeded"]


def test_a_batch_keeps_what_ran_in_time_on_predict(capped: SlowServer) -> None:
    # The client asks for 30 s; the server's cap (0.5 s) wins. The first text runs at once (1 s),
    # the others are still queued at the deadline: per-item errors, in order, never computed.
    before_runs, before = runs(capped.url), expired(capped.url, "normal")
    body = {"texts": ["fine", {"id": "b", "text": "awful"}, "ok"]}
    r = httpx.post(
        f"{capped.url}/predict", json=body, headers={"X-Request-Timeout": "30"}, timeout=30
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert "label" in results[0]
    assert results[1] == {
        "id": "b",
        "index": 1,
        "error": {"type": "deadline_exceeded", "message": results[1]["error"]["message"]},
    }
    assert late_items(results) == [1, 2]
    assert expired(capped.url, "normal") == before + 2
    assert runs(capped.url) == before_runs + 1


def test_the_server_cap_applies_without_a_client_deadline(capped: SlowServer) -> None:
    data = {"items": [{"id": "x", "text": "fine"}, {"id": "y", "text": "awful"}]}
    r = httpx.post(capped.url + "/", json=data, headers=ce_headers(), timeout=30)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert "label" in results[0]
    assert results[0]["id"] == "x"
    assert late_items(results) == [1]
    assert results[1]["id"] == "y"


def test_a_v2_batch_not_wholly_run_in_time_is_504(capped: SlowServer) -> None:
    r = httpx.post(f"{capped.url}{V2}", json=v2_body(["fine", "awful"]), timeout=30)
    assert r.status_code == 504
    assert set(r.json()) == {"error"}


@pytest.fixture(scope="module", params=["on", "off"])
def slow(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SlowServer, str]]:
    """One text per 1 s run, no deadline pressure, no starvation bound in reach; PRIORITIES on
    and off."""
    env = {"SLOW_RUN_SECONDS": "1", "PRIORITY_MAX_WAIT_MS": "600000", "PRIORITIES": request.param}
    s = SlowServer(env, tmp_path_factory.mktemp("slow") / "server.log")
    try:
        yield s, request.param
    finally:
        s.stop()


def test_an_interactive_request_overtakes_queued_bulk_events(
    slow: tuple[SlowServer, str],
) -> None:
    """The busy run, then a low-priority event queued first, then a normal /predict: with
    priorities on the /predict is answered first, with them off the event (each run lasts 1 s;
    the sends are 0.4 s apart so each is queued before the next is sent)."""
    server, priorities = slow

    async def main() -> list[str]:
        finished: list[str] = []
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:

            async def send(name: str, delay: float, **kw: Any) -> None:
                await asyncio.sleep(delay)
                r = await c.post(**kw)
                assert r.status_code == 200, r.text
                finished.append(name)

            await asyncio.gather(
                send("busy", 0.0, url="/predict", json={"text": "busy"}),
                send("event", 0.4, url="/", json={"texts": ["bulk"]}, headers=ce_headers()),
                send("predict", 0.8, url="/predict", json={"text": "interactive"}),
            )
        return finished

    expected = ["busy", "predict", "event"] if priorities == "on" else ["busy", "event", "predict"]
    assert asyncio.run(main()) == expected


@pytest.mark.parametrize("service", services())
def test_the_server_deadline_is_below_the_revision_timeout(service: dict[str, Any]) -> None:
    """Knative cuts a request at the revision's timeoutSeconds; the function's own deadline must
    come first, so the client gets 504 deadline_exceeded (and no work is done late)."""
    spec = service["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    name = "MAX_REQUEST_TIMEOUT_SECONDS"
    settings = Settings.from_env({k: v for k, v in env.items() if k == name})
    assert settings.max_request_timeout_s < float(spec.get("timeoutSeconds", 300))
