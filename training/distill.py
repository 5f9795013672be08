"""Distillation: the accurate model (all-mpnet-base-v2, training.accurate) as the default's teacher.

The teacher labels the rows whose lower-layer outputs the accurate recipe caches
(build/accurate/cache.pt: a seeded sample of the default recipe's distinct rows, 16,000 of
~24,800), so a label costs only the teacher's top layers. Those rows carry the teacher's
log-probabilities (`data.Example.soft`) into the default recipe, whose loss mixes them with the
hard labels (`train.batch_loss`: `distill` of the KL divergence at `temperature`); the other rows
keep the hard labels alone.

Leave-one-domain-out stays leak-free: `fold_targets` trains a fold teacher on the cached rows
without the held-out domain (one epoch on as many rows as the fold's student) and labels with it,
so no model that saw the held-out domain takes part in that fold (training.lodo calls it when the
recipe distils).

    python -m training.distill --out build/distill/teacher.pt   # label with the committed teacher
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training import accurate, data

TARGETS = Path("build/distill/teacher.pt")
Key = tuple[str, str]  # (source, text)


def cached_examples(recipe: dict[str, Any], rows: list[accurate.Row]) -> list[data.Example]:
    """The examples behind the cache's rows, in the cache's order (the cache keeps no text:
    `accurate.pool` is seeded, so the same recipe gives the same sample; checked row by row)."""
    examples = accurate.pool(recipe, len(rows))
    if len(examples) != len(rows) or any(
        e.label != r.label or e.source != r.source for e, r in zip(examples, rows, strict=False)
    ):
        raise SystemExit(
            "the accurate cache does not match the default recipe's rows; rebuild it with "
            "`python -m training.accurate cache`"
        )
    return examples


def log_probs(
    model: accurate.MeanPoolingMPNet, rows: list[accurate.Row], frozen: int, batch_size: int = 64
) -> torch.Tensor:
    """The teacher's log-probabilities for cached rows (its top layers only), in row order."""
    order = sorted(range(len(rows)), key=lambda i: rows[i].hidden.shape[0])
    out = torch.empty((len(rows), model.config.num_labels))
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            batch = [rows[i].hidden for i in chosen]
            hidden = nn.utils.rnn.pad_sequence(batch, batch_first=True).float()
            mask = torch.zeros(hidden.shape[:2], dtype=torch.long)
            for i, h in enumerate(batch):
                mask[i, : h.shape[0]] = 1
            out[chosen] = model.upper(hidden, mask, frozen).log_softmax(-1)
    return out


def targets(
    model: accurate.MeanPoolingMPNet, rows: list[accurate.Row], examples: list[data.Example],
    frozen: int,
) -> dict[Key, tuple[float, ...]]:  # fmt: skip
    """(source, text) -> the teacher's log-probabilities, rounded to 4 decimals."""
    values = log_probs(model, rows, frozen)
    return {
        (e.source, e.text): tuple(round(float(v), 4) for v in values[i])
        for i, e in enumerate(examples)
    }


def attach(examples: list[data.Example], soft: dict[Key, tuple[float, ...]]) -> list[data.Example]:
    """The examples, each with the teacher's log-probabilities when it has them."""
    return [
        replace(e, soft=soft[(e.source, e.text)]) if (e.source, e.text) in soft else e
        for e in examples
    ]


def fold_targets(
    recipe: dict[str, Any],
    left_out: frozenset[str],
    examples: int,
    cache: Path = accurate.CACHE,
    seed_offset: int = 0,
) -> dict[Key, tuple[float, ...]]:
    """Teacher targets for a leave-one-domain-out fold: a teacher trained on cached rows without
    `left_out` (one epoch on `examples` seeded rows, the student's budget, at its lr), labelling
    the cached rows without `left_out`. `examples` 0: every cached row without it. `seed_offset`
    shifts every seed (sample, initialisation, order) for a repeat of the fold."""
    seed = accurate.SEED + seed_offset
    rows, info = accurate._load_cache(cache)
    frozen = int(info["frozen_layers"])
    pool = cached_examples(recipe, rows)
    kept = [i for i, r in enumerate(rows) if r.source not in left_out]
    chosen = random.Random(seed + 5).sample(kept, min(examples or len(kept), len(kept)))
    teacher = accurate.MeanPoolingMPNet(accurate.base_dir(), data.LABELS)
    accurate.fit_top(
        teacher, [rows[i] for i in chosen], frozen, epochs=1.0, lr=float(recipe["teacher_lr"]),
        batch_size=32, rating_weight=1.0, seed=seed,
    )  # fmt: skip
    return targets(teacher, [rows[i] for i in kept], [pool[i] for i in kept], frozen)


def load_targets(path: Path) -> dict[Key, tuple[float, ...]]:
    if not path.is_file():
        raise SystemExit(f"{path}: no teacher targets; run `python -m training.distill` first")
    blob = torch.load(path, weights_only=False)
    return {(k[0], k[1]): tuple(v) for k, v in blob["targets"]}


def ablation(
    recipe_dir: Path, soft_path: Path, weights: list[float], temperature: float, examples: int,
    out: Path,
) -> None:  # fmt: skip
    """The recipe at a reduced budget (`examples` rows, 1 epoch, no domain left
    out) with each distillation weight, int8 held-out accuracy per set (the committed teacher's
    targets; weight 0 is the recipe without a teacher)."""
    import tempfile

    from functions.sentiment.model import Classifier
    from training import lodo
    from training.evaluate import evaluate, onnx_scorer

    recipe = json.loads((recipe_dir / "training.json").read_text())
    soft = load_targets(soft_path)
    runs: dict[str, Any] = {}
    for weight in weights:
        trial = {**recipe, "distill": weight, "temperature": temperature}
        with tempfile.TemporaryDirectory(prefix="distill-ablation-") as tmp:
            int8 = lodo.train_without(trial, frozenset(), examples, Path(tmp), soft=soft)
            result = evaluate(onnx_scorer(Classifier.load(int8)))
        runs[str(weight)] = {k: v.get("accuracy", v.get("pearson")) for k, v in result.items()}
        print(f"distill {weight}: {json.dumps(runs[str(weight)])}", flush=True)
    sets = list(next(iter(runs.values())))
    print("| distill weight | " + " | ".join(sets) + " |")
    print("|---|" + "---|" * len(sets))
    for weight, row in runs.items():
        print(f"| {weight} | " + " | ".join(f"{row[k]:.3f}" for k in sets) + " |")
    out.parent.mkdir(parents=True, exist_ok=True)
    protocol = {"examples": examples, "epochs": 1.0, "temperature": temperature,
                "evaluated": "int8 (dynamic, per-channel)", "teacher": str(soft_path)}  # fmt: skip
    out.write_text(json.dumps({"protocol": protocol, "runs": runs}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=Path("models/mpnet-sentiment-checkpoint"))
    parser.add_argument(
        "--recipe", type=Path, default=Path("models/minilm-sentiment-checkpoint"),
        help="the checkpoint whose training.json the cache was drawn from",
    )  # fmt: skip
    parser.add_argument("--cache", type=Path, default=accurate.CACHE)
    parser.add_argument("--out", type=Path, default=TARGETS)
    parser.add_argument(
        "--ablation", default="",
        help="comma-separated distillation weights: train and evaluate the recipe for one epoch on "
        "8,000 rows with each (reads the targets at --out), write docs/distill_ablation.json",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.ablation:
        weights = [float(w) for w in args.ablation.split(",")]
        ablation(args.recipe, args.out, weights, 2.0, 8000, Path("docs/distill_ablation.json"))
        return
    started = time.monotonic()
    rows, info = accurate._load_cache(args.cache)
    frozen = int(info["frozen_layers"])
    teacher_info = json.loads((args.teacher / "training.json").read_text())
    if int(teacher_info["frozen_layers"]) != frozen:
        raise SystemExit(
            f"{args.teacher} froze {teacher_info['frozen_layers']} layers, the cache {frozen}"
        )
    recipe = json.loads((args.recipe / "training.json").read_text())
    examples = cached_examples(recipe, rows)
    soft = targets(accurate.load(args.teacher), rows, examples, frozen)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"targets": [[list(k), list(v)] for k, v in soft.items()],
                "teacher": str(args.teacher)}, args.out)  # fmt: skip
    agree = sum(
        max(range(len(v)), key=v.__getitem__) == e.label
        for e, v in ((e, soft[(e.source, e.text)]) for e in examples)
    )
    print(f"wrote {args.out}: {len(soft)} rows, teacher agrees with the label on "
          f"{agree / len(examples):.3f}, {time.monotonic() - started:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
