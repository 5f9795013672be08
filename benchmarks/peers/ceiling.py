"""The in-process ceiling: tokenize + `session.run` with no HTTP, on the benchmark's texts.

Runs formed three ways, each timed over the same texts with the servers' session options: batch 1
(one run per text), padded batches of 2-32 in arrival order (what a plain batching server does),
and batches of 32 after sorting by token count (least padding). The best rate is the most this
model can do on these cores; the best padded size is the batch size the peers are given, since
they pad whatever arrives together (on review-length texts a padded 32 is slower than batch 1).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.peers.engine import Engine

PADDED = (2, 4, 8, 16, 32)


def _rate(engine: Engine, batches: Sequence[Sequence[str]]) -> float:
    count = sum(len(b) for b in batches)
    started = time.perf_counter()
    for batch in batches:
        engine.run(engine.encode(batch))
    return count / (time.perf_counter() - started)


def _chunks(texts: Sequence[str], size: int) -> list[Sequence[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def measure(model_dir: Path, texts: Sequence[str], *, quick: bool = False) -> dict[str, Any]:
    """Texts per second per way of forming runs, the best rate and the best padded size."""
    engine = Engine(model_dir)
    sample = list(texts[: 256 if quick else 1024])
    engine.run(engine.encode(sample[:32]))  # warm-up
    lengths = {t: len(ids) for t, ids in zip(sample, engine.encode(sample), strict=True)}
    ordered = sorted(sample, key=lengths.__getitem__)
    rates = {"batch_1": _rate(engine, _chunks(sample, 1))}
    rates.update({f"padded_{n}": _rate(engine, _chunks(sample, n)) for n in PADDED})
    rates["sorted_32"] = _rate(engine, _chunks(ordered, 32))
    best_padded = max(PADDED, key=lambda n: rates[f"padded_{n}"])
    rounded = {k: round(v, 1) for k, v in rates.items()}
    return {**rounded, "best": max(rounded.values()), "best_padded_batch": best_padded}
