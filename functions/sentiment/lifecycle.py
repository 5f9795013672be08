"""Start-up and shutdown of a function: loading, readiness, drain.

Start-up runs in the background so the port answers at once: liveness is 200 from the first
moment, readiness is 503 until the model directory is verified, the ONNX session built, a warm-up
inference run and the secrets read. Knative's queue-proxy only sends traffic to a ready revision,
so the first request after a scale from zero never meets a half-loaded model.

On SIGTERM readiness turns false at once (`begin_drain`), accepted work finishes, then the
batcher and the closers (K_SINK flush, Vault renewal) are stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool

from functions.sentiment.batching import Batcher, RunStats
from functions.sentiment.core import AppState
from functions.sentiment.model import Classifier

log = logging.getLogger("kubesentiment.app")

StartHook = Callable[[AppState], Awaitable[None]]


async def load_model(state: AppState) -> None:
    """Verify and load the model, build the batcher, warm up."""
    s, m = state.settings, state.metrics
    t0 = time.perf_counter()
    classifier = await asyncio.to_thread(
        Classifier.load,
        s.model_dir,
        providers=s.providers,
        intra_op_threads=s.intra_op_threads,
        inter_op_threads=s.inter_op_threads,
        chunk_overlap=s.chunk_overlap,
        spinning=s.ort_spinning,
    )
    m.model_load.labels(s.variant).set(time.perf_counter() - t0)
    if s.warmup:
        # The first session.run allocates buffers and picks kernels, and the first trip to the
        # request thread pool starts its threads: pay both before traffic.
        await asyncio.to_thread(classifier.predict, ["warm-up text for the model."] * 2)
        await run_in_threadpool(classifier.encode, ["warm-up"])

    def on_run(stats: RunStats) -> None:
        m.batch_size.labels(s.variant).observe(stats.size)
        m.inference_duration.labels(s.variant).observe(stats.seconds)
        for wait in stats.queue_waits:
            m.queue_wait.labels(s.variant).observe(wait)

    batcher = Batcher(
        classifier.run,
        enabled=s.batching,
        max_size=s.batch_max_size,
        max_wait_s=s.batch_max_wait_ms / 1000,
        max_queued=s.max_queued_texts,
        retry_after_s=s.retry_after_s,
        on_run=on_run,
    )
    await batcher.start()
    state.classifier, state.batcher = classifier, batcher
    mf = classifier.manifest
    m.model_info.labels(s.variant, mf.name, mf.version, mf.precision).set(1)


async def startup(state: AppState, hooks: list[StartHook]) -> None:
    """Run the start hooks in order; the app is ready only when all succeeded."""
    s = state.settings
    try:
        for hook in hooks:
            await hook(state)
    except Exception as e:
        state.not_ready_reason = f"start-up failed: {e}"
        log.error("start-up failed, staying not ready: %s", e, exc_info=True)
        return
    state.ready = True
    state.metrics.model_ready.labels(s.variant).set(1)
    cold = time.time() - state.started_at
    state.metrics.cold_start.labels(s.variant).set(cold)
    log.info("ready", extra={"cold_start_seconds": round(cold, 3), "model_dir": str(s.model_dir)})


async def shutdown(state: AppState, startup_task: asyncio.Task[None]) -> None:
    """Refuse new work, let accepted work finish within the timeout, then release the model."""
    begin_drain(state)
    if not startup_task.done():
        startup_task.cancel()
    if state.batcher is not None:
        finished = await state.batcher.drain(state.settings.shutdown_timeout_s)
        if not finished:
            log.warning("shutdown timeout reached with work still queued")
        await state.batcher.close()
    for close in reversed(state.closers):
        await close()
    log.info("stopped")


def begin_drain(state: AppState) -> None:
    """Turn readiness false and refuse new inference work (SIGTERM, Knative runtime contract)."""
    if not state.draining:
        state.draining = True
        state.metrics.model_ready.labels(state.settings.variant).set(0)
        log.info("draining: readiness is now false")
