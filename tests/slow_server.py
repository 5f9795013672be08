"""`python -m tests.slow_server`: the function with every ONNX run made SLOW_RUN_SECONDS longer.

A stand-in for a loaded server in the deadline and priority tests: with BATCH_MAX_SIZE=1 each text
holds the inference thread that long, so what is queued behind it waits a known while.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from functions.sentiment import __main__ as entry
from functions.sentiment import model


def main() -> None:
    """Slow down Classifier.run, then serve as `python -m functions.sentiment` does."""
    delay = float(os.environ.get("SLOW_RUN_SECONDS", "1"))
    run = model.Classifier.run

    def slow_run(
        self: model.Classifier, windows: Sequence[Sequence[int]]
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        time.sleep(delay)
        return run(self, windows)

    model.Classifier.run = slow_run  # type: ignore[method-assign]
    entry.main()


if __name__ == "__main__":
    main()
