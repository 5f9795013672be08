"""Leave-one-domain-out: how the recipe does on a domain it never saw (`make lodo`).

For each domain, the default recipe (the committed checkpoint's training.json) is trained without
that domain's rows, exported, quantized to int8 as served, and evaluated on that domain's held-out
rows; VADER and the served default (which trained on every domain: an in-domain reference) are
evaluated on the same rows. Film reviews come from two sources (Hutto's movie snippets and the
Rotten Tomatoes ones, both Pang & Lee's collection); holding out either holds out both, or the
other would leak the domain.

Budget: each run trains one epoch on a seeded sample of `--examples` rows of the recipe's mix
(16,000 by default, and the fold teacher one epoch on up to as many cached rows; the full recipe,
3 epochs on 35,246 rows, takes ~32 minutes per run on 2 cores and six of them do not fit a
working day's loop). The served model trains on about six times as many examples, so the figures
judge the recipe on unseen domains below its served budget (8,000 rows, the earlier budget, gave a
mean 1.6 points lower, lower on five of the six folds). Results go to docs/lodo.json; `make eval`
prints the table from it.

One run is one seed per fold, and a held-out domain of a few hundred rows moves by a point or
more between seeds: `make lodo-repeat` runs the same protocol with every seed shifted
(`--seed-offset 1`: row sample, initialisation, batch order and fold teacher) into
docs/lodo_repeat.json, and `make eval` prints both runs side by side (an A/A comparison).

The last column (the served default, an in-domain reference) follows the served model: after a
retrain that changed only what LODO does not read (the epochs), `--refresh-served` re-evaluates
that column alone and refuses any other recipe change.

    python -m training.lodo --out docs/lodo.json [--examples 16000] [--only tweets,nyt]
    python -m training.lodo --refresh-served
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import data

FILMS = frozenset({data.MOVIE_TRAIN_SOURCE, data.RT_SOURCE})


def _hutto_source(source: str) -> Callable[[], list[data.Example]]:
    return lambda: [e for e in data.hutto("test") if e.source == f"hutto-{source}"]


# name -> (sources left out of training, held-out rows, binary (polarity) or 3-class)
def _hutto(source: str) -> tuple[frozenset[str], Callable[[], list[data.Example]], bool]:
    return frozenset({f"hutto-{source}"}), _hutto_source(source), False


DOMAINS: dict[str, tuple[frozenset[str], Callable[[], list[data.Example]], bool]] = {
    "tweets": _hutto("tweets"),
    "amazon": _hutto("amazonReviewSnippets"),
    "nyt": _hutto("nytEditorialSnippets"),
    "movie": (FILMS, data.movie_reviews, True),
    "crowdflower": (frozenset({"crowdflower"}), lambda: data.crowdflower("test"), False),
    "rottentomatoes": (FILMS, data.rotten_tomatoes_test, True),
}  # fmt: skip


def figures(
    scorer: Callable[[list[str]], tuple[list[int], list[float]]],
    rows: list[data.Example],
    binary: bool,
) -> dict[str, Any]:
    """Accuracy and macro-F1 of a scorer on one held-out set."""
    from training import evaluate

    labels, scores = scorer([e.text for e in rows])
    pred = evaluate.polarity(scores) if binary else labels
    return evaluate.figures([e.label for e in rows], pred)


def train_without(
    recipe: dict[str, Any],
    left_out: frozenset[str],
    examples_cap: int,
    workdir: Path,
    soft: dict[tuple[str, str], tuple[float, ...]] | None = None,
    seed_offset: int = 0,
) -> Path:
    """Train one reduced-budget model without `left_out`; returns its int8 model directory.

    A recipe that distils (`distill` > 0) takes its teacher's targets from a fold teacher that
    never saw `left_out` (training.distill.fold_targets), unless `soft` gives them. `seed_offset`
    shifts every seed (row sample, initialisation, batch order): 0 is the recorded run, another
    value a repeat that shows the noise of one fold."""
    from training import distill
    from training.export import derive_int8, export_checkpoint
    from training.modeling import from_base, save_trained
    from training.train import (
        SEED,
        assemble,
        base_model_dir,
        fit,
        trainable_for,
        training_tokenizer,
    )  # fmt: skip

    seed = SEED + seed_offset
    random.seed(seed)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    examples, _ = assemble(recipe, exclude_sources=left_out)
    if examples_cap and len(examples) > examples_cap:
        examples = random.Random(seed + 5).sample(examples, examples_cap)
    weight = float(recipe.get("distill", 0.0))
    if weight > 0:
        if soft is None:
            soft = distill.fold_targets(recipe, left_out, examples_cap, seed_offset=seed_offset)
        examples = distill.attach(examples, soft)
        print(f"{sum(e.soft is not None for e in examples)} of {len(examples)} rows distilled")
    base = base_model_dir()
    tokenizer = training_tokenizer(base / "tokenizer.json", int(recipe["max_tokens"]))
    model = from_base(base, data.LABELS)
    fit(
        model, examples, tokenizer, epochs=1.0, lr=float(recipe["lr"]),
        batch_size=int(recipe["batch_size"]), rng=rng,
        rating_weight=float(recipe["rating_weight"]), distill=weight,
        temperature=float(recipe.get("temperature", 1.0)), trainable=trainable_for(recipe),
        raters=float(recipe.get("raters", 0.0)),
    )  # fmt: skip
    checkpoint = workdir / "checkpoint"
    save_trained(model, checkpoint)
    export_checkpoint(checkpoint, workdir / "fp32", version="lodo", max_tokens=256)
    derive_int8(workdir / "fp32", workdir / "int8")
    return workdir / "int8"


def run(
    recipe: dict[str, Any], served: Path, examples_cap: int, only: list[str], seed_offset: int = 0
) -> dict[str, Any]:
    """Every domain's LODO, VADER and served-default figures."""
    from functions.sentiment.model import Classifier
    from training import distill
    from training.evaluate import onnx_scorer, vader_scorer

    vader = vader_scorer()
    default = onnx_scorer(Classifier.load(served))
    out: dict[str, Any] = {}
    folds: dict[frozenset[str], dict[tuple[str, str], tuple[float, ...]]] = {}
    for name in only:
        left_out, held_out, binary = DOMAINS[name]
        rows = held_out()
        t0 = time.monotonic()
        soft = None
        if float(recipe.get("distill", 0.0)) > 0:  # one fold teacher per left-out set
            if left_out not in folds:
                folds[left_out] = distill.fold_targets(
                    recipe, left_out, examples_cap, seed_offset=seed_offset
                )
            soft = folds[left_out]
        with tempfile.TemporaryDirectory(prefix=f"lodo-{name}-") as tmp:
            int8 = train_without(
                recipe, left_out, examples_cap, Path(tmp), soft=soft, seed_offset=seed_offset
            )
            lodo = figures(onnx_scorer(Classifier.load(int8)), rows, binary)
            shutil.rmtree(int8.parent / "checkpoint", ignore_errors=True)
        out[name] = {
            "left_out": sorted(left_out),
            "binary": binary,
            "lodo_int8": lodo,
            "vader": figures(vader, rows, binary),
            "served_default_int8": figures(default, rows, binary),
            "seconds": round(time.monotonic() - t0, 1),
        }
        print(f"{name}: {json.dumps(out[name])}", flush=True)
    return out


def differing(a: dict[str, Any], b: dict[str, Any], ignore: frozenset[str]) -> list[str]:
    """Keys whose values differ between `a` and `b` (missing counts as different), but `ignore`."""
    return sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))


# Recipe keys a LODO run does not read: every fold trains 1 epoch on its own row budget.
NOT_LODO_INPUTS = frozenset({"epochs", "steps", "seconds", "data", "calibration"})


def refresh_served(path: Path, served: Path, recipe: dict[str, Any]) -> None:
    """Re-evaluate the served default (the in-domain reference column) in a recorded result,
    after a retrain that changed only what LODO does not read (the epochs): the LODO and VADER
    columns are left as they are, the summary recomputed. Any other recipe change needs a
    new `make lodo`."""
    from functions.sentiment.model import Classifier
    from training.evaluate import onnx_scorer

    result = json.loads(path.read_text())
    recorded = result["protocol"]["recipe"]
    changed = differing(recorded, recipe, NOT_LODO_INPUTS)
    if changed:
        raise SystemExit(f"{path}: the recipe changed ({', '.join(changed)}); run `make lodo`")
    default = onnx_scorer(Classifier.load(served))
    for name, d in result["domains"].items():
        _, held_out, binary = DOMAINS[name]
        d["served_default_int8"] = figures(default, held_out(), binary)
    result["summary"] = summary(result["domains"])
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwrote {path} (served default column from {served})")


def summary(domains: dict[str, Any]) -> dict[str, float]:
    """Means over the domains of each column (accuracy and macro-F1)."""
    keys = ("lodo_int8", "vader", "served_default_int8")
    return {
        f"{k}_{m}": float(np.mean([d[k][m] for d in domains.values()]))
        for k in keys
        for m in ("accuracy", "macro_f1")
    }


def table(result: dict[str, Any]) -> str:
    """The Markdown table `make eval` prints."""
    lines = [
        "| held-out domain | rows | task | LODO int8 acc | LODO int8 macro-F1 | VADER acc "
        "| VADER macro-F1 | served default acc (in-domain) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, d in result["domains"].items():
        lines.append(
            f"| {name} | {d['lodo_int8']['n']:,} | {'binary' if d['binary'] else '3-class'} "
            f"| {d['lodo_int8']['accuracy']:.3f} | {d['lodo_int8']['macro_f1']:.3f} "
            f"| {d['vader']['accuracy']:.3f} | {d['vader']['macro_f1']:.3f} "
            f"| {d['served_default_int8']['accuracy']:.3f} |"
        )
    s = result["summary"]
    lines.append(
        f"| **mean** | | | **{s['lodo_int8_accuracy']:.3f}** | {s['lodo_int8_macro_f1']:.3f} "
        f"| {s['vader_accuracy']:.3f} | {s['vader_macro_f1']:.3f} "
        f"| {s['served_default_int8_accuracy']:.3f} |"
    )
    return "\n".join(lines)


def comparison(default: dict[str, Any], accurate: dict[str, Any]) -> str:
    """The accurate variant's LODO beside the default's, on the domains both ran, with the means
    and the gap in points (`make eval` prints it; the README's model section too)."""
    names = [n for n in default["domains"] if n in accurate["domains"]]
    lines = [
        "| held-out domain | rows | task | default LODO int8 acc | accurate LODO int8 acc "
        "| accurate macro-F1 | VADER acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        d, a = default["domains"][n], accurate["domains"][n]
        lines.append(
            f"| {n} | {a['lodo_int8']['n']:,} | {'binary' if a['binary'] else '3-class'} "
            f"| {d['lodo_int8']['accuracy']:.3f} | {a['lodo_int8']['accuracy']:.3f} "
            f"| {a['lodo_int8']['macro_f1']:.3f} | {d['vader']['accuracy']:.3f} |"
        )
    means = comparison_means(default, accurate)
    lines.append(
        f"| **mean** | | | {means['default']:.3f} | **{means['accurate']:.3f}** | "
        f"| {means['vader']:.3f} |"
    )
    missing = sorted(set(default["domains"]) - set(names))
    gap = 100 * (means["accurate"] - means["default"])
    tail = f" (not run: {', '.join(missing)})" if missing else ""
    return "\n".join(lines) + f"\naccurate - default: {gap:+.1f} points on the LODO mean{tail}"


def comparison_means(default: dict[str, Any], accurate: dict[str, Any]) -> dict[str, float]:
    """Mean LODO accuracy of each over the domains both ran (and VADER's on them)."""
    names = [n for n in default["domains"] if n in accurate["domains"]]

    def mean(rows: dict[str, Any], key: str) -> float:
        return float(np.mean([rows[n][key]["accuracy"] for n in names])) if names else float("nan")

    return {
        "default": mean(default["domains"], "lodo_int8"),
        "accurate": mean(accurate["domains"], "lodo_int8"),
        "vader": mean(default["domains"], "vader"),
    }


def repeat_table(first: dict[str, Any], second: dict[str, Any]) -> str:
    """Two runs of the same protocol with different seeds (an A/A comparison): each fold's LODO
    int8 accuracy in both, the difference, and the two-seed mean against VADER. The spread of
    the differences is the noise one run's figures carry."""
    differ = differing(first["protocol"], second["protocol"], frozenset({"seed_offset"}))
    if differ:
        return (
            f"the repeat ran another protocol ({', '.join(differ)} differ): rerun "
            "`make lodo-repeat` after `make lodo`"
        )
    names = [n for n in first["domains"] if n in second["domains"]]
    lines = [
        "| held-out domain | seed offset 0 | seed offset 1 | difference (points) |",
        "|---|---|---|---|",
    ]
    diffs = []
    for n in names:
        a = first["domains"][n]["lodo_int8"]["accuracy"]
        b = second["domains"][n]["lodo_int8"]["accuracy"]
        diffs.append(100 * (b - a))
        lines.append(f"| {n} | {a:.3f} | {b:.3f} | {diffs[-1]:+.2f} |")
    m = repeat_means(first, second)
    shift = 100 * (m["second"] - m["first"])
    lines.append(f"| **mean** | {m['first']:.3f} | {m['second']:.3f} | {shift:+.2f} |")
    gap = 100 * (m["both"] - m["vader"])
    return "\n".join(lines) + (
        f"\n\nper-fold difference: mean absolute {np.mean(np.abs(diffs)):.2f} points, largest "
        f"{np.max(np.abs(diffs)):.2f}; two-seed LODO mean {m['both']:.3f} vs VADER "
        f"{m['vader']:.3f}: {gap:+.2f} points"
    )


def repeat_means(first: dict[str, Any], second: dict[str, Any]) -> dict[str, float]:
    """LODO mean accuracy of each run and of both (over the domains both ran), and VADER's."""
    names = [n for n in first["domains"] if n in second["domains"]]

    def mean(result: dict[str, Any], key: str) -> float:
        return float(np.mean([result["domains"][n][key]["accuracy"] for n in names]))

    a, b = mean(first, "lodo_int8"), mean(second, "lodo_int8")
    return {"first": a, "second": b, "both": (a + b) / 2, "vader": mean(first, "vader")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=Path("models/minilm-sentiment-checkpoint")
    )
    parser.add_argument("--served", type=Path, default=Path("models/minilm-sentiment-int8"))
    parser.add_argument("--examples", type=int, default=16000, help="rows per run (0 = all)")
    parser.add_argument("--only", default=",".join(DOMAINS), help="comma-separated domains")
    parser.add_argument("--out", type=Path, default=Path("docs/lodo.json"))
    parser.add_argument(
        "--seed-offset", type=int, default=0,
        help="shift every seed: 0 is the recorded run, 1 its repeat (`make lodo-repeat`)",
    )  # fmt: skip
    parser.add_argument(
        "--refresh-served", action="store_true",
        help="only re-evaluate the served default's column of --out (after a retrain that left "
        "the LODO protocol unchanged)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    recipe = json.loads((args.checkpoint / "training.json").read_text())
    if args.refresh_served:
        refresh_served(args.out, args.served, recipe)
        return
    only = [d for d in args.only.split(",") if d]
    unknown = sorted(set(only) - set(DOMAINS))
    if unknown:
        parser.error(f"unknown domain(s) {unknown}; known: {', '.join(DOMAINS)}")
    started = time.monotonic()
    domains = run(recipe, args.served, args.examples, only, args.seed_offset)
    teacher_rows = f"up to {args.examples:,}" if args.examples else "all"
    result = {
        "protocol": {
            "recipe": {k: v for k, v in recipe.items() if k not in ("data", "calibration")},
            "epochs": 1.0,
            "examples_per_run": args.examples,
            "seed_offset": args.seed_offset,
            "films_held_out_together": True,
            "evaluated": "int8 (dynamic, per-channel) through the serving Classifier",
            **(
                {
                    "teacher": "per fold, the accurate recipe trained without the held-out "
                    f"domain (1 epoch on {teacher_rows} cached rows), labelling the cached rows "
                    "without it"
                }
                if float(recipe.get("distill", 0.0)) > 0
                else {}
            ),
        },
        "domains": domains,
        "summary": summary(domains),
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + table(result))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
