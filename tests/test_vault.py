"""Vault access: references, login methods, KV v2 reads, token renewal, failures and readiness.

Unit tests drive `SecretStore` with a small fake satisfying `HvacClient`; integration tests use a
real OpenBao dev server (fixture `openbao`) and the real hvac client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from functions.sentiment.app import create_app
from shared.config import ConfigError, Secret, Settings
from shared.metrics import Metrics
from shared.vault import SecretError, SecretStore, VaultRef, scrub
from tests.openbao import OpenBao, rsa_key

VARIANT = "cpu-int8"


# -- a fake hvac client ---------------------------------------------------------------------------


class FakeVault:
    """In-memory stand-in for a Vault server behind hvac's client (the `HvacClient` shape)."""

    def __init__(self, data: dict[tuple[str, str], dict[str, Any]], ttl: int = 1) -> None:
        self.data = data
        self.ttl = ttl
        self.max_ttl: int | None = None
        self.down = False
        self.token: str | None = None
        self.issued = 0
        self.calls: list[str] = []
        self.jwts: list[str] = []
        self.auth = SimpleNamespace(
            token=SimpleNamespace(lookup_self=self.lookup_self, renew_self=self.renew_self),
            kubernetes=SimpleNamespace(login=self.kubernetes_login),
            approle=SimpleNamespace(login=self.approle_login),
        )
        self.secrets = SimpleNamespace(
            kv=SimpleNamespace(v2=SimpleNamespace(read_secret_version=self.read_secret_version))
        )

    def check(self, call: str) -> None:
        self.calls.append(call)
        if self.down:
            # A message that contains the token: the store must mask it before logging.
            raise ConnectionError(f"connection refused (token {self.token})")

    def issue(self) -> dict[str, Any]:
        self.issued += 1
        return {
            "auth": {
                "client_token": f"s.fake-token-{self.issued}",
                "lease_duration": self.ttl,
                "renewable": True,
            }
        }

    def kubernetes_login(self, role: str, jwt: str, *, mount_point: str) -> dict[str, Any]:
        self.check(f"login kubernetes@{mount_point}")
        self.jwts.append(jwt)
        return self.issue()

    def approle_login(self, role_id: str, secret_id: str, *, mount_point: str) -> dict[str, Any]:
        self.check(f"login approle@{mount_point}")
        return self.issue()

    def lookup_self(self) -> dict[str, Any]:
        self.check("lookup_self")
        return {"data": {"ttl": self.ttl, "renewable": True}}

    def renew_self(self) -> dict[str, Any]:
        self.check("renew_self")
        lease = self.ttl if self.max_ttl is None else min(self.ttl, self.max_ttl)
        return {"auth": {"lease_duration": lease}}

    def read_secret_version(
        self, path: str, *, mount_point: str, raise_on_deleted_version: bool
    ) -> dict[str, Any]:
        self.check(f"read {mount_point}/{path}")
        if (mount_point, path) not in self.data:
            raise LookupError(f"no secret at {mount_point}/{path}")
        return {"data": {"data": dict(self.data[(mount_point, path)])}}


def make_store(
    settings: Settings, vault: FakeVault, **kwargs: Any
) -> tuple[SecretStore, Metrics, list[tuple[str, float]]]:
    metrics = Metrics.create(CollectorRegistry())
    calls: list[tuple[str, float]] = []

    def factory(url: str, timeout: float) -> Any:
        calls.append((url, timeout))
        return vault

    return SecretStore(settings, metrics, client_factory=factory, **kwargs), metrics, calls


def failures(metrics: Metrics, operation: str) -> float:
    value = metrics.registry.get_sample_value(
        "kubesentiment_secret_failures_total", {"operation": operation, "variant": VARIANT}
    )
    return value or 0.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


async def until(predicate: Callable[[], bool], deadline_s: float = 10.0) -> None:
    """Await until `predicate()` holds, polling with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


VAULT_SETTINGS = Settings(
    vault_addr="http://127.0.0.1:8200",
    vault_auth="approle",
    vault_role_id="role-1",
    vault_secret_id=Secret("secret-id-1"),
    api_keys=Secret("vault:kv/kubesentiment/api#keys"),
)


# -- unit tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("vault:kv/kubesentiment/api#keys", ("kv", "kubesentiment/api", "keys")),
        pytest.param("vault:secret/a/b/c#k", ("secret", "a/b/c", "k")),
        pytest.param("vault:/kv/app/#key", ("kv", "app", "key"), id="extra-slashes"),
    ],
)
def test_vault_ref_parse(text: str, expected: tuple[str, str, str]) -> None:
    ref = VaultRef.parse(text)
    assert (ref.mount, ref.path, ref.key) == expected


@pytest.mark.parametrize(
    "text", ["vault:kv/app", "vault:kv#key", "vault:#key", "vault:kv/app#", "vault:"]
)
def test_vault_ref_parse_rejects(text: str) -> None:
    with pytest.raises(SecretError, match="malformed Vault reference"):
        VaultRef.parse(text)


def test_scrub_masks_every_value_longest_first() -> None:
    assert scrub("a abc b", ["abc", "a"]) == "********** ********** b"
    assert scrub("nothing", [""]) == "nothing"


def test_settings_require_vault_addr_for_references() -> None:
    with pytest.raises(ConfigError, match="VAULT_ADDR"):
        Settings.from_env({"API_KEYS": "vault:kv/app#keys"})


def test_approle_login_reads_and_caches_secrets() -> None:
    vault = FakeVault({("kv", "kubesentiment/api"): {"keys": "k1,k2"}}, ttl=0)
    store, _, factory_calls = make_store(VAULT_SETTINGS, vault)

    async def body() -> None:
        await store.start()
        await store.close()

    run(body())
    assert factory_calls == [("http://127.0.0.1:8200", 5.0)]  # the address comes from settings
    assert store.get("api_keys") == "k1,k2"
    assert vault.calls == ["login approle@approle", "read kv/kubesentiment/api"]
    assert vault.token == "s.fake-token-1"


def test_kubernetes_login_reads_the_projected_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("header.payload.signature\n")
    settings = replace(
        VAULT_SETTINGS,
        vault_auth="kubernetes",
        vault_k8s_token_path=token_file,
        vault_k8s_mount="k8s-prod",
    )
    vault = FakeVault({("kv", "kubesentiment/api"): {"keys": ["a", "b"]}}, ttl=0)
    store, _, _ = make_store(settings, vault)
    run(store.start())
    assert vault.calls[0] == "login kubernetes@k8s-prod"
    assert vault.jwts == ["header.payload.signature"]
    assert store.get("api_keys") == "a,b"  # a list value becomes comma-separated keys


def test_missing_key_is_a_clear_error_without_values() -> None:
    vault = FakeVault({("kv", "kubesentiment/api"): {"other": "s3cr3t-value"}}, ttl=0)
    store, metrics, _ = make_store(VAULT_SETTINGS, vault)
    with pytest.raises(SecretError) as info:
        run(store.start())
    message = str(info.value)
    assert "API_KEYS" in message
    assert "vault:kv/kubesentiment/api#keys" in message
    assert "s3cr3t-value" not in message
    assert failures(metrics, "read") == 1


def test_login_failure_counts_and_masks(caplog: pytest.LogCaptureFixture) -> None:
    vault = FakeVault({}, ttl=0)
    vault.down = True
    store, metrics, _ = make_store(VAULT_SETTINGS, vault)
    with pytest.raises(SecretError, match="Vault login"):
        run(store.start())
    assert failures(metrics, "login") == 1
    assert "secret-id-1" not in caplog.text


def test_renewal_then_relogin_after_failure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kubesentiment")
    vault = FakeVault({("kv", "kubesentiment/api"): {"keys": "k1"}}, ttl=1)
    changes: list[dict[str, str]] = []
    store, metrics, _ = make_store(VAULT_SETTINGS, vault, on_change=changes.append)

    async def body() -> None:
        await store.start()
        await until(lambda: store.renewals >= 1)  # renewed at 2/3 of the 1 s TTL
        vault.down = True
        await until(lambda: failures(metrics, "renew") >= 1)
        assert store.get("api_keys") == "k1"  # cached value still served
        vault.down = False
        vault.data[("kv", "kubesentiment/api")] = {"keys": "k2"}  # rotated meanwhile
        await until(lambda: store.logins >= 2)  # renewal failed, so it logged in again
        await until(lambda: store.get("api_keys") == "k2")
        await store.close()

    run(body())
    assert changes[0]["api_keys"] == "k1"
    assert changes[-1]["api_keys"] == "k2"
    assert "s.fake-token-1" not in caplog.text  # the token in the error message was masked
    assert "vault renew failed" in caplog.text


def test_relogin_when_max_ttl_caps_renewal() -> None:
    vault = FakeVault({("kv", "kubesentiment/api"): {"keys": "k1"}}, ttl=1)
    vault.max_ttl = 0  # renewal grants less than the TTL asked for: the max TTL is reached
    store, _, _ = make_store(VAULT_SETTINGS, vault)

    async def body() -> None:
        await store.start()
        await until(lambda: store.logins >= 2)
        await store.close()

    run(body())
    assert "renew_self" in vault.calls
    assert vault.calls.index("renew_self") < vault.calls.index("login approle@approle", 1)


def test_token_auth_without_ttl_starts_no_renewal() -> None:
    settings = replace(VAULT_SETTINGS, vault_auth="token", vault_token=Secret("s.root"))
    vault = FakeVault({("kv", "kubesentiment/api"): {"keys": "k"}}, ttl=0)
    store, _, _ = make_store(settings, vault)

    async def body() -> None:
        await store.start()
        assert store._task is not None
        await until(lambda: store._task is not None and store._task.done(), 2.0)

    run(body())
    assert vault.calls == ["lookup_self", "read kv/kubesentiment/api"]
    assert vault.token == "s.root"


def test_without_vault_plain_secrets_pass_through() -> None:
    settings = Settings(api_keys=Secret("plain-key"))
    vault = FakeVault({})
    store, _, factory_calls = make_store(settings, vault)
    run(store.start())
    assert store.get("api_keys") == "plain-key"
    assert factory_calls == []
    assert vault.calls == []


# -- integration with a real OpenBao --------------------------------------------------------------


def bao_settings(openbao: OpenBao, **kwargs: Any) -> Settings:
    return replace(
        Settings(),
        vault_addr=openbao.url,
        api_keys=Secret("vault:secret/kubesentiment/api#keys"),
        **kwargs,
    )


def start_store(settings: Settings) -> tuple[SecretStore, Metrics]:
    metrics = Metrics.create(CollectorRegistry())
    return SecretStore(settings, metrics), metrics


def in_loop(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(fn())  # type: ignore[arg-type]


@pytest.mark.integration
def test_openbao_token_auth_kv_v2_read(openbao: OpenBao) -> None:
    openbao.put("kubesentiment/api", {"keys": "t1,t2"})
    token = openbao.token()
    store, _ = start_store(bao_settings(openbao, vault_auth="token", vault_token=Secret(token)))

    async def body() -> None:
        await store.start()
        await store.close()

    in_loop(body)
    assert store.get("api_keys") == "t1,t2"


@pytest.mark.integration
def test_openbao_approle_login(openbao: OpenBao) -> None:
    openbao.put("kubesentiment/api", {"keys": "a1"})
    role_id, secret_id = openbao.approle()
    settings = bao_settings(
        openbao, vault_auth="approle", vault_role_id=role_id, vault_secret_id=Secret(secret_id)
    )
    store, _ = start_store(settings)

    async def body() -> None:
        await store.start()
        assert store.client is not None
        info = store.client.auth.token.lookup_self()["data"]
        assert "kubesentiment" in info["policies"]
        await store.close()

    in_loop(body)
    assert store.get("api_keys") == "a1"


@pytest.mark.integration
def test_openbao_kubernetes_login_path(openbao: OpenBao, tmp_path: Path) -> None:
    openbao.put("kubesentiment/api", {"keys": "k8s-key"})
    token_file = tmp_path / "token"
    token_file.write_text(openbao.service_account_jwt())
    settings = bao_settings(openbao, vault_auth="kubernetes", vault_k8s_token_path=token_file)
    store, _ = start_store(settings)

    async def body() -> None:
        await store.start()
        await store.close()

    in_loop(body)
    assert store.get("api_keys") == "k8s-key"

    # A token signed by another issuer is refused, counted, and reported without the JWT.
    token_file.write_text(openbao.service_account_jwt(rsa_key()))
    store, metrics = start_store(settings)
    with pytest.raises(SecretError, match=r"Vault login \(kubernetes\) failed") as info:
        in_loop(store.start)
    assert token_file.read_text() not in str(info.value)
    assert failures(metrics, "login") == 1


@pytest.mark.integration
def test_openbao_short_ttl_renews_then_logs_in_again(openbao: OpenBao) -> None:
    openbao.put("kubesentiment/api", {"keys": "r1"})
    role_id, secret_id = openbao.approle(ttl="2s", max_ttl="4s")
    settings = bao_settings(
        openbao, vault_auth="approle", vault_role_id=role_id, vault_secret_id=Secret(secret_id)
    )
    store, metrics = start_store(settings)

    async def body() -> None:
        await store.start()
        first = store.client.token if store.client else None
        # 2 s TTL: renewed at ~1.3 s and ~2.7 s, where the 4 s max TTL caps it, so a new login
        # follows before the token expires.
        await until(lambda: store.renewals >= 1 and store.logins >= 2, 15.0)
        assert store.client is not None
        assert store.client.token != first
        data = await asyncio.to_thread(store.client.auth.token.lookup_self)
        assert data["data"]["ttl"] > 0  # the new token is alive
        await store.close()

    in_loop(body)
    # With whole-second TTLs a renewal on a loaded machine may land past the max TTL; the store
    # then logs in again, as asserted above. Logins themselves never fail here.
    assert failures(metrics, "login") == 0


@pytest.mark.integration
def test_required_secret_missing_is_retried_then_liveness_fails(
    openbao: OpenBao,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = openbao.token()
    s = replace(
        settings,
        vault_addr=openbao.url,
        vault_auth="token",
        vault_token=Secret(token),
        api_keys=Secret("vault:secret/kubesentiment/absent#keys"),
        warmup=False,
        startup_timeout_s=2.0,
    )
    reasons: list[str] = []
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 30
        while client.get("/health/liveness").status_code == 200:  # until the start-up deadline
            r = client.get("/health/readiness")
            assert r.status_code == 503
            reasons.append(r.json()["error"]["message"])
            assert time.monotonic() < deadline, reasons[-1]
            time.sleep(0.02)
        final = client.get("/health/readiness").json()["error"]["message"]
        assert client.get("/v2/health/live").status_code == 503
        assert client.post("/predict", json={"text": "x"}).status_code == 503
    # Readiness names the step and the attempt; the reference and the error stay in the log.
    assert "not ready: reading secret API_KEYS from Vault (attempt 2, retrying)" in reasons
    assert final.startswith("not ready: start-up did not finish within 2 s (reading secret")
    for reason in [*reasons, final]:
        assert "vault:" not in reason
        assert "InvalidPath" not in reason
        assert token not in reason
    assert "vault read failed: API_KEYS (vault:secret/kubesentiment/absent#keys)" in caplog.text
    assert token not in caplog.text
