"""The JSON adapter: `POST /predict`, health probes, `GET /model` and `GET /openapi.json`."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from functions.sentiment import explain, openapi
from functions.sentiment.core import (
    AppState,
    app_state,
    classify,
    inference,
    prediction_json,
)
from functions.sentiment.inputs import parse_predict, read_json
from functions.sentiment.qos import from_headers, late_results
from shared.errors import DeadlineExceeded, InvalidInput, NotReady
from shared.logs import request_id_var


@inference
async def predict(request: Request, state: AppState) -> Response:
    """POST /predict: one text or a batch of texts."""
    s = state.settings
    # The deadline counts from arrival; a bad header is refused before the body is read.
    qos = from_headers(request.headers, s, InvalidInput, time.monotonic())
    data = await read_json(request, s.max_body_bytes, s.body_timeout_s)
    parsed = parse_predict(data, max_texts=s.max_texts, max_chars=s.max_text_chars)
    texts = [i.text for i in parsed.items]
    if parsed.explain:
        results = await explain.explained_results(state, parsed, qos)
    else:
        try:
            predictions = await classify(
                state,
                texts,
                long_text=parsed.long_text,
                deadline=qos.deadline,
                priority=qos.priority,
            )
        except DeadlineExceeded as e:
            if parsed.single or e.partial is None:
                raise  # 504 deadline_exceeded
            ids = [item.id for item in parsed.items]
            return JSONResponse({"results": late_results(e, ids, state)})
        results = [
            prediction_json(p, item.id, state)
            for p, item in zip(predictions, parsed.items, strict=True)
        ]
    if parsed.single:
        return JSONResponse(results[0])
    return JSONResponse({"results": results})


async def liveness(request: Request) -> Response:
    """GET /health/liveness: the event loop answers; 503 once start-up outlived
    STARTUP_TIMEOUT_SECONDS, so the kubelet restarts the pod."""
    state = app_state(request)
    if state.live:
        return JSONResponse({"status": "alive"})
    return JSONResponse(
        NotReady(f"not live: {state.not_ready_reason}").body(request_id_var.get()),
        status_code=503,
    )


async def readiness(request: Request) -> Response:
    """GET /health/readiness: 200 only when the model is loaded, warmed up and not draining."""
    state = app_state(request)
    if state.accepting:
        return JSONResponse({"status": "ready", "variant": state.settings.variant})
    reason = "shutting down" if state.draining else state.not_ready_reason
    # A probe's answer, not a refused request: not counted as an error or a rejection.
    return JSONResponse(
        NotReady(f"not ready: {reason}").body(request_id_var.get()),
        status_code=503,
        headers=state.retry_after,
    )


async def model_info(request: Request) -> Response:
    """GET /model: what is served and how."""
    state = app_state(request)
    classifier, _ = state.require_ready()
    s = state.settings
    info = classifier.describe()
    info.update(
        variant=s.variant,
        inter_op_threads=s.inter_op_threads,
        batching={
            "enabled": s.batching,
            "max_size": s.batch_max_size,
            "max_wait_ms": s.batch_max_wait_ms,
        },
        long_text=s.long_text,
        max_concurrency=s.max_concurrency,
    )
    return JSONResponse(info)


async def openapi_json(request: Request) -> Response:
    """GET /openapi.json: the OpenAPI 3.1 description of every route."""
    state = app_state(request)
    name = state.classifier.manifest.name if state.classifier is not None else None
    return JSONResponse(openapi.document(state.settings, name))


def routes() -> list[BaseRoute]:
    """The JSON routes."""
    return [
        Route("/predict", predict, methods=["POST"]),
        Route("/health/liveness", liveness, methods=["GET"]),
        Route("/health/readiness", readiness, methods=["GET"]),
        Route("/model", model_info, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
