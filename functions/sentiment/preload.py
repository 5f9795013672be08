"""Start loading the model before the web stack is imported, to shorten the cold start.

`python -m functions.sentiment` calls `start(settings)` first thing: a thread imports ONNX Runtime,
verifies the model directory (pulling it first for an oci:// MODEL_URI) and builds the session and
tokenizer while the main thread imports uvicorn, Starlette and the app. Checksums, downloads and
ONNX Runtime's session set-up run largely outside the GIL, so the two overlap. The lifespan's
`load_model` (and `fetch_model` for a pull) then awaits the result instead of loading. This
module imports nothing heavy itself.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from shared import modelstore
from shared.config import Settings

if TYPE_CHECKING:
    from functions.sentiment.model import Classifier

Loaded = tuple["Classifier", float]  # the classifier and the seconds its load took


def start(settings: Settings, directory: Path | None = None) -> Future[Loaded]:
    """Load the model (`directory`, else MODEL_URI's file:// path or MODEL_DIR) on a daemon
    thread; the future holds it or the exception. For an oci:// MODEL_URI and no `directory`
    the thread fetches it first (once: the `fetch_model` start step retries a failed fetch)."""
    local = directory or modelstore.local_dir(settings.model_uri, settings.model_dir)
    future: Future[Loaded] = Future()

    def load() -> None:
        try:
            t0 = time.perf_counter()
            model_dir = local
            if model_dir is None:
                assert settings.model_uri is not None
                model_dir = modelstore.fetch(
                    settings.model_uri,
                    settings.model_cache_dir,
                    plain_http=settings.model_registry_plain_http,
                )
            from functions.sentiment.model import Classifier

            classifier = Classifier.load(
                model_dir,
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
