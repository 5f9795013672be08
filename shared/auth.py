"""Optional API keys, checked by one pure ASGI middleware before any body is read.

When API_KEYS is set, every route except the probe, metrics and OpenAPI paths (matched exactly, so
a probe or a scrape never gets 401) needs a key in `Authorization: Bearer KEY` (RFC 6750 §2.1) or
`X-API-Key: KEY`. Several keys are valid at once, so a key can be rotated without downtime. Keys
are compared in constant time: the SHA-256 digest of the presented key is compared with
`hmac.compare_digest` against the digest of every key, without stopping at a match, so neither the
position nor the length of a valid key shows in the timing. A missing or wrong key gets 401 with
`WWW-Authenticate` (RFC 6750 §3) in the one error body shape and is counted in
`kubesentiment_auth_failures_total{reason}`.

The keys live in an `ApiKeys` holder filled at start (they may come from Vault after the app is
built); until it is filled, protected routes answer 503. A matched key's entry (its id and quota,
shared/quotas.py) is left in the ASGI scope under `KEY_SCOPE` for the request core, and its id in
the logs' context. `POST /events/{id}` is where a Knative Trigger delivers CloudEvents for the key
with that id: without a key it is let through only when that key's entry says `"events": true`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.errors import ApiError, NotReady, Unauthorized
from shared.logs import key_id_var, request_id_var
from shared.metrics import Metrics

if TYPE_CHECKING:  # imported when keys are set: a function without API keys never loads it
    from shared.quotas import KeyEntry

REALM = "kubesentiment"
KEY_SCOPE = "kubesentiment.api_key"  # the matched KeyEntry, in the ASGI scope
EVENTS_PREFIX = "/events/"  # POST /events/{id}: a Trigger's deliveries counted under key `id`

# Exact paths that stay open: Knative/kubelet probes, KServe v2 health, the Prometheus scrape, the
# API description, the playground page (static: no data, no key; its calls need a key) and the
# labelling page's lock (it asks for a key and fetches the page itself from /label/app, guarded).
OPEN_PATHS = frozenset(
    {
        "/health/liveness",
        "/health/readiness",
        "/v2/health/live",
        "/v2/health/ready",
        "/metrics",
        "/openapi.json",
        "/playground",
        "/label",
    }
)


def parse_keys(raw: str) -> tuple[str, ...]:
    """Comma-separated keys, blanks dropped."""
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    """The valid API keys, held as digests beside their entries; empty until `set` is called."""

    def __init__(self, keys: Iterable[str | KeyEntry] = ()) -> None:
        self._digests: tuple[bytes, ...] = ()
        self._entries: tuple[KeyEntry, ...] = ()
        self.loaded = False
        if keys:
            self.set(keys)

    def set(self, keys: Iterable[str | KeyEntry]) -> None:
        """Replace the valid keys (at start, and when Vault hands out rotated ones)."""
        from shared.quotas import KeyEntry, digest_id

        entries = tuple(
            k if isinstance(k, KeyEntry) else KeyEntry(k, digest_id(k)) for k in keys if k
        )
        if not entries:
            raise ValueError("API_KEYS resolved to no key")
        self._digests = tuple(_digest(e.key) for e in entries)
        self._entries = entries
        self.loaded = True

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def entries(self) -> tuple[KeyEntry, ...]:
        """Every key's entry, in order."""
        return self._entries

    def match(self, presented: str) -> KeyEntry | None:
        """The entry whose key equals `presented`; constant time in the keys and the input."""
        candidate = _digest(presented)
        found = -1
        for index, digest in enumerate(self._digests):
            equal = hmac.compare_digest(candidate, digest)
            found = index if equal else found
        return self._entries[found] if found >= 0 else None

    def verify(self, presented: str) -> bool:
        """True if `presented` equals one of the keys; constant time in the keys and the input."""
        return self.match(presented) is not None

    def by_id(self, key_id: str) -> KeyEntry | None:
        """The entry with this id, if any."""
        return next((e for e in self._entries if e.id == key_id), None)


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key from `Authorization: Bearer` or `X-API-Key`, or None when neither is sent."""
    bearer = api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():  # auth-scheme is case-insensitive
                bearer = token.strip()
        elif name == b"x-api-key" and value.strip():
            api_key = value.decode("latin-1").strip()
    return bearer if bearer is not None else api_key


class ApiKeyAuth:
    """Pure ASGI middleware refusing requests to protected paths without a valid key."""

    def __init__(
        self,
        app: ASGIApp,
        keys: ApiKeys,
        metrics: Metrics,
        variant: str,
        routes: Sequence[BaseRoute] = (),
        open_paths: frozenset[str] = OPEN_PATHS,
        retry_after_s: int = 1,
    ) -> None:
        self.app = app
        self.keys = keys
        self.routes = routes
        self.open_paths = open_paths
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.variant = variant
        self.missing = metrics.auth_failures.labels("missing", variant)
        self.invalid = metrics.auth_failures.labels("invalid", variant)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if not self.keys.loaded:
            error: ApiError = NotReady(
                "not ready: API keys are not loaded yet",
                headers={"Retry-After": str(self.retry_after_s)},
            )
            await self._refuse(error, scope, send)
            return
        key = presented_key(scope["headers"])
        entry = None if key is None else self.keys.match(key)
        if key is None and scope["path"].startswith(EVENTS_PREFIX):
            # A Trigger cannot send a key: the path names the key whose quota the events use.
            named = self.keys.by_id(scope["path"][len(EVENTS_PREFIX) :])
            entry = named if named is not None and named.events else None
        if entry is not None:
            scope[KEY_SCOPE] = entry
            token = key_id_var.set(entry.id)
            try:
                await self.app(scope, receive, send)
            finally:
                key_id_var.reset(token)
            return
        if key is None:
            self.missing.inc()
            error = Unauthorized(
                "an API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
            )
        else:
            self.invalid.inc()
            error = Unauthorized(
                "the API key is not valid",
                headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'},
            )
        await self._refuse(error, scope, send)

    async def _refuse(self, error: ApiError, scope: Scope, send: Send) -> None:
        # Routing has not run yet: find the route as Starlette's router would, so the request and
        # error metrics are labelled by route template rather than 'unmatched'.
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                scope["route"] = route
                break
        template = getattr(scope.get("route"), "path", None) or "unmatched"
        self.metrics.errors.labels(template, error.type, self.variant).inc()
        await _reply(error, send)


async def _reply(error: ApiError, send: Send) -> None:
    body = json.dumps(error.body(request_id_var.get())).encode("utf-8")
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("latin-1")),
    ]
    headers += [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
