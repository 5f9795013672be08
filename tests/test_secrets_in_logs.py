"""Planted secret values never show up in logs, error bodies, headers, metrics or `repr`.

A live function runs at debug log level with secrets from a real OpenBao (a Vault token and the
API keys) or straight from the environment; every byte it logs and every response it sends is
searched for the planted values. Requests also carry headers and query parameters naming another
address, and a canary listener checks that nothing connects there.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from shared.config import Secret, Settings
from tests.conftest import LiveServer
from tests.openbao import OpenBao


def planted(name: str) -> str:
    return f"planted-{name}-{secrets.token_hex(12)}"


@pytest.fixture
def canary() -> Iterator[socket.socket]:
    """A listening socket no one should ever connect to."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def exercise(server: LiveServer, key: str, canary_url: str) -> list[httpx.Response]:
    """Every kind of answer: success, 401s, 4xx errors, probes, metrics; with hostile extras."""
    hostile = {
        "X-Vault-Addr": canary_url,
        "X-Forwarded-Host": canary_url.removeprefix("http://"),
        "Forwarded": f"host={canary_url.removeprefix('http://')}",
        "K-Sink": canary_url,
        "ce-sink": canary_url,
    }
    query = {"vault_addr": canary_url, "VAULT_ADDR": canary_url, "sink": canary_url}
    good = {"Authorization": f"Bearer {key}", **hostile}
    out: list[httpx.Response] = []
    with httpx.Client(base_url=server.url, timeout=10) as c:
        out.append(c.post("/predict", json={"text": "lovely"}, headers=good, params=query))
        out.append(c.post("/predict", json={"texts": ["a", "b"]}, headers=good))
        out.append(c.post("/predict", json={"text": "x"}, headers=hostile))
        out.append(c.post("/predict", json={"text": "x"}, headers={"X-API-Key": key + "x"}))
        out.append(c.post("/predict", content=b"{not json", headers=good))
        out.append(c.post("/predict", json={"wrong": 1}, headers=good))
        out.append(c.get("/model", headers=good))
        out.append(c.get("/nowhere", headers=good))
        out.append(c.get("/health/readiness", params=query))
        out.append(c.get("/metrics"))
    return out


def assert_absent(values: list[str], responses: list[httpx.Response], logs: str) -> None:
    for r in responses:
        text = r.text + " " + " ".join(f"{k}: {v}" for k, v in r.headers.items())
        for value in values:
            assert value not in text, (r.request.url.path, r.status_code)
        assert "Traceback" not in r.text
    for value in values:
        assert value not in logs


@pytest.mark.integration
def test_vault_secrets_never_logged(
    openbao: OpenBao, live_server: Callable[..., LiveServer], canary: socket.socket
) -> None:
    api_key, token = planted("api-key"), planted("vault-token")
    openbao.put("kubesentiment/planted", {"keys": f"{api_key},{planted('second-key')}"})
    openbao.token(token_id=token)
    server = live_server(
        {
            "VAULT_ADDR": openbao.url,
            "VAULT_AUTH_METHOD": "token",
            "VAULT_TOKEN": token,
            "API_KEYS": "vault:secret/kubesentiment/planted#keys",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "json",
        }
    )
    canary_url = f"http://127.0.0.1:{canary.getsockname()[1]}"
    responses = exercise(server, api_key, canary_url)
    assert responses[0].status_code == 200
    assert responses[2].status_code == 401
    server.stop()  # SIGTERM: the shutdown path logs too
    logs = server.log_path.read_text()
    assert "vault login succeeded" in logs  # the logs did cover the Vault work
    assert_absent([api_key, token], responses, logs)
    assert connections(canary) == 0


@pytest.mark.integration
def test_env_api_keys_never_logged(
    live_server: Callable[..., LiveServer], canary: socket.socket
) -> None:
    key_a, key_b = planted("env-key-a"), planted("env-key-b")
    server = live_server(
        {"API_KEYS": f"{key_a},{key_b}", "LOG_LEVEL": "debug", "LOG_FORMAT": "json"}
    )
    canary_url = f"http://127.0.0.1:{canary.getsockname()[1]}"
    responses = exercise(server, key_b, canary_url)
    assert [r.status_code for r in responses[:4]] == [200, 200, 401, 401]
    server.stop()
    assert_absent([key_a, key_b], responses, server.log_path.read_text())
    assert connections(canary) == 0


def test_repr_and_config_errors_mask_secrets() -> None:
    token, secret_id, key = planted("token"), planted("secret-id"), planted("key")
    s = Settings.from_env(
        {
            "VAULT_ADDR": "http://127.0.0.1:8200",
            "VAULT_AUTH_METHOD": "token",
            "VAULT_TOKEN": token,
            "VAULT_SECRET_ID": secret_id,
            "API_KEYS": key,
        }
    )
    shown = repr(s) + str(s) + repr(s.secrets())
    assert s.vault_token is not None
    assert s.vault_token.get() == token
    for value in (token, secret_id, key):
        assert value not in shown


def test_unexpected_errors_hide_message_and_stack(
    settings: Settings, make_client: Callable[..., TestClient]
) -> None:
    secret = planted("in-exception")

    async def explode(request: Request) -> Response:
        raise RuntimeError(f"database password is {secret}")

    client = make_client(
        replace(settings, api_keys=Secret("k")), extra_routes=[Route("/explode", explode)]
    )
    r = client.get("/explode", headers={"X-API-Key": "k"})
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "internal_error"
    assert secret not in r.text
    assert "Traceback" not in r.text
    assert "RuntimeError" not in r.text
