"""Start loading the model before the web stack is imported, to shorten the cold start.

`python -m functions.sentiment` calls `start(settings)` first thing: a thread imports ONNX Runtime,
verifies the model directory and builds the session and tokenizer while the main thread imports
uvicorn, Starlette and the app. Checksums and ONNX Runtime's session set-up run largely outside the
GIL, so the two overlap. The lifespan's `load_model` then awaits the result instead of loading.
This module imports nothing heavy itself.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from shared.config import Settings

if TYPE_CHECKING:
    from functions.sentiment.model import Classifier

Loaded = tuple["Classifier", float]  # the classifier and the seconds its load took


def start(settings: Settings) -> Future[Loaded]:
    """Load the model on a daemon thread; the future holds it or the load's exception."""
    future: Future[Loaded] = Future()

    def load() -> None:
        try:
            t0 = time.perf_counter()
            from functions.sentiment.model import Classifier

            classifier = Classifier.load(
                settings.model_dir,
                providers=settings.providers,
                intra_op_threads=settings.intra_op_threads,
                inter_op_threads=settings.inter_op_threads,
                chunk_overlap=settings.chunk_overlap,
                spinning=settings.ort_spinning,
            )
            future.set_result((classifier, time.perf_counter() - t0))
        except BaseException as e:  # handed to load_model, which reports the failed step
            future.set_exception(e)

    threading.Thread(target=load, name="model-preload", daemon=True).start()
    return future
