"""Users' labelled data for fine-tuning: reading a CSV or JSONL file, the label plan, the split.

A file holds one row per text with a `text` and a `label` column (CSV, TSV) or field (JSONL);
labels are any strings. Other columns are ignored, except `sample` (how the labelling file's
sampler picked the text: uncertain, diverse or random), kept for the adapt job's held-out share.
Rows with an empty text or label (texts a person skipped) are left out and counted
(`read_labelled`). Every problem a user can fix is a `DataError` whose message names the file
(and the line, for JSONL) and what is wrong, so the command can print it as one line.

Labels become the model's labels in a stable order (`plan_labels`):

* sentiment labels (negative, neutral, positive, any case, or a subset): the default model's order,
  and the new head starts from the default head's rows, so `score = P(positive) - P(negative)`
  keeps its meaning; the score weights are -1, 0, +1.
* numeric labels (star ratings "1".."5", "0.5"...): numeric order; the score is the expected rating
  mapped linearly onto [-1, 1] (lowest label -1, highest +1).
* anything else: sorted; no score (it is null in responses), the label and probabilities carry it.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from functions.rows import jsonl_lines

SENTIMENT = ("negative", "neutral", "positive")
SENTIMENT_WEIGHTS = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}
HELD_OUT_FRACTION = 0.2


class DataError(ValueError):
    """The labelled file cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class Row:
    """One labelled text as read from the file (label as written, stripped)."""

    text: str
    label: str
    sample: str = ""


@dataclass(frozen=True)
class LabelPlan:
    """The new model's labels in order, how they relate to the default head, and the score."""

    labels: tuple[str, ...]
    sentiment: bool
    score_weights: tuple[float, ...] | None
    canonical: dict[str, str]  # label as written -> label of the model

    def index(self, raw_label: str) -> int:
        """Class index of a label as written in the file."""
        return self.labels.index(self.canonical[raw_label])


def read_rows(path: Path) -> list[Row]:
    """Rows of a CSV/TSV or JSONL file (format from the suffix, else from the first character)."""
    return read_labelled(path)[0]


def read_labelled(path: Path) -> tuple[list[Row], int]:
    """The rows of a file and how many rows were skipped for an empty text or label."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    jsonl = suffix in {".jsonl", ".ndjson", ".json"} or (
        suffix not in {".csv", ".tsv"} and text.lstrip().startswith("{")
    )
    skipped: list[int] = []
    if jsonl:
        rows = _jsonl(path, text, skipped)
    else:
        rows = _csv(path, text, "\t" if suffix == ".tsv" else ",", skipped)
    if not rows:
        raise DataError(f"{path}: no row has both a text and a label")
    return rows, len(skipped)


def _jsonl(path: Path, text: str, skipped: list[int]) -> list[Row]:
    rows = []
    for lineno, line in jsonl_lines(text):
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e})") from e
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: not a JSON object")
        for key in ("text", "label"):
            if key not in obj:
                raise DataError(f"{path}:{lineno}: no {key!r} field")
        if not isinstance(obj["text"], str):
            raise DataError(f"{path}:{lineno}: 'text' is not a string")
        if not isinstance(obj["label"], str | int | float) or isinstance(obj["label"], bool):
            raise DataError(f"{path}:{lineno}: 'label' is not a string or a number")
        sample = obj.get("sample")
        if not _append(rows, obj["text"], str(obj["label"]), str(sample or "")):
            skipped.append(lineno)
    return rows


def _csv(path: Path, text: str, delimiter: str, skipped: list[int]) -> list[Row]:
    # Not text.splitlines(): a quoted field may hold line breaks (RFC 4180), and splitlines also
    # breaks at U+2028 and other separators that are part of a text.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader)]
        for key in ("text", "label"):
            if key not in header:
                found = ", ".join(repr(h) for h in header) or "none"
                raise DataError(f"{path}: no {key!r} column (columns: {found})")
        ti, li = header.index("text"), header.index("label")
        si = header.index("sample") if "sample" in header else None
        rows: list[Row] = []
        for record in reader:
            if not any(field.strip() for field in record):
                continue  # a blank line
            sample = record[si] if si is not None and len(record) > si else ""
            if len(record) <= max(ti, li) or not _append(rows, record[ti], record[li], sample):
                skipped.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{path}: not readable as CSV ({e})") from e
    return rows


def _append(rows: list[Row], text: str, label: str, sample: str = "") -> bool:
    """Append a row unless its text or label is empty (nothing to learn from: skipped, counted,
    not an error); True when appended."""
    if text.strip() and label.strip():
        rows.append(Row(text.strip(), label.strip(), sample.strip().lower()))
        return True
    return False


def deduplicate(rows: list[Row]) -> list[Row]:
    """Keep the first row of each exact text, so no text is both trained on and held out."""
    seen: set[str] = set()
    out = []
    for row in rows:
        if row.text not in seen:
            seen.add(row.text)
            out.append(row)
    return out


def plan_labels(rows: list[Row], path: Path) -> LabelPlan:
    """The label plan for the rows' labels (see the module docstring)."""
    raw = sorted({r.label for r in rows})
    if len(raw) < 2:
        only = f" ({raw[0]!r})" if raw else ""
        raise DataError(
            f"{path}: only one label{only} in {len(rows)} rows; fine-tuning needs at least two"
        )
    lower = {label: label.lower() for label in raw}
    if set(lower.values()) <= set(SENTIMENT) and len(set(lower.values())) == len(raw):
        labels = tuple(s for s in SENTIMENT if s in lower.values())
        weights = tuple(SENTIMENT_WEIGHTS[s] for s in labels)
        return LabelPlan(labels, True, weights, lower)
    numbers = {label: _number(label) for label in raw}
    if all(v is not None for v in numbers.values()):
        values = {k: float(v) for k, v in numbers.items() if v is not None}
        if len(set(values.values())) == len(raw):
            labels = tuple(sorted(raw, key=lambda k: values[k]))
            low, high = values[labels[0]], values[labels[-1]]
            weights = tuple(2 * (values[k] - low) / (high - low) - 1 for k in labels)
            return LabelPlan(labels, False, weights, {k: k for k in raw})
    return LabelPlan(tuple(raw), False, None, {k: k for k in raw})


def _number(label: str) -> float | None:
    try:
        return float(label)
    except ValueError:
        return None


def split(
    rows: list[Row], seed: int, fraction: float = HELD_OUT_FRACTION
) -> tuple[list[Row], list[Row]]:
    """Seeded, per-label held-out share (a fifth by default): (train, held_out); every label has
    rows in both."""
    by_label: dict[str, list[Row]] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
    rng = random.Random(seed)
    train: list[Row] = []
    held: list[Row] = []
    for label in sorted(by_label):
        group = by_label[label]
        if len(group) < 2:
            raise DataError(
                f"label {label!r} has only 1 row; each label needs at least 2 "
                "(one to train on, one to hold out)"
            )
        rng.shuffle(group)
        n_held = min(len(group) - 1, max(1, round(len(group) * fraction)))
        held.extend(group[:n_held])
        train.extend(group[n_held:])
    rng.shuffle(train)
    return train, held


def counts(rows: list[Row]) -> str:
    """'label: n, ...' in label order, for the report."""
    c = Counter(r.label for r in rows)
    return ", ".join(f"{label}: {c[label]}" for label in sorted(c))
