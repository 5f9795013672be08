"""What a batcher run returns: per-run statistics and a submit's outcome (types shared by the
batcher, the request core and the lifecycle's metrics hook)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Probabilities = np.ndarray[Any, np.dtype[np.float32]]
Window = Sequence[int]
RunFn = Callable[[list[Window]], Probabilities]


@dataclass(frozen=True)
class RunStats:
    """What one ONNX run did, for metrics and tracing (times in ns since the epoch)."""

    size: int
    width: int
    tokens: int  # real tokens; size x width are the padded ones
    queue_waits: tuple[float, ...]
    seconds: float
    started_ns: int
    ended_ns: int


@dataclass(frozen=True)
class Outcome:
    """A submit's answer: probabilities per text, and when its texts were queued and run."""

    probabilities: list[Probabilities]
    enqueued_ns: int
    started_ns: int
    ended_ns: int
    batch_size: int

    @property
    def queue_seconds(self) -> float:
        """Time from submit to the start of the first run that held one of its texts."""
        return max(0, self.started_ns - self.enqueued_ns) / 1e9

    @property
    def inference_seconds(self) -> float:
        """Time from the first run's start to the last run's end."""
        return max(0, self.ended_ns - self.started_ns) / 1e9
