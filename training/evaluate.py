"""Held-out evaluation of the served model variants and a VADER baseline: `make eval`.

Sets (all held out of training, see training/data.py):
* movie binary: Hutto movie-review snippets, polarity = sign of the mean human rating;
  predicted polarity = sign of `score` (VADER: sign of compound).
* rt binary: the Rotten Tomatoes test fifth (snippets not in Hutto's corpus, ~94 % fresh, so
  macro-F1 matters there); polarity by sign of score as for movies.
* hutto 3-class: the Hutto test split (tweets, Amazon, NYT); VADER uses its standard +-0.05 cut.
* hutto binary: the same split without neutral rows, polarity by sign of score.
* crowdflower 3-class: the CrowdFlower test split.
* pearson: correlation of `score` (VADER: compound) with the mean human rating on the Hutto test
  split; reported on the movie snippets too.
* latency: one batch-1 run of a 64-token text; the median of 5 interleaved rounds (models
  alternating), each the median of 100 runs after 20 warm-up runs, same threads.

The models run through the serving code (functions.sentiment.model.Classifier), so what is
measured is what is served. `--write` stores the figures in each model's manifest and model card;
`--record FILE` writes them (with each model's size) to one JSON file, for model directories
that are built rather than committed (the accurate variant: `make eval-accurate` writes
docs/accurate_eval.json).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from functions.sentiment.model import Classifier
from shared import modeldir
from shared.progress import Progress
from training import data
from training.modelcard import write_card

Scorer = Callable[[list[str]], tuple[list[int], list[float]]]


def macro_f1(gold: Sequence[int], pred: Sequence[int]) -> float:
    """Macro-averaged F1 over the classes present in `gold`."""
    scores = []
    for c in sorted(set(gold)):
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == c and p == c)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if g != c and p == c)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == c and p != c)
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def accuracy(gold: Sequence[int], pred: Sequence[int]) -> float:
    """Share of exact matches."""
    return float(np.mean([g == p for g, p in zip(gold, pred, strict=True)]))


def onnx_scorer(classifier: Classifier, batch_size: int = 64) -> Scorer:
    """Class indices and scores from a model, in length-sorted batches."""

    def score(texts: list[str]) -> tuple[list[int], list[float]]:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        labels: list[int] = [0] * len(texts)
        scores: list[float] = [0.0] * len(texts)
        m = classifier.manifest
        with Progress(len(texts), f"eval {m.name} {m.precision}", unit="text") as shown:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                for i, p in zip(idx, classifier.predict([texts[i] for i in idx]), strict=True):
                    labels[i] = classifier.labels.index(p.label)
                    scores[i] = float(p.score or 0.0)
                shown.update(len(idx))
        return labels, scores

    return score


def vader_scorer() -> Scorer:
    """VADER compound score, 3 classes by its standard +-0.05 thresholds."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def score(texts: list[str]) -> tuple[list[int], list[float]]:
        compounds = [analyzer.polarity_scores(t)["compound"] for t in texts]
        labels = [0 if c <= -0.05 else 2 if c >= 0.05 else 1 for c in compounds]
        return labels, compounds

    return score


def polarity(scores: Sequence[float]) -> list[int]:
    """Binary polarity from a score: 2 (positive) when > 0, else 0."""
    return [2 if s > 0 else 0 for s in scores]


def figures(gold: Sequence[int], pred: Sequence[int]) -> dict[str, Any]:
    """Rows, accuracy and macro-F1 of one prediction list against its gold labels."""
    return {"n": len(gold), "accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred)}


def evaluate(scorer: Scorer) -> dict[str, Any]:
    """Every held-out figure for one scorer."""
    out: dict[str, Any] = {}
    movie = data.movie_reviews()
    _, ms = scorer([e.text for e in movie])
    out["movie_binary"] = {
        **figures([e.label for e in movie], polarity(ms)),
        "pearson": float(np.corrcoef(ms, [e.rating for e in movie])[0, 1]),
    }
    hutto = data.hutto("test")
    hl, hs = scorer([e.text for e in hutto])
    hg = [e.label for e in hutto]
    out["hutto_3class"] = figures(hg, hl)
    polar = [i for i, g in enumerate(hg) if g != 1]
    out["hutto_binary"] = figures([hg[i] for i in polar], polarity([hs[i] for i in polar]))
    out["hutto_pearson"] = {
        "n": len(hutto),
        "pearson": float(np.corrcoef(hs, [e.rating for e in hutto])[0, 1]),
    }
    rt = data.rotten_tomatoes_test()
    _, rs = scorer([e.text for e in rt])
    out["rt_binary"] = figures([e.label for e in rt], polarity(rs))
    cf = data.crowdflower("test")
    cl, _ = scorer([e.text for e in cf])
    out["crowdflower_3class"] = figures([e.label for e in cf], cl)
    return out


LATENCY_TEXT = " ".join(["good"] * 62)  # 62 word pieces + [CLS] + [SEP] = 64 tokens


def latency_ms(classifier: Classifier, runs: int = 200) -> float:
    """Median milliseconds of one batch-1, 64-token session.run (tokenization excluded)."""
    (enc,) = classifier.encode([LATENCY_TEXT])
    assert enc.tokens == 64, enc.tokens
    for _ in range(20):
        classifier.run(list(enc.windows))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        classifier.run(list(enc.windows))
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def _acc(r: dict[str, Any], key: str) -> str:
    # Sets added later are missing from older manifests' figures.
    return f"{r[key]['accuracy']:.3f}" if key in r else "n/a"


def _row(name: str, r: dict[str, Any]) -> str:
    return (
        f"| {name} | {r['movie_binary']['accuracy']:.3f} | {r['hutto_3class']['accuracy']:.3f} "
        f"| {r['hutto_binary']['accuracy']:.3f} | {r['crowdflower_3class']['accuracy']:.3f} "
        f"| {_acc(r, 'rt_binary')} "
        f"| {r['hutto_pearson']['pearson']:.3f} | {r['hutto_3class']['macro_f1']:.3f} "
        f"| {r['crowdflower_3class']['macro_f1']:.3f} "
        f"| {r.get('latency_ms_batch1_64', float('nan')):.2f} |"
    )


HEADER = (
    "| model | movie binary acc | Hutto 3-class acc | Hutto binary acc | CrowdFlower 3-class acc "
    "| Rotten Tomatoes binary acc "
    "| Pearson (Hutto) | Hutto macro-F1 | CrowdFlower macro-F1 | batch-1 64-tok ms |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def _print_gate(results: dict[str, dict[str, Any]]) -> None:
    # The quantization gate (training/quantgate.py) on these figures: what `make export` enforces.
    from training import quantgate

    def accuracies(key: str) -> dict[str, float] | None:
        r = results.get(key)
        if r is None or "movie_binary" not in r:
            return None
        return {
            k: float(v["accuracy"]) for k, v in r.items() if isinstance(v, dict) and "accuracy" in v
        }

    for name in sorted({k.rsplit(" ", 1)[0] for k in results}):
        fp32, int8 = accuracies(f"{name} fp32"), accuracies(f"{name} int8")
        if fp32 and int8:
            record = quantgate.check(fp32, int8)
            verdict = "passed" if record["passed"] else "FAILED"
            print(f"\nQuantization gate, {name} int8 against fp32 (at most 1 point lost per set): "
                  f"{verdict}")  # fmt: skip
            print(quantgate.describe(record))


def _print_lodo(path: Path) -> None:
    from training import lodo

    if not path.exists():
        print(f"\nLeave-one-domain-out: {path} is missing; `make lodo` writes it")
        return
    result = json.loads(path.read_text())
    p = result["protocol"]
    print(
        f"\nLeave-one-domain-out ({path}, written by `make lodo`: the recipe trained without each "
        f"domain, {p['epochs']:g} epoch on {p['examples_per_run']:,} rows, int8 as served):"
    )
    print(lodo.table(result))
    s = result["summary"]
    gap = 100 * (s["lodo_int8_accuracy"] - s["vader_accuracy"])
    print(f"LODO mean accuracy {s['lodo_int8_accuracy']:.3f} vs VADER {s['vader_accuracy']:.3f}: "
          f"{gap:+.1f} points")  # fmt: skip


def _print_lodo_repeat(first: Path, second: Path) -> None:
    from training import lodo

    if not (first.exists() and second.exists()):
        return
    print(f"\nLeave-one-domain-out repeated with other seeds ({second}, `make lodo-repeat`; A/A):")
    print(lodo.repeat_table(json.loads(first.read_text()), json.loads(second.read_text())))


def _print_lodo_accurate(default: Path, accurate: Path) -> None:
    from training import lodo

    if not (default.exists() and accurate.exists()):
        return
    d, a = json.loads(default.read_text()), json.loads(accurate.read_text())
    print(
        f"\nAccurate variant, leave-one-domain-out ({accurate}, `make lodo-accurate`, same budget):"
    )
    print(lodo.comparison(d, a))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate model variants on the held-out sets.")
    parser.add_argument(
        "models", nargs="*", type=Path,
        default=[Path("models/minilm-sentiment-fp32"), Path("models/minilm-sentiment-int8")],
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = quota)")
    parser.add_argument("--no-vader", action="store_true")
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument("--write", action="store_true", help="store figures in manifests and cards")
    parser.add_argument(
        "--lodo", type=Path, default=Path("docs/lodo.json"),
        help="leave-one-domain-out results to print (written by `make lodo`)",
    )  # fmt: skip
    parser.add_argument(
        "--lodo-repeat", type=Path, default=Path("docs/lodo_repeat.json"),
        help="the same leave-one-domain-out with other seeds (`make lodo-repeat`)",
    )  # fmt: skip
    parser.add_argument(
        "--lodo-accurate", type=Path, default=Path("docs/lodo_accurate.json"),
        help="the accurate variant's leave-one-domain-out results (`make lodo-accurate`)",
    )  # fmt: skip
    parser.add_argument("--record", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    results: dict[str, dict[str, Any]] = {}
    classifiers = [Classifier.load(d, intra_op_threads=args.threads) for d in args.models]
    # Latency in interleaved rounds, so a burst of other load hits every model alike.
    rounds: list[list[float]] = [[] for _ in classifiers]
    for _ in range(5):
        for i, classifier in enumerate(classifiers):
            rounds[i].append(latency_ms(classifier, runs=100))
    for directory, classifier, lat in zip(args.models, classifiers, rounds, strict=True):
        r: dict[str, Any] = {} if args.latency_only else evaluate(onnx_scorer(classifier))
        r["latency_ms_batch1_64"] = float(np.median(lat))
        r["intra_op_threads"] = classifier.threads
        r["model_mib"] = (directory / classifier.manifest.onnx_file).stat().st_size / 2**20
        results[f"{classifier.manifest.name} {classifier.manifest.precision}"] = r
        print(f"{directory}: {json.dumps(r)}", flush=True)
    if not args.no_vader and not args.latency_only:
        results["VADER (vaderSentiment 3.3.2)"] = evaluate(vader_scorer())
    lat = {k: v["latency_ms_batch1_64"] for k, v in results.items() if "latency_ms_batch1_64" in v}
    fp32 = next((v for k, v in lat.items() if k.endswith("fp32")), None)
    int8 = next((v for k, v in lat.items() if k.endswith("int8")), None)
    if not args.latency_only:
        print("\n" + HEADER)
        for name, r in results.items():
            print(_row(name, r))
    _print_gate(results)
    if not args.latency_only:
        _print_lodo(args.lodo)
        _print_lodo_repeat(args.lodo, args.lodo_repeat)
        _print_lodo_accurate(args.lodo, args.lodo_accurate)
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(
            json.dumps({"measured_on": "2 CPU cores", **results}, indent=2) + "\n"
        )
        print(f"wrote {args.record}")
    if fp32 and int8:
        print(f"\nint8/fp32 latency ratio at batch 1, 64 tokens: {int8 / fp32:.2f} "
              f"({int8:.2f} ms vs {fp32:.2f} ms)")  # fmt: skip
    if args.write and not args.latency_only:
        for directory in args.models:
            manifest = modeldir.load(directory)
            key = f"{manifest.name} {manifest.precision}"
            evaluation = {**results[key], "measured_on": "2 CPU cores", "baseline_vader": {
                k: v for k, v in results.get("VADER (vaderSentiment 3.3.2)", {}).items()
            }}  # fmt: skip
            write_card(
                directory, manifest, evaluation, HEADER, [_row(k, v) for k, v in results.items()]
            )
            updated = modeldir.Manifest(**{**manifest.__dict__, "evaluation": evaluation})
            modeldir.write_manifest(directory, updated)
            print(f"wrote evaluation into {directory}")


if __name__ == "__main__":
    main()
