"""KServe Open Inference Protocol (v2) REST endpoints, so KServe and Triton clients can call us.


Routes: `GET /v2`, `/v2/health/live`, `/v2/health/ready`, `/v2/models/{name}`,
`/v2/models/{name}/ready` and `POST /v2/models/{name}/infer`. The model name is MODEL_NAME when
set (the KServe runtimes in knative/kserve/ set it to the InferenceService's name), else the
manifest's name; the manifest's name and the variant name are accepted too. The one input is a
BYTES tensor of UTF-8 texts, shape `[N]` or `[N, 1]`, sent as JSON `data` (a flat list, or one
list per row) or with the protocol's binary tensor extension (`Inference-Header-Content-Length`;
each element a 4-byte little-endian length and its bytes). Outputs: `label` (BYTES `[N]`),
`score` (FP32 `[N]`, P(positive) - P(negative), only for models with both labels) and
`probabilities` (FP32 `[N, C]`, row-major, in the order of the model's labels); the request's
`outputs` list picks a subset,
`parameters.long_text` chooses `truncate` or `chunk`, and Triton's `parameters.timeout`
(microseconds) and `parameters.priority` (1 = high) set a deadline and a lane (functions/sentiment/
qos.py). Outputs are always returned as JSON data.

Errors use the protocol's own shape, `{"error": "<message>"}`, not the function's main error
shape: v2 clients (tritonclient, KServe's) parse exactly that. The status codes stay the
function's own: 400 for a bad request, 404 for an unknown model, 413 for a body over
MAX_BODY_BYTES, 429/503 with Retry-After for overload and not-ready, so Knative and clients
retry them, and 504 when the deadline passed before the texts were run. Readiness that is false
answers 503 (with `{"ready": false}`), like /health/readiness.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from functions.sentiment.core import AppState, app_state, classify, inference
from functions.sentiment.inputs import (
    LONG_TEXT_MODES,
    check_text,
    decode_json,
    kind,
    read_body,
    shown,
)
from functions.sentiment.qos import from_v2
from functions.sentiment.schemas import MAX_NAME_CHARS, OUTPUTS
from shared.errors import ApiError, NotFound

if TYPE_CHECKING:  # the model module imports ONNX Runtime: the preload thread does that
    from functions.sentiment.model import Classifier

SERVER_NAME = "kubesentiment"
SERVER_VERSION = "0.1.0"
REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs"})
TENSOR_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
OUTPUT_FIELDS = frozenset({"name", "parameters"})
HEADER_LENGTH = "inference-header-content-length"


class BadRequest(ApiError):
    """An inference request that does not fit the protocol (400)."""

    status = 400
    type = "invalid_input"


def served_name(state: AppState, classifier: Classifier) -> str:
    """The name the v2 routes give the model: MODEL_NAME, else the manifest's name."""
    return state.settings.model_name or classifier.manifest.name


def _model(state: AppState, name: str) -> Classifier:
    classifier, _ = state.require_ready()
    if name not in (
        served_name(state, classifier),
        classifier.manifest.name,
        state.settings.variant,
    ):
        raise NotFound(
            f"unknown model {shown(name)}; this function serves {served_name(state, classifier)!r}"
        )
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
            "name": served_name(state, classifier),
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
        if not header_length.isascii() or not header_length.strip().isdigit():
            raise BadRequest(
                f"Inference-Header-Content-Length is not a number: {shown(header_length)}"
            )
        n = int(header_length)
        if not 0 < n <= len(body):
            raise BadRequest("Inference-Header-Content-Length is outside the body")
        json_part, tail = body[:n], body[n:]
    return decode_json(json_part), tail


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


def _object(value: Any, what: str, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    """`value` as a JSON object, refusing another type or (with `allowed`) unknown fields."""
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, got {kind(value)}")
    if allowed is not None and not value.keys() <= allowed:
        raise BadRequest(f"unknown field(s) in {what}: {shown(sorted(value.keys() - allowed))}")
    return value


def _string(value: Any, what: str, shortest: int = 1) -> str:
    if not isinstance(value, str) or not shortest <= len(value) <= MAX_NAME_CHARS:
        raise BadRequest(f"{what} must be a string of {shortest}-{MAX_NAME_CHARS} characters")
    return value


def _binary_texts(tail: bytes) -> list[Any]:
    texts = []
    for index, element in enumerate(decode_bytes_tensor(tail)):
        try:
            texts.append(element.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise BadRequest(f"BYTES element {index} is not UTF-8 (offset {e.start})") from None
    return texts


def _json_texts(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise BadRequest(f"input 'data' must be an array of strings, got {kind(data)}")
    rows = [isinstance(x, list) for x in data]
    if not any(rows):
        return data
    # Row-major data may come one list per row ([N, 1]): every row then holds one text.
    if not all(rows) or any(len(row) != 1 for row in data):
        raise BadRequest("input 'data' must be flat, or one single-element array per row")
    return [row[0] for row in data]


def _texts(
    payload: dict[str, Any], tail: bytes, binary: bool, limits: tuple[int, int]
) -> list[str]:
    max_texts, max_chars = limits
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise BadRequest("'inputs' must hold exactly one tensor: a BYTES tensor of texts")
    tensor = _object(inputs[0], "the input tensor", TENSOR_FIELDS)
    _string(tensor.get("name"), "the input tensor's 'name'")
    if tensor.get("datatype") != "BYTES":
        raise BadRequest(f"input datatype must be BYTES, got {shown(tensor.get('datatype'))}")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or len(shape) not in (1, 2)
        or (len(shape) == 2 and shape[1] != 1)
    ):
        raise BadRequest(f"input shape must be [N] or [N, 1], got {shown(shape)}")
    params = _object(tensor.get("parameters", {}), "the input tensor's 'parameters'")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not binary:
            raise BadRequest("binary_data_size needs the Inference-Header-Content-Length header")
        if not isinstance(size, int) or isinstance(size, bool) or size != len(tail):
            raise BadRequest("binary_data_size does not match the binary part of the body")
        raw = _binary_texts(tail)
    elif "data" not in tensor:
        raise BadRequest("the input tensor needs 'data' (or binary data)")
    else:
        raw = _json_texts(tensor["data"])
    if not raw or len(raw) != shape[0]:
        raise BadRequest(f"input shape {shown(shape)} does not match {len(raw)} data elements")
    if len(raw) > max_texts:
        raise BadRequest(f"{len(raw)} texts, more than the limit of {max_texts}")
    for index, text in enumerate(raw):
        problem = check_text(text, max_chars)
        if problem:
            raise BadRequest(f"text {index} {problem}")
    return raw


def _wanted(payload: dict[str, Any], available: list[str]) -> list[str]:
    if "outputs" not in payload:
        return available
    requested = payload["outputs"]
    if not isinstance(requested, list):
        raise BadRequest(f"'outputs' must be an array, got {kind(requested)}")
    names = []
    for index, output in enumerate(requested):
        entry = _object(output, f"outputs[{index}]", OUTPUT_FIELDS)
        _object(entry.get("parameters", {}), f"outputs[{index}].parameters")
        if entry.get("name") not in available:
            raise BadRequest(f"unknown output {shown(entry.get('name'))}; available: {available}")
        names.append(entry["name"])
    return names


def _request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    payload, tail = split_body(body, header_length)
    payload = _object(payload, "the request", REQUEST_FIELDS)
    if "id" in payload:
        _string(payload["id"], "'id'", shortest=0)
    params = _object(payload.get("parameters", {}), "'parameters'")
    if params.get("long_text") not in (*LONG_TEXT_MODES, None):
        raise BadRequest(f"parameters.long_text must be one of {', '.join(LONG_TEXT_MODES)}")
    return payload, tail


@inference
async def infer(request: Request, state: AppState) -> Response:
    """POST /v2/models/{name}/infer: classify a BYTES tensor of texts."""
    arrival = time.monotonic()  # parameters.timeout counts from here
    classifier = _model(state, request.path_params["name"])
    s = state.settings
    body = await read_body(request, s.max_body_bytes, s.body_timeout_s)
    header_length = request.headers.get(HEADER_LENGTH)
    payload, tail = _request(body, header_length)
    qos = from_v2(payload.get("parameters", {}), s, BadRequest, arrival)
    limits = (s.max_texts, s.max_text_chars)
    texts = _texts(payload, tail, header_length is not None, limits)
    long_text = payload.get("parameters", {}).get("long_text")
    available = [n for n in OUTPUTS if n != "score" or classifier.has_score]
    wanted = _wanted(payload, available)
    # Tensors have no per-item error: a batch not wholly run by its deadline is one 504.
    predictions = await classify(
        state, texts, long_text=long_text, deadline=qos.deadline, priority=qos.priority
    )
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
        "model_name": served_name(state, classifier),
        "model_version": classifier.manifest.version,
        "outputs": [{"name": name, **tensors[name]} for name in wanted],
    }
    if "id" in payload:
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
