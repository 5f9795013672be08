"""JSONL readers end lines at "\\n" only: JSON allows U+2028, U+2029 and U+0085 unescaped inside
a string (a writer with ensure_ascii=False leaves them there), and `str.splitlines` would cut the
line at them. Every JSONL reader of texts goes through `functions.rows.jsonl_lines`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from functions import rows, texts
from training import labelled

SEPARATORS = ["\u2028", "\u2029", "\x85", "\x0c", "\x1e"]
TEXTS = [f"Felt better{sep}then worse" for sep in SEPARATORS]


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    # ensure_ascii=False: the separators are written as themselves, not as \\u escapes.
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\r\n".join(lines) + "\n\n", encoding="utf-8")
    return path


def test_jsonl_lines_split_at_newline_only() -> None:
    found = list(rows.jsonl_lines('{"a": "x\u2028y"}\n\n  \n{"b": 1}\r\n'))
    assert found == [(1, '{"a": "x\u2028y"}'), (4, '{"b": 1}\r')]


@pytest.mark.parametrize("reader", ["sampler", "labelled"])
def test_texts_with_unicode_line_separators_survive_jsonl(tmp_path: Path, reader: str) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl", [{"id": str(i), "text": t, "label": "positive"}
                                for i, t in enumerate(TEXTS)]
    )  # fmt: skip
    if reader == "sampler":
        got = [t.text for t in texts.read(path).texts]
    else:
        got = [r.text for r in labelled.read_rows(path)]
    assert got == TEXTS
