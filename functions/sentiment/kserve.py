"""KServe Open Inference Protocol (v2) REST endpoints, so KServe and Triton clients can call us.

Routes: `GET /v2`, `/v2/health/live`, `/v2/health/ready`, `/v2/models/{name}`,
`/v2/models/{name}/ready` and `POST /v2/models/{name}/infer`. The model name is the manifest's
name (the variant name is accepted too). The one input is a BYTES tensor of UTF-8 texts, shape
`[N]` or `[N, 1]`, sent as JSON `data` (a flat list, or one list per row) or with the protocol's
binary tensor extension (`Inference-Header-Content-Length`; each element a 4-byte little-endian
length and its bytes). Outputs: `label` (BYTES `[N]`), `score` (FP32 `[N]`, P(positive) -
P(negative), only for models with both labels) and `probabilities` (FP32 `[N, C]`, row-major, in
the order of the model's labels); the request's `outputs` list picks a subset, and
`parameters.long_text` chooses `truncate` or `chunk`. Outputs are always returned as JSON data.

Errors use the protocol's own shape, `{"error": "<message>"}`, not the function's main error
shape: v2 clients (tritonclient, KServe's) parse exactly that. The status codes stay the
function's own: 400 for a bad request, 404 for an unknown model, 413 for a body over
MAX_BODY_BYTES, and 429/503 with Retry-After for overload and not-ready, so Knative and clients
retry them. Readiness that is false answers 503 (with `{"ready": false}`), like /health/readiness.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from functions.sentiment import openapi
from functions.sentiment.core import AppState, app_state, classify, inference
from functions.sentiment.inputs import LONG_TEXT_MODES, check_text, read_body
from functions.sentiment.model import Classifier
from shared.errors import ApiError, InvalidJson, NotFound

SERVER_NAME = "kubesentiment"
SERVER_VERSION = "0.1.0"
OUTPUT_NAMES = ("label", "score", "probabilities")
HEADER_LENGTH = "inference-header-content-length"


class BadRequest(ApiError):
    """An inference request that does not fit the protocol (400)."""

    status = 400
    type = "invalid_input"


def _model(state: AppState, name: str) -> Classifier:
    classifier, _ = state.require_ready()
    if name not in (classifier.manifest.name, state.settings.variant):
        raise NotFound(f"unknown model {name!r}; this function serves {classifier.manifest.name!r}")
    return classifier


async def server_metadata(request: Request) -> Response:
    """GET /v2: server name, version and protocol extensions."""
    return JSONResponse({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})


async def server_live(request: Request) -> Response:
    """GET /v2/health/live: the process answers; 503 once start-up outlived
    STARTUP_TIMEOUT_SECONDS (like /health/liveness)."""
    if app_state(request).live:
        return JSONResponse({"live": True})
    return JSONResponse({"live": False}, status_code=503)


async def server_ready(request: Request) -> Response:
    """GET /v2/health/ready: 200 when the model is loaded and the function not draining."""
    state = app_state(request)
    if state.accepting:
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False}, status_code=503, headers=state.retry_after)


async def model_metadata(request: Request) -> Response:
    """GET /v2/models/{name}: the model's versions, platform and tensor metadata."""
    state = app_state(request)
    classifier = _model(state, request.path_params["name"])
    labels = len(classifier.labels)
    outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]}]
    if classifier.has_score:
        outputs.append({"name": "score", "datatype": "FP32", "shape": [-1]})
    outputs.append({"name": "probabilities", "datatype": "FP32", "shape": [-1, labels]})
    return JSONResponse(
        {
            "name": classifier.manifest.name,
            "versions": [classifier.manifest.version],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": outputs,
            "parameters": {"labels": list(classifier.labels), "variant": state.settings.variant},
        }
    )


async def model_ready(request: Request) -> Response:
    """GET /v2/models/{name}/ready: the named model is loaded and accepting work."""
    state = app_state(request)
    name = request.path_params["name"]
    if state.accepting:
        _model(state, name)  # 404 for another name
        return JSONResponse({"name": name, "ready": True})
    return JSONResponse({"name": name, "ready": False}, status_code=503, headers=state.retry_after)


def split_body(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    """The JSON part of an infer request and the binary tail (binary tensor data extension)."""
    if header_length is None:
        json_part, tail = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest("Inference-Header-Content-Length is not a number") from None
        if not 0 < n <= len(body):
            raise BadRequest("Inference-Header-Content-Length is outside the body")
        json_part, tail = body[:n], body[n:]
    try:
        return json.loads(json_part), tail
    except ValueError as e:
        raise InvalidJson(f"the request body is not valid JSON: {e}") from None


def decode_bytes_tensor(blob: bytes) -> list[bytes]:
    """Elements of a BYTES tensor in the binary extension: 4-byte LE length, then the bytes."""
    out, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise BadRequest("binary BYTES data ends inside an element length")
        (size,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + size > len(blob):
            raise BadRequest("binary BYTES data ends inside an element")
        out.append(blob[offset : offset + size])
        offset += size
    return out


def _texts(payload: Any, tail: bytes, *, max_texts: int, max_chars: int) -> list[str]:
    if not isinstance(payload, dict):
        raise BadRequest("the request must be a JSON object with 'inputs'")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest("'inputs' must hold exactly one tensor: a BYTES tensor of texts")
    tensor = inputs[0]
    if tensor.get("datatype") != "BYTES":
        raise BadRequest(f"input datatype must be BYTES, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or len(shape) not in (1, 2)
        or (len(shape) == 2 and shape[1] != 1)
    ):
        raise BadRequest(f"input shape must be [N] or [N, 1], got {shape!r}")
    params = tensor.get("parameters") or {}
    if isinstance(params, dict) and "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or size != len(tail):
            raise BadRequest("binary_data_size does not match the binary part of the body")
        raw: list[Any] = []
        for element in decode_bytes_tensor(tail):
            try:
                raw.append(element.decode("utf-8"))
            except UnicodeDecodeError:
                raise BadRequest("a BYTES element is not UTF-8 text") from None
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise BadRequest("input 'data' must be a list of strings")
        # Row-major data may come flat or nested one list per row ([N, 1]).
        raw = [x for row in data for x in row] if data and isinstance(data[0], list) else data
    if len(raw) != shape[0] or not raw:
        raise BadRequest(f"input shape {shape} does not match {len(raw)} data elements")
    if len(raw) > max_texts:
        raise BadRequest(f"{len(raw)} texts, more than the limit of {max_texts}")
    for index, text in enumerate(raw):
        problem = check_text(text, max_chars)
        if problem:
            raise BadRequest(f"text {index} {problem}")
    return raw


def _wanted(payload: dict[str, Any], available: list[str]) -> list[str]:
    requested = payload.get("outputs")
    if requested is None:
        return available
    if not isinstance(requested, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
    ):
        raise BadRequest("'outputs' must be a list of objects with a 'name'")
    names = [o["name"] for o in requested]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; available: {available}")
    return names


@inference
async def infer(request: Request, state: AppState) -> Response:
    """POST /v2/models/{name}/infer: classify a BYTES tensor of texts."""
    classifier = _model(state, request.path_params["name"])
    s = state.settings
    body = await read_body(request, s.max_body_bytes, s.body_timeout_s)
    payload, tail = split_body(body, request.headers.get(HEADER_LENGTH))
    texts = _texts(payload, tail, max_texts=s.max_texts, max_chars=s.max_text_chars)
    params = payload.get("parameters") or {}
    long_text = params.get("long_text") if isinstance(params, dict) else None
    if long_text is not None and long_text not in LONG_TEXT_MODES:
        raise BadRequest(f"parameters.long_text must be one of {', '.join(LONG_TEXT_MODES)}")
    available = [n for n in OUTPUT_NAMES if n != "score" or classifier.has_score]
    wanted = _wanted(payload, available)
    predictions = await classify(state, texts, long_text=long_text)
    n, labels = len(predictions), list(classifier.labels)
    tensors: dict[str, dict[str, Any]] = {
        "label": {"datatype": "BYTES", "shape": [n], "data": [p.label for p in predictions]},
        "score": {"datatype": "FP32", "shape": [n], "data": [p.score for p in predictions]},
        "probabilities": {
            "datatype": "FP32",
            "shape": [n, len(labels)],
            "data": [p.probabilities[label] for p in predictions for label in labels],
        },
    }
    response: dict[str, Any] = {
        "model_name": classifier.manifest.name,
        "model_version": classifier.manifest.version,
        "outputs": [{"name": name, **tensors[name]} for name in wanted],
    }
    if isinstance(payload.get("id"), str):
        response["id"] = payload["id"]
    truncated = sum(p.truncated for p in predictions)
    response["parameters"] = {"truncated": truncated, "variant": s.variant}
    return JSONResponse(response)


def routes() -> list[BaseRoute]:
    """The Open Inference Protocol routes."""
    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", server_live, methods=["GET"]),
        Route("/v2/health/ready", server_ready, methods=["GET"]),
        Route("/v2/models/{name}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    ]


_V2_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}


def _v2_json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


def _v2_errors(*codes: int) -> dict[str, Any]:
    text = {
        400: 'Request does not fit the protocol (body {"error": "..."})',
        401: "Missing or invalid API key",
        404: "Unknown model",
        413: "Body larger than MAX_BODY_BYTES",
        429: "Overloaded; retry after Retry-After seconds",
        503: "Not ready or shutting down; retry after Retry-After seconds",
    }
    return {str(c): _v2_json(text[c], _V2_ERROR) for c in codes}


_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]

OPENAPI_PATHS: dict[str, dict[str, Any]] = {
    "/v2": {
        "get": {
            "summary": "Open Inference Protocol: server metadata",
            "responses": {"200": _v2_json("name, version, extensions")},
        }
    },
    "/v2/health/live": {
        "get": {
            "summary": "Open Inference Protocol: server liveness",
            "responses": {"200": _v2_json("live")},
        }
    },
    "/v2/health/ready": {
        "get": {
            "summary": "Open Inference Protocol: server readiness",
            "responses": {"200": _v2_json("ready"), "503": _v2_json("not ready")},
        }
    },
    "/v2/models/{name}": {
        "get": {
            "summary": "Open Inference Protocol: model metadata (inputs, outputs, versions)",
            "parameters": _NAME,
            "responses": {"200": _v2_json("model metadata"), **_v2_errors(401, 404, 503)},
        }
    },
    "/v2/models/{name}/ready": {
        "get": {
            "summary": "Open Inference Protocol: model readiness",
            "parameters": _NAME,
            "responses": {"200": _v2_json("ready"), **_v2_errors(404, 503)},
        }
    },
    "/v2/models/{name}/infer": {
        "post": {
            "summary": "Open Inference Protocol: classify a BYTES tensor of texts",
            "parameters": _NAME,
            "requestBody": {"required": True, "content": {"application/json": {}}},
            "responses": {
                "200": _v2_json("outputs label (BYTES), score (FP32), probabilities (FP32 [N, C])"),
                **_v2_errors(400, 401, 404, 413, 429, 503),
            },
        }
    },
}

openapi.EXTRA_PATHS.update(OPENAPI_PATHS)
