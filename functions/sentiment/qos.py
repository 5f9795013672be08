"""Deadlines and priorities, read from each protocol's own fields into one meaning.

- `POST /predict` (and `/explain`): `X-Request-Timeout`, seconds (a decimal, 0 = none);
  `X-Priority: high|normal|low`, normal by default.
- `POST /v2/models/{name}/infer`: `parameters.timeout`, microseconds (an integer, 0 = none);
  `parameters.priority`, an integer: 1 = high, 2 = normal, 3 and more = low, 0 = the default
  (normal).
- `POST /` (CloudEvents): the `deadline` extension, an RFC 3339 timestamp; the `priority`
  extension, `high|normal|low`, low by default (bulk work through a Broker yields to people).

The v2 fields follow Triton's extension (timeout in microseconds; priority 1 is the highest).
Every request also gets MAX_REQUEST_TIMEOUT_SECONDS from its arrival: a client's deadline can
shorten that, never lengthen it. A deadline is a `time.monotonic()` instant; texts still queued
then are never run (the batcher's lanes), and the request is answered 504 `deadline_exceeded`.
A bad value is refused with the route's 4xx error naming the field.

The OpenAPI side is stated here too (the end of this module): header parameters, v2 request
parameters, CloudEvents extension attributes and the 504 answer. The header pattern is the check
`from_headers` applies, so what the document calls valid is exactly what the function accepts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from functions.sentiment.core import AppState, prediction_json
from functions.sentiment.inputs import kind, shown
from functions.sentiment.lanes import HIGH, LOW, NORMAL
from shared.config import Settings
from shared.errors import ApiError, DeadlineExceeded

# X-Request-Timeout: decimal seconds, at most 5 digits and 6 decimals; 0 = no deadline of its own.
TIMEOUT_PATTERN = r"^[0-9]{1,5}(\.[0-9]{1,6})?$"
MAX_TIMEOUT_US = 86400 * 10**6  # v2 parameters.timeout: a day, in microseconds
MAX_V2_PRIORITY = 2**64 - 1  # Triton's priority is a uint64
PRIORITY_NAMES = ("high", "normal", "low")
PRIORITIES = dict(zip(PRIORITY_NAMES, (HIGH, NORMAL, LOW), strict=True))
TIMEOUT_HEADER = "x-request-timeout"
PRIORITY_HEADER = "x-priority"
_DECIMAL = re.compile(TIMEOUT_PATTERN)
_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


@dataclass(frozen=True)
class Qos:
    """When a request's texts stop being worth running, and the lane they queue in."""

    deadline: float  # time.monotonic() instant
    priority: int


def deadline_after(settings: Settings, seconds: float | None, arrival: float) -> float:
    """The deadline of a request that arrived at `arrival` (monotonic) asking for `seconds`."""
    cap = settings.max_request_timeout_s
    return arrival + (cap if seconds is None else min(seconds, cap))


def from_headers(
    headers: Mapping[str, str], settings: Settings, error: type[ApiError], arrival: float
) -> Qos:
    """`/predict`: X-Request-Timeout (decimal seconds, 0 = none) and X-Priority (normal by
    default)."""
    seconds = None
    raw = headers.get(TIMEOUT_HEADER)
    if raw is not None:
        if not _DECIMAL.fullmatch(raw.strip()):
            raise error(
                "X-Request-Timeout must be a decimal number of seconds (up to 5 digits and 6 "
                f"decimals, e.g. 2.5; 0 = none); got {shown(raw)}"
            )
        seconds = float(raw) or None
    priority = NORMAL
    name = headers.get(PRIORITY_HEADER)
    if name is not None:
        priority = _named_priority(name.strip(), "X-Priority", error)
    return Qos(deadline_after(settings, seconds, arrival), priority)


def from_v2(
    parameters: Mapping[str, Any], settings: Settings, error: type[ApiError], arrival: float
) -> Qos:
    """v2 `parameters.timeout` (microseconds, 0 = none) and `parameters.priority` (1 = high)."""
    seconds = None
    if "timeout" in parameters:
        us = _integer(parameters["timeout"], "parameters.timeout", MAX_TIMEOUT_US, error)
        seconds = us / 1e6 if us else None
    priority = NORMAL
    if "priority" in parameters:
        level = _integer(parameters["priority"], "parameters.priority", MAX_V2_PRIORITY, error)
        priority = {0: NORMAL, 1: HIGH, 2: NORMAL}.get(level, LOW)
    return Qos(deadline_after(settings, seconds, arrival), priority)


def from_event(
    attributes: Mapping[str, Any], settings: Settings, error: type[ApiError], arrival: float
) -> Qos:
    """CloudEvents: the `deadline` (RFC 3339) and `priority` (low by default) extensions."""
    seconds = None
    if "deadline" in attributes:
        at = parse_rfc3339(attributes["deadline"], "the deadline extension", error)
        # The wall clock's deadline on the monotonic clock: already passed -> 0 s left.
        seconds = max(0.0, at - time.time() + (time.monotonic() - arrival))
    priority = LOW
    if "priority" in attributes:
        value = attributes["priority"]
        if not isinstance(value, str):
            raise error(f"the priority extension must be high, normal or low, got {kind(value)}")
        priority = _named_priority(value, "the priority extension", error)
    return Qos(deadline_after(settings, seconds, arrival), priority)


def parse_rfc3339(value: Any, what: str, error: type[ApiError]) -> float:
    """An RFC 3339 timestamp (offset required) as seconds since the epoch."""
    if not isinstance(value, str):
        raise error(f"{what} must be an RFC 3339 timestamp string, got {kind(value)}")
    match = _RFC3339.fullmatch(value.strip())
    problem = f"{what} is not an RFC 3339 timestamp (e.g. 2026-01-31T12:00:00Z): {shown(value)}"
    if match is None:
        raise error(problem)
    day, clock, fraction, offset = match.groups()
    clock = clock[:6] + "59" if clock.endswith(":60") else clock  # a leap second
    fraction = (fraction or "")[:7]  # datetime keeps microseconds
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{day}T{clock}{fraction}{offset}").timestamp()
    except (ValueError, OverflowError):
        raise error(problem) from None


def _named_priority(name: str, what: str, error: type[ApiError]) -> int:
    if name not in PRIORITIES:
        raise error(f"{what} must be high, normal or low, got {shown(name)}")
    return PRIORITIES[name]


def _integer(value: Any, what: str, maximum: int, error: type[ApiError]) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema counts 2.0 as an integer
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise error(f"{what} must be an integer from 0 to {maximum}, got {shown(value)}")
    return value


def late_results(error: DeadlineExceeded, ids: Sequence[Any], state: AppState) -> list[Any]:
    """A batch's results when only some texts were run in time: a prediction per text run, in
    order, and a per-item `deadline_exceeded` error (with its id and index) for the others."""
    assert error.partial is not None
    return [
        late_item(error, item_id, index) if p is None else prediction_json(p, item_id, state)
        for index, (p, item_id) in enumerate(zip(error.partial, ids, strict=True))
    ]


def late_item(error: DeadlineExceeded, item_id: Any, index: int) -> dict[str, Any]:
    """The per-item error of a text of a batch that was not run by the request's deadline."""
    entry: dict[str, Any] = {} if item_id is None else {"id": item_id}
    entry["index"] = index
    entry["error"] = {"type": DeadlineExceeded.type, "message": error.message}
    return entry


# The OpenAPI document's side of the same rules (openapi.py and schemas.py use these).
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
