"""The OpenAPI 3.1 document served at `GET /openapi.json`: the contract, exact enough to fuzz.

Written as data and built per function from its settings, so the limits a client meets
(MAX_TEXTS, MAX_TEXT_CHARS, the model's name) are the limits the document states. Request bodies
are exact: required fields, `oneOf` single/batch, `additionalProperties: false` wherever the code
refuses unknown fields, and the text rule (not blank, no control characters or lone surrogates) as
a pattern equal to the check in `inputs.check_text`. Every response lists its schema and headers.
Schemathesis runs this document against a live server in `make test` (tests/test_schemathesis.py);
a test also checks that the app's routes and this document agree in both directions.
"""

from __future__ import annotations

from typing import Any

from functions.sentiment.qos import (
    DEADLINE_EXCEEDED,
    event_extensions,
    event_headers,
    predict_headers,
)
from functions.sentiment.schemas import (
    MAX_ATTRIBUTE_CHARS,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    STRUCTURED_JSON,
    ref,
    schemas,
)
from shared.auth import OPEN_PATHS
from shared.config import Settings

KEY_ID = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"  # shared/quotas.py's key ids

_STD = {
    "X-Request-ID": {"$ref": "#/components/headers/XRequestID"},
    "Server-Timing": {"$ref": "#/components/headers/ServerTiming"},
}
_RETRY = {**_STD, "Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
_ERROR_TEXT = {
    400: "Invalid JSON (not UTF-8, NaN, too deep, lone surrogate) or a malformed request",
    401: "Missing or invalid API key",
    404: "Unknown model",
    408: "The body did not arrive within BODY_TIMEOUT_SECONDS",
    413: "Body larger than MAX_BODY_BYTES",
    415: "Content-Type is not application/json, or a charset other than UTF-8",
    422: "Well-formed JSON that does not fit the schema; the message names each bad field",
    429: "Overloaded; retry after Retry-After seconds",
    500: "A bug: the message never holds a stack trace (the log line has it, with the id)",
    503: "Not ready or shutting down; retry after Retry-After seconds",
    504: DEADLINE_EXCEEDED,
}

_NOT_LIVE = "Start-up did not succeed within STARTUP_TIMEOUT_SECONDS: the pod is to be restarted"


def _reply(
    schema: dict[str, Any],
    description: str,
    media: str = "application/json",
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "description": description,
        "headers": headers or _STD,
        "content": {media: {"schema": schema}},
    }


def _errors(*codes: int, v2: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes:
        # The API-key middleware answers 401 in the main shape on every route.
        schema = ref("V2Error") if v2 and code != 401 else ref("Error")
        headers: dict[str, Any] = dict(_RETRY if code in (429, 503) else _STD)
        if code == 401:
            headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWWAuthenticate"}
        out[str(code)] = {
            "description": _ERROR_TEXT[code],
            "headers": headers,
            "content": {"application/json": {"schema": schema}},
        }
    return out


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": responses, **extra}


def _body(schema: dict[str, Any], **examples: Any) -> dict[str, Any]:
    named = {name: {"value": value} for name, value in examples.items()}
    media = {"schema": schema, "examples": named}
    return {"required": True, "content": {"application/json": media}}


def paths(settings: Settings, model_names: list[str]) -> dict[str, Any]:
    """Every route of the function, with its request body, responses and headers."""
    name = [{"name": "name", "in": "path", "required": True, "schema": {"enum": model_names}}]
    ce_headers = [
        {
            "name": f"ce-{attr}",
            "in": "header",
            "required": True,
            "schema": schema,
            "description": f"Binary mode: the event's `{attr}` (structured mode: in the body)",
        }
        for attr, schema in (
            ("specversion", {"const": "1.0"}),
            ("id", {"type": "string", "minLength": 1, "maxLength": MAX_ATTRIBUTE_CHARS}),
            ("source", {"type": "string", "minLength": 1, "maxLength": MAX_ATTRIBUTE_CHARS}),
            ("type", {"const": REQUEST_TYPE}),
        )
    ]
    ok_json = {"200": _reply({"type": "object"}, "OK")}
    return {
        "/predict": {
            "post": _op(
                "Classify one text or a batch of texts",
                {
                    "200": _reply(
                        {"oneOf": [ref("Prediction"), ref("Results")]},
                        "One prediction for `text`, or `results` in input order for `texts` "
                        "(a per-item `deadline_exceeded` error for a text not run in time)",
                    ),
                    **_errors(400, 401, 408, 413, 415, 422, 429, 500, 503, 504),
                },
                parameters=predict_headers(),
                requestBody=_body(
                    ref("PredictRequest"),
                    single={"text": "The plot was thin but the acting was wonderful", "id": "r1"},
                    batch={
                        "texts": ["I love it", {"id": 7, "text": "Worst purchase ever"}],
                        "long_text": "chunk",
                    },
                ),
            )
        },
        "/": {
            "post": _op(
                "Classify the texts of a CloudEvent (binary or structured mode)",
                {
                    "200": {
                        "description": (
                            f"The reply event, type `{RESPONSE_TYPE}`, in the request's mode: "
                            "binary (ce-* headers, data as the body) or structured"
                        ),
                        "headers": _STD,
                        "content": {
                            "application/json": {"schema": ref("EventResults")},
                            STRUCTURED_JSON: {"schema": ref("ReplyEvent")},
                        },
                    },
                    **_errors(400, 401, 408, 413, 429, 500, 503, 504),
                },
                description=(
                    f"Request type `{REQUEST_TYPE}`. Binary mode (what a Knative Broker "
                    "delivers): the ce-* headers below and the data as an `application/json` "
                    f"body. Structured mode: `Content-Type: {STRUCTURED_JSON}` and the whole "
                    "event in the body (schema `StructuredEvent`, see "
                    "`x-cloudevents-structured-mode`); ce-* headers are then optional, and "
                    "refused only when they contradict the event. One result or per-item error "
                    "per text, in order. Extensions: `deadline` (RFC 3339; texts not run by then "
                    "are never computed: 504 when none ran, else per-item `deadline_exceeded` "
                    "errors) and `priority` (high, normal or low; low by default, so bulk events "
                    "yield to interactive requests), see `x-cloudevents-extensions`."
                ),
                parameters=[*ce_headers, *event_headers()],
                requestBody=_body(
                    ref("EventData"),
                    texts={"texts": ["Great film", "Dull"]},
                    items={"items": [{"id": "a", "text": "Great film"}, {"id": "b", "text": ""}]},
                ),
                # OpenAPI cannot make a header required for one media type only: the ce-*
                # headers are required in binary mode and optional in structured mode. The
                # machine-checked body is binary mode's; structured mode is stated here.
                **{
                    "x-cloudevents-structured-mode": {
                        "content": {STRUCTURED_JSON: {"schema": ref("StructuredEvent")}},
                        "headers": "ce-* headers optional; when present they must be valid",
                    },
                    "x-cloudevents-extensions": event_extensions(),
                },
            )
        },
        "/health/liveness": {
            "get": _op(
                "Process is alive",
                {**ok_json, "503": _reply(ref("Error"), _NOT_LIVE)},
            )
        },
        "/health/readiness": {
            "get": _op("Model loaded, warmed up and accepting work", {**ok_json, **_errors(503)})
        },
        "/model": {
            "get": _op(
                "The served model: name, version, labels, precision, max tokens, providers",
                {**ok_json, **_errors(401, 503)},
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (text exposition format)",
                {"200": _reply({"type": "string"}, "metrics", "text/plain")},
            )
        },
        "/openapi.json": {"get": _op("This document", ok_json)},
        "/explain": {
            "post": _op(
                "Classify one text and attribute the predicted label to its words",
                {
                    "200": _reply(
                        ref("ExplainedPrediction"),
                        "The prediction with its `explanation`: one attribution per word, "
                        "with code point offsets into the text",
                    ),
                    **_errors(400, 401, 408, 413, 415, 422, 429, 500, 503, 504),
                },
                parameters=predict_headers(),
                description=(
                    "Occlusion: the text and one copy per word with that word removed go to the "
                    "batcher in one submit (words + 1 model inputs, at most EXPLAIN_MAX_WORDS + "
                    "1). `POST /predict` with `explain: true` does the same for each text."
                ),
                requestBody=_body(
                    ref("ExplainRequest"),
                    single={"text": "The plot was thin but the acting was wonderful", "id": "e1"},
                ),
            )
        },
        "/v2": {
            "get": _op("Open Inference Protocol: server metadata", {**ok_json, **_errors(401)})
        },
        "/v2/health/live": {
            "get": _op(
                "Open Inference Protocol: server liveness",
                {**ok_json, "503": _reply({"type": "object"}, _NOT_LIVE)},
            )
        },
        "/v2/health/ready": {
            "get": _op(
                "Open Inference Protocol: server readiness",
                {**ok_json, "503": _reply({"type": "object"}, "not ready", headers=_RETRY)},
            )
        },
        "/v2/models/{name}": {
            "get": _op(
                "Open Inference Protocol: model metadata (inputs, outputs, versions)",
                {**ok_json, **_errors(401, 404, 503, v2=True)},
                parameters=name,
            )
        },
        "/v2/models/{name}/ready": {
            "get": _op(
                "Open Inference Protocol: model readiness",
                {
                    **ok_json,
                    **_errors(401, 404, v2=True),
                    "503": _reply({"type": "object"}, "not ready", headers=_RETRY),
                },
                parameters=name,
            )
        },
        "/v2/models/{name}/infer": {
            "post": _op(
                "Open Inference Protocol: classify a BYTES tensor of texts",
                {
                    "200": _reply(
                        ref("V2InferResponse"),
                        "outputs label (BYTES), score (FP32), probabilities (FP32 [N, C])",
                    ),
                    **_errors(400, 401, 404, 408, 413, 429, 500, 503, 504, v2=True),
                },
                description=(
                    "JSON tensor data, or the binary tensor data extension: the JSON part's "
                    "length in `Inference-Header-Content-Length`, the input's "
                    "`parameters.binary_data_size`, then each text as a 4-byte little-endian "
                    "length and its UTF-8 bytes."
                ),
                parameters=name,
                requestBody=_body(
                    ref("V2InferRequest"),
                    texts={
                        "inputs": [
                            {
                                "name": "text",
                                "shape": [2],
                                "datatype": "BYTES",
                                "data": ["Loved it", "Awful"],
                            }
                        ]
                    },
                ),
            )
        },
        **_playground(settings),
    }


def _playground(settings: Settings) -> dict[str, Any]:
    html = {"200": _reply({"type": "string", "contentMediaType": "text/html"}, "HTML", "text/html")}
    out: dict[str, Any] = {}
    if settings.playground:
        summary = "The playground page: try /predict with explanations in a browser (PLAYGROUND)"
        out["/playground"] = {"get": _op(summary, html)}
    if settings.labelling:
        lock = "The labelling page; with API keys on, a page that asks for one (LABELLING)"
        out["/label"] = {"get": _op(lock, html)}
        out["/label/app"] = {"get": _op("The labelling page (LABELLING)", {**html, **_errors(401)})}
    return out


def document(settings: Settings, model_name: str | None = None) -> dict[str, Any]:
    """The OpenAPI document for a function serving `settings.variant` (and `model_name`)."""
    names = [n for n in dict.fromkeys((settings.model_name, model_name, settings.variant)) if n]
    doc_paths = paths(settings, names)
    # A Trigger's deliveries for one API key's quota and usage: otherwise POST / itself.
    root = doc_paths["/"]["post"]
    key_id = {"name": "key_id", "in": "path", "required": True, "schema": {"pattern": KEY_ID}}
    doc_paths["/events/{key_id}"] = {
        "post": {**root, "summary": f"{root['summary']}, for API key `key_id` (see README)"}
        | {"parameters": [key_id, *root["parameters"]]}
    }
    components: dict[str, Any] = {
        "schemas": schemas(settings, names),
        "headers": {
            "XRequestID": {"required": True, "schema": {"type": "string", "maxLength": 128}},
            "ServerTiming": {"required": True, "schema": {"type": "string"}},
            "RetryAfter": {"required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}},
            "WWWAuthenticate": {"required": True, "schema": {"type": "string"}},
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "KubeSentiment function",
            "version": "0.1.0",
            "description": f"Sentiment analysis, variant {settings.variant}.",
        },
        "paths": doc_paths,
        "components": components,
    }
    if settings.api_keys is not None:
        # With API keys on, every route but the probes, metrics and this document needs one.
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        doc["security"] = [{"bearer": []}, {"apiKey": []}]
        for path in OPEN_PATHS & doc_paths.keys():
            for operation in doc_paths[path].values():
                operation["security"] = []
    return doc
