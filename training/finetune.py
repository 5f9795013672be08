"""Fine-tune the default model on your own labelled data: `make finetune DATA=FILE OUT=DIR`.

    python -m training.finetune reviews.csv --out build/my-model [--base DIR]

FILE is CSV/TSV or JSONL with `text` and `label` (training/labelled.py: labels, score, errors).
A seeded fifth of each label is held out; the rest adapts the default checkpoint (or `--base`, a
checkpoint directory or the OUT of an earlier run) with the adaptation recipe (training/adapt.py;
`--recipe legacy` is the plain fine-tuning this command used before; `--finetune-from`,
`--epochs`, `--lr`, `--freeze-layers`, `--batch-size` and `--train-max-tokens` override the
recipe's encoder fine-tuning, and `--epochs`, `--lr` or `--freeze-layers` alone turn it on at any
size). It writes the fp32 model directory at OUT-fp32, the int8 one at
OUT (refused by the quantization gate if it loses more than 1 point of accuracy on the held-out
fifth), the checkpoint at OUT-checkpoint (a `--base` for the next run), and prints a report:
accuracy, balanced accuracy, macro-F1 and confusion matrix of the new model, of the default model
and of the majority class of the training rows, all on the same held-out fifth. Problems with the
data end the command with one line naming the problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = ROOT / "models" / "minilm-sentiment-checkpoint"
DEFAULT_MODEL = ROOT / "models" / "minilm-sentiment-int8"
SEED = 20261203
TRAIN_MAX_TOKENS = 128


class FinetuneError(Exception):
    """A problem with the command's arguments (not the data), said in one line."""


def checkpoint_dir(base: Path) -> Path:
    """The training checkpoint for `--base`: the directory itself, or BASE-checkpoint."""
    for candidate in (base, base.with_name(f"{base.name}-checkpoint")):
        if (candidate / "trained.safetensors").is_file() and (candidate / "config.json").is_file():
            return candidate
    raise FinetuneError(
        f"--base {base}: not a training checkpoint (no trained.safetensors and config.json, "
        f"here or in {base.name}-checkpoint)"
    )


def metrics(gold: list[str], pred: list[str], labels: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, balanced accuracy and macro-F1 over the labels present in `gold`, each label's
    recall, and the confusion matrix."""
    from training.adapt import figures

    confusion = [[0] * len(labels) for _ in labels]
    for a, b in zip(gold, pred, strict=True):
        confusion[labels.index(a)][labels.index(b)] += 1
    return {**figures(gold, pred, labels), "confusion": confusion}


def predict(directory: Path, texts: list[str], threads: int) -> list[Any]:
    """Predictions of a model directory through the serving code, in input order."""
    from functions.sentiment.model import Classifier

    classifier = Classifier.load(directory, intra_op_threads=threads)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[Any] = [None] * len(texts)
    for start in range(0, len(order), 64):
        idx = order[start : start + 64]
        for i, p in zip(idx, classifier.predict([texts[i] for i in idx]), strict=True):
            out[i] = p
    return out


def default_labels(preds: list[Any], plan: Any) -> list[str] | None:
    """What the default model says in the new labels: the most probable of the new labels
    (sentiment labels), the label whose score weight is nearest its score (ratings), else None."""
    if plan.sentiment:
        return [max(plan.labels, key=lambda label: p.probabilities[label]) for p in preds]
    if plan.score_weights is not None:
        w = plan.score_weights
        return [plan.labels[min(range(len(w)), key=lambda i: abs(w[i] - p.score))] for p in preds]
    return None


def confusion_table(m: dict[str, Any], labels: tuple[str, ...]) -> str:
    """Markdown confusion matrix: rows are the true labels, columns the predicted ones."""
    lines = [
        "| true \\ predicted | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for label, row in zip(labels, m["confusion"], strict=True):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def report(results: dict[str, dict[str, Any]], labels: tuple[str, ...], n: int) -> str:
    """The table printed at the end and stored in the model card."""
    lines = [
        f"Held-out fifth: {n} rows, labels {', '.join(labels)}",
        "",
        "| model | accuracy | balanced accuracy | macro-F1 |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['accuracy']:.3f} | {v['balanced_accuracy']:.3f} | {v['macro_f1']:.3f} |"
        for k, v in results.items()
    ]
    lines += [
        "",
        "Balanced accuracy is the mean of the labels' recalls: always answering the majority "
        "class scores 1 / (number of labels) on it, whatever its accuracy.",
    ]
    for name in results:
        lines += ["", f"Confusion matrix, {name}:", "", confusion_table(results[name], labels)]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="CSV/TSV or JSONL with text and label")
    parser.add_argument("--out", type=Path, required=True, help="int8 model directory to write")
    parser.add_argument("--base", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint")
    parser.add_argument("--base-model", type=Path, help="encoder folder (default: MiniLM package)")
    parser.add_argument("--default", type=Path, default=DEFAULT_MODEL, help="model to compare")
    parser.add_argument("--name", help="model name (default: OUT's folder name)")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument(
        "--recipe", default="default", help="training.adapt.RECIPES: default, lpft, legacy"
    )
    parser.add_argument(
        "--finetune-from", type=int, help="fine-tune the encoder from this many training rows"
    )
    parser.add_argument("--epochs", type=float, help="encoder fine-tuning epochs")
    parser.add_argument(
        "--freeze-layers", type=int, help="lowest encoder layers kept frozen (of 6)"
    )
    parser.add_argument("--lr", type=float, help="encoder fine-tuning learning rate")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--train-max-tokens", type=int, help="tokens per text while fine-tuning")
    parser.add_argument("--max-tokens", type=int, default=256, help="served truncation")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=0, help="ORT threads for evaluation")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from training.labelled import DataError
    from training.quantgate import QuantizationRefused

    args = parse_args(argv)
    try:
        run(args)
    except (DataError, FinetuneError, QuantizationRefused) as e:
        print(f"finetune: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def recipe_of(args: argparse.Namespace) -> Any:
    """The adaptation recipe the arguments ask for (training.adapt.RECIPES plus overrides)."""
    from training.adapt import RECIPES

    recipe = RECIPES[args.recipe]
    changes = {
        "epochs": args.epochs, "lr": args.lr, "freeze_layers": args.freeze_layers,
        "batch_size": args.batch_size, "train_max_tokens": args.train_max_tokens,
        "finetune_from": args.finetune_from,
    }  # fmt: skip
    asked = any(changes[k] is not None for k in ("epochs", "lr", "freeze_layers"))
    if asked and changes["finetune_from"] is None and not recipe.finetune_from:
        changes["finetune_from"] = 1  # fine-tuning settings given: fine-tune at any size
    return replace(recipe, **{k: v for k, v in changes.items() if v is not None})


def produce(
    *,
    base: Path,
    encoder: Path,
    plan: Any,
    train: list[Any],
    gate: tuple[str, list[str], list[str]],
    out: Path,
    recipe: Any,
    seed: int,
    name: str,
    version: str,
    max_tokens: int,
    source: str,
    threads: int = 0,
) -> dict[str, Any]:
    """Adapt the base checkpoint to the `train` rows (training.adapt), then write the checkpoint
    (OUT-checkpoint), the fp32 model (OUT-fp32) and the int8 model (OUT), refused by the
    quantization gate on `gate` (set name, texts, labels); returns the adaptation record."""
    import torch

    from shared import modeldir
    from training import export, quantgate
    from training.adapt import adapt
    from training.modeling import load_trained, save_trained, with_labels
    from training.train import fit_progress, training_tokenizer

    fp32_dir = out.with_name(f"{out.name}-fp32")
    ckpt_dir = out.with_name(f"{out.name}-checkpoint")
    torch.manual_seed(seed)
    model = with_labels(load_trained(base, encoder), plan.labels)
    tokenizer = training_tokenizer(encoder / "tokenizer.json", recipe.train_max_tokens)
    texts, labels = [r.text for r in train], [plan.index(r.label) for r in train]
    record = adapt(
        model, tokenizer, texts, labels, recipe, seed, max_tokens=max_tokens,
        progress=fit_progress("finetune"),
    )  # fmt: skip
    record.update(base=base.name, seed=seed, train_rows=len(train), held_out_rows=len(gate[1]))
    save_trained(model, ckpt_dir)
    (ckpt_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    manifest = export.export(
        model, encoder / "tokenizer.json", fp32_dir, name=name, version=version,
        labels=plan.labels, max_tokens=max_tokens,
        base_model=f"adapted from {base.name} (all-MiniLM-L6-v2, mean pooling)",
        training_data=[source, f"recipe: {json.dumps(record, sort_keys=True)}"], optimize="bert",
    )  # fmt: skip
    extra = {**manifest.extra, "score": score_note(plan)}
    if plan.score_weights is not None:
        extra["score_weights"] = list(plan.score_weights)
    modeldir.write_manifest(fp32_dir, replace(manifest, extra=extra))
    measure = quantgate.labelled_measure(gate[0], gate[1], gate[2], threads=threads)
    quantgate.derive_int8_gated(fp32_dir, out, measure)
    return record


def held_out_results(
    models: dict[str, Path],
    default: Path,
    plan: Any,
    held: list[Any],
    majority: str,
    threads: int = 0,
) -> dict[str, dict[str, Any]]:
    """Figures of each model directory, of the default model (mapped to the new labels, when it
    can be) and of the majority class of the training rows, on the same held-out rows."""
    texts = [r.text for r in held]
    gold = [plan.canonical[r.label] for r in held]
    results = {}
    for key, directory in models.items():
        results[key] = metrics(
            gold, [p.label for p in predict(directory, texts, threads)], plan.labels
        )
    mapped = default_labels(predict(default, texts, threads), plan)
    if mapped is not None:
        results[f"default {default.name}"] = metrics(gold, mapped, plan.labels)
    results[f"majority class ({majority})"] = metrics(gold, [majority] * len(gold), plan.labels)
    return results


def run(args: argparse.Namespace) -> None:
    """Read, split, adapt, export fp32, gate and derive int8, evaluate, report."""
    from shared import modeldir
    from training import labelled, quantgate

    started = time.monotonic()
    rows, skipped = labelled.read_labelled(args.data)
    unique = labelled.deduplicate(rows)
    plan = labelled.plan_labels(unique, args.data)
    train, held = labelled.split(unique, args.seed)
    base = checkpoint_dir(args.base)
    recipe = recipe_of(args)
    out: Path = args.out
    fp32_dir = out.with_name(f"{out.name}-fp32")
    ckpt_dir = out.with_name(f"{out.name}-checkpoint")
    print(
        f"{args.data.name}: {len(rows)} rows ({len(rows) - len(unique)} duplicate texts dropped"
        + (f", {skipped} without a label skipped" if skipped else "")
        + f"); labels -> model labels {list(plan.labels)}; train {len(train)}, held out "
        f"{len(held)} ({labelled.counts(held)}), seed {args.seed}; recipe {recipe.name}",
        flush=True,
    )
    from training.train import base_model_dir

    digest = hashlib.sha256(args.data.read_bytes()).hexdigest()
    source = (
        f"{args.data.name} (sha256 {digest[:16]}): {len(unique)} labelled rows "
        f"({labelled.counts(unique)}); a seeded fifth of each label held out"
    )
    gold = [plan.canonical[r.label] for r in held]
    record = produce(
        base=base, encoder=args.base_model or base_model_dir(), plan=plan, train=train,
        gate=("held_out_fifth", [r.text for r in held], gold), out=out, recipe=recipe,
        seed=args.seed, name=args.name or out.name, version=args.version,
        max_tokens=args.max_tokens, source=source, threads=args.threads,
    )  # fmt: skip
    majority = Counter(plan.canonical[r.label] for r in train).most_common(1)[0][0]
    results = held_out_results(
        {f"{out.name} int8": out, f"{out.name} fp32": fp32_dir}, args.default, plan, held,
        majority, args.threads,
    )  # fmt: skip
    table = report(results, plan.labels, len(held))
    for directory in (fp32_dir, out):
        m = modeldir.load(directory)
        evaluation = {"held_out_fifth": results, "labels": list(plan.labels), "seed": args.seed}
        write_card(directory, m, source, table)
        modeldir.write_manifest(directory, replace(m, evaluation=evaluation))
    gate = modeldir.load(out).extra["quantization_gate"]
    print("\n" + table + "\n")
    print("Quantization gate (int8 against fp32 on the held-out fifth):")
    print(quantgate.describe(gate))
    steps = f", {record['steps']} steps" if "steps" in record else ""
    print(
        f"\nWrote {out} (int8), {fp32_dir} (fp32), {ckpt_dir} (checkpoint, a --base for the next "
        f"run) in {time.monotonic() - started:.0f} s ({record['seconds']:.0f} s adapting{steps}; "
        f"{time.process_time():.0f} CPU-seconds). Serve it: MODEL_DIR={out} make serve"
    )


def score_note(plan: Any) -> str:
    """What `score` means for this model (stored in the manifest)."""
    if plan.score_weights is None:
        return "none: the labels are not ordered; use the label and probabilities"
    pairs = zip(plan.labels, plan.score_weights, strict=True)
    weights = ", ".join(f"{k} {w:+.3g}" for k, w in pairs)
    if plan.sentiment:
        return f"P(positive) - P(negative): probabilities weighted {weights}"
    return f"expected label value mapped linearly onto [-1, 1]: probabilities weighted {weights}"


def write_card(directory: Path, manifest: Any, source: str, table: str) -> None:
    """A short model card (README.md) for a fine-tuned model directory."""
    (directory / "README.md").write_text(
        f"# {manifest.name} {manifest.version} ({manifest.precision})\n\n"
        f"Made with `make finetune`: {manifest.base_model}.\n\n"
        f"- Labels: {', '.join(manifest.labels)}\n"
        f"- Score: {manifest.extra.get('score', '')}\n"
        f"- Data: {source}\n"
        f"- Truncation: {manifest.max_tokens} tokens served, padding to the longest text.\n\n"
        f"## Held-out evaluation\n\n{table}\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
