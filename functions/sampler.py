"""Pick the texts worth a person's time: `python -m functions.sampler INPUT -n 200 --out FILE`.

Reads payload-log events or any JSONL/CSV of texts (`functions.texts`, identical texts kept once)
and writes a labelling file (JSONL, one object per text, in the order to label them):
`{"id", "text", "guess", "confidence", "margin", "sample"}`. The guess comes from the serving
code (`Classifier.encode` and `combine`, texts over the model's max tokens truncated as the
function does by default), so it is what the function would answer. Three kinds of pick:

* `random`: a share (`--random-share`, 20 % by default) drawn uniformly from all texts with the
  seed, so that accuracy measured on those rows estimates accuracy on the traffic without bias.
* `uncertain`: half of the rest, the texts with the smallest margin (top-1 minus top-2
  probability). When the model directory's manifest carries a `temperature` (temperature
  scaling), the probabilities are calibrated first (softmax(log p / T)); otherwise the raw
  probabilities are used. The summary line on stderr says which.
* `diverse`: the other half, greedy k-center over the uncertain pool (the `--pool` times as many
  lowest-margin texts): each pick is the pool text farthest (cosine) from everything picked so
  far, so clusters of uncertain texts that the smallest margins miss are covered.

No two non-random picks are near-duplicates of each other or of a random pick: cosine similarity
of the served model's mean-pooled sentence embeddings above `--near-duplicate` (0.95; high,
because a sentiment-tuned embedding puts any two confident texts of one sentiment close
together, while a lower-cased or re-spaced copy of a text stays above it). The embedding is
fetched from the served graph itself (`functions.pooled`), so the sampler needs only onnxruntime,
tokenizers and numpy and runs inside the serving image. The output interleaves the three kinds in
proportion, so a person who stops early still has random rows in their share. Same input, model
and seed: same file.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from functions import pooled, texts
from functions.sentiment.model import Classifier, padded_feeds, session_options
from shared import modeldir
from shared.cpu import available_cpus

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "minilm-sentiment-int8"
BATCH = 32
KINDS = ("uncertain", "diverse", "random")  # the labelling file's `sample` values

Matrix = np.ndarray[Any, np.dtype[np.float32]]


class SamplerError(ValueError):
    """A bad option or model; the message is one line."""


@dataclass(frozen=True)
class Scored:
    """The served model's view of the texts: guesses, calibrated probabilities, embeddings."""

    guesses: tuple[str, ...]
    probabilities: Matrix  # [N, C], calibrated when the manifest has a temperature
    embeddings: Matrix  # [N, D], unit length
    temperature: float | None

    @property
    def margins(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Top-1 minus top-2 probability per text."""
        top = np.sort(self.probabilities.astype(np.float64), axis=1)
        return top[:, -1] - top[:, -2]


class Scorer:
    """The served model with its pooled embedding as one more output."""

    def __init__(self, directory: Path, threads: int = 0) -> None:
        manifest = modeldir.load(directory)
        raw = (directory / manifest.onnx_file).read_bytes()
        self.pooled = pooled.pooled_name(raw)
        threads = threads or available_cpus()
        session = ort.InferenceSession(
            pooled.with_output(raw, self.pooled),
            sess_options=session_options(threads, 1),
            providers=["CPUExecutionProvider"],
        )
        tokenizer = Tokenizer.from_file(str(directory / manifest.tokenizer_file))
        self.classifier = Classifier(directory, manifest, session, tokenizer, threads)
        self.inputs = {i.name for i in session.get_inputs()}
        t = manifest.extra.get("temperature")
        if t is not None and (not isinstance(t, int | float) or isinstance(t, bool) or t <= 0):
            raise SamplerError(f"{directory}: manifest 'temperature' must be a positive number")
        self.temperature = None if t is None else float(t)

    def score(self, items: Sequence[str]) -> Scored:
        """Guesses, probabilities and embeddings for `items`, batched by length."""
        c = self.classifier
        encoded = c.encode(items)
        order = sorted(range(len(items)), key=lambda i: encoded[i].tokens)
        probs = np.zeros((len(items), len(c.labels)), dtype=np.float32)
        emb: Matrix | None = None
        guesses = [""] * len(items)
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            feeds = padded_feeds([encoded[i].windows[0] for i in batch], c.pad_id, self.inputs)
            p, e = c.session.run(["probabilities", self.pooled], feeds)
            if emb is None:
                emb = np.zeros((len(items), e.shape[1]), dtype=np.float32)
            for row, i in enumerate(batch):
                prediction = c.combine(encoded[i], p[row : row + 1])
                guesses[i] = prediction.label
                probs[i] = [prediction.probabilities[label] for label in c.labels]
                emb[i] = e[row]
        assert emb is not None
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return Scored(tuple(guesses), calibrate(probs, self.temperature), emb, self.temperature)


def calibrate(probs: Matrix, temperature: float | None) -> Matrix:
    """Temperature scaling from probabilities: softmax(log p / T) = softmax(logits / T)."""
    if temperature is None:
        return probs
    z = np.log(np.maximum(probs.astype(np.float64), 1e-12)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: Matrix = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def select(
    margins: np.ndarray[Any, np.dtype[np.float64]],
    embeddings: Matrix,
    n: int,
    *,
    random_share: float = 0.2,
    seed: int = 0,
    near_duplicate: float = 0.95,
    pool: float = 3.0,
) -> list[tuple[int, str]]:
    """(index, kind) of the picks, in the order to label them (see the module docstring)."""
    total = len(margins)
    n = min(n, total)
    n_random = round(n * random_share)
    randoms = random.Random(seed).sample(range(total), n_random)
    budget = n - n_random
    taken = set(randoms)
    # The uncertain pool: lowest margins first (index breaks ties), no near-duplicates.
    pool_idx: list[int] = []
    kept = list(randoms)
    for i in sorted(range(total), key=lambda i: (margins[i], i)):
        if len(pool_idx) >= max(budget, math.ceil(pool * budget)):
            break
        if i in taken:
            continue
        if kept and float((embeddings[kept] @ embeddings[i]).max()) > near_duplicate:
            continue
        pool_idx.append(i)
        kept.append(i)
    uncertain = pool_idx[: math.ceil(budget / 2)]
    diverse: list[int] = []
    rest = [i for i in pool_idx if i not in set(uncertain)]
    centers = randoms + uncertain
    if rest and len(uncertain) + len(diverse) < budget:
        sims = embeddings[rest] @ embeddings[centers].T if centers else np.full((len(rest), 1), -1)
        nearest = sims.max(axis=1)
        while rest and len(uncertain) + len(diverse) < budget:
            j = int(np.argmin(nearest))  # farthest from every pick; ties: lowest margin
            diverse.append(rest[j])
            nearest = np.maximum(nearest, embeddings[rest] @ embeddings[rest[j]])
            nearest[j] = np.inf
            if np.isinf(nearest).all():
                break
    return interleave({"uncertain": uncertain, "diverse": diverse, "random": randoms})


def interleave(groups: dict[str, list[int]]) -> list[tuple[int, str]]:
    """Merge the groups so every prefix holds each group in proportion (group order on ties)."""
    keyed = [
        ((k + 0.5) / len(items), rank, i, kind)
        for rank, (kind, items) in enumerate(groups.items())
        for k, i in enumerate(items)
    ]
    return [(i, kind) for _, _, i, kind in sorted(keyed)]


def write(out: TextIO, read: texts.Read, scored: Scored, picks: list[tuple[int, str]]) -> None:
    """The labelling file: one JSON object per pick."""
    margins = scored.margins
    for i, kind in picks:
        item = read.texts[i]
        row = {
            "id": item.id,
            "text": item.text,
            "guess": scored.guesses[i],
            "confidence": round(float(scored.probabilities[i].max()), 4),
            "margin": round(float(margins[i]), 4),
            "sample": kind,
        }
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m functions.sampler",
        description="Pick the texts to label from payload-log events or a JSONL/CSV of texts. "
        "Margins use temperature-scaled probabilities when the model's manifest has a "
        "'temperature', else the raw probabilities.",
    )
    p.add_argument("input", type=Path, help="payload-log events (JSONL) or JSONL/CSV with 'text'")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="served model directory")
    p.add_argument("-n", type=int, default=200, help="texts to pick (default 200)")
    p.add_argument("--random-share", type=float, default=0.2, help="uniform random share (0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random share (0)")
    p.add_argument("--near-duplicate", type=float, default=0.95, help="cosine cut-off (0.95)")
    p.add_argument("--pool", type=float, default=3.0, help="uncertain pool, times the picks (3)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: CPU quota)")
    p.add_argument("--out", default="-", help="labelling file to write (default stdout)")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("-n must be at least 1")
    if not 0.0 <= args.random_share <= 1.0:
        p.error("--random-share must be between 0 and 1")
    if not -1.0 <= args.near_duplicate <= 1.0:
        p.error("--near-duplicate must be a cosine between -1 and 1")
    if args.pool < 1.0:
        p.error("--pool must be at least 1")
    return args


def main(argv: Sequence[str] | None = None, stderr: TextIO = sys.stderr) -> int:
    """The CLI; returns the exit status (2 with one line on stderr for bad input)."""
    args = parse_args(argv)
    started = time.monotonic()
    try:
        read = texts.read(args.input)
        scorer = Scorer(args.model, args.threads)
        scored = scorer.score([t.text for t in read.texts])
    except (texts.InputError, SamplerError, modeldir.ModelDirError, pooled.GraphError) as e:
        print(f"sampler: error: {e}", file=stderr)
        return 2
    picks = select(
        scored.margins,
        scored.embeddings,
        args.n,
        random_share=args.random_share,
        seed=args.seed,
        near_duplicate=args.near_duplicate,
        pool=args.pool,
    )
    try:
        if args.out == "-":
            write(sys.stdout, read, scored, picks)
        else:
            with open(args.out, "w", encoding="utf-8", newline="\n") as f:
                write(f, read, scored, picks)
    except OSError as e:
        print(f"sampler: error: cannot write {args.out}: {e.strerror or e}", file=stderr)
        return 2
    kinds = {k: sum(1 for _, kind in picks if kind == k) for k in KINDS}
    how = (
        f"temperature-scaled probabilities (T={scored.temperature:g})"
        if scored.temperature is not None
        else "raw probabilities (the manifest has no temperature)"
    )
    print(
        f"sampler: {len(picks)} of {len(read.texts)} distinct texts "
        f"({read.duplicates} duplicates dropped, {read.skipped_events} other events skipped): "
        + ", ".join(f"{v} {k}" for k, v in kinds.items())
        + f"; margins from {how}; {time.monotonic() - started:.1f} s",
        file=stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
