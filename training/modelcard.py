"""The model card (README.md) written into each model directory by `make eval`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared import modeldir


def write_card(
    directory: Path,
    manifest: modeldir.Manifest,
    evaluation: dict[str, Any],
    header: str,
    rows: Sequence[str],
) -> None:
    """Write README.md: what the model is, how it was made, what it scores, where it fails."""
    labels = ", ".join(manifest.labels)
    data = "\n".join(f"- {d}" for d in manifest.training_data)
    text = f"""# {manifest.name} {manifest.version} ({manifest.precision})

A 3-class English sentiment classifier ({labels}) with a continuous score
`score = P(positive) - P(negative)` in [-1, 1]. ONNX graph with dynamic batch and sequence axes,
outputs `logits` and `probabilities`; a `tokenizers` fast tokenizer that truncates at
{manifest.max_tokens} tokens and pads to the longest text of a batch.

## How it was made

- Base model: {manifest.base_model}, mean pooling, linear head.
- Precision: {manifest.precision}. int8 is dynamic quantization of the fp32 graph (weights int8,
  activations quantized at run time); fp16 is generated for GPUs by `make fp16`.
- Training data (read from installed packages; no raw text is committed):
{data}
- Recipe: `make train` (training/train.py): fixed seed, deterministic hash splits, the Hutto
  tweet, Amazon and NYT training rows plus seeded samples of the movie-review and CrowdFlower
  training rows (`movie_fraction`, `crowdflower_fraction` in the recipe line above), AdamW,
  at most 64 tokens, frozen word embeddings, cross-entropy plus a squared-error term tying the
  score to the Hutto mean human rating; with `distill` in the recipe, rows the accurate model
  (all-mpnet-base-v2, the teacher) labelled mix the cross-entropy with the KL divergence from
  its probabilities (training/distill.py).

## Held-out evaluation (`make eval`, 2 CPU cores)

{header}
{chr(10).join(rows)}

Every figure is on a 20 % test split chosen by a hash and never trained on. Movie binary is the
movie-review test split (polarity = sign of the mean human rating, prediction = sign of the
score); Hutto 3-class is the tweet, Amazon and NYT test split. Latency is one `session.run` of a
64-token text at batch 1 (tokenization excluded).

## Limits

- English only; trained on short texts (tweets, product and film review and news sentences, at
  most 64 tokens). Longer texts are truncated at {manifest.max_tokens} tokens (flagged) or
  chunked on request.
- Sarcasm, irony, negation across sentences and domain jargon are often misread; the neutral
  class is the least reliable (annotators disagree most there).
- CrowdFlower tweets are about a few topics (e.g. self-driving cars, brands): scores on other
  domains will be lower. Do not use it for decisions about individuals.
"""
    (directory / "README.md").write_text(text, encoding="utf-8")
