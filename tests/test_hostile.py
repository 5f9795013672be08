"""Hostile input on all three protocols: every class answers 4xx in the route's error shape.

Table-driven: each hostile *poison* (a raw JSON fragment or raw bytes) is placed where a text goes
in each protocol's body: `/predict` (also with `explain`), `/explain`, CloudEvents binary,
structured and `data_base64`, KServe v2 JSON and binary tensor data. Nothing a client sends may
produce a 5xx; the answer names what is wrong. For a CloudEvent, a bad *text* is a per-item error
in a 200 reply (the rest of the event is still answered); a bad *document* is a 400. A property
test then throws arbitrary JSON at the same places.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

REQUEST_TYPE = "dev.kubesentiment.sentiment.requested"
MODEL = "minilm-sentiment"
DEEP = b"[" * 100_000 + b"]" * 100_000
CE_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "h-1",
    "ce-source": "/hostile",
    "ce-type": REQUEST_TYPE,
}

# name -> (raw JSON fragment in a text's place, words the answer must contain)
POISONS: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "deep-nesting": (DEEP, ("nested too deeply",)),
    "number-overflow": (b"1e999", ("out of range",)),
    "huge-integer": (b"9" * 5000, ("not valid json",)),
    "nan": (b"NaN", ("nan",)),
    "infinity": (b"-Infinity", ("infinity",)),
    "null": (b"null", ("null",)),
    "object": (b'{"a": 1}', ("object", "missing 'text'")),
    "array": (b'[1, "a"]', ("array",)),
    "bool": (b"true", ("boolean",)),
    "lone-surrogate": (b'"\\ud800 text"', ("surrogate",)),
    "invalid-utf8": (b'"caf\xe9"', ("utf-8",)),
    "overlong-utf8": (b'"\xc0\xaf"', ("utf-8",)),
    "control-char": (b'"a\\u0001b"', ("control character",)),
    "c1-control": (b'"\\u009b31m"', ("control character",)),
    "delete-char": (b'"\\u007f"', ("control character",)),
    "nul": (b'"a\\u0000"', ("control character",)),
    "blank": (b'" \\t\\u3000 "', ("empty or whitespace",)),
    "too-long": (json.dumps("x" * 20_001).encode(), ("limit",)),
}


def _main_error(r: Any, words: tuple[str, ...]) -> None:
    body = r.json()
    error = body["error"]
    assert set(error) == {"type", "message", "request_id"}, body
    assert error["request_id"] == r.headers["x-request-id"]
    _names(error["message"], words)


def _names(message: str, words: tuple[str, ...]) -> None:
    assert any(w in message.lower() for w in words), f"{message!r} names none of {words}"


def predict(c: TestClient, poison: bytes) -> Any:
    return c.post(
        "/predict",
        content=b'{"text": ' + poison + b"}",
        headers={"content-type": "application/json"},
    )


def explain(c: TestClient, poison: bytes) -> Any:
    return c.post(
        "/explain",
        content=b'{"text": ' + poison + b"}",
        headers={"content-type": "application/json"},
    )


def predict_explain(c: TestClient, poison: bytes) -> Any:
    return c.post(
        "/predict",
        content=b'{"explain": true, "texts": [' + poison + b"]}",
        headers={"content-type": "application/json"},
    )


def ce_binary(c: TestClient, poison: bytes) -> Any:
    body = b'{"texts": [' + poison + b"]}"
    return c.post("/", content=body, headers={**CE_HEADERS, "content-type": "application/json"})


def _structured(data: bytes) -> bytes:
    head = {"specversion": "1.0", "id": "h-2", "source": "/hostile", "type": REQUEST_TYPE}
    return json.dumps(head)[:-1].encode() + b', "data": ' + data + b"}"


def ce_structured(c: TestClient, poison: bytes) -> Any:
    body = _structured(b'{"texts": [' + poison + b"]}")
    return c.post("/", content=body, headers={"content-type": "application/cloudevents+json"})


def ce_base64(c: TestClient, poison: bytes) -> Any:
    data = base64.b64encode(b'{"texts": [' + poison + b"]}").decode()
    head = {"specversion": "1.0", "id": "h-3", "source": "/hostile", "type": REQUEST_TYPE}
    body = json.dumps({**head, "datacontenttype": "application/json", "data_base64": data})
    return c.post("/", content=body, headers={"content-type": "application/cloudevents+json"})


def v2_json(c: TestClient, poison: bytes) -> Any:
    body = b'{"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": [' + poison
    return c.post(f"/v2/models/{MODEL}/infer", content=body + b"]}]}")


def v2_binary(c: TestClient, poison: bytes) -> Any:
    # The poison decoded as a JSON string becomes the raw element bytes; JSON-level poisons (that
    # are not strings) go in the JSON header's `id` instead.
    try:
        value = json.loads(poison)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, str):  # a lone surrogate becomes bytes that are not UTF-8
        element, header_id = value.encode("utf-8", "surrogatepass"), b'"ok"'
    elif poison.startswith(b'"'):
        element, header_id = poison[1:-1], b'"ok"'  # raw invalid bytes
    else:
        element, header_id = b"fine text", poison
    tail = struct.pack("<I", len(element)) + element
    head = (
        b'{"id": ' + header_id + b', "inputs": [{"name": "t", "shape": [1], "datatype": "BYTES",'
        b' "parameters": {"binary_data_size": ' + str(len(tail)).encode() + b"}}]}"
    )
    return c.post(
        f"/v2/models/{MODEL}/infer",
        content=head + tail,
        headers={"inference-header-content-length": str(len(head))},
    )


PROTOCOLS: dict[str, Callable[[TestClient, bytes], Any]] = {
    "predict": predict,
    "explain": explain,
    "predict-explain": predict_explain,
    "ce-binary": ce_binary,
    "ce-structured": ce_structured,
    "ce-data-base64": ce_base64,
    "v2-json": v2_json,
    "v2-binary": v2_binary,
}


@pytest.mark.parametrize("poison", list(POISONS), ids=list(POISONS))
@pytest.mark.parametrize("protocol", list(PROTOCOLS), ids=list(PROTOCOLS))
def test_hostile_input_gets_a_named_4xx(client: TestClient, protocol: str, poison: str) -> None:
    raw, words = POISONS[poison]
    r = PROTOCOLS[protocol](client, raw)
    assert "x-request-id" in r.headers
    assert "server-timing" in r.headers
    if protocol.startswith("v2"):
        assert 400 <= r.status_code < 500, r.text[:300]
        body = r.json()
        assert set(body) == {"error"}, body
        assert isinstance(body["error"], str), body
        if not (protocol == "v2-binary" and poison in ("null",)):
            _names(body["error"], (*words, "must be", "id", "utf-8"))
    elif protocol.startswith("ce") and r.status_code == 200:
        # A bad text inside a well-formed event: an explicit per-item error, in order.
        body = r.json()
        (result,) = body["data"]["results"] if "data" in body else body["results"]
        assert result["index"] == 0
        assert result["error"]["type"] == "invalid_input"
        _names(result["error"]["message"], (*words, "must be a string"))
    else:
        assert 400 <= r.status_code < 500, r.text[:300]
        _main_error(r, (*words, "must be a string"))


ABSURD_IDS = {
    "predict-id-long": ("/predict", {"text": "ok", "id": "i" * 100_000}, "characters"),
    "predict-id-huge-int": ("/predict", {"text": "ok", "id": 10**30}, "outside"),
    "batch-id-object": ("/predict", {"texts": [{"id": {"a": 1}, "text": "ok"}]}, "string or"),
    "v2-id-long": (
        f"/v2/models/{MODEL}/infer",
        {
            "id": "i" * 100_000,
            "inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["ok"]}],
        },
        "characters",
    ),
    "v2-model-name-long": (f"/v2/models/{'m' * 10_000}/infer", {}, "unknown model"),
    "v2-mixed-data": (
        f"/v2/models/{MODEL}/infer",
        {"inputs": [{"name": "t", "shape": [2], "datatype": "BYTES", "data": [["a"], "b"]}]},
        "flat",
    ),
    "v2-deep-data": (
        f"/v2/models/{MODEL}/infer",
        {"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": [[["a"]]]}]},
        "must be a string",
    ),
    "v2-shape-mismatch": (
        f"/v2/models/{MODEL}/infer",
        {"inputs": [{"name": "t", "shape": [3], "datatype": "BYTES", "data": ["a"]}]},
        "does not match",
    ),
    "v2-shape-wrong-type": (
        f"/v2/models/{MODEL}/infer",
        {"inputs": [{"name": "t", "shape": ["1"], "datatype": "BYTES", "data": ["a"]}]},
        "shape",
    ),
    "v2-shape-huge": (
        f"/v2/models/{MODEL}/infer",
        {"inputs": [{"name": "t", "shape": [10**40], "datatype": "BYTES", "data": ["a"]}]},
        "does not match",
    ),
    "v2-null-data": (
        f"/v2/models/{MODEL}/infer",
        {"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": None}]},
        "array",
    ),
    "v2-datatype-list": (
        f"/v2/models/{MODEL}/infer",
        {"inputs": [{"name": "t", "shape": [1], "datatype": ["BYTES"], "data": ["a"]}]},
        "datatype",
    ),
}


@pytest.mark.parametrize("case", list(ABSURD_IDS), ids=list(ABSURD_IDS))
def test_absurd_identifiers_and_tensors_are_refused(client: TestClient, case: str) -> None:
    path, body, words = ABSURD_IDS[case]
    r = client.post(path, json=body)
    assert 400 <= r.status_code < 500, r.text[:300]
    message = r.json()["error"] if path.startswith("/v2") else r.json()["error"]["message"]
    assert words in message, message
    assert len(message) < 400, message


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        pytest.param({"ce-id": "x" * 5000}, "characters", id="ce-id-long"),
        pytest.param({"ce-subject": "%01bell"}, "control character", id="ce-subject-control"),
        pytest.param({"ce-Bad_Name": "v"}, "lowercase", id="ce-extension-name"),
        pytest.param({"ce-specversion": "0.3"}, "specversion", id="ce-specversion"),
    ],
)
def test_hostile_cloudevent_attributes(
    client: TestClient, headers: dict[str, str], words: str
) -> None:
    r = client.post(
        "/",
        content=b'{"texts": ["ok"]}',
        headers={**CE_HEADERS, **headers, "content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]


def test_other_encodings_and_charsets_are_refused(client: TestClient) -> None:
    utf16 = json.dumps({"text": "hello"}).encode("utf-16")
    r = client.post("/predict", content=utf16, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "utf-8" in r.json()["error"]["message"].lower()
    r = client.post(
        "/predict",
        content=b'{"text": "ok"}',
        headers={"content-type": "application/json; charset=latin-1"},
    )
    assert r.status_code == 415
    assert "charset" in r.json()["error"]["message"]


def test_a_huge_x_request_id_is_replaced(client: TestClient) -> None:
    r = client.post("/predict", json={"text": "ok"}, headers={"x-request-id": "r" * 10_000})
    assert r.status_code == 200
    assert len(r.headers["x-request-id"]) == 32


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=JSON_VALUES, protocol=st.sampled_from(sorted(PROTOCOLS)))
def test_arbitrary_json_never_gets_a_5xx(client: TestClient, value: Any, protocol: str) -> None:
    raw = json.dumps(value).encode()
    r = PROTOCOLS[protocol](client, raw)
    assert r.status_code < 500, r.text[:300]
