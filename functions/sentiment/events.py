"""CloudEvents input at `POST /`, where a Knative Trigger delivers events.

Events are read and written with the CloudEvents SDK's `cloudevents.core` API (HTTP binding:
`cloudevents.core.bindings.http`), in both content modes of the CloudEvents HTTP binding 1.0:
structured (`Content-Type: application/cloudevents+json`, the whole event in the body) and binary
(attributes in `ce-*` headers, data in the body). The reply uses the mode of the request.

A request event of type `dev.kubesentiment.sentiment.requested` carries `{"texts": [...]}` or
`{"items": [{"id": ..., "text": ...}]}` (and optionally `"long_text"`). The answer is HTTP 200 with
an event of type `dev.kubesentiment.sentiment.completed` — never the request type, or the Broker
would match the reply against the same Trigger and loop it — whose `subject` is the request's
(or the request id), whose `requestid` extension names the request event, and whose data is
`{"results": [...]}`: one entry per item, in order, a prediction or `{"id", "error"}`. The reply's
id derives from the request's `source` and `id` and the variant (`shared.eventid`), so every
redelivery of an event is answered under the same id; a redelivery is answered from the stored
reply or joins the computation still running (redelivery.py, EVENT_REPLAY_SIZE).

Status codes follow Knative's delivery rules: a malformed event or data is 400 and an unknown type
is 400 (`unsupported_event_type`), both never retried; overload is 429 and not-ready/shutting down
is 503, both with Retry-After, both retried by the Broker. The `deadline` (RFC 3339) and
`priority` (high|normal|low, low by default) extensions set a deadline and a lane (qos.py): an event
none of whose texts ran by its deadline is 504 `deadline_exceeded`; texts that missed it in a
partly answered event get a per-item `deadline_exceeded` error.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from opentelemetry import trace
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from functions.sentiment.core import AppState, classify, inference, prediction_json
from functions.sentiment.inputs import (
    BAD_CHARS,
    LONG_TEXT_MODES,
    Item,
    ItemError,
    decode_json,
    is_json,
    kind,
    parse_items,
    read_body,
    shown,
)
from functions.sentiment.monitoring import event_origin
from functions.sentiment.qos import Qos, from_event, late_item
from functions.sentiment.redelivery import Answer, content_digest, redeliveries
from functions.sentiment.schemas import (
    MAX_ATTRIBUTE_CHARS,
    REQUEST_ID_EXTENSION,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    STRUCTURED_JSON,
)
from functions.sentiment.sink import EventSink, Send
from shared.errors import ApiError, DeadlineExceeded, InvalidEvent, UnsupportedEventType
from shared.eventid import derived_id
from shared.tracing import extract_event_context, inject_event_context

if TYPE_CHECKING:  # the model module imports ONNX Runtime: the preload thread does that
    from functions.sentiment.model import Prediction


log = logging.getLogger("kubesentiment.cloudevents")
tracer = trace.get_tracer("kubesentiment")

SPECVERSION = "1.0"
REQUIRED_ATTRIBUTES = ("id", "source", "specversion", "type")

_ATTRIBUTE_NAME = re.compile("[a-z0-9]{1,20}")
_FORMAT = JSONFormat()


def _strict_v1(attributes: dict[str, Any], data: dict[str, Any] | str | bytes | None) -> CloudEvent:
    # The SDK's v1 CloudEvent fills in a missing `id` (and `time`) itself; a *received* event
    # without its required attributes is malformed (CloudEvents 1.0, "Required Attributes").
    missing = [a for a in REQUIRED_ATTRIBUTES if not attributes.get(a)]
    if missing:
        raise InvalidEvent(f"the event lacks required attribute(s): {', '.join(missing)}")
    for name, value in attributes.items():
        # CloudEvents 1.0: names are 1-20 lowercase letters or digits; values are a String (no
        # control characters), an Integer (32-bit) or a Boolean; `time` is parsed by the SDK.
        if not isinstance(name, str) or not _ATTRIBUTE_NAME.fullmatch(name):
            raise InvalidEvent(f"attribute name {shown(name)} is not 1-20 lowercase letters/digits")
        if isinstance(value, float) and value.is_integer():
            attributes[name] = value = int(value)
        problem = _attribute_problem(value)
        if problem is not None and name != "time":
            raise InvalidEvent(f"attribute {name} {problem}")
    return CloudEvent(attributes, data)


def _attribute_problem(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -(2**31) <= value < 2**31 else "is outside the 32-bit Integer range"
    if not isinstance(value, str):
        return f"must be a string, an integer or a boolean, got {kind(value)}"
    if len(value) > MAX_ATTRIBUTE_CHARS:
        return f"has {len(value)} characters, more than {MAX_ATTRIBUTE_CHARS}"
    return "holds a control character" if BAD_CHARS.search(value) else None


def _check_duplicate_headers(headers: Mapping[str, str]) -> None:
    # HTTP binding 3.2: a structured message MAY also carry the binary-mode ce-* headers. The body
    # is authoritative, but a header that is present must still be a valid value for its
    # attribute: a message that contradicts itself this way is malformed.
    for attr, expected in (("specversion", SPECVERSION), ("type", REQUEST_TYPE)):
        value = headers.get(f"ce-{attr}")
        if value is not None and value != expected:
            raise InvalidEvent(f"the ce-{attr} header {shown(value)} is not {expected!r}")
    for attr in ("id", "source"):
        value = headers.get(f"ce-{attr}")
        if value is not None and not 0 < len(value.strip()) <= MAX_ATTRIBUTE_CHARS:
            raise InvalidEvent(f"the ce-{attr} header must be 1-{MAX_ATTRIBUTE_CHARS} characters")


def parse_event(headers: Mapping[str, str], body: bytes) -> tuple[BaseCloudEvent, bool]:
    """The event in an HTTP request and whether it came in structured mode; else InvalidEvent."""
    content_type = headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    # HTTP binding 3.1: structured mode is told by the media type application/cloudevents+...
    structured = media.startswith("application/cloudevents")
    if structured and media != STRUCTURED_JSON:
        raise InvalidEvent(f"only the JSON event format is supported, got {media}")
    binary = any(k.lower().startswith("ce-") for k in headers)
    if not structured and not binary:
        raise InvalidEvent(
            "not a CloudEvent: send ce-* headers (binary mode) or "
            f"Content-Type: {STRUCTURED_JSON} (structured mode)"
        )
    # The SDK decodes JSON itself, without our limits (depth, NaN, UTF-8, surrogates): the body
    # passes the one hardened decoder first, so the SDK only ever sees well-formed JSON.
    if structured or is_json(content_type):
        try:
            decode_json(body, "the event" if structured else "the event data")
        except ApiError as e:
            raise InvalidEvent(e.message) from None
    if structured:
        _check_duplicate_headers(headers)
    message = ce_http.HTTPMessage(headers=dict(headers), body=body)
    try:
        if structured:
            event = ce_http.from_structured(message, _FORMAT, _strict_v1)
        else:
            event = ce_http.from_binary(message, _FORMAT, _strict_v1)
    except ApiError:
        raise
    except (BaseCloudEventException, ValueError, TypeError, AttributeError, KeyError) as e:
        raise InvalidEvent(f"malformed CloudEvent: {shown(str(e), 200)}") from e
    return event, structured


def parse_data(
    data: Any, *, max_texts: int, max_chars: int
) -> tuple[list[Item | ItemError], str | None]:
    """The items of a request event's data and its long_text option; InvalidEvent when malformed.

    Items that are not usable texts (empty, too long, not a string) come back as ItemError so the
    rest of the event is still answered.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if isinstance(data, bytes):
        try:
            data = decode_json(data, "the event data")
        except ApiError as e:
            raise InvalidEvent(e.message) from None
    if not isinstance(data, Mapping):
        raise InvalidEvent("the event data must be a JSON object with 'texts' or 'items'")
    unknown = set(data) - {"texts", "items", "long_text"}
    if unknown:
        raise InvalidEvent(f"unknown field(s) in the event data: {shown(sorted(unknown), 120)}")
    if ("texts" in data) == ("items" in data):
        raise InvalidEvent("the event data needs exactly one of 'texts' or 'items'")
    long_text = data.get("long_text")
    if long_text is not None and long_text not in LONG_TEXT_MODES:
        raise InvalidEvent(f"'long_text' must be one of {', '.join(LONG_TEXT_MODES)}")
    key = "texts" if "texts" in data else "items"
    try:
        items = parse_items(data[key], max_texts=max_texts, max_chars=max_chars)
    except ApiError as e:  # the list itself is unusable: the whole event is malformed
        raise InvalidEvent(e.message.replace("'texts'", f"'{key}'")) from e
    return items, long_text


def item_error_json(error: ItemError) -> dict[str, Any]:
    """The result entry for an item that could not be classified."""
    out: dict[str, Any] = {} if error.id is None else {"id": error.id}
    out["index"] = error.index
    out["error"] = {"type": "invalid_input", "message": error.message}
    return out


@dataclass(frozen=True)
class Checked:
    """A request event that passed every check: its items, long-text mode and QoS."""

    event: BaseCloudEvent
    items: list[Item | ItemError]
    long_text: str | None
    qos: Qos


def check(state: AppState, event: BaseCloudEvent, arrival: float | None = None) -> Checked:
    """Every check of a request event (type, data, deadline and priority extensions), raising its
    4xx error; done before a redelivery is looked up, so no stored reply answers a request that
    is invalid as sent. `arrival`: when it came, on time.monotonic(), for the deadline."""
    if event.get_type() != REQUEST_TYPE:
        raise UnsupportedEventType(
            f"event type {event.get_type()!r} is not handled; send {REQUEST_TYPE!r}"
        )
    s = state.settings
    items, long_text = parse_data(
        event.get_data(), max_texts=s.max_texts, max_chars=s.max_text_chars
    )
    # The deadline and priority extensions (low by default: bulk work yields to people).
    qos = from_event(event.get_attributes(), s, InvalidEvent, arrival or time.monotonic())
    return Checked(event, items, long_text, qos)


async def answer(
    state: AppState, event: BaseCloudEvent, arrival: float | None = None
) -> CloudEvent:
    """Classify a request event's items and build the reply event (`arrival`: when the request
    came, on time.monotonic(), for the server's deadline; now by default)."""
    return await answer_checked(state, check(state, event, arrival))


async def answer_checked(state: AppState, request: Checked) -> CloudEvent:
    """The reply to a request that passed `check`."""
    s = state.settings
    event, items, long_text, qos = request.event, request.items, request.long_text, request.qos
    good = [i for i in items if isinstance(i, Item)]
    results: list[dict[str, Any]] = []
    predictions: Iterator[Prediction | None] = iter(())
    late: DeadlineExceeded | None = None
    if good:
        texts = [i.text for i in good]
        try:
            found = await classify(
                state, texts, long_text=long_text, deadline=qos.deadline, priority=qos.priority
            )
            predictions = iter(found)
        except DeadlineExceeded as e:
            if e.partial is None:
                raise  # no text was run in time: 504 deadline_exceeded
            late, predictions = e, iter(e.partial)
    for index, entry in enumerate(items):
        if isinstance(entry, Item):
            p = next(predictions)
            if p is None:
                assert late is not None
                results.append(late_item(late, entry.id, index))
            else:
                results.append(prediction_json(p, entry.id, state))
        else:
            results.append(item_error_json(entry))
    attributes: dict[str, Any] = {
        "id": derived_id(event.get_source(), event.get_id(), RESPONSE_TYPE, s.variant),
        "type": RESPONSE_TYPE,
        "source": s.event_source,
        "subject": event.get_subject() or event.get_id(),
        REQUEST_ID_EXTENSION: event.get_id(),
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, {"results": results})


@inference
async def receive(request: Request, state: AppState) -> Response:
    """POST /: a CloudEvent in, its reply CloudEvent out (same content mode)."""
    sink: EventSink | None = state.extras.get("sink")
    if sink is None:
        return await _receive(request, state, None)
    # K_SINK's queue is bounded: the result's place is taken before the body is read, so a full
    # queue answers 503 + Retry-After (the Broker redelivers) instead of dropping a result.
    with sink.reserve() as send:
        return await _receive(request, state, send)


async def _receive(request: Request, state: AppState, send: Send | None) -> Response:
    arrival = time.monotonic()
    s = state.settings
    body = await read_body(request, s.max_body_bytes, s.body_timeout_s)
    event, structured = parse_event(request.headers, body)
    origin = event_origin.get()  # a payload-logged request: its event names the log event
    if origin is not None:
        origin.update(source=event.get_source(), id=event.get_id())
    checked = check(state, event, arrival)
    replies = redeliveries(state)
    stored: Answer | None = None
    if replies is None:
        reply = await _traced_answer(state, checked)
    else:
        reply, stored = await replies.answer(
            event.get_source(),
            event.get_id(),
            content_digest(event),
            lambda: _traced_answer(state, checked),
        )
    # K_SINK gets each answer once (again only if its delivery gave up), not once per delivery.
    if send is not None and (stored is None or stored.claim_sink()):
        delivery = send(reply)
        if stored is not None:
            delivery.add_done_callback(stored.sink_done)
    message = ce_http.to_structured_event(reply) if structured else ce_http.to_binary_event(reply)
    return Response(message.body, status_code=200, headers=message.headers)


async def _traced_answer(state: AppState, request: Checked) -> CloudEvent:
    event = request.event
    # CloudEvents distributed-tracing extension: the event's own `traceparent` (set by the
    # producer, kept through the Broker) parents the span; without one, the HTTP server span does.
    parent = extract_event_context(event.get_attributes())
    with tracer.start_as_current_span(
        f"process {event.get_type()}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "cloudevents.event_id": event.get_id(),
            "cloudevents.event_type": event.get_type(),
        },
    ):
        reply = await answer_checked(state, request)
        # The reply continues the trace: its traceparent is this span's context (the K_SINK
        # delivery of the reply is parented by it too).
        inject_event_context(reply.get_attributes())
    return reply


def routes() -> list[BaseRoute]:
    """The CloudEvents routes: the root, where Triggers deliver, and `/events/{key_id}`, where a
    Trigger delivers events counted under an API key's quota (shared/auth.py)."""
    return [
        Route("/", receive, methods=["POST"]),
        Route("/events/{key_id}", receive, methods=["POST"]),
    ]
