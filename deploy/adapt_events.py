"""The events of an adapted model's rollout: the completion it reads, the answer it sends.

Reads `dev.kubesentiment.adapt.completed` (the adapt job's success, as JobSink mounts it) and
answers `dev.kubesentiment.adapt.rolledout`, `.rolledback` or `.rejected`, whose id is derived
from the completion's source and id (shared.eventid): a redelivered completion, or a retried
Job, sends an answer with the same id, which consumers may drop as a duplicate. `subject` and
the `requestid` extension carry the adapt request's id, so the whole loop correlates by it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from deploy import canary
from deploy.canary import Decision, Live
from shared.backoff import Backoff
from shared.eventid import derived_id

COMPLETED = "dev.kubesentiment.adapt.completed"
ROLLEDOUT = "dev.kubesentiment.adapt.rolledout"
ROLLEDBACK = "dev.kubesentiment.adapt.rolledback"
REJECTED = "dev.kubesentiment.adapt.rejected"
ANSWER = {canary.PROMOTE: ROLLEDOUT, canary.ROLLBACK: ROLLEDBACK, canary.REJECT: REJECTED}
STATUS = {canary.PROMOTE: "promoted", canary.ROLLBACK: "rolled_back", canary.REJECT: "rejected"}
SOURCE = "/kubesentiment/adapt-rollout"
VARIANT = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # a DNS label: part of a Service name
EVENT_PATH = "/etc/jobsink-event/event"
SINK_BACKOFF_S = 0.5  # the answer event's first retry waits up to this, doubling (shared.backoff)
SINK_MAX_BACKOFF_S = 30.0
log = logging.getLogger("kubesentiment.adapt_rollout")


class InvalidEvent(Exception):
    """An event no retry can fix (exit 2)."""


@dataclass(frozen=True)
class Completion:
    """The completion event: who asked, what model, and the figures to judge it by."""

    source: str
    id: str
    request_id: str
    service: str
    data: Mapping[str, Any]

    @classmethod
    def from_event(cls, event: CloudEvent) -> Completion:
        """Read a dev.kubesentiment.adapt.completed event; InvalidEvent if it is not one."""
        if event.get_type() != COMPLETED:
            raise InvalidEvent(f"event type {event.get_type()!r} is not {COMPLETED}")
        data = event.get_data()
        if not isinstance(data, Mapping):
            raise InvalidEvent("the event data must be a JSON object")
        variant, uri = data.get("base_variant"), data.get("model_uri")
        if not isinstance(variant, str) or not VARIANT.fullmatch(variant):
            raise InvalidEvent(f"base_variant must be a variant name, got {variant!r}")
        if not isinstance(uri, str) or not uri.startswith(("oci://", "file:///")):
            raise InvalidEvent("model_uri must be an oci:// or file:/// URI")
        if uri.startswith("oci://") and "@sha256:" not in uri:
            # The function refuses a tag without a digest: a revision would never get Ready.
            raise InvalidEvent("an oci:// model_uri must name its digest (@sha256:...)")
        request = data.get("request") or {}
        return cls(
            source=str(event.get_source()),
            id=str(event.get_id()),
            request_id=str(request.get("id") or event.get_extension("requestid") or event.get_id()),
            service=f"sentiment-{variant}",
            data=data,
        )

    @property
    def sha256(self) -> str:
        return str((self.data.get("model") or {}).get("sha256") or "")


@dataclass(frozen=True)
class Outcome:
    """What happened, for the answer event."""

    decision: Decision
    revision: str | None = None
    stable: str | None = None
    live: Live | None = None
    seconds: float | None = None


def read_event(path: Path) -> CloudEvent:
    """The structured-mode CloudEvent JSON that JobSink mounted at `path`."""
    try:
        body = path.read_bytes()
    except OSError as e:
        raise InvalidEvent(f"cannot read the event at {path}: {e.strerror}") from None
    try:
        event = JSONFormat().read(CloudEvent, body)
    except Exception as e:  # the SDK raises several types for malformed JSON or attributes
        raise InvalidEvent(f"not a CloudEvent: {e}") from None
    assert isinstance(event, CloudEvent)
    return event


def answer(done: Completion, outcome: Outcome, percent: int, margin: float) -> CloudEvent:
    """The rolledout / rolledback / rejected event for one completion."""
    kind = ANSWER[outcome.decision.action]
    held = done.data.get("held_out") or {}
    data: dict[str, Any] = {
        "status": STATUS[outcome.decision.action],
        "reason": outcome.decision.reason,
        "request": done.data.get("request"),
        "completion": {"source": done.source, "id": done.id},
        "base_variant": done.data.get("base_variant"),
        "service": done.service,
        "revision": outcome.revision,
        "stable": outcome.stable,
        "model_uri": done.data.get("model_uri"),
        "model": done.data.get("model"),
        "held_out": {
            "n": held.get("n"),
            "base_balanced_accuracy": (held.get("base") or {}).get("balanced_accuracy"),
            "adapted_balanced_accuracy": (held.get("adapted") or {}).get("balanced_accuracy"),
            "adapted_accuracy": (held.get("adapted") or {}).get("accuracy"),
            "majority_accuracy": (held.get("majority") or {}).get("accuracy"),
            "margin": margin,
        },
        "canary": None,
    }
    if outcome.live is not None:
        seconds = round(outcome.seconds or 0.0, 1)
        data["canary"] = {"percent": percent, "seconds": seconds, **outcome.live.summary()}
    attributes = {
        "id": derived_id(done.source, done.id, kind),
        "source": SOURCE,
        "type": kind,
        "subject": done.request_id,
        "requestid": done.request_id,
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, data)


def deliver(
    sink: str | None,
    event: CloudEvent,
    sleep: Callable[[float], None],
    attempts: int = 5,
    backoff: Backoff | None = None,
) -> bool:
    """Post `event` to K_SINK in binary mode with bounded retries (full jitter, Retry-After a
    floor: `shared.backoff`); True when accepted."""
    backoff = backoff or Backoff(SINK_BACKOFF_S, SINK_MAX_BACKOFF_S)
    if not sink:
        log.warning("no K_SINK: the answer event is only logged")
        return True
    message = ce_http.to_binary_event(event)
    for attempt in range(1, attempts + 1):
        retry_after: str | None = None
        try:
            response = httpx.post(sink, headers=message.headers, content=message.body, timeout=30)
            if response.is_success:
                return True
            reason = f"HTTP {response.status_code}"
            retry_after = response.headers.get("retry-after")
        except httpx.HTTPError as e:
            reason = f"{type(e).__name__}: {e}"
        log.info("answer event not delivered (%s), attempt %d", reason, attempt)
        if attempt < attempts:
            sleep(backoff.delay(attempt - 1, retry_after))
    return False
