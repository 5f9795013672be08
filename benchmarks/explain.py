"""Cost and faithfulness of explanations (`POST /explain`), written to docs/explain.json.

    python -m benchmarks.explain [--runs 30] [--out docs/explain.json]   (make bench-explain)
    python -m benchmarks.explain --quick                                 (seconds; a smoke run)
    python -m benchmarks.explain --faithfulness-only --out docs/explain.json   (no timing)
    python -m benchmarks.explain --readme      (README section from docs/explain.json)

Cost: a function is started on loopback (the int8 model, default settings) and, for a 20-word
and a 100-word text, the latency of `POST /predict` and of `POST /explain` is measured one request
at a time, alternating, `--runs` times each; the table shows the medians, the ratio and the model
inputs per explanation (words + 1, one batched submit).

Faithfulness: on held-out labelled sentences (`faithfulness_set`), the sentence, its top-
attributed word and a random word (seeded) are taken from the explanation; the word is removed by
its offsets and the text re-scored. The mean drop of the predicted label's probability when the
top word is removed is compared with the drop for a random word, for each masking strategy the
explainer can use (`explain.MASKS`). With masking by removal the top word is by construction the
one whose removal costs most; [UNK] and [MASK] show how close the alternatives get.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from functions.sentiment import explain
from loadtests.local import ROOT, running
from scripts import readme_blocks
from shared.cpu import available_cpus

TEXTS = ROOT / "benchmarks" / "texts.json"
RESULTS = ROOT / "docs" / "explain.json"
DEFAULT_MODEL = ROOT / "models" / "minilm-sentiment-int8"
SEED = 20261203
LENGTHS = (20, 100)


def text_of(n_words: int) -> str:
    """A text of exactly `n_words` words (as the explainer counts them) from the sample texts."""
    sample = " ".join(json.loads(TEXTS.read_text()))
    spans = explain.words(sample)
    while len(spans) < n_words:
        sample = f"{sample} {sample}"
        spans = explain.words(sample)
    return sample[: spans[n_words - 1].end]


def faithfulness_set(per_source: int = 12, min_words: int = 5, max_words: int = 30) -> list[Any]:
    """Held-out labelled sentences (never trained on): the first `per_source` positive or negative
    rows of `min_words`..`max_words` words from each Hutto source and from CrowdFlower."""
    from training import data

    picked: list[Any] = []
    counts: dict[str, int] = {}
    for example in [*data.hutto("test"), *data.crowdflower("test")]:
        n = len(explain.words(example.text))
        if example.label == 1 or not min_words <= n <= max_words:
            continue
        if counts.get(example.source, 0) < per_source:
            counts[example.source] = counts.get(example.source, 0) + 1
            picked.append(example)
    return picked


def removed(text: str, start: int, end: int) -> str:
    """`text` without the characters [start, end) (the word replaced by a space)."""
    return text[:start] + " " + text[end:]


@dataclass(frozen=True)
class Faithfulness:
    """Mean probability drops when the top-attributed word or a random word is removed."""

    mask: str
    sentences: int
    top_drop: float
    random_drop: float

    @property
    def margin(self) -> float:
        """How much more removing the top word costs than removing a random one."""
        return self.top_drop - self.random_drop

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON, rounded."""
        return {
            "mask": self.mask,
            "sentences": self.sentences,
            "top_word_drop": round(self.top_drop, 4),
            "random_word_drop": round(self.random_drop, 4),
            "margin": round(self.margin, 4),
            "ratio": round(self.top_drop / self.random_drop, 2) if self.random_drop > 0 else None,
        }


def faithfulness(
    explanations: Sequence[dict[str, Any]],
    texts: Sequence[str],
    probabilities: Sequence[dict[str, float]],
    rescore: Any,
    mask: str = explain.DEFAULT_MASK,
    seed: int = SEED,
) -> Faithfulness:
    """Remove each text's top-attributed word and a random word (by the explanation's offsets),
    rescore both with `rescore(texts) -> [probabilities]` and average the label's drops."""
    rng = random.Random(seed)
    variants: list[str] = []
    for text, e in zip(texts, explanations, strict=True):
        top = max(e["words"], key=lambda w: w["attribution"])
        other = rng.choice(e["words"])
        variants += [
            removed(text, top["start"], top["end"]),
            removed(text, other["start"], other["end"]),
        ]
    scored = rescore(variants)
    top_drops, random_drops = [], []
    for i, (e, p) in enumerate(zip(explanations, probabilities, strict=True)):
        label = e["label"]
        top_drops.append(p[label] - scored[2 * i][label])
        random_drops.append(p[label] - scored[2 * i + 1][label])
    return Faithfulness(
        mask, len(texts), statistics.fmean(top_drops), statistics.fmean(random_drops)
    )


def offline_faithfulness(model_dir: Path, examples: Sequence[Any]) -> list[Faithfulness]:
    """Faithfulness of every masking strategy, with the model run in-process."""
    from functions.sentiment.model import Classifier

    classifier = Classifier.load(model_dir)
    texts = [e.text for e in examples]

    def rescore(batch: list[str]) -> list[dict[str, float]]:
        # One text per run: the int8 model's dynamic quantization makes a text's probabilities
        # depend slightly (~0.01) on its batch neighbours, noise that should not enter the drops.
        return [classifier.predict([text])[0].probabilities for text in batch]

    probabilities = rescore(texts)
    out = []
    for mask in explain.MASKS:
        explained = []
        for text in texts:  # one explanation per text, as `POST /explain` computes it
            plan = explain.Plan.build([text], max_words=10_000, mask=mask)
            (found,) = plan.explanations(classifier.labels, classifier.predict(plan.inputs()))
            assert found is not None  # None only for a text whose deadline passed
            explained.append(found)
        out.append(faithfulness(explained, texts, probabilities, rescore, mask))
    return out


def _median_ms(client: httpx.Client, path: str, body: dict[str, Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = client.post(path, json=body)
        times.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    return statistics.median(times)


def cost(runs: int, warmup: int = 3) -> list[dict[str, Any]]:
    """Median latency of /predict and /explain for each text length, on a local function."""
    rows = []
    env = {"LOG_LEVEL": "warning", "EXPLAIN_MAX_WORDS": str(max(LENGTHS))}
    with (
        running(env=env) as function,
        httpx.Client(base_url=function.base_url, timeout=120.0) as client,
    ):
        for n in LENGTHS:
            body = {"text": text_of(n)}
            for path in ("/predict", "/explain"):
                _median_ms(client, path, body, warmup)
            predict_ms = _median_ms(client, "/predict", body, runs)
            explain_ms = _median_ms(client, "/explain", body, runs)
            inputs = client.post("/explain", json=body).json()["explanation"]["model_inputs"]
            rows.append(
                {
                    "words": n,
                    "model_inputs": inputs,
                    "predict_ms": round(predict_ms, 2),
                    "explain_ms": round(explain_ms, 2),
                    "ratio": round(explain_ms / predict_ms, 1),
                }
            )
    return rows


def table(rows: list[dict[str, Any]], faithful: list[Faithfulness]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| words | model inputs | /predict median ms | /explain median ms | ratio |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['words']} | {r['model_inputs']} | {r['predict_ms']:.1f} | {r['explain_ms']:.1f} | "
        f"{r['ratio']:.1f}x |"
        for r in rows
    ]
    lines += [
        "",
        "| mask | sentences | top-word drop | random-word drop | margin |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {f.mask} | {f.sentences} | {f.top_drop:.3f} | {f.random_drop:.3f} | {f.margin:.3f} |"
        for f in faithful
    ]
    return "\n".join(lines)


BEGIN = "<!-- explain: generated by `python -m benchmarks.explain --readme`; do not edit -->"
END = "<!-- /explain -->"


def readme_section(result: dict[str, Any]) -> str:
    """The README's explanation figures, from a results file."""
    lines = [BEGIN]
    faithful = {f["mask"]: f for f in result["faithfulness"]}
    f = faithful[result["default_mask"]]
    lines += [
        f"Faithfulness, measured by `benchmarks/explain.py` on the same {f['sentences']} held-out "
        f"sentences (int8 model, in-process): removing the top-attributed word lowers the "
        f"predicted label's probability by "
        f"{f['top_word_drop']:.3f} on average, removing a random word by "
        f"{f['random_word_drop']:.3f} ({f['ratio']}x). Masking a word with the tokenizer's "
        + " or ".join(
            f"`[{m.upper()}]` gives {faithful[m]['top_word_drop']:.3f} vs "
            f"{faithful[m]['random_word_drop']:.3f}"
            for m in faithful
            if m != result["default_mask"]
        )
        + ": removal is kept (it is also what the check itself does, so by that check it "
        "cannot lose; the other two come close).",
        "",
    ]
    if result.get("cost"):
        lines += [
            f"Cost, one request at a time on {result['machine']} (median of {result['runs']}):",
            "",
            "| words | model inputs | `/predict` ms | `/explain` ms | ratio |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['words']} | {r['model_inputs']} | {r['predict_ms']:.1f} | "
            f"{r['explain_ms']:.1f} | {r['ratio']:.1f}x |"
            for r in result["cost"]
        ]
    else:
        lines.append("Cost: not measured yet (`make bench-explain`).")
    lines.append(END)
    return "\n".join(lines)


def write_readme(result: dict[str, Any], readme: Path = ROOT / "README.md") -> None:
    """Replace the section between the markers in the README."""
    readme_blocks.replace(readme_section(result), BEGIN, END, readme)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="requests per median")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--quick", action="store_true", help="3 runs, 4 sentences per source")
    parser.add_argument(
        "--faithfulness-only", action="store_true", help="no latency (it needs a quiet machine)"
    )
    parser.add_argument(
        "--readme", action="store_true", help="update README.md's section from docs/explain.json"
    )
    args = parser.parse_args(argv)
    if args.readme:
        write_readme(json.loads(RESULTS.read_text()))
        return
    runs = 3 if args.quick else args.runs
    examples = faithfulness_set(per_source=4 if args.quick else 12)
    faithful = offline_faithfulness(DEFAULT_MODEL, examples)
    rows = [] if args.faithfulness_only else cost(runs)
    print(table(rows, faithful))
    if args.out and not args.quick:
        result = {
            "machine": f"{available_cpus()} CPU cores",
            "runs": runs,
            "cost": rows,
            "faithfulness": [f.as_dict() for f in faithful],
            "default_mask": explain.DEFAULT_MASK,
        }
        if args.faithfulness_only and args.out.exists():  # keep the last latency measurement
            last = json.loads(args.out.read_text())
            result.update({k: last[k] for k in ("machine", "runs", "cost") if k in last})
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
