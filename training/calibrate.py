"""Calibrate the 3-class decision on held-back training rows: one offset per class logit.

The classes' priors differ between sources (Hutto's NYT snippets are often neutral, CrowdFlower
tweets rarely), and a model trained on their mix sets the neutral band where the mix puts it.
After training, the logits of a dev share of the training rows (never trained on, never a test
row) are computed once, and a grid search picks offsets (b_negative, 0, b_positive) that
maximise the mean 3-class accuracy of the dev sources. The offsets are added to the head's bias,
so the exported model needs nothing new at serving time.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from tokenizers import Tokenizer

from training import data
from training.modeling import MeanPoolingBertForSequenceClassification, padded

GRID = np.round(np.arange(-1.5, 1.5001, 0.05), 2)


def logits_of(
    model: MeanPoolingBertForSequenceClassification,
    examples: list[data.Example],
    tokenizer: Tokenizer,
    batch_size: int = 64,
) -> np.ndarray:
    """Logits for `examples`, in order (length-sorted batches, no gradient)."""
    pad_id = tokenizer.token_to_id("[PAD]")
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].text))
    out = np.zeros((len(examples), model.config.num_labels), dtype=np.float32)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = padded(tokenizer.encode_batch([examples[i].text for i in idx]), pad_id)
            out[idx] = model(input_ids=ids, attention_mask=mask).logits.numpy()
    return out


def search(groups: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, float]:
    """Offsets (negative, neutral = 0, positive) maximising the mean accuracy over `groups`
    (name -> (logits, gold labels)); ties go to the smallest change."""
    best: tuple[float, float, float, float] = (-1.0, 0.0, 0.0, 0.0)
    for bn in GRID:
        for bp in GRID:
            offset = np.array([bn, 0.0, bp], dtype=np.float32)
            accs = [float(np.mean((lg + offset).argmax(1) == gold)) for lg, gold in groups.values()]
            score = float(np.mean(accs)) - 1e-6 * (abs(bn) + abs(bp))
            if score > best[0]:
                best = (score, float(bn), 0.0, float(bp))
    return best[1], best[2], best[3]


def accuracy_by_group(
    groups: Mapping[str, tuple[np.ndarray, np.ndarray]], offset: tuple[float, float, float]
) -> dict[str, float]:
    """Dev accuracy per group with `offset` applied to the logits."""
    o = np.array(offset, dtype=np.float32)
    return {k: float(np.mean((lg + o).argmax(1) == g)) for k, (lg, g) in groups.items()}


def calibrate(
    model: MeanPoolingBertForSequenceClassification,
    dev: Mapping[str, list[data.Example]],
    tokenizer: Tokenizer,
) -> dict[str, object]:
    """Search the offsets on `dev` (source group -> rows), add them to the head bias, report."""
    groups = {
        name: (logits_of(model, rows, tokenizer), np.array([e.label for e in rows]))
        for name, rows in dev.items()
        if rows
    }
    offset = search(groups)
    before = accuracy_by_group(groups, (0.0, 0.0, 0.0))
    after = accuracy_by_group(groups, offset)
    with torch.no_grad():
        model.classifier.bias += torch.tensor(offset, dtype=model.classifier.bias.dtype)
    report = {
        "offsets": dict(zip(data.LABELS, offset, strict=True)),
        "dev_rows": {k: len(v) for k, v in dev.items()},
        "dev_accuracy_before": before,
        "dev_accuracy_after": after,
    }
    print(f"calibration: {report}", flush=True)
    return report
