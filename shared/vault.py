"""Vault (or OpenBao) access through hvac: log in, read KV v2 secrets once, keep the token alive.

A setting may hold a reference `vault:MOUNT/PATH#KEY` instead of a value (for example
`API_KEYS=vault:kv/kubesentiment/api#keys`); `SecretStore.start` logs in, reads every referenced
KV v2 secret and caches it, so the function keeps serving on cached secrets if Vault goes away.
A background task renews the token at two thirds of its TTL and logs in again when renewal fails
or the token reaches its max TTL (Vault token lifecycle: renew-self extends a lease only up to the
token's max TTL). Every failure is counted in `kubesentiment_secret_failures_total{operation}` and
logged with its reason, never with a secret value.

hvac is imported only when a client is built, so a function without VAULT_ADDR never pays for it.
The client factory is injected: tests pass a small fake satisfying `HvacClient`. Each call to
Vault is a client span: `vault login`, `vault read` or `vault renew` (tracing.client_span).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.config import FIELDS, Secret, Settings
from shared.hvac_client import ClientFactory as ClientFactory  # re-exported for shared.secrets
from shared.hvac_client import HvacClient
from shared.hvac_client import hvac_client as hvac_client
from shared.metrics import Metrics
from shared.tracing import client_span

log = logging.getLogger("kubesentiment.vault")

MASK = "**********"
RENEW_AT = 2 / 3  # fraction of the TTL after which the token is renewed
MIN_DELAY_S = 0.2
RETRY_BASE_S = 1.0  # a failed renewal or login is retried with full jitter (shared.backoff)
MAX_RETRY_S = 30.0


class SecretError(RuntimeError):
    """A secret cannot be resolved; the message names the setting and reference, never a value,
    and `step` what failed, fit for the unauthenticated readiness answer (start-up retries it)."""

    def __init__(self, message: str, *, step: str = "") -> None:
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class VaultRef:
    """A parsed `vault:MOUNT/PATH#KEY` reference (the mount is the first path segment)."""

    mount: str
    path: str
    key: str

    @classmethod
    def parse(cls, text: str) -> VaultRef:
        """Parse a reference; raise SecretError when it is malformed."""
        body = text.removeprefix("vault:")
        location, sep, key = body.partition("#")
        mount, slash, path = location.strip("/").partition("/")
        if not sep or not key or not slash or not mount or not path:
            raise SecretError(f"malformed Vault reference {text!r}: expected vault:MOUNT/PATH#KEY")
        return cls(mount, path, key)

    def __str__(self) -> str:
        return f"vault:{self.mount}/{self.path}#{self.key}"


def scrub(text: str, values: list[str]) -> str:
    """`text` with every known secret value replaced by a mask."""
    for value in sorted((v for v in values if v), key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


class SecretStore:
    """Resolves the secret settings (from Vault where they reference it) and keeps them fresh."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        client_factory: ClientFactory = hvac_client,
        on_change: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.client_factory = client_factory
        self.on_change = on_change
        self.values: dict[str, str] = {}
        self.refs: dict[str, VaultRef] = {}
        self.logins = 0
        self.renewals = 0
        self._client: HvacClient | None = None
        self._granted_ttl = 0
        self._ttl = 0
        self._renewable = False
        self._capped = False
        self._task: asyncio.Task[None] | None = None
        for name, secret in settings.secrets().items():
            if secret.is_vault_ref:
                self.refs[name] = VaultRef.parse(secret.get())
            else:
                self.values[name] = secret.get()

    async def start(self) -> None:
        """Log in, read every referenced secret (each is required) and start token renewal."""
        if not self.settings.vault_addr:
            return
        await asyncio.to_thread(self._login)
        await asyncio.to_thread(self._read_all, True)
        if self.on_change is not None:
            self.on_change(dict(self.values))
        self._task = asyncio.create_task(self._keep_alive(), name="vault-token")

    async def close(self) -> None:
        """Stop the renewal task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def get(self, name: str) -> str | None:
        """The resolved value of the secret setting `name`, if it is set."""
        return self.values.get(name)

    @property
    def client(self) -> HvacClient | None:
        """The logged-in client, or None before start."""
        return self._client

    # -- internals (blocking, run in a worker thread) ---------------------------------------------

    def _fail(self, operation: str, what: str, error: Exception) -> str:
        self.metrics.secret_failures.labels(operation, self.settings.variant).inc()
        reason = f"{type(error).__name__}: {self._scrub(str(error))}"
        log.warning(
            "vault %s failed: %s: %s", operation, what, reason, extra={"operation": operation}
        )
        return reason

    def _span(self, name: str, attrs: dict[str, str]) -> contextlib.AbstractContextManager[None]:
        return client_span(f"vault {name}", self.settings.vault_addr, attrs, self._scrub)

    def _scrub(self, text: str) -> str:
        known = [*self.values.values(), *(s.get() for s in self.settings.secrets().values())]
        if self._client is not None and self._client.token:
            known.append(self._client.token)
        return scrub(text, known)

    def _login(self) -> None:
        s = self.settings
        assert s.vault_addr
        method = s.vault_auth
        try:
            client = self._client or self.client_factory(s.vault_addr, s.vault_timeout_s)
            if method == "token":
                client.token = _secret(s.vault_token)
                with self._span("login", {"vault.auth_method": method}):
                    data = client.auth.token.lookup_self()["data"]
                ttl, renewable = int(data.get("ttl") or 0), bool(data.get("renewable"))
            else:
                with self._span("login", {"vault.auth_method": method}):
                    if method == "kubernetes":
                        # kubelet rotates the projected token: read it afresh at every login.
                        jwt = s.vault_k8s_token_path.read_text().strip()
                        resp = client.auth.kubernetes.login(
                            s.vault_role, jwt, mount_point=s.vault_k8s_mount
                        )
                    else:
                        resp = client.auth.approle.login(
                            s.vault_role_id,
                            _secret(s.vault_secret_id) or None,
                            mount_point=s.vault_approle_mount,
                        )
                auth = resp["auth"]
                client.token = auth["client_token"]
                ttl, renewable = int(auth.get("lease_duration") or 0), bool(auth.get("renewable"))
        except Exception as e:
            reason = self._fail("login", f"{method} login to Vault", e)
            raise SecretError(
                f"Vault login ({method}) failed: {reason}", step=f"logging in to Vault ({method})"
            ) from None
        self._client = client
        self._granted_ttl = self._ttl = ttl
        self._renewable = renewable
        self.logins += 1
        log.info("vault login succeeded", extra={"method": method, "token_ttl_s": ttl})

    def _read_all(self, required: bool) -> None:
        assert self._client is not None
        cache: dict[tuple[str, str], Mapping[str, Any]] = {}
        fresh: dict[str, str] = {}
        for name, ref in self.refs.items():
            env = _env_name(name)
            try:
                if (ref.mount, ref.path) not in cache:
                    with self._span("read", {"vault.mount": ref.mount, "vault.path": ref.path}):
                        resp = self._client.secrets.kv.v2.read_secret_version(
                            ref.path, mount_point=ref.mount, raise_on_deleted_version=True
                        )
                    cache[(ref.mount, ref.path)] = resp["data"]["data"]
                data = cache[(ref.mount, ref.path)]
                if ref.key not in data:
                    raise KeyError(f"no key {ref.key!r} in {ref.mount}/{ref.path}")
                fresh[name] = _as_text(data[ref.key])
            except Exception as e:
                reason = self._fail("read", f"{env} ({ref})", e)
                if required:
                    raise SecretError(
                        f"required secret {env} ({ref}) could not be read from Vault: {reason}",
                        step=f"reading secret {env} from Vault",
                    ) from None
                return  # keep every cached value as it was
        self.values.update(fresh)

    def _renew(self) -> None:
        assert self._client is not None
        try:
            with self._span("renew", {}):
                resp = self._client.auth.token.renew_self()
        except Exception as e:
            self._fail("renew", "token renewal", e)
            raise
        self._ttl = int(resp["auth"].get("lease_duration") or 0)
        # Vault grants less than the token's TTL, with a warning, once the max TTL caps it.
        warnings = resp.get("warnings") or []
        self._capped = self._ttl < self._granted_ttl or any("max_ttl" in str(w) for w in warnings)
        self.renewals += 1
        log.info("vault token renewed", extra={"token_ttl_s": self._ttl})

    def _refresh(self) -> bool:
        before = dict(self.values)
        self._read_all(False)
        return self.values != before

    def _plan(self) -> tuple[str | None, float]:
        delay = max(MIN_DELAY_S, self._ttl * RENEW_AT)
        if self._ttl <= 0:
            return None, 0.0  # a token without TTL (a root token) never expires
        if self._renewable:
            return "renew", delay
        if self.settings.vault_auth != "token":
            return "login", delay
        return None, 0.0  # token auth with a non-renewable token: nothing can extend it

    async def _keep_alive(self) -> None:
        can_login = self.settings.vault_auth != "token"
        retry = 0
        action, delay = self._plan()
        while action is not None:
            await asyncio.sleep(delay)
            try:
                if action == "renew":
                    await asyncio.to_thread(self._renew)
                    if self._capped and can_login:
                        # The max TTL capped the lease: no renewal can extend it any more, so
                        # log in again before it runs out.
                        action, delay = "login", max(MIN_DELAY_S, self._ttl * RENEW_AT)
                        continue
                else:
                    await asyncio.to_thread(self._login)
            except Exception:
                # Cached secrets stay in use; retry with backoff, by logging in again when the
                # method allows it (the token may have expired meanwhile).
                from shared.backoff import Backoff  # loaded on a failure, never at start-up

                backoff = Backoff(RETRY_BASE_S, MAX_RETRY_S).delay(retry)
                action, delay = ("login" if can_login else "renew"), backoff
                retry += 1
                continue
            retry = 0
            if await asyncio.to_thread(self._refresh) and self.on_change is not None:
                try:
                    self.on_change(dict(self.values))
                except Exception as e:  # a rotated value that cannot be used: keep the old one
                    self._fail("read", "applying rotated secrets", e)
            action, delay = self._plan()


def _secret(secret: Secret | None) -> str:
    return secret.get() if secret is not None else ""


def _env_name(field_name: str) -> str:
    return FIELDS[field_name].env


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        if all(isinstance(v, str) for v in value):
            return ",".join(value)
        return json.dumps(value)  # key entries with quotas (shared/quotas.py) stay JSON
    raise TypeError(f"expected a string or a list of strings, got {type(value).__name__}")
