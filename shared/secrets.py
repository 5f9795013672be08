"""Start-time wiring of secrets: Vault resolution and API keys, as one start hook.

`install(app, settings, metrics)` adds the API-key middleware when API_KEYS is set and returns a
start hook that resolves every secret setting (reading Vault references through `SecretStore`)
and hands the keys to the middleware. If a required secret cannot be read, the hook raises a
`SecretError` whose message names the setting and the reference, never a value; start-up retries
it with backoff while readiness names the failing step.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette

from shared.auth import ApiKeyAuth, ApiKeys
from shared.config import Settings
from shared.metrics import Metrics
from shared.quotas import ids, parse_entries
from shared.vault import ClientFactory, SecretStore, hvac_client

log = logging.getLogger("kubesentiment.secrets")


class SecretsHook:
    """A start hook that resolves secrets and fills the API keys; `close` stops token renewal."""

    step = "reading secrets from Vault"  # what readiness says while this hook runs
    phase = "secrets"  # where its time goes in the cold start (functions/sentiment/coldstart.py)

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        keys: ApiKeys | None,
        *,
        client_factory: ClientFactory = hvac_client,
    ) -> None:
        self.keys = keys
        self.store = SecretStore(
            settings, metrics, client_factory=client_factory, on_change=self._apply
        )

    def _apply(self, values: dict[str, str]) -> None:
        if self.keys is not None:
            raw = values.get("api_keys")
            if raw is not None:
                self.keys.set(parse_entries(raw))

    async def __call__(self, state: object) -> None:
        """Resolve every secret; raise when a required one cannot be read."""
        await self.store.start()
        self._apply(self.store.values)
        if self.keys is not None:
            limited = [e.id for e in self.keys.entries if e.rate is not None]
            log.info(
                "API keys loaded",
                extra={"api_keys": len(self.keys), "key_ids": ids(self.keys.entries)},
            )
            if limited:
                log.info("quotas on for key ids %s", ", ".join(limited))

    async def close(self) -> None:
        """Stop the Vault token renewal task."""
        await self.store.close()


def install(
    app: Starlette,
    settings: Settings,
    metrics: Metrics,
    *,
    client_factory: ClientFactory = hvac_client,
) -> SecretsHook:
    """Add the API-key middleware if API_KEYS is set; return the hook that resolves secrets."""
    keys = ApiKeys() if settings.api_keys is not None else None
    if keys is not None:
        app.add_middleware(
            ApiKeyAuth,
            keys=keys,
            metrics=metrics,
            variant=settings.variant,
            routes=app.routes,
            retry_after_s=settings.retry_after_s,
        )
    return SecretsHook(settings, metrics, keys, client_factory=client_factory)
