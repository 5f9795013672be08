"""The sentiment function as a Knative Functions (func-python) instance.

func-python owns the server (hypercorn), the ASGI lifespan and two routes: `/health/liveness`
and `/health/readiness` call `alive()` and `ready()`; every other request goes to `handle()`,
which is the same Starlette app `python -m functions.sentiment` serves (predictions, CloudEvents
at `POST /`, KServe v2, metrics, OpenAPI). The lifecycle hooks map onto the app's own lifespan:

- `start(cfg)`: settings from `cfg` (the environment func-python hands over), then the app's
  lifespan starts in the background: verify and load the model, warm up, read secrets;
- `ready()`: true once that is done and until draining starts (the app's readiness predicate);
- `alive()`: true while the lifespan has not crashed;
- `stop()`: readiness turns false and the app's lifespan shutdown runs (drain the batcher,
  close the sink and the Vault client). func-python calls it after the server's own grace
  period for requests in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from functions.sentiment.app import create_app
from shared import logs, tracing
from shared.config import Settings

log = logging.getLogger("kubesentiment.func")
Message = MutableMapping[str, Any]


class Function:
    """One function instance: the Starlette app plus its lifespan, driven by func-python."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None
        self._state: Any = None
        self._lifespan: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._failure: str | None = None

    def start(self, cfg: Mapping[str, str]) -> None:
        """Build the app from `cfg` and start its lifespan (model load runs in the background)."""
        settings = Settings.from_env(environ=cfg)
        logs.configure(settings.log_level, settings.log_format, settings.variant)
        app = create_app(settings)
        provider = tracing.setup(settings)
        if provider is not None:
            tracing.instrument(app, provider)
        self.app, self._state = app, app.state.kubesentiment
        # func-python calls start() from inside its running event loop.
        self._lifespan = asyncio.get_running_loop().create_task(self._run_lifespan(app))

    async def _run_lifespan(self, app: ASGIApp) -> None:
        async def receive() -> Message:
            return await self._inbox.get()

        async def send(message: Message) -> None:
            if message["type"].endswith(".failed"):
                self._failure = str(message.get("message", "lifespan failed"))
                log.error("lifespan %s: %s", message["type"], self._failure)

        self._inbox.put_nowait({"type": "lifespan.startup"})
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        try:
            await app(scope, receive, send)
        except Exception as e:  # the app's lifespan crashed: not alive any more
            self._failure = f"lifespan crashed: {e}"
            log.exception("lifespan crashed")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every request except the two health routes: the sentiment app."""
        if self.app is None:
            body = json.dumps({"error": {"type": "not_ready", "message": "not started"}})
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": body.encode()})
            return
        await self.app(scope, receive, send)

    def alive(self) -> tuple[bool, str]:
        """Liveness: false once the app's lifespan has failed or crashed, or start-up outlived
        STARTUP_TIMEOUT_SECONDS (as the app's own /health/liveness)."""
        if self._failure is not None:
            return False, self._failure
        if self._state is not None and not self._state.live:
            return False, f"not live: {self._state.not_ready_reason}"
        return True, "OK"

    def ready(self) -> tuple[bool, str]:
        """Readiness: model loaded and warmed up, secrets read, not draining."""
        if self._state is None:
            return False, "not started"
        if self._state.accepting:
            return True, "OK"
        if self._state.draining:
            return False, "shutting down"
        return False, f"not ready: {self._state.not_ready_reason}"

    def stop(self) -> None:
        """Stop taking work and run the app's lifespan shutdown (drain, release)."""
        if self._lifespan is not None and not self._lifespan.done():
            self._inbox.put_nowait({"type": "lifespan.shutdown"})
        log.info("stop requested")


def new() -> Function:
    """A new function instance (the constructor func-python's `serve` expects)."""
    return Function()
