"""Request bodies: size-limited reading, JSON parsing and validation of texts.

Every client mistake becomes an `ApiError` with a clear message: a wrong content type (415), a
body over MAX_BODY_BYTES (413, checked against Content-Length before reading and while
streaming), invalid JSON (400), and a body that does not fit the schema (422, with one detail per
bad text so a client can fix a batch in one go).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from shared.errors import InvalidInput, InvalidJson, PayloadTooLarge, UnsupportedMediaType

LONG_TEXT_MODES = ("truncate", "chunk")


@dataclass(frozen=True)
class Item:
    """One text to classify, with the client's optional id echoed back."""

    text: str
    id: Any = None


@dataclass(frozen=True)
class ItemError:
    """Why one text of a batch cannot be classified."""

    index: int
    message: str
    id: Any = None


def is_json(content_type: str) -> bool:
    """True for application/json and application/*+json, with any parameters."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes before and while reading it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length is not a number") from None
        if size > limit:
            raise PayloadTooLarge(f"body of {size} bytes exceeds the limit of {limit} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """Decode a UTF-8 JSON body."""
    if not body.strip():
        raise InvalidJson("the request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise InvalidJson("the request body is not UTF-8") from None
    except ValueError as e:
        raise InvalidJson(f"the request body is not valid JSON: {e}") from None


async def read_json(request: Request, limit: int) -> Any:
    """Content type check, size-limited read and JSON decode of a request."""
    content_type = request.headers.get("content-type", "")
    if not is_json(content_type):
        shown = content_type or "none"
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {shown}")
    return parse_json(await read_body(request, limit))


def check_text(text: Any, max_chars: int) -> str | None:
    """The reason a value is not a usable text, or None when it is."""
    if not isinstance(text, str):
        return f"must be a string, got {_kind(text)}"
    if not text.strip():
        return "must not be empty or whitespace"
    if len(text) > max_chars:
        return f"has {len(text)} characters, more than the limit of {max_chars}"
    if "\x00" in text:
        return "must not contain NUL characters"
    return None


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )


def _check_id(value: Any) -> str | None:
    if value is None or (isinstance(value, str | int) and not isinstance(value, bool)):
        return None
    return f"id must be a string or an integer, got {_kind(value)}"


def parse_items(raw: Any, *, max_texts: int, max_chars: int) -> list[Item | ItemError]:
    """A list of texts (strings or {"id", "text"} objects) as items and per-item errors."""
    if not isinstance(raw, list):
        raise InvalidInput(f"'texts' must be an array, got {_kind(raw)}")
    if not raw:
        raise InvalidInput("'texts' must hold at least one text")
    if len(raw) > max_texts:
        raise InvalidInput(f"'texts' holds {len(raw)} texts, more than the limit of {max_texts}")
    out: list[Item | ItemError] = []
    for index, entry in enumerate(raw):
        item_id: Any = None
        text: Any = entry
        if isinstance(entry, Mapping):
            item_id, text = entry.get("id"), entry.get("text")
            if "text" not in entry:
                out.append(ItemError(index, "missing 'text'", _safe_id(item_id)))
                continue
            problem = _check_id(item_id)
            if problem:
                out.append(ItemError(index, problem))
                continue
        problem = check_text(text, max_chars)
        out.append(ItemError(index, f"text {problem}", item_id) if problem else Item(text, item_id))
    return out


def _safe_id(value: Any) -> Any:
    return value if _check_id(value) is None else None


@dataclass(frozen=True)
class PredictRequest:
    """A parsed `POST /predict` body."""

    items: list[Item]
    single: bool
    long_text: str | None


def parse_predict(data: Any, *, max_texts: int, max_chars: int) -> PredictRequest:
    """Validate a /predict body: {"text": ...} or {"texts": [...]}, optional id and long_text."""
    if not isinstance(data, Mapping):
        raise InvalidInput(f"the body must be a JSON object, got {_kind(data)}")
    long_text = data.get("long_text")
    if long_text is not None and long_text not in LONG_TEXT_MODES:
        raise InvalidInput(f"'long_text' must be one of {', '.join(LONG_TEXT_MODES)}")
    unknown = set(data) - {"text", "texts", "id", "long_text"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    if "text" in data and "texts" in data:
        raise InvalidInput("send either 'text' or 'texts', not both")
    if "text" in data:
        problem = check_text(data["text"], max_chars) or _check_id(data.get("id"))
        if problem:
            raise InvalidInput(problem if problem.startswith("id") else f"'text' {problem}")
        return PredictRequest([Item(data["text"], data.get("id"))], True, long_text)
    if "texts" in data:
        if "id" in data:
            raise InvalidInput("'id' belongs inside each item of 'texts'")
        parsed = parse_items(data["texts"], max_texts=max_texts, max_chars=max_chars)
        errors = [p for p in parsed if isinstance(p, ItemError)]
        if errors:
            raise InvalidInput(
                "; ".join(f"texts[{e.index}]: {e.message}" for e in errors[:10])
                + (f" (and {len(errors) - 10} more)" if len(errors) > 10 else "")
            )
        return PredictRequest([p for p in parsed if isinstance(p, Item)], False, long_text)
    raise InvalidInput("the body needs 'text' (a string) or 'texts' (an array of strings)")
