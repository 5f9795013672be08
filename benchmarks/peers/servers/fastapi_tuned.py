"""The tuned baseline: FastAPI + the `transformers` pipeline on PyTorch CPU, configured for 2 cores.

    PORT=8000 python -m benchmarks.peers.servers.fastapi_tuned

The same fine-tuned weights as `benchmarks.baseline_server` (the naive baseline), with what a
careful engineer would change: PyTorch intra-op threads = the CPU quota and one inter-op thread
(the naive server leaves PyTorch's default, which oversubscribes 2 cores once FastAPI's thread
pool runs several requests at once); `torch.inference_mode`; and an asyncio micro-batcher in
front of the pipeline, so concurrent requests share one padded forward pass (up to 32 texts,
waiting at most 5 ms for company while a batch is running) on a single inference thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from benchmarks.baseline_server import CHECKPOINT, load_classifier
from shared.cpu import available_cpus

MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "32"))
WAIT_S = float(os.environ.get("PEER_BATCH_WAIT_MS", "5")) / 1000


class PredictRequest(BaseModel):
    """One text, as in the function's POST /predict."""

    text: str


class Batcher:
    """Collects texts from concurrent requests into pipeline calls on one thread."""

    def __init__(self, classify: Any) -> None:
        self.classify = classify
        self.queue: asyncio.Queue[tuple[str, asyncio.Future[Any]]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1)

    async def submit(self, text: str) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put((text, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + WAIT_S
            while len(batch) < MAX_BATCH:
                timeout = deadline - loop.time()
                if timeout <= 0 and self.queue.empty():
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), max(timeout, 0)))
                except TimeoutError:
                    break
            texts = [text for text, _ in batch]
            try:
                results = await loop.run_in_executor(self.executor, self.classify, texts)
            except Exception as e:
                for _, future in batch:
                    future.set_exception(e)
                continue
            for (_, future), scores in zip(batch, results, strict=True):
                future.set_result(scores)


def create_app() -> FastAPI:
    """The app with the model loaded and the batcher running."""
    torch.set_num_threads(available_cpus())
    torch.set_num_interop_threads(1)
    pipeline_classify = load_classifier(CHECKPOINT, 256)

    def classify(texts: list[str]) -> list[Any]:
        with torch.inference_mode():
            return pipeline_classify(texts)

    classify(["warm up"])
    batcher = Batcher(classify)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()

    app = FastAPI(title="tuned baseline", lifespan=lifespan)

    @app.get("/health/readiness")
    async def readiness() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/predict")
    async def predict(request: PredictRequest) -> dict[str, Any]:
        scores = await batcher.submit(request.text)
        best = max(scores, key=lambda s: s["score"])
        return {"label": best["label"], "probabilities": {s["label"]: s["score"] for s in scores}}

    return app


def main() -> None:
    """Serve on 127.0.0.1:$PORT with one uvicorn worker, access log off."""
    uvicorn.run(
        create_app(),
        host="127.0.0.1",
        port=int(os.environ.get("PORT", "8090")),
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
