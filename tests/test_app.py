"""The app in-process: predictions, health, model info, headers, and every kind of bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from starlette.testclient import TestClient

from functions.sentiment.app import create_app
from shared.config import Settings

JSON = {"content-type": "application/json"}


def test_single_text_prediction(client: TestClient) -> None:
    r = client.post("/predict", json={"text": "I love it, what a wonderful day!"})
    assert r.status_code == 200
    body = r.json()
    assert body["label"] == "positive"
    assert set(body["probabilities"]) == {"negative", "neutral", "positive"}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["score"] == pytest.approx(
        body["probabilities"]["positive"] - body["probabilities"]["negative"], abs=1e-5
    )
    assert body["truncated"] is False
    assert body["model"] == "minilm-sentiment"
    assert body["variant"] == "cpu-int8"


def test_batch_keeps_order_and_echoes_ids(client: TestClient) -> None:
    texts = [
        {"id": "a", "text": "This is terrible, I hate it."},
        "What a fantastic, brilliant film!",
        {"id": 3, "text": "Worst service ever, never again."},
    ]
    r = client.post("/predict", json={"texts": texts})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x.get("id") for x in results] == ["a", None, 3]
    assert [x["label"] for x in results] == ["negative", "positive", "negative"]


def test_batch_results_match_single_predictions(client: TestClient) -> None:
    # Padding must not change a text's result. Dynamic int8 quantization picks activation
    # scales per run, so int8 probabilities may move slightly with the batch's other texts;
    # fp32 is checked to 1e-4 in tests/test_model.py.
    texts = ["I hate this", "a wonderful, heartwarming film that I will watch again", "awful!"]
    batch = client.post("/predict", json={"texts": texts}).json()["results"]
    for text, result in zip(texts, batch, strict=True):
        single = client.post("/predict", json={"text": text}).json()
        assert result["label"] == single["label"]
        for label, p in single["probabilities"].items():
            assert result["probabilities"][label] == pytest.approx(p, abs=0.05)


def test_long_text_is_truncated_and_flagged(client: TestClient) -> None:
    text = "good movie, " * 400
    r = client.post("/predict", json={"text": text})
    assert r.status_code == 200
    assert r.json()["truncated"] is True


def test_single_id_is_echoed(client: TestClient) -> None:
    r = client.post("/predict", json={"text": "fine", "id": "req-1"})
    assert r.json()["id"] == "req-1"


def test_health_model_and_metrics(client: TestClient) -> None:
    assert client.get("/health/liveness").json() == {"status": "alive"}
    ready = client.get("/health/readiness")
    assert ready.status_code == 200
    info = client.get("/model").json()
    assert info["labels"] == ["negative", "neutral", "positive"]
    assert info["precision"] == "int8"
    assert info["max_tokens"] >= 64
    assert "CPUExecutionProvider" in info["execution_providers"]
    assert info["intra_op_threads"] == 1
    client.post("/predict", json={"text": "nice"})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'kubesentiment_http_requests_total{method="POST",route="/predict"' in metrics.text
    assert "kubesentiment_predictions_total{label=" in metrics.text
    assert "kubesentiment_cold_start_seconds" in metrics.text


def test_request_id_echoed_or_generated(client: TestClient) -> None:
    r = client.post("/predict", json={"text": "nice"}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.post("/predict", json={"text": "nice"}, headers={"X-Request-ID": "bad id\n<>"})
    assert r.headers["x-request-id"] != "bad id\n<>"
    assert len(r.headers["x-request-id"]) == 32
    error = client.post("/predict", content=b"{", headers={**JSON, "X-Request-ID": "req-9"})
    assert error.json()["error"]["request_id"] == "req-9"


def test_server_timing_header(client: TestClient) -> None:
    r = client.post("/predict", json={"text": "nice"})
    names = {part.split(";")[0].strip() for part in r.headers["server-timing"].split(",")}
    assert {"tokenize", "queue", "inference", "total"} <= names


def test_not_ready_until_model_loaded(settings: Settings) -> None:
    bad = replace(settings, model_dir=settings.model_dir.parent / "does-not-exist")
    with TestClient(create_app(bad), raise_server_exceptions=False) as c:
        r = c.get("/health/readiness")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "not_ready"
        message = r.json()["error"]["message"]
        assert "loading the model" in message  # the failing step, never the exception's text
        assert "does not exist" not in message
        p = c.post("/predict", json={"text": "hello"})
        assert p.status_code == 503
        assert c.get("/health/liveness").status_code == 200


def test_openapi_lists_every_route(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    app_paths = {getattr(r, "path", None) for r in client.app.routes}  # type: ignore[attr-defined]
    app_paths.discard(None)
    assert app_paths == set(doc["paths"]), "routes and OpenAPI paths differ"
    # Every route's methods are documented, and nothing more.
    for route in client.app.routes:  # type: ignore[attr-defined]
        methods = {m.lower() for m in getattr(route, "methods", None) or ()} - {"head"}
        assert methods == set(doc["paths"][route.path]), route.path


def test_in_flight_limit_answers_429(
    settings: Settings, make_client: Callable[..., TestClient]
) -> None:
    c = make_client(replace(settings, max_concurrency=1))
    state = c.app.state.kubesentiment  # type: ignore[attr-defined]
    state.in_flight = 1  # one request already being served
    r = c.post("/predict", json={"text": "hello"})
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "overloaded"
    state.in_flight = 0
    assert c.post("/predict", json={"text": "hello"}).status_code == 200


LIMITS = {"max_texts": 4, "max_text_chars": 50, "max_body_bytes": 2048}


def _case(
    id: str, status: int, error: str, body: Any = None, *, raw: bytes | None = None,
    headers: dict[str, str] | None = None, method: str = "POST", path: str = "/predict",
) -> Any:  # fmt: skip
    content = raw if raw is not None else json.dumps(body).encode()
    return pytest.param(
        method, path, content, JSON if headers is None else headers, status, error, id=id
    )


BAD_INPUT = [
    _case("invalid-json", 400, "invalid_json", raw=b'{"text": '),
    _case("empty-body", 400, "invalid_json", raw=b""),
    _case("not-utf8", 400, "invalid_json", raw=b'{"text": "\xff\xfe"}'),
    _case("body-is-array", 422, "invalid_input", ["I love it"]),
    _case("body-is-string", 422, "invalid_input", "I love it"),
    _case("body-is-null", 422, "invalid_input", None),
    _case("missing-text", 422, "invalid_input", {"txt": "typo"}),
    _case("empty-object", 422, "invalid_input", {}),
    _case("text-is-number", 422, "invalid_input", {"text": 42}),
    _case("text-is-null", 422, "invalid_input", {"text": None}),
    _case("text-is-list", 422, "invalid_input", {"text": ["a"]}),
    _case("text-empty", 422, "invalid_input", {"text": ""}),
    _case("text-whitespace", 422, "invalid_input", {"text": " \n\t "}),
    _case("text-too-long", 422, "invalid_input", {"text": "x" * 51}),
    _case("text-with-nul", 422, "invalid_input", {"text": "a\u0000b"}),
    _case("text-and-texts", 422, "invalid_input", {"text": "a", "texts": ["b"]}),
    _case("texts-not-array", 422, "invalid_input", {"texts": "abc"}),
    _case("texts-empty", 422, "invalid_input", {"texts": []}),
    _case("too-many-texts", 422, "invalid_input", {"texts": ["a"] * 5}),
    _case("texts-item-number", 422, "invalid_input", {"texts": ["ok", 3]}),
    _case("texts-item-empty", 422, "invalid_input", {"texts": ["ok", ""]}),
    _case("texts-item-no-text", 422, "invalid_input", {"texts": [{"id": 1}]}),
    _case("texts-item-bad-id", 422, "invalid_input", {"texts": [{"id": [1], "text": "a"}]}),
    _case("bad-id-type", 422, "invalid_input", {"text": "a", "id": {"x": 1}}),
    _case("unknown-field", 422, "invalid_input", {"text": "a", "lang": "en"}),
    _case("bad-long-text-mode", 422, "invalid_input", {"text": "a", "long_text": "drop"}),
    _case("body-over-limit", 413, "payload_too_large", {"text": "x" * 4096}),
    _case(
        "wrong-content-type",
        415,
        "unsupported_media_type",
        {"text": "a"},
        headers={"content-type": "text/plain"},
    ),
    _case("no-content-type", 415, "unsupported_media_type", {"text": "a"}, headers={}),
    _case(
        "form-content-type",
        415,
        "unsupported_media_type",
        {"text": "a"},
        headers={"content-type": "application/x-www-form-urlencoded"},
    ),
    _case("get-on-predict", 405, "method_not_allowed", None, method="GET"),
    _case("unknown-route", 404, "not_found", {"text": "a"}, path="/predicts"),
    _case(
        "bad-content-length",
        422,
        "invalid_input",
        {"text": "a"},
        headers={**JSON, "content-length": "abc"},
    ),
]


@pytest.mark.parametrize(("method", "path", "content", "headers", "status", "error"), BAD_INPUT)
def test_bad_input(
    settings: Settings,
    make_client: Callable[..., TestClient],
    method: str,
    path: str,
    content: bytes,
    headers: dict[str, str],
    status: int,
    error: str,
) -> None:
    c = make_client(replace(settings, **LIMITS))
    if "content-length" in headers:
        # httpx rewrites Content-Length, so send the raw header through the ASGI app directly.
        r = _raw_request(c, method, path, content, headers)
    else:
        r = c.request(method, path, content=content if method == "POST" else None, headers=headers)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == error
    assert body["error"]["message"]
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text


def _raw_request(
    c: TestClient, method: str, path: str, content: bytes, headers: dict[str, str]
) -> Any:
    import anyio
    import httpx

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=c.app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            req = ac.build_request(method, path, content=content)
            for k, v in headers.items():
                req.headers[k] = v
            return await ac.send(req)

    return anyio.run(call)
