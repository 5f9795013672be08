"""Input rows and output resumption for the batch client (`functions.client`).

Rows come from JSONL (one object per line) or CSV/TSV (a header row); results go to a JSONL file
keyed by id, which `resume` reads back so a rerun skips what is done and redoes a cut-short line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class FatalError(Exception):
    """An answer that no retry or split can fix (wrong URL, missing API key)."""


Row = tuple[Any, Any]  # (id, text)


def key(item_id: Any) -> str:
    """A stable key for an id (1 and "1" stay distinct)."""
    return json.dumps(item_id, sort_keys=True)


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of JSONL text, blank lines left out. Lines end at "\n" only, not at
    what `str.splitlines` also breaks on (U+2028, U+2029, U+0085, form feed...): JSON allows
    those unescaped inside a string, so a writer with ensure_ascii=False leaves them in a line."""
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield lineno, line


def read_rows(path: Path, fmt: str, id_field: str, text_field: str) -> Iterator[Row]:
    """(id, text) for each row of a JSONL or CSV/TSV file; a missing id becomes the row number."""
    if fmt == "auto":
        fmt = "csv" if path.suffix.lower() in (".csv", ".tsv") else "jsonl"
    with path.open(newline="", encoding="utf-8") as f:
        if fmt == "csv":
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            for n, record in enumerate(csv.DictReader(f, delimiter=delimiter)):
                if text_field not in record:
                    raise FatalError(f"the CSV has no column {text_field!r}")
                yield record.get(id_field) or n, record[text_field]
        else:
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise FatalError(f"{path}:{n + 1}: not JSON: {e}") from None
                if not isinstance(obj, dict):
                    raise FatalError(f"{path}:{n + 1}: not a JSON object")
                yield obj.get(id_field, n), obj.get(text_field)


def resume(output: Path) -> set[str]:
    """Keys of the ids already in OUTPUT; a cut-short last line is removed so it is redone."""
    if not output.exists():
        return set()
    done: set[str] = set()
    good_end = 0
    with output.open("rb") as f:
        data = f.read()
    offset = 0
    for raw in data.splitlines(keepends=True):
        end = offset + len(raw)
        complete = raw.endswith(b"\n")
        try:
            obj = json.loads(raw) if complete else None
        except ValueError:
            obj = None
        if obj is None or not isinstance(obj, dict) or "id" not in obj:
            if end == len(data):  # only the last line may be damaged (an interrupted write)
                break
            raise FatalError(f"{output} has a damaged line at byte {offset}; fix or remove it")
        done.add(key(obj["id"]))
        good_end = end
        offset = end
    if good_end < len(data):
        with output.open("r+b") as f:
            f.truncate(good_end)
    return done
