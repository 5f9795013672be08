"""Batch client: `python -m functions.client INPUT -o OUTPUT` classifies a JSONL or CSV file.

Rows are read from JSONL (one object per line) or CSV (a header row); the id and text columns are
configurable (`--id-field`, `--text-field`; a row without an id gets its row number). Texts go to
the function in batches, as `POST /predict` requests or as CloudEvents to `POST /` (binary mode,
CloudEvents SDK), with at most `--concurrency` batches in flight. 429 and 5xx answers and
connection errors are retried with exponential backoff and full jitter (`shared.backoff`:
Retry-After is a floor); a batch that fails validation as a whole (422/400/413) is split so one
bad text cannot sink its neighbours, and a text the function rejects gets an error row.

Results are appended to OUTPUT as JSON lines keyed by `id` (a prediction, or `{"id", "error"}`),
flushed after every batch. Rerunning with the same OUTPUT resumes: ids already written are
skipped, and a last line cut short by an interruption is dropped and redone, so no row is done
twice or lost. Texts whose batch still failed after every retry are not written (a rerun retries
them); the exit status is then 1. Progress goes to stderr (`shared.progress`: a bar with ETA on a
terminal, a line every `--progress-interval` seconds in a log or CI), and a summary at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from functions.rows import FatalError as FatalError  # re-exported: callers catch client.FatalError
from functions.rows import Row, key, read_rows, resume
from shared.backoff import Backoff
from shared.progress import INTERVAL_S, Progress

REQUEST_TYPE = "dev.kubesentiment.sentiment.requested"
CLIENT_SOURCE = "/kubesentiment/batch-client"
RETRIED = frozenset({408, 409, 429})  # and every 5xx
SPLIT = frozenset({400, 413, 422})  # the batch as a whole was refused: try smaller ones


@dataclass(frozen=True)
class Config:
    """Everything one run needs; built from the command line by `parse_args`."""

    input: Path
    output: Path
    url: str = "http://127.0.0.1:8080"
    mode: str = "http"  # http | cloudevents
    format: str = "auto"  # auto | jsonl | csv
    id_field: str = "id"
    text_field: str = "text"
    batch_size: int = 32
    concurrency: int = 4
    retries: int = 6
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    timeout_s: float = 120.0
    long_text: str | None = None
    api_key: str | None = None
    progress: bool = True
    progress_interval_s: float = INTERVAL_S


@dataclass
class Summary:
    """Counts of one run."""

    total: int = 0
    skipped: int = 0
    written: int = 0
    item_errors: int = 0
    failed: int = 0
    retries: int = 0
    duplicates: int = 0
    requests: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def line(self) -> str:
        """One human-readable summary line."""
        rate = self.written / self.elapsed if self.elapsed > 0 else 0.0
        return (
            f"summary: rows={self.total} skipped={self.skipped} written={self.written} "
            f"item_errors={self.item_errors} failed={self.failed} duplicates={self.duplicates} "
            f"requests={self.requests} retries={self.retries} "
            f"elapsed={self.elapsed:.1f}s throughput={rate:.1f} texts/s"
        )


class Runner:
    """Sends batches, retries, splits, and appends results to the output."""

    def __init__(
        self,
        config: Config,
        client: httpx.AsyncClient,
        out: TextIO,
        summary: Summary,
        backoff: Backoff | None = None,
    ):
        self.config = config
        self.client = client
        self.out = out
        self.summary = summary
        self.backoff = backoff or Backoff(config.backoff_s, config.max_backoff_s)

    def request(self, rows: Sequence[Row]) -> tuple[str, dict[str, str], bytes]:
        """Path, headers and body for one batch."""
        items = [{"id": i, "text": t} for i, t in rows]
        headers = {"accept": "application/json"}
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key}"
        data: dict[str, Any] = {"items" if self.config.mode == "cloudevents" else "texts": items}
        if self.config.long_text:
            data["long_text"] = self.config.long_text
        if self.config.mode == "cloudevents":
            event = CloudEvent({"type": REQUEST_TYPE, "source": CLIENT_SOURCE}, data)
            message = ce_http.to_binary_event(event)
            return "/", {**headers, **message.headers}, message.body
        headers["content-type"] = "application/json"
        return "/predict", headers, json.dumps(data).encode()

    def results(self, response: httpx.Response) -> list[dict[str, Any]]:
        """The per-item results of a 200 answer."""
        if self.config.mode == "cloudevents":
            message = ce_http.HTTPMessage(headers=dict(response.headers), body=response.content)
            data = ce_http.from_http_event(message).get_data()
        else:
            data = response.json()
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise FatalError("the function answered 200 without a 'results' list")
        out: list[dict[str, Any]] = data["results"]
        return out

    async def send(self, rows: Sequence[Row]) -> None:
        """Classify one batch: retry, split on refusal, write rows or count them failed."""
        path, headers, body = self.request(rows)
        for attempt in range(self.config.retries + 1):
            retry_after: str | None = None
            try:
                self.summary.requests += 1
                response = await self.client.post(path, headers=headers, content=body)
            except httpx.TransportError as e:
                reason = f"{type(e).__name__}"
            else:
                status = response.status_code
                if status == 200:
                    self.write(rows, self.results(response))
                    return
                if status in SPLIT:
                    await self.split(rows, response)
                    return
                if status not in RETRIED and status < 500:
                    raise FatalError(f"HTTP {status} from {path}: {response.text[:300]}")
                reason = f"HTTP {status}"
                retry_after = response.headers.get("retry-after")
            if attempt < self.config.retries:
                self.summary.retries += 1
                await asyncio.sleep(self.backoff.delay(attempt, retry_after))
        print(f"\nbatch of {len(rows)} failed after retries: {reason}", file=sys.stderr)
        self.summary.failed += len(rows)

    async def split(self, rows: Sequence[Row], response: httpx.Response) -> None:
        if len(rows) > 1:
            half = len(rows) // 2
            await self.send(rows[:half])
            await self.send(rows[half:])
            return
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            error = {"type": f"http_{response.status_code}", "message": response.text[:300]}
        if isinstance(error, str):
            error = {"type": f"http_{response.status_code}", "message": error}
        error = {"type": error.get("type"), "message": error.get("message")}
        self.write(rows, [{"id": rows[0][0], "error": error}])

    def write(self, rows: Sequence[Row], results: list[dict[str, Any]]) -> None:
        if len(results) != len(rows):
            raise FatalError(f"sent {len(rows)} texts but got {len(results)} results")
        for (item_id, _), result in zip(rows, results, strict=True):
            line = {"id": item_id, **{k: v for k, v in result.items() if k != "id"}}
            if "error" in line:
                self.summary.item_errors += 1
            self.out.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.out.flush()
        self.summary.written += len(rows)


async def run(config: Config) -> Summary:
    """Classify every row of the input not yet in the output; return the counts."""
    summary = Summary()
    done = resume(config.output)
    todo: list[Row] = []
    seen: set[str] = set()
    rows = read_rows(config.input, config.format, config.id_field, config.text_field)
    for item_id, text in rows:
        summary.total += 1
        k = key(item_id)
        if k in seen:
            summary.duplicates += 1
            continue
        seen.add(k)
        if k in done:
            summary.skipped += 1
        else:
            todo.append((item_id, text))
    batches: asyncio.Queue[list[Row]] = asyncio.Queue()
    for start in range(0, len(todo), config.batch_size):
        batches.put_nowait(todo[start : start + config.batch_size])
    progress = Progress(
        len(todo),
        "classify",
        unit="text",
        enabled=config.progress,
        interval_s=config.progress_interval_s,
    )
    limits = httpx.Limits(max_connections=config.concurrency)
    config.output.parent.mkdir(parents=True, exist_ok=True)
    with config.output.open("a", encoding="utf-8") as out:
        async with httpx.AsyncClient(
            base_url=config.url, timeout=config.timeout_s, limits=limits
        ) as client:
            runner = Runner(config, client, out, summary)

            async def worker() -> None:
                while not batches.empty():
                    batch = batches.get_nowait()
                    await runner.send(batch)
                    done = summary.written + summary.failed
                    errors = summary.item_errors + summary.failed
                    postfix = f"retries {summary.retries}, errors {errors}"
                    progress.update(done - progress.done, postfix)

            workers = [asyncio.create_task(worker()) for _ in range(config.concurrency)]
            try:
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()
    progress.close()
    return summary


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """The command line as a Config."""
    p = argparse.ArgumentParser(
        prog="kubesentiment-client",
        description="Classify a JSONL or CSV file with a KubeSentiment function.",
    )
    p.add_argument("input", type=Path, help="JSONL or CSV file of texts")
    p.add_argument("-o", "--output", type=Path, required=True, help="results JSONL (resumed)")
    p.add_argument("--url", default=os.environ.get("KUBESENTIMENT_URL", Config.url))
    p.add_argument("--mode", choices=("http", "cloudevents"), default="http")
    p.add_argument("--format", choices=("auto", "jsonl", "csv"), default="auto")
    p.add_argument("--id-field", default="id")
    p.add_argument("--text-field", default="text")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--retries", type=int, default=6)
    p.add_argument("--backoff", type=float, default=0.5, help="first retry delay, seconds")
    p.add_argument("--max-backoff", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--long-text", choices=("truncate", "chunk"))
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=INTERVAL_S,
        help="seconds between progress lines when stderr is not a terminal or CI is set",
    )
    a = p.parse_args(argv)
    if a.batch_size < 1 or a.concurrency < 1 or a.retries < 0:
        p.error("--batch-size and --concurrency must be >= 1, --retries >= 0")
    return Config(
        input=a.input,
        output=a.output,
        url=a.url,
        mode=a.mode,
        format=a.format,
        id_field=a.id_field,
        text_field=a.text_field,
        batch_size=a.batch_size,
        concurrency=a.concurrency,
        retries=a.retries,
        backoff_s=a.backoff,
        max_backoff_s=a.max_backoff,
        timeout_s=a.timeout,
        long_text=a.long_text,
        # From the environment only: a key on the command line would show in `ps`.
        api_key=os.environ.get("KUBESENTIMENT_API_KEY") or None,
        progress=not a.no_progress,
        progress_interval_s=a.progress_interval,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run, print the summary, exit 0 when every row was written."""
    config = parse_args(argv)
    try:
        summary = asyncio.run(run(config))
    except FatalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.line(), file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
