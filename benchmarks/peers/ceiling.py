"""The in-process ceiling: tokenize + `session.run` with no HTTP, on the benchmark's texts.

Three ways to form runs, each timed over the same texts with the servers' session options:
batch 1 (one run per text), padded batches of 32 in arrival order, and batches of 32 after
sorting by token count (least padding). The best is the most this model can do on these cores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.peers.engine import Engine


def _rate(engine: Engine, batches: Sequence[Sequence[str]]) -> float:
    count = sum(len(b) for b in batches)
    started = time.perf_counter()
    for batch in batches:
        engine.run(engine.encode(batch))
    return count / (time.perf_counter() - started)


def measure(
    model_dir: Path, texts: Sequence[str], *, quick: bool = False, size: int = 32
) -> dict[str, float]:
    """Texts per second for batch 1, padded and length-sorted batches, and the best of them."""
    engine = Engine(model_dir)
    sample = list(texts[: 256 if quick else 1024])
    engine.run(engine.encode(sample[:size]))  # warm-up
    lengths = {t: len(ids) for t, ids in zip(sample, engine.encode(sample), strict=True)}
    ordered = sorted(sample, key=lengths.__getitem__)
    rates = {
        "batch_1": _rate(engine, [[t] for t in sample]),
        f"padded_{size}": _rate(
            engine, [sample[i : i + size] for i in range(0, len(sample), size)]
        ),
        f"sorted_{size}": _rate(
            engine, [ordered[i : i + size] for i in range(0, len(ordered), size)]
        ),
    }
    rates = {k: round(v, 1) for k, v in rates.items()}
    return {**rates, "best": max(rates.values())}
