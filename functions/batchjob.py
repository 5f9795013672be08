"""JobSink entry point: `python -m functions.batchjob` runs one batch job described by an event.

A Knative JobSink creates one Job per event and mounts the event, as structured CloudEvent JSON,
at `/etc/jobsink-event/event`. The event has type `dev.kubesentiment.batch.requested` and data

    {"input": "in/reviews.jsonl", "output": "out/reviews.jsonl",
     "id_field": "id", "text_field": "text", "long_text": "chunk"}   # the last three optional

where input and output are paths on the batch volume, relative to `BATCH_DATA_ROOT` (absolute
paths must lie inside it; `..` is refused). Object-store locations (`s3://BUCKET/KEY`,
`gs://BUCKET/KEY`) are the documented shape for a later version and are refused for now.

The job runs the batch client (`functions.client.run`) against the function at
`KUBESENTIMENT_URL`; the client resumes from the output file, so a Job retried by Kubernetes
skips the rows an earlier pod wrote. At the end it sends `dev.kubesentiment.batch.completed` to
`K_SINK` (the Broker): counts, input and output locations, status and failures, with `subject`
and the `requestid` extension naming the request event. Its id derives from the request event's
source and id and the status (`shared.eventid`): a Job retried by Kubernetes that reaches the same
status announces it under the same id (a consumer drops the duplicate), while a retry that turns
`incomplete` into `complete` announces news under a new id. A request event that cannot be read
has no source and id to derive from: its completion gets a random id.

Exit status: 0 when every row was written and the completion event delivered; 1 when rows still
failed or the event could not be delivered (the Job's backoffLimit retries, resuming); 2 for a
request that no retry can fix (bad event, bad location: the Job's podFailurePolicy fails it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from functions import client
from shared.backoff import Backoff
from shared.eventid import derived_id

REQUESTED = "dev.kubesentiment.batch.requested"
COMPLETED = "dev.kubesentiment.batch.completed"
EVENT_PATH = "/etc/jobsink-event/event"  # where JobSink mounts the event
SOURCE = "/kubesentiment/batch"
OBJECT_STORE_SCHEMES = ("s3://", "gs://", "az://", "https://", "http://")
log = logging.getLogger("kubesentiment.batchjob")


class InvalidRequest(Exception):
    """A request no retry can fix: the Job should fail at once (exit 2)."""


@dataclass(frozen=True)
class JobSettings:
    """The job's configuration, read once from the environment."""

    event_path: Path = Path(EVENT_PATH)
    data_root: Path = Path("/data")
    url: str = "http://127.0.0.1:8080"
    sink: str | None = None
    batch_size: int = 32
    concurrency: int = 4
    retries: int = 6
    api_key: str | None = None
    sink_attempts: int = 5
    backoff_s: float = 0.5

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> JobSettings:
        """Settings from JOBSINK_EVENT_PATH, BATCH_DATA_ROOT, KUBESENTIMENT_URL, K_SINK, ..."""
        try:
            return cls(
                event_path=Path(environ.get("JOBSINK_EVENT_PATH") or EVENT_PATH),
                data_root=Path(environ.get("BATCH_DATA_ROOT") or "/data"),
                url=environ.get("KUBESENTIMENT_URL") or cls.url,
                sink=environ.get("K_SINK") or None,
                batch_size=int(environ.get("BATCH_SIZE") or cls.batch_size),
                concurrency=int(environ.get("BATCH_CONCURRENCY") or cls.concurrency),
                retries=int(environ.get("BATCH_RETRIES") or cls.retries),
                api_key=environ.get("KUBESENTIMENT_API_KEY") or None,
            )
        except ValueError as e:
            raise InvalidRequest(f"bad setting: {e}") from None


@dataclass(frozen=True)
class BatchRequest:
    """What one `dev.kubesentiment.batch.requested` event asks for."""

    event_id: str
    input: str
    output: str
    id_field: str = "id"
    text_field: str = "text"
    long_text: str | None = None


def read_event(path: Path) -> CloudEvent:
    """The structured-mode CloudEvent JSON that JobSink mounted at `path`."""
    try:
        body = path.read_bytes()
    except OSError as e:
        raise InvalidRequest(f"cannot read the event at {path}: {e.strerror}") from None
    try:
        event = JSONFormat().read(CloudEvent, body)
    except Exception as e:  # the SDK raises several types for malformed JSON/attributes
        raise InvalidRequest(f"not a CloudEvent: {e}") from None
    assert isinstance(event, CloudEvent)
    return event


def parse_request(event: CloudEvent) -> BatchRequest:
    """The request in an event of type REQUESTED; InvalidRequest otherwise."""
    if event.get_type() != REQUESTED:
        raise InvalidRequest(f"event type {event.get_type()!r} is not {REQUESTED}")
    data = event.get_data()
    if not isinstance(data, Mapping):
        raise InvalidRequest("the event data must be a JSON object")
    fields: dict[str, Any] = {}
    for name in ("input", "output", "id_field", "text_field", "long_text"):
        value = data.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidRequest(f"'{name}' must be a non-empty string")
        if value is not None:
            fields[name] = value
    for name in ("input", "output"):
        if name not in fields:
            raise InvalidRequest(f"the event data lacks '{name}'")
    if fields.get("long_text") not in (None, "truncate", "chunk"):
        raise InvalidRequest("'long_text' must be 'truncate' or 'chunk'")
    unknown = set(data) - {"input", "output", "id_field", "text_field", "long_text"}
    if unknown:
        raise InvalidRequest(f"unknown field(s) in the event data: {', '.join(sorted(unknown))}")
    return BatchRequest(event_id=str(event.get_id()), **fields)


def locate(location: str, data_root: Path) -> Path:
    """A location on the batch volume as a path inside `data_root`; InvalidRequest otherwise."""
    if location.startswith(OBJECT_STORE_SCHEMES) or "://" in location:
        raise InvalidRequest(
            f"{location!r}: object-store locations are not supported yet; "
            "use a path on the batch volume"
        )
    pure = PurePosixPath(location)
    if ".." in pure.parts:
        raise InvalidRequest(f"{location!r}: '..' is not allowed")
    root = data_root.resolve()
    path = (Path(pure) if pure.is_absolute() else root / pure).resolve()
    if path != root and root not in path.parents:
        raise InvalidRequest(f"{location!r} is outside the batch volume ({root})")
    return path


def completion(
    request: BatchRequest | None,
    event_id: str,
    *,
    summary: client.Summary | None,
    error: str | None,
    source: str | None = None,
) -> CloudEvent:
    """The `dev.kubesentiment.batch.completed` event for one run; `source` is the request
    event's (None when the event could not be read)."""
    data: dict[str, Any] = {
        "input": request.input if request else None,
        "output": request.output if request else None,
    }
    if summary is not None:
        data.update(
            rows=summary.total,
            skipped=summary.skipped,
            written=summary.written,
            item_errors=summary.item_errors,
            failed=summary.failed,
            duplicates=summary.duplicates,
            requests=summary.requests,
            retries=summary.retries,
            elapsed_s=round(summary.elapsed, 3),
        )
    if error is not None:
        status = "invalid" if summary is None else "failed"
    else:
        status = "complete" if summary is not None and summary.failed == 0 else "incomplete"
    data["status"] = status
    if error is not None:
        data["error"] = error
    attributes = {
        "id": derived_id(source, event_id, COMPLETED, status) if source else str(uuid.uuid4()),
        "source": SOURCE,
        "type": COMPLETED,
        "subject": event_id,
        "requestid": event_id,
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, data)


Sleep = Callable[[float], Awaitable[None]]
SINK_MAX_BACKOFF_S = 30.0


async def deliver(
    settings: JobSettings,
    event: CloudEvent,
    sleep: Sleep = asyncio.sleep,
    backoff: Backoff | None = None,
) -> bool:
    """Post `event` to K_SINK in binary mode with bounded retries (full jitter, Retry-After a
    floor: `shared.backoff`); True when accepted."""
    backoff = backoff or Backoff(settings.backoff_s, SINK_MAX_BACKOFF_S)
    if not settings.sink:
        log.warning("no K_SINK: the completion event is only logged")
        return True
    message = ce_http.to_binary_event(event)
    async with httpx.AsyncClient(timeout=30.0) as http:
        for attempt in range(1, settings.sink_attempts + 1):
            retry_after: str | None = None
            try:
                response = await http.post(
                    settings.sink, headers=message.headers, content=message.body
                )
                if response.is_success:
                    return True
                reason = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    break
                retry_after = response.headers.get("retry-after")
            except httpx.HTTPError as e:
                reason = f"{type(e).__name__}: {e}"
            log.info("completion event not delivered (%s), attempt %d", reason, attempt)
            if attempt < settings.sink_attempts:
                await sleep(backoff.delay(attempt - 1, retry_after))
    log.error("gave up delivering the completion event to %s", settings.sink)
    return False


async def run(settings: JobSettings) -> int:
    """Run the job once; the exit status (see the module docstring)."""
    request: BatchRequest | None = None
    event_id = "unknown"
    source: str | None = None
    summary: client.Summary | None = None
    error: str | None = None
    code = 0
    try:
        event = read_event(settings.event_path)
        event_id = str(event.get_id())
        source = str(event.get_source())
        request = parse_request(event)
        config = client.Config(
            input=locate(request.input, settings.data_root),
            output=locate(request.output, settings.data_root),
            url=settings.url,
            id_field=request.id_field,
            text_field=request.text_field,
            long_text=request.long_text,
            batch_size=settings.batch_size,
            concurrency=settings.concurrency,
            retries=settings.retries,
            api_key=settings.api_key,
            progress=False,
        )
        if not config.input.is_file():
            raise InvalidRequest(f"input {request.input!r} does not exist on the batch volume")
        summary = await client.run(config)
        print(summary.line(), file=sys.stderr)
        code = 1 if summary.failed else 0
    except InvalidRequest as e:
        error, code = str(e), 2
    except client.FatalError as e:
        # Wrong URL, a key the function refuses, an unreadable input row: retrying will not help.
        error, code = str(e), 2
    done = completion(request, event_id, summary=summary, error=error, source=source)
    log.info("batch job %s: %s", event_id, done.get_data())
    if not await deliver(settings, done) and code == 0:
        code = 1  # a retry resumes with nothing left to do and sends the event again
    return code


def main(environ: Mapping[str, str] = os.environ) -> int:
    """Entry point of the JobSink's Job."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = JobSettings.from_env(environ)
    except InvalidRequest as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    code = asyncio.run(run(settings))
    if code == 2:
        print("the batch request cannot succeed (see the log): not retrying", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
