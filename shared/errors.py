"""One error taxonomy with one JSON body shape.

Every error a client can see is an `ApiError` subclass carrying its HTTP status and a stable
machine-readable `type`; the app maps it to HTTP once:

    {"error": {"type": "invalid_input", "message": "...", "request_id": "..."}}

Anything else that escapes a handler becomes a 500 `internal_error` whose message never holds the
exception text or a stack trace (those go to the log).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class ApiError(Exception):
    """An error with an HTTP status and a stable type, safe to show to a client."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})

    def body(self, request_id: str | None) -> dict[str, Any]:
        """The JSON error body for this error."""
        return {"error": {"type": self.type, "message": self.message, "request_id": request_id}}


class InvalidJson(ApiError):
    """The body is not valid JSON (or not UTF-8)."""

    status = 400
    type = "invalid_json"


class InvalidInput(ApiError):
    """The JSON is well formed but does not fit the request schema."""

    status = 422
    type = "invalid_input"


class InvalidEvent(ApiError):
    """A CloudEvent is malformed (400, so Knative never retries it)."""

    status = 400
    type = "invalid_event"


class UnsupportedEventType(ApiError):
    """A well-formed CloudEvent of a type this function does not handle."""

    status = 400
    type = "unsupported_event_type"


class PayloadTooLarge(ApiError):
    """The body is larger than MAX_BODY_BYTES."""

    status = 413
    type = "payload_too_large"


class UnsupportedMediaType(ApiError):
    """The Content-Type is not one the route accepts."""

    status = 415
    type = "unsupported_media_type"


class Unauthorized(ApiError):
    """No API key, or a wrong one."""

    status = 401
    type = "unauthorized"


class NotFound(ApiError):
    """No such route or model."""

    status = 404
    type = "not_found"


class MethodNotAllowed(ApiError):
    """The route exists but not for this method."""

    status = 405
    type = "method_not_allowed"


class Overloaded(ApiError):
    """Too much work in flight or queued: retry after a moment (429)."""

    status = 429
    type = "overloaded"


class QuotaExceeded(ApiError):
    """The API key used up its own quota (its token bucket): retry after `Retry-After` (429)."""

    status = 429
    type = "quota_exceeded"


class NotReady(ApiError):
    """The model is not loaded yet, or the function is shutting down (503)."""

    status = 503
    type = "not_ready"


class SinkFull(ApiError):
    """SINK_MAX_PENDING result events already wait for K_SINK: the event is refused before it is
    computed (503 with Retry-After, so the Broker redelivers it later)."""

    status = 503
    type = "sink_full"


class DeadlineExceeded(ApiError):
    """The request's deadline (its own, or MAX_REQUEST_TIMEOUT_SECONDS) passed before its texts
    were run: they were never computed (504). `partial` holds, for a batch some of whose texts
    were run in time, one result per text in order and None for each text that was not."""

    status = 504
    type = "deadline_exceeded"

    def __init__(
        self,
        message: str,
        *,
        partial: Sequence[Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.partial: list[Any] | None = None if partial is None else list(partial)


class InternalError(ApiError):
    """An unexpected failure; details are logged, never returned."""

    status = 500
    type = "internal_error"


class RequestTimeout(ApiError):
    """The client took longer than BODY_TIMEOUT_SECONDS to send its body (408)."""

    status = 408
    type = "request_timeout"


class ClientDisconnected(ApiError):
    """The client went away before its body arrived; nobody reads the answer (nginx's 499)."""

    status = 499
    type = "client_disconnected"
