"""The JSON Schemas of every request and response body, exact for one function's settings.

The text rule (not blank, no control characters or lone surrogates) is a pattern equal to the check
in `inputs.check_text`; limits come from the settings. The Open Inference Protocol's one input is a
BYTES tensor whose `shape` must match its `data`: JSON Schema cannot compare two fields, so the
tensor schema has one `oneOf` branch per batch size N (shape `[N]` or `[N, 1]` with exactly N
elements, flat or one list per row). The binary tensor data extension is not JSON and is described
in words; in a JSON-only body `binary_data_size` is refused. v2 request and output `parameters`
are the protocol's open extension objects: unknown entries are allowed and ignored.
"""

from __future__ import annotations

from typing import Any

from functions.sentiment.inputs import LONG_TEXT_MODES, MAX_ID_CHARS, MAX_ID_INT
from functions.sentiment.qos import event_extensions, v2_parameters
from shared.config import Settings

MAX_ATTRIBUTE_CHARS = 1024
MAX_NAME_CHARS = 256
OUTPUTS = ("label", "score", "probabilities")
REQUEST_TYPE = "dev.kubesentiment.sentiment.requested"
RESPONSE_TYPE = "dev.kubesentiment.sentiment.completed"
REQUEST_ID_EXTENSION = "requestid"
STRUCTURED_JSON = "application/cloudevents+json"

# The characters `inputs.BAD_CHARS` refuses, as a regex class body that ECMA-262, Python's re and
# Rust's regex (the fuzzer's validator) read alike. Lone surrogates are left out: no regex engine
# but Python's can name them, and the one JSON decoder refuses them before any schema applies.
BAD = r"\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f"
# What str.isspace() calls whitespace, less BAD, spelled out: `\s` means three different things in
# those three engines.
SPACE = r"\t\n\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
CLEAN = f"^[^{BAD}]*$"
# Clean and not blank (as `text.strip()` sees it): spaces, one clean non-space, then anything
# clean. The classes are disjoint, so matching never backtracks.
TEXT = f"^[{SPACE}]*[^{SPACE}{BAD}][^{BAD}]*$"


def ref(name: str) -> dict[str, str]:
    """A JSON reference to one of the component schemas."""
    return {"$ref": f"#/components/schemas/{name}"}


def schemas(settings: Settings, model_names: list[str]) -> dict[str, Any]:
    """The component schemas, with the limits of these settings."""
    text = {"type": "string", "minLength": 1, "maxLength": settings.max_text_chars}
    text["pattern"] = TEXT
    ident = {"type": ["string", "integer", "null"], "maxLength": MAX_ID_CHARS, "pattern": CLEAN}
    ident.update(minimum=-MAX_ID_INT, maximum=MAX_ID_INT)
    long_text = {"enum": [*LONG_TEXT_MODES, None]}
    texts = {"type": "array", "minItems": 1, "maxItems": settings.max_texts}
    attr = {"type": "string", "maxLength": MAX_ATTRIBUTE_CHARS, "pattern": CLEAN}
    n_max = settings.max_texts
    explain_flag = {
        "type": "boolean",
        "description": "Add each text's word attributions (`explanation`): words + 1 model inputs",
    }
    return {
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
                    "additionalProperties": False,
                }
            },
            "additionalProperties": False,
        },
        "V2Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
            "additionalProperties": False,
        },
        "Text": text,
        "Id": ident,
        "Item": {
            "type": "object",
            "required": ["text"],
            "properties": {"id": ref("Id"), "text": ref("Text")},
            "additionalProperties": False,
        },
        "SingleRequest": {
            "type": "object",
            "required": ["text"],
            "properties": {
                "text": ref("Text"),
                "id": ref("Id"),
                "long_text": long_text,
                "explain": explain_flag,
            },
            "additionalProperties": False,
        },
        "BatchRequest": {
            "type": "object",
            "required": ["texts"],
            "properties": {
                "texts": {**texts, "items": {"oneOf": [ref("Text"), ref("Item")]}},
                "long_text": long_text,
                "explain": explain_flag,
            },
            "additionalProperties": False,
        },
        **explain_schemas(),
        "PredictRequest": {"oneOf": [ref("SingleRequest"), ref("BatchRequest")]},
        "Prediction": {
            "type": "object",
            "required": ["label", "score", "probabilities", "truncated", "model", "variant"],
            "properties": {
                "id": ref("Id"),
                "label": {"type": "string"},
                "score": {"type": ["number", "null"], "minimum": -1, "maximum": 1},
                "probabilities": {
                    "type": "object",
                    "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
                },
                "truncated": {"type": "boolean"},
                "model": {"type": "string"},
                "variant": {"type": "string"},
                "explanation": ref("Explanation"),
            },
            "additionalProperties": False,
        },
        "Results": {
            "type": "object",
            "required": ["results"],
            # A per-item error only for a text not run by the request's deadline (qos.py).
            "properties": {"results": {"type": "array", "items": ref("ItemResult")}},
            "additionalProperties": False,
        },
        "EventData": {
            "type": "object",
            "properties": {
                "texts": {**texts, "items": {}},
                "items": {**texts, "items": {}},
                "long_text": long_text,
            },
            "oneOf": [{"required": ["texts"]}, {"required": ["items"]}],
            "additionalProperties": False,
            "description": (
                "Each entry of `texts` (a text) or `items` (`{id, text}`) that is not usable "
                "gets a per-item error in the reply; the event itself is still answered."
            ),
        },
        "ItemResult": {
            "oneOf": [
                ref("Prediction"),
                {
                    "type": "object",
                    "required": ["index", "error"],
                    "properties": {
                        "id": {},
                        "index": {"type": "integer", "minimum": 0},
                        "error": {
                            "type": "object",
                            "required": ["type", "message"],
                            "properties": {
                                "type": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        },
                    },
                    "additionalProperties": False,
                },
            ]
        },
        "EventResults": {
            "type": "object",
            "required": ["results"],
            "properties": {"results": {"type": "array", "items": ref("ItemResult")}},
        },
        "Attribute": attr,
        "StructuredEvent": {
            "type": "object",
            "required": ["specversion", "id", "source", "type", "data"],
            "properties": {
                "specversion": {"const": "1.0"},
                "id": {**attr, "minLength": 1},
                "source": {**attr, "minLength": 1},
                "type": {"const": REQUEST_TYPE},
                "subject": {**attr, "minLength": 1},
                "datacontenttype": {**attr, "minLength": 1},
                "dataschema": {**attr, "minLength": 1},
                "time": {"type": "string", "format": "date-time"},
                "data": ref("EventData"),
                **event_extensions(),
            },
            "propertyNames": {"pattern": "^[a-z0-9]{1,20}$"},
            # Extension attributes: the CloudEvents types String, Integer (32-bit) and Boolean.
            "additionalProperties": {
                **attr,
                "type": ["string", "integer", "boolean"],
                "minimum": -(2**31),
                "maximum": 2**31 - 1,
            },
        },
        "ReplyEvent": {
            "type": "object",
            "required": ["specversion", "id", "source", "type", REQUEST_ID_EXTENSION, "data"],
            "properties": {"type": {"const": RESPONSE_TYPE}, "data": ref("EventResults")},
        },
        **_v2_schemas(n_max, model_names, text_ref=ref("Text")),
    }


def explain_schemas() -> dict[str, Any]:
    """`POST /explain`'s body and answer, and the `explanation` of a prediction."""
    word = {
        "type": "object",
        "required": ["text", "start", "end", "attribution"],
        "properties": {
            "text": {"type": "string", "minLength": 1},
            "start": {"type": "integer", "minimum": 0},
            "end": {"type": "integer", "minimum": 1},
            "attribution": {"type": "number", "minimum": -1, "maximum": 1},
        },
        "additionalProperties": False,
        "description": "[start, end): Unicode code point offsets into the original text",
    }
    return {
        "ExplainRequest": {
            "type": "object",
            "required": ["text"],
            "properties": {
                "text": ref("Text"),
                "id": ref("Id"),
                "long_text": {"enum": [*LONG_TEXT_MODES, None]},
            },
            "additionalProperties": False,
        },
        "Explanation": {
            "type": "object",
            "required": ["label", "method", "mask", "words", "words_total", "model_inputs"],
            "properties": {
                "label": {"type": "string"},
                "method": {"const": "occlusion"},
                "mask": {"type": "string"},
                "words": {"type": "array", "items": word},
                "words_total": {"type": "integer", "minimum": 1},
                "model_inputs": {"type": "integer", "minimum": 2},
            },
            "additionalProperties": False,
            "description": (
                "attribution = P(label | text) - P(label | text without the word), for the first "
                "EXPLAIN_MAX_WORDS of the text's `words_total` words"
            ),
        },
        "ExplainedPrediction": {"allOf": [ref("Prediction"), {"required": ["explanation"]}]},
    }


def _tensor(n: int, text_ref: dict[str, Any]) -> dict[str, Any]:
    rows = {"type": "array", "minItems": 1, "maxItems": 1, "items": text_ref}
    return {
        "properties": {
            "shape": {
                "type": "array",
                "prefixItems": [{"const": n}, {"const": 1}],
                "minItems": 1,
                "maxItems": 2,
            },
            "data": {
                "oneOf": [
                    {"type": "array", "minItems": n, "maxItems": n, "items": text_ref},
                    {"type": "array", "minItems": n, "maxItems": n, "items": rows},
                ]
            },
        }
    }


def _v2_schemas(n_max: int, model_names: list[str], *, text_ref: dict[str, Any]) -> dict[str, Any]:
    """The v2 component schemas for batches of 1..n_max texts."""
    name = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS}
    return {
        "V2Tensor": {
            "type": "object",
            "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": name,
                "datatype": {"const": "BYTES"},
                "shape": {"type": "array", "items": {"type": "integer"}},
                "data": {"type": "array"},
                "parameters": {
                    "type": "object",
                    "properties": {"binary_data_size": False},
                    "description": "Open extension object; `binary_data_size` only in binary mode",
                },
            },
            "additionalProperties": False,
            "oneOf": [_tensor(n, text_ref) for n in range(1, n_max + 1)],
        },
        "V2InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string", "maxLength": MAX_NAME_CHARS},
                "parameters": {
                    "type": "object",
                    "properties": {
                        "long_text": {"enum": ["truncate", "chunk", None]},
                        **v2_parameters(),
                    },
                },
                "inputs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": {"$ref": "#/components/schemas/V2Tensor"},
                },
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"enum": list(OUTPUTS)},
                            "parameters": {"type": "object"},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
        "V2InferResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"enum": model_names},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "datatype", "shape", "data"],
                        "properties": {
                            "name": {"enum": list(OUTPUTS)},
                            "datatype": {"enum": ["BYTES", "FP32"]},
                            "shape": {"type": "array", "items": {"type": "integer"}},
                            "data": {"type": "array"},
                        },
                    },
                },
            },
        },
    }
