"""The slice of hvac's client that shared/vault.py calls, and the real client's factory.

hvac is imported only when a client is built, so a function without VAULT_ADDR never pays for it;
tests pass a small fake satisfying `HvacClient` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol


# The slice of hvac's client this module uses (hvac 2.x). `auth` and `secrets` are nested
# namespaces in hvac, so the Protocol mirrors them.
class _KubernetesAuth(Protocol):
    def login(self, role: str, jwt: str, *, mount_point: str) -> Mapping[str, Any]: ...


class _AppRoleAuth(Protocol):
    def login(
        self, role_id: str, secret_id: str | None, *, mount_point: str
    ) -> Mapping[str, Any]: ...


class _TokenAuth(Protocol):
    def lookup_self(self) -> Mapping[str, Any]: ...

    def renew_self(self) -> Mapping[str, Any]: ...


class _Auth(Protocol):
    @property
    def kubernetes(self) -> _KubernetesAuth: ...

    @property
    def approle(self) -> _AppRoleAuth: ...

    @property
    def token(self) -> _TokenAuth: ...


class _KvV2(Protocol):
    def read_secret_version(
        self, path: str, *, mount_point: str, raise_on_deleted_version: bool
    ) -> Mapping[str, Any]: ...


class _Kv(Protocol):
    @property
    def v2(self) -> _KvV2: ...


class _Secrets(Protocol):
    @property
    def kv(self) -> _Kv: ...


class HvacClient(Protocol):
    """What `hvac.Client` offers that this module calls; a test fake implements the same."""

    token: str | None

    @property
    def auth(self) -> _Auth: ...

    @property
    def secrets(self) -> _Secrets: ...


ClientFactory = Callable[[str, float], HvacClient]


def hvac_client(url: str, timeout: float) -> HvacClient:
    """A real hvac client for `url` (imported here so cold start without Vault skips hvac)."""
    import hvac

    # The address comes from settings only; no request can change it. token="" stops hvac from
    # picking up VAULT_TOKEN or ~/.vault-token behind our back: login sets the token explicitly.
    client: HvacClient = hvac.Client(url=url, token="", timeout=timeout)
    return client
