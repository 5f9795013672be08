"""The OpenAPI 3.1 document served at `GET /openapi.json`.

Written as data rather than generated from docstrings: every route is listed here and a test
checks that the app's routes and this document agree in both directions.
"""

from __future__ import annotations

from typing import Any

from shared.config import Settings

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid JSON or malformed CloudEvent",
        401: "Missing or invalid API key",
        404: "Unknown model",
        413: "Body larger than MAX_BODY_BYTES",
        415: "Wrong Content-Type",
        422: "Body does not fit the schema",
        429: "Overloaded; retry after Retry-After seconds",
        503: "Not ready or shutting down; retry after Retry-After seconds",
    }
    return {str(c): _json(_ERROR, text[c]) for c in codes}


# Paths served by every function, with the HTTP methods each accepts.
PATHS: dict[str, dict[str, Any]] = {
    "/predict": {
        "post": {
            "summary": "Classify one text or a batch of texts",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}
                },
            },
            "responses": {
                "200": _json(
                    {
                        "oneOf": [
                            {"$ref": "#/components/schemas/Prediction"},
                            {
                                "type": "object",
                                "properties": {
                                    "results": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Prediction"},
                                    }
                                },
                            },
                        ]
                    },
                    "One prediction for `text`, or `results` in input order for `texts`",
                ),
                **_errors(400, 401, 413, 415, 422, 429, 503),
            },
        }
    },
    "/health/liveness": {
        "get": {"summary": "Process is alive", "responses": {"200": {"description": "alive"}}}
    },
    "/health/readiness": {
        "get": {
            "summary": "Model loaded, warmed up and accepting work",
            "responses": {"200": {"description": "ready"}, **_errors(503)},
        }
    },
    "/model": {
        "get": {
            "summary": "The served model: name, version, labels, precision, max tokens, providers",
            "responses": {"200": {"description": "model description"}, **_errors(401, 503)},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text exposition format)",
            "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}},
        }
    },
    "/openapi.json": {
        "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}
    },
}

COMPONENTS: dict[str, Any] = {
    "schemas": {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["type", "message", "request_id"],
                    "properties": {
                        "type": {"type": "string", "examples": ["invalid_input"]},
                        "message": {"type": "string"},
                        "request_id": {"type": ["string", "null"]},
                    },
                }
            },
        },
        "Item": {
            "type": "object",
            "required": ["text"],
            "properties": {
                "id": {"type": ["string", "integer"]},
                "text": {"type": "string", "minLength": 1},
            },
        },
        "PredictRequest": {
            "type": "object",
            "properties": {
                "text": {"type": "string", "minLength": 1},
                "id": {"type": ["string", "integer"]},
                "texts": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "oneOf": [
                            {"type": "string", "minLength": 1},
                            {"$ref": "#/components/schemas/Item"},
                        ]
                    },
                },
                "long_text": {"type": "string", "enum": ["truncate", "chunk"]},
            },
        },
        "Prediction": {
            "type": "object",
            "required": ["label", "score", "probabilities", "truncated", "model", "variant"],
            "properties": {
                "id": {"type": ["string", "integer"]},
                "label": {"type": "string"},
                "score": {
                    "type": ["number", "null"],
                    "description": "P(positive) - P(negative), in [-1, 1]",
                },
                "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
                "truncated": {"type": "boolean"},
                "model": {"type": "string"},
                "variant": {"type": "string"},
            },
        },
    }
}

# Extra paths registered by optional features (CloudEvents, KServe v2) add themselves here.
EXTRA_PATHS: dict[str, dict[str, Any]] = {}


def document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document for a function serving `settings.variant`."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "KubeSentiment function",
            "version": "0.1.0",
            "description": f"Sentiment analysis, variant {settings.variant}.",
        },
        "paths": {**PATHS, **EXTRA_PATHS},
        "components": COMPONENTS,
    }
