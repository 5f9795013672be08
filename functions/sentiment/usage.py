"""Quota and usage of a request made with an API key, around an inference adapter.

The API-key middleware leaves the matched key's entry in the scope (shared/auth.py); the request
core's `inference` wrapper calls `metered` for such a request once readiness and admission have
passed and before the adapter reads a byte of the body. A key with a rate takes one token from its
bucket (shared/quotas.py): none left is a 429 `quota_exceeded` in the route's error shape with
`Retry-After` and the RateLimit fields; otherwise every answer to the request (2xx or an error)
carries `RateLimit-Policy` and `RateLimit`. Texts, tokenizer tokens and model CPU time are added up
by the core in the `usage` context variable and counted per key id once the request is done, in
`kubesentiment_key_*_total{key_id}`. This module is imported only when a request has a key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from functions.sentiment.context import Usage, usage
from shared.auth import KEY_SCOPE
from shared.config import Settings
from shared.errors import ApiError, QuotaExceeded
from shared.metrics import Metrics
from shared.quotas import KeyEntry, Quotas, headers


class State(Protocol):
    """What this module needs of the core's AppState (which imports this module lazily)."""

    settings: Settings
    metrics: Metrics
    extras: dict[str, Any]


S = TypeVar("S", bound=State)


def quotas(state: State) -> Quotas:
    """The app's token buckets, one per limited key id (made on first use)."""
    held: Quotas | None = state.extras.get("quotas")
    if held is None:
        held = state.extras["quotas"] = Quotas()
    return held


async def metered(
    request: Request, state: S, adapter: Callable[[Request, S], Awaitable[Response]]
) -> Response:
    """Run `adapter` for a request with an API key: refuse it over the key's quota, count what
    it used, and add the RateLimit fields to its answer."""
    entry: KeyEntry = request.scope[KEY_SCOPE]
    m, variant = state.metrics, state.settings.variant
    decision = quotas(state).take(entry)
    fields = {} if decision is None else headers(entry, decision)
    if decision is not None and not decision.allowed:
        m.key_requests.labels(entry.id, "limited", variant).inc()
        raise QuotaExceeded(
            f"API key {entry.id!r} is over its quota ({entry.rate:g} requests/s, burst "
            f"{entry.burst}); retry after {decision.reset_s} s",
            headers=fields,
        )
    used = Usage()
    token = usage.set(used)
    try:
        response = await adapter(request, state)
    except ApiError as e:
        e.headers.update(fields)  # an error of a keyed request tells its quota too
        raise
    finally:
        usage.reset(token)
        m.key_requests.labels(entry.id, "allowed", variant).inc()
        if used.texts:
            m.key_texts.labels(entry.id, variant).inc(used.texts)
            m.key_tokens.labels(entry.id, variant).inc(used.tokens)
        if used.cpu_seconds > 0:
            m.key_model_cpu.labels(entry.id, variant).inc(used.cpu_seconds)
    response.headers.update(fields)
    return response
