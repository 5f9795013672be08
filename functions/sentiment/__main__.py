"""Serve one variant with uvicorn: `python -m functions.sentiment`.

Settings come from the environment (see shared/config.py); a bad value exits with status 2 and
a message naming the variable. On SIGTERM readiness turns false at once and one deadline is set,
SHUTDOWN_TIMEOUT_SECONDS away: uvicorn stops accepting connections and lets requests in flight
finish, the lifespan drains the batch queue and runs the closers (K_SINK flush), and the span
flush runs last, each within what is left of that deadline (Knative runtime contract: SIGTERM
precedes shutdown, SIGKILL follows after the termination grace period).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from types import FrameType

import uvicorn

from shared import logs, tracing
from shared.config import ConfigError, Settings


def main() -> None:
    """Parse settings, configure logging, build the app and run uvicorn until SIGTERM."""
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    log_config = logs.config(settings.log_level, settings.log_format, settings.variant)
    logs.configure(settings.log_level, settings.log_format, settings.variant)
    # The model loads on a thread while the web stack is imported below (cold start).
    from functions.sentiment import preload

    preloaded = preload.start(settings)

    from functions.sentiment.app import create_app
    from functions.sentiment.lifecycle import begin_drain, remaining

    # Tracing is process-wide (one global TracerProvider); without an OTLP endpoint `setup`
    # returns None and imports nothing from the SDK.
    try:
        provider = tracing.setup(settings)
    except ValueError as e:  # the SDK's own OTEL_* variables (OTEL_BSP_MAX_QUEUE_SIZE=-1, ...)
        # The SDK read them itself; name the batch-processor variables that are set.
        names = ", ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("OTEL_BSP_"))
        # The model is loading on a thread inside ONNX Runtime; a normal interpreter exit would
        # finalise under it (C++ `terminate`, SIGABRT), so leave at once with status 2.
        print(f"configuration error: OpenTelemetry settings ({names}): {e}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(2)
    app = create_app(settings, preloaded=preloaded)
    if provider is not None:
        tracing.instrument(app, provider)
    state = app.state.kubesentiment

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            begin_drain(state)
            super().handle_exit(sig, frame)
            # SIGTERM is how Knative stops a pod: once the drain is done, exit 0 instead of
            # uvicorn re-raising the signal at exit (status -15 reads as a crash in logs).
            captured: list[int] = getattr(self, "_captured_signals", [])
            if sig == signal.SIGTERM and sig in captured:
                captured.remove(sig)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            begin_drain(state)  # sets the deadline if no signal did (should_exit set directly)
            # uvicorn sleeps 0.1 s before its graceful wait; both come out of the one deadline.
            wait = max(0.0, remaining(state) - 0.1)
            # uvicorn annotates it as int, but hands it to asyncio.wait_for, which takes a float.
            self.config.timeout_graceful_shutdown = wait  # type: ignore[assignment]
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=log_config,
        # Knative's queue-proxy keeps connections open; a short keep-alive would churn them.
        timeout_keep_alive=75,
        server_header=False,
    )
    try:
        Server(config).run()
    finally:
        # The spans still queued in the batch processor, within what is left of the deadline.
        tracing.shutdown(provider, remaining(state))


if __name__ == "__main__":
    main()
