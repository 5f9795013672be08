"""Texts to label, read from payload-log events or from any JSONL/CSV file with a `text` field.

JSONL lines may be `dev.kubesentiment.sentiment.logged` events in structured CloudEvents JSON
(`{"specversion": "1.0", "type": ..., "data": {...}}`, data as an object, a JSON string or
`data_base64`), the bare data objects of such events (`{"items": [{"text": ...}, ...]}`: what a
sink that stores events' data writes), or rows with a `text` and an optional `id`. A CSV file
needs a header with a `text` column (an `id` column is optional). Events of other types are
skipped and counted. A payload log written with PAYLOAD_LOG_HASH_TEXTS=on holds sha256 digests
instead of texts, which nobody can label: it is refused with an error saying so.

Identical texts (after trimming surrounding whitespace) are kept once, with the first one's id; a
text without an id gets `t-` and the first 16 hex digits of its sha256, stable across runs.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from functions.rows import jsonl_lines
from functions.sentiment.payload_log import LOGGED_TYPE


class InputError(ValueError):
    """The input cannot be sampled; the message names the file (and line) and the problem."""


@dataclass(frozen=True)
class Text:
    """One distinct text and its id."""

    id: str
    text: str


@dataclass(frozen=True)
class Read:
    """What a file gave: distinct texts in first-seen order, and what was left out."""

    texts: tuple[Text, ...]
    duplicates: int
    skipped_events: int


def text_id(text: str) -> str:
    """The id of a text that came without one."""
    return "t-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def read(path: Path) -> Read:
    """Distinct texts of a JSONL or CSV file (CSV by suffix `.csv`/`.tsv`, else JSONL)."""
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start})") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from e
    suffix = path.suffix.lower()
    skipped = 0
    if suffix in {".csv", ".tsv"}:
        rows = _csv(path, raw, "\t" if suffix == ".tsv" else ",")
    else:
        rows, skipped = _jsonl(path, raw)
    seen: dict[str, Text] = {}
    ids: set[str] = set()
    duplicates = 0
    for given_id, text in rows:
        text = text.strip()
        if not text:
            continue
        if text in seen:
            duplicates += 1
            continue
        item = Text(given_id if given_id is not None else text_id(text), text)
        if item.id in ids:
            raise InputError(f"{path}: id {item.id!r} names two different texts")
        ids.add(item.id)
        seen[text] = item
    if not seen:
        raise InputError(f"{path}: no text to sample")
    return Read(tuple(seen.values()), duplicates, skipped)


def _csv(path: Path, raw: str, delimiter: str) -> list[tuple[str | None, str]]:
    # newline="" keeps line breaks inside quoted fields (RFC 4180) part of the text.
    reader = csv.DictReader(io.StringIO(raw, newline=""), delimiter=delimiter)
    try:
        if reader.fieldnames is None or "text" not in reader.fieldnames:
            found = ", ".join(repr(h) for h in reader.fieldnames or ()) or "none"
            raise InputError(f"{path}: no 'text' column (columns: {found})")
        return [(row.get("id") or None, row.get("text") or "") for row in reader]
    except csv.Error as e:
        raise InputError(f"{path}: not readable as CSV ({e})") from e


def _jsonl(path: Path, raw: str) -> tuple[list[tuple[str | None, str]], int]:
    rows: list[tuple[str | None, str]] = []
    skipped = 0
    for lineno, line in jsonl_lines(raw):
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise InputError(f"{where}: not valid JSON ({e})") from e
        if not isinstance(obj, dict):
            raise InputError(f"{where}: not a JSON object")
        if "specversion" in obj:
            if obj.get("type") != LOGGED_TYPE:
                skipped += 1
                continue
            obj = _event_data(obj, where)
        if "items" in obj:
            rows.extend(_items(obj, where))
        elif "text" in obj:
            if not isinstance(obj["text"], str):
                raise InputError(f"{where}: 'text' is not a string")
            given = obj.get("id")
            rows.append((None if given is None else str(given), obj["text"]))
        elif "text_sha256" in obj:
            raise InputError(_hashed(where))
        else:
            raise InputError(f"{where}: neither a payload-log event nor a row with a 'text'")
    return rows, skipped


def _event_data(event: dict[str, Any], where: str) -> dict[str, Any]:
    data: Any = event.get("data")
    try:
        if "data_base64" in event:
            data = json.loads(base64.b64decode(event["data_base64"], validate=True))
        elif isinstance(data, str):
            data = json.loads(data)
    except ValueError as e:
        raise InputError(f"{where}: the event's data is not JSON ({e})") from e
    if not isinstance(data, dict):
        raise InputError(f"{where}: the event's data is not a JSON object")
    return data


def _items(data: dict[str, Any], where: str) -> list[tuple[str | None, str]]:
    items = data["items"]
    if data.get("texts_hashed") is True:
        raise InputError(_hashed(where))
    if not isinstance(items, list):
        raise InputError(f"{where}: 'items' is not a list")
    out: list[tuple[str | None, str]] = []
    for item in items:
        if not isinstance(item, dict):
            raise InputError(f"{where}: an item is not a JSON object")
        if "text" not in item and "text_sha256" in item:
            raise InputError(_hashed(where))
        if not isinstance(item.get("text"), str):
            raise InputError(f"{where}: an item has no 'text' string")
        out.append((None, item["text"]))
    return out


def _hashed(where: str) -> str:
    return (
        f"{where}: the texts are hashed (payload logged with PAYLOAD_LOG_HASH_TEXTS=on), and a "
        "sha256 digest cannot be labelled: log a sample with hashing off for labelling"
    )
