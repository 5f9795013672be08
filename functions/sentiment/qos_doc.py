"""The OpenAPI side of deadlines and priorities (functions/sentiment/qos.py): header parameters,
v2 request parameters, CloudEvents extension attributes and the 504 answer, stated once.

The header pattern is the check `qos.from_headers` applies, so what the document calls valid is
exactly what the function accepts.
"""

from __future__ import annotations

from typing import Any

# X-Request-Timeout: decimal seconds, at most 5 digits and 6 decimals; 0 = no deadline of its own.
TIMEOUT_PATTERN = r"^[0-9]{1,5}(\.[0-9]{1,6})?$"
MAX_TIMEOUT_US = 86400 * 10**6  # v2 parameters.timeout: a day, in microseconds
MAX_V2_PRIORITY = 2**64 - 1  # Triton's priority is a uint64
PRIORITY_NAMES = ("high", "normal", "low")
DEADLINE_EXCEEDED = (
    "The deadline (the client's, or MAX_REQUEST_TIMEOUT_SECONDS from arrival) passed before "
    "the texts were run: they were never computed (`deadline_exceeded`)"
)


def predict_headers() -> list[dict[str, Any]]:
    """The optional X-Request-Timeout and X-Priority headers of `/predict` and `/explain`."""
    return [
        {
            "name": "X-Request-Timeout",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": TIMEOUT_PATTERN},
            "description": (
                "Seconds from arrival after which the texts not yet run are not worth running "
                "(504 `deadline_exceeded`; in a batch some of whose texts ran, a per-item "
                "error). 0 = none of its own; MAX_REQUEST_TIMEOUT_SECONDS always caps it."
            ),
        },
        {
            "name": "X-Priority",
            "in": "header",
            "required": False,
            "schema": {"enum": list(PRIORITY_NAMES)},
            "description": "The batch-queue lane: high, normal (the default) or low.",
        },
    ]


def event_headers() -> list[dict[str, Any]]:
    """The optional binary-mode headers of the `deadline` and `priority` extensions."""
    return [
        {
            "name": "ce-deadline",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "format": "date-time"},
            "description": (
                "Extension `deadline` (RFC 3339): texts not run by then are never computed "
                "(504 if none ran, else per-item `deadline_exceeded` errors)"
            ),
        },
        {
            "name": "ce-priority",
            "in": "header",
            "required": False,
            "schema": {"enum": list(PRIORITY_NAMES)},
            "description": "Extension `priority`: the batch-queue lane, low by default",
        },
    ]


def event_extensions() -> dict[str, Any]:
    """The `deadline` and `priority` attributes of a structured-mode event."""
    return {
        "deadline": {"type": "string", "format": "date-time"},
        "priority": {"enum": list(PRIORITY_NAMES)},
    }


def v2_parameters() -> dict[str, Any]:
    """`parameters.timeout` and `parameters.priority` of a v2 infer request (Triton's names)."""
    return {
        "timeout": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_TIMEOUT_US,
            "description": "Microseconds from arrival; 0 = none (MAX_REQUEST_TIMEOUT_SECONDS caps)",
        },
        "priority": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_V2_PRIORITY,
            "description": "1 = high, 2 = normal, 3 and more = low; 0 = the default (normal)",
        },
    }
