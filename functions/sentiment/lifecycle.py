"""Start-up and shutdown of a function: loading, readiness, liveness, drain.

Start-up runs in the background so the port answers at once: liveness is 200 from the first
moment, readiness is 503 until the model directory is verified, the ONNX session built, a warm-up
inference run and the secrets read. Knative's queue-proxy only sends traffic to a ready revision,
so the first request after a scale from zero never meets a half-loaded model.

Steps that depend on the network (Vault login and secret reads: a `SecretError`; fetching the
model of an oci:// MODEL_URI from its registry: `RegistryUnavailable`) are retried with
exponential backoff and full jitter (`shared.backoff`: up to 0.1 s doubling, capped at 2 s), so
pods scaled up together do not retry in lockstep; meanwhile readiness names the step and the
attempt, never an exception's text (that goes to the log). If start-up has not succeeded after
STARTUP_TIMEOUT_SECONDS, liveness fails too (`state.live`), so the kubelet restarts the pod
instead of leaving one that is alive but never ready.

On SIGTERM readiness turns false at once (`begin_drain`) and one deadline is set, now +
SHUTDOWN_TIMEOUT_SECONDS; every later step (uvicorn's graceful drain, the batch queue, the closers
such as the K_SINK flush and Vault renewal, the span flush) gets only what is left of it
(`remaining`), so together they end before the pod's termination grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from functions.sentiment import coldstart, dedup, preload
from functions.sentiment.batching import Batcher, RunStats
from functions.sentiment.core import AppState
from functions.sentiment.lanes import LANE_NAMES
from shared import modelstore
from shared.registry import RegistryUnavailable
from shared.vault import SecretError

if TYPE_CHECKING:
    from shared.backoff import Backoff

log = logging.getLogger("kubesentiment.app")

StartHook = Callable[[AppState], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]

RETRY_BASE_S = 0.1
RETRY_CAP_S = 2.0
# What readiness says while a hook runs, by the hook's name (a hook may carry its own `step`).
STEPS = {
    "fetch_model": "fetching the model from the registry",
    "load_model": "loading the model",
    "start_sink": "starting the K_SINK sender",
}
PHASES_KEY = "cold_start_phases"  # state.extras: the cold start's phases (coldstart.Phases)


async def fetch_model(state: AppState) -> None:
    """Pull and verify the oci:// MODEL_URI's model (or take it from MODEL_CACHE_DIR) for
    `load_model`; only registered when MODEL_URI is an oci:// URI. The entry point's preload
    thread has usually fetched it already: then this step waits for that, and only a failed
    fetch is tried again here (a load failure is `load_model`'s to report)."""
    s = state.settings
    assert s.model_uri is not None
    preloaded: Future[preload.Loaded] | None = state.extras.get("preload")
    if preloaded is not None:
        try:
            await asyncio.wrap_future(preloaded)
        except (modelstore.ModelStoreError, RegistryUnavailable):
            del state.extras["preload"]  # the next attempt fetches here
            raise
        except Exception:  # noqa: S110 - the load failed: load_model awaits the same future
            pass
    else:
        state.extras["model_dir"] = await asyncio.to_thread(
            modelstore.fetch, s.model_uri, s.model_cache_dir, plain_http=s.model_registry_plain_http
        )
    log.info("model fetched", extra={"model_uri": str(s.model_uri)})


async def load_model(state: AppState) -> None:
    """Verify and load the model, build the batcher, warm up."""
    s, m = state.settings, state.metrics
    preloaded: Future[preload.Loaded] | None = state.extras.pop("preload", None)
    # The entry point starts loading before the web stack is imported (functions/sentiment/
    # preload.py); an app built without it (tests, the func middleware) loads here.
    if preloaded is None:  # an oci:// MODEL_URI's directory comes from fetch_model
        preloaded = preload.start(s, state.extras.get("model_dir"))
    classifier, seconds = await asyncio.wrap_future(preloaded)
    m.model_load.labels(s.variant).set(seconds)
    phases: coldstart.Phases | None = state.extras.get(PHASES_KEY)
    if phases is not None:
        phases.mark("model_load")
    if s.warmup:
        # The first session.run allocates buffers and picks kernels, and the first trip to the
        # request thread pool starts its threads: pay both before traffic.
        await asyncio.to_thread(classifier.predict, ["warm-up text for the model."] * 2)
        await run_in_threadpool(classifier.encode, ["warm-up"])
        if phases is not None:
            phases.mark("warmup")

    real, padded = (m.batch_tokens.labels(kind, s.variant) for kind in ("real", "padded"))

    def on_run(stats: RunStats) -> None:
        m.batch_size.labels(s.variant).observe(stats.size)
        real.inc(stats.tokens)
        padded.inc(stats.size * stats.width)
        m.inference_duration.labels(s.variant).observe(stats.seconds)
        for wait in stats.queue_waits:
            m.queue_wait.labels(s.variant).observe(wait)

    expired = [m.deadline_exceeded.labels(name, s.variant) for name in LANE_NAMES]  # 0 at start

    def on_expired(texts: int, lane: int) -> None:
        expired[lane].inc(texts)

    batcher = Batcher(
        classifier.run,
        enabled=s.batching,
        max_size=s.batch_max_size,
        max_wait_s=s.batch_max_wait_ms / 1000,
        max_queued=s.max_queued_texts,
        retry_after_s=s.retry_after_s,
        on_run=on_run,
        priorities=s.priorities,
        priority_max_wait_s=s.priority_max_wait_ms / 1000,
        on_expired=on_expired,
        inline=False,  # measured: a run on the event loop halves throughput at c=32 (README)
    )
    await batcher.start()
    state.dedup = dedup.build(s, m, classifier.manifest)
    state.classifier, state.batcher = classifier, batcher
    mf = classifier.manifest
    m.model_info.labels(s.variant, mf.name, mf.version, mf.precision).set(1)


def phase_of(hook: StartHook) -> str:
    """The cold-start phase a start hook's time goes to: its `phase` attribute, `model_pull` for
    fetch_model, else `other` (load_model marks its own model_load and warmup first)."""
    phase = getattr(hook, "phase", None)
    if isinstance(phase, str):
        return phase
    return "model_pull" if getattr(hook, "__name__", "") == "fetch_model" else "other"


def step_of(hook: StartHook) -> str:
    """The readiness wording of a start hook: its `step` attribute, else from its name."""
    step = getattr(hook, "step", None)
    if isinstance(step, str):
        return step
    name = getattr(hook, "__name__", "")
    return STEPS.get(name, f"running start step {name or type(hook).__name__}")


async def _run_step(
    state: AppState, hook: StartHook, sleep: Sleep, backoff: Backoff | None
) -> None:
    step = step_of(hook)
    attempt = 1
    state.not_ready_reason = step
    while True:
        try:
            await hook(state)
            return
        except (SecretError, RegistryUnavailable) as e:
            # A network step (Vault, the model registry): readiness says what failed without the
            # error's text (a Vault error's `step` is more precise than the hook's), the log has it.
            step = getattr(e, "step", "") or step
            if backoff is None:  # only a start-up that has to retry loads it
                from shared.backoff import Backoff

                backoff = Backoff(RETRY_BASE_S, RETRY_CAP_S)
            delay = backoff.delay(attempt - 1)
            state.not_ready_reason = f"{step} (attempt {attempt}, retrying)"
            log.warning(
                "start-up step failed, retrying",
                extra={"step": step, "attempt": attempt, "retry_in_s": delay, "error": str(e)},
            )
            await sleep(delay)
            attempt += 1
        except Exception:
            # Not a network step (a missing model file...): retrying cannot help. Stay not ready;
            # the start-up deadline then fails liveness and the restart makes it visible.
            state.not_ready_reason = f"start-up failed while {step}; see the function's logs"
            log.error("start-up failed while %s, staying not ready", step, exc_info=True)
            await asyncio.Event().wait()


async def startup(
    state: AppState,
    hooks: list[StartHook],
    *,
    sleep: Sleep = asyncio.sleep,
    backoff: Backoff | None = None,
) -> None:
    """Run the start hooks in order within STARTUP_TIMEOUT_SECONDS; ready when all succeeded,
    not live when the deadline passed first."""
    s = state.settings
    phases = state.extras[PHASES_KEY] = coldstart.Phases(state.started_at)
    phases.mark("imports")
    try:
        async with asyncio.timeout(s.startup_timeout_s):
            for hook in hooks:
                await _run_step(state, hook, sleep, backoff)
                phases.mark(phase_of(hook))
    except TimeoutError:
        state.live = False
        state.not_ready_reason = (
            f"start-up did not finish within {s.startup_timeout_s:g} s "
            f"({state.not_ready_reason}); liveness now fails so the pod is restarted"
        )
        log.error(
            "start-up timed out, liveness now fails", extra={"reason": state.not_ready_reason}
        )
        return
    state.ready = True
    state.metrics.model_ready.labels(s.variant).set(1)
    phases.mark("other")
    cold, revision = phases.total, coldstart.revision(s.k_revision)
    state.metrics.cold_start.labels(s.variant, revision).set(cold)
    for phase, seconds in phases.seconds.items():
        state.metrics.cold_start_phase.labels(phase, s.variant, revision).set(seconds)
    model = str(state.extras.get("model_dir") or modelstore.local_dir(s.model_uri, s.model_dir))
    shares = {phase: round(seconds, 3) for phase, seconds in phases.seconds.items()}
    log.info(
        "ready",
        extra={
            "cold_start_seconds": round(cold, 3),
            "cold_start_phases": shares,
            "model_dir": model,
        },
    )


async def shutdown(state: AppState, startup_task: asyncio.Task[None]) -> None:
    """Refuse new work, let accepted work finish within what is left of the shutdown deadline,
    then release the model and run the closers (each bounded by the same deadline)."""
    begin_drain(state)
    if not startup_task.done():
        startup_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await startup_task
    if state.batcher is not None:
        finished = await state.batcher.drain(remaining(state))
        if not finished:
            log.warning("shutdown deadline reached with work still queued")
        await state.batcher.close()
    for close in reversed(state.closers):
        try:
            # A closer is given the remaining time itself; this bound only guards a closer that
            # overruns it (its work is cancelled).
            await asyncio.wait_for(close(), timeout=remaining(state) + 0.05)
        except TimeoutError:
            log.warning("a shutdown step overran the deadline and was cancelled")
        except Exception:
            log.error("a shutdown step failed", exc_info=True)
    log.info("stopped", extra={"deadline_left_s": round(remaining(state), 3)})


def begin_drain(state: AppState) -> None:
    """Turn readiness false, refuse new inference work and set the one shutdown deadline
    (SIGTERM, Knative runtime contract); later calls keep the first deadline."""
    if not state.draining:
        state.draining = True
        state.drain_deadline = time.monotonic() + state.settings.shutdown_timeout_s
        state.metrics.model_ready.labels(state.settings.variant).set(0)
        log.info("draining: readiness is now false")


def remaining(state: AppState) -> float:
    """Seconds left before the shutdown deadline (the whole timeout before draining begins)."""
    if state.drain_deadline is None:
        return state.settings.shutdown_timeout_s
    return max(0.0, state.drain_deadline - time.monotonic())
