"""Request bodies: size- and time-limited reading, one hardened JSON decoder, text and id checks.

Every client mistake becomes an `ApiError` with a clear message, on every protocol: a wrong content
type or charset (415), a body over MAX_BODY_BYTES (413, checked against Content-Length before
reading and while streaming), a body that takes longer than BODY_TIMEOUT_SECONDS (408), bytes
that are not UTF-8, invalid JSON, NaN/Infinity, numbers out of range, nesting deeper than the
decoder allows and lone surrogates (400), and texts or ids that are not usable (422, one detail
per bad text so a client can fix a batch in one go). Every adapter decodes through `decode_json`
and checks texts with `check_text`, so a new route cannot forget a case.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request

from shared.errors import (
    ClientDisconnected,
    InvalidInput,
    InvalidJson,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)

LONG_TEXT_MODES = ("truncate", "chunk")
MAX_ID_CHARS = 256
MAX_ID_INT = 2**53  # the integers every JSON client represents exactly
# C0 controls other than tab, LF and CR, DEL, C1 controls, and lone surrogates (which only a JSON
# \u escape can produce): none is text a model should see, and a lone surrogate cannot even be
# encoded back to UTF-8.
BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


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


def shown(value: Any, limit: int = 60) -> str:
    """A client value for an error message: repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_json(content_type: str) -> bool:
    """True for application/json and application/*+json, with any parameters."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def check_charset(content_type: str) -> None:
    """JSON is UTF-8 (RFC 8259 8.1): a declared charset other than UTF-8 is refused (415)."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
            if charset not in ("utf-8", "utf8"):
                raise UnsupportedMediaType(f"charset must be utf-8, got {shown(charset)}")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refusing more than `limit` bytes before and while reading it, and a
    client slower than `timeout_s` (a trickling client must not hold a slot for ever)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.strip().isdigit():
            raise InvalidInput(f"Content-Length is not a number: {shown(declared)}")
        size = int(declared)
        if size > limit:
            raise PayloadTooLarge(f"body of {size} bytes exceeds the limit of {limit} bytes")
    chunks, total = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise ClientDisconnected("the client disconnected while sending the body") from None
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJson(f"the number {shown(text)} is out of range")
    return value


def _lone_surrogate(data: Any) -> str | None:
    # Iterative walk (no recursion on client data); only run when the body has a \\uD8xx escape.
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            match = _SURROGATE.search(value)
            if match:
                return f"U+{ord(match.group()):04X}"
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return None


def decode_json(body: bytes, what: str = "the request body") -> Any:
    """Decode UTF-8 JSON strictly: the one decoder every protocol uses."""
    if not body.strip():
        raise InvalidJson(f"{what} is empty; send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidJson(f"{what} is not UTF-8 (invalid byte at offset {e.start})") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise InvalidJson(f"{what} is nested too deeply") from None
    except InvalidJson as e:
        raise InvalidJson(f"{what} is not valid JSON: {e.message}") from None
    except ValueError as e:
        raise InvalidJson(f"{what} is not valid JSON: {shown(str(e), 120)}") from None
    if _SURROGATE_ESCAPE.search(text):
        bad = _lone_surrogate(data)
        if bad is not None:
            raise InvalidJson(f"{what} holds a lone surrogate ({bad}), which is not valid Unicode")
    return data


async def read_json(request: Request, limit: int, timeout_s: float) -> Any:
    """Content type check, size- and time-limited read and strict JSON decode of a request."""
    content_type = request.headers.get("content-type", "")
    if not is_json(content_type):
        shown_type = shown(content_type) if content_type else "none"
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {shown_type}")
    check_charset(content_type)
    return decode_json(await read_body(request, limit, timeout_s))


def check_text(text: Any, max_chars: int) -> str | None:
    """The reason a value is not a usable text, or None when it is."""
    if not isinstance(text, str):
        return f"must be a string, got {kind(text)}"
    if not text.strip():
        return "must not be empty or whitespace"
    if len(text) > max_chars:
        return f"has {len(text)} characters, more than the limit of {max_chars}"
    return _bad_char(text)


def _bad_char(text: str) -> str | None:
    match = BAD_CHARS.search(text)
    if match is None:
        return None
    code = ord(match.group())
    kind = (
        "a lone surrogate (invalid Unicode)" if 0xD800 <= code <= 0xDFFF else "a control character"
    )
    return f"contains {kind}, U+{code:04X}, at position {match.start()}"


def kind(value: Any) -> str:
    """The JSON type name of a decoded value, for error messages."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )


def _check_id(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema counts 2.0 as an integer
    if isinstance(value, str):
        if len(value) > MAX_ID_CHARS:
            return f"id has {len(value)} characters, more than the limit of {MAX_ID_CHARS}"
        problem = _bad_char(value)
        return f"id {problem}" if problem else None
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_ID_INT:
            return f"id {shown(value, 30)} is outside -2^53..2^53"
        return None
    return f"id must be a string or an integer, got {kind(value)}"


def parse_items(raw: Any, *, max_texts: int, max_chars: int) -> list[Item | ItemError]:
    """A list of texts (strings or {"id", "text"} objects) as items and per-item errors."""
    if not isinstance(raw, list):
        raise InvalidInput(f"'texts' must be an array, got {kind(raw)}")
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
            unknown = set(entry) - {"id", "text"}
            problem = _check_id(item_id) or (
                f"unknown field(s) {shown(sorted(unknown))}" if unknown else None
            )
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
    explain: bool = False


def parse_predict(data: Any, *, max_texts: int, max_chars: int) -> PredictRequest:
    """Validate a /predict body: {"text": ...} or {"texts": [...]}, optional id and long_text."""
    if not isinstance(data, Mapping):
        raise InvalidInput(f"the body must be a JSON object, got {kind(data)}")
    long_text = data.get("long_text")
    if long_text is not None and long_text not in LONG_TEXT_MODES:
        raise InvalidInput(f"'long_text' must be one of {', '.join(LONG_TEXT_MODES)}")
    unknown = set(data) - {"text", "texts", "id", "long_text", "explain"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {shown(sorted(unknown), 120)}")
    explain = data.get("explain", False)
    if not isinstance(explain, bool):
        raise InvalidInput(f"'explain' must be true or false, got {kind(explain)}")
    if "text" in data and "texts" in data:
        raise InvalidInput("send either 'text' or 'texts', not both")
    if "text" in data:
        problem = check_text(data["text"], max_chars) or _check_id(data.get("id"))
        if problem:
            raise InvalidInput(problem if problem.startswith("id") else f"'text' {problem}")
        return PredictRequest([Item(data["text"], data.get("id"))], True, long_text, explain)
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
        items = [p for p in parsed if isinstance(p, Item)]
        return PredictRequest(items, False, long_text, explain)
    raise InvalidInput("the body needs 'text' (a string) or 'texts' (an array of strings)")
