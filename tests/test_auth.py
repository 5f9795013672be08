"""API keys: rotation, the 401 shape, open probe paths, constant-time matching."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from starlette.testclient import TestClient

from shared.auth import ApiKeys, presented_key
from shared.config import Secret, Settings

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"


@pytest.fixture
def keyed(settings: Settings, make_client: Callable[..., TestClient]) -> TestClient:
    """A started app with two valid keys (the old and the new one during a rotation)."""
    return make_client(replace(settings, api_keys=Secret(f"{KEY_A}, {KEY_B}")))


def counter(client: TestClient, reason: str) -> float:
    """The auth failure count for `reason`, read from /metrics."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("kubesentiment_auth_failures_total{") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Authorization": f"Bearer {KEY_A}"}, id="bearer-old-key"),
        pytest.param({"Authorization": f"bearer {KEY_B}"}, id="bearer-new-key-lowercase-scheme"),
        pytest.param({"X-API-Key": KEY_B}, id="x-api-key"),
    ],
)
def test_valid_keys_are_accepted(keyed: TestClient, headers: dict[str, str]) -> None:
    r = keyed.post("/predict", json={"text": "I love it"}, headers=headers)
    assert r.status_code == 200, r.text
    assert keyed.get("/model", headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param({}, "missing", id="no-key"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, "missing", id="other-scheme"),
        pytest.param({"X-API-Key": "key-c-not-issued"}, "invalid", id="third-key"),
        pytest.param({"Authorization": f"Bearer {KEY_A}x"}, "invalid", id="key-with-suffix"),
        pytest.param({"Authorization": f"Bearer {KEY_A[:-1]}"}, "invalid", id="key-prefix"),
    ],
)
def test_missing_or_wrong_key_gets_401(
    keyed: TestClient, headers: dict[str, str], reason: str
) -> None:
    before = counter(keyed, reason)
    r = keyed.post("/predict", json={"text": "I love it"}, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith('Bearer realm="kubesentiment"')
    if reason == "invalid":
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
    body = r.json()
    assert body["error"]["type"] == "unauthorized"
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    for value in headers.values():
        assert value.split()[-1] not in r.text  # the presented key is never echoed
    assert counter(keyed, reason) == before + 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", "/predict", id="predict"),
        pytest.param("POST", "/", id="cloudevents"),
        pytest.param("GET", "/model", id="model"),
        pytest.param("POST", "/v2/models/sentiment/infer", id="v2-infer"),
        pytest.param("GET", "/health/readiness/", id="probe-path-with-suffix"),
        pytest.param("GET", "/metrics/x", id="metrics-subpath"),
    ],
)
def test_protected_paths_need_a_key(keyed: TestClient, method: str, path: str) -> None:
    r = keyed.request(method, path, json={})
    assert r.status_code == 401, (path, r.text)


@pytest.mark.parametrize(
    "path",
    ["/health/liveness", "/health/readiness", "/metrics", "/openapi.json"],
)
def test_probe_metrics_and_openapi_stay_open(keyed: TestClient, path: str) -> None:
    assert keyed.get(path).status_code == 200


def test_401_is_labelled_by_route_template(keyed: TestClient) -> None:
    keyed.post("/predict", json={"text": "x"})
    metrics = keyed.get("/metrics").text
    assert (
        'kubesentiment_errors_total{error_type="unauthorized",route="/predict",variant="cpu-int8"}'
        in metrics
    )


def test_no_keys_configured_means_open(client: TestClient) -> None:
    assert client.post("/predict", json={"text": "fine"}).status_code == 200


def test_api_keys_holder() -> None:
    keys = ApiKeys()
    assert not keys.loaded
    assert not keys.verify("")
    keys.set(["one", "two"])
    assert keys.verify("one")
    assert keys.verify("two")
    assert not keys.verify("three")
    assert not keys.verify("")
    keys.set(["three"])  # rotation completed: the old keys stop working
    assert keys.verify("three")
    assert not keys.verify("one")
    with pytest.raises(ValueError, match="no key"):
        keys.set(["", ""])


def test_presented_key_prefers_bearer() -> None:
    assert presented_key([(b"x-api-key", b"b"), (b"authorization", b"Bearer a")]) == "a"
    assert presented_key([(b"authorization", b"Bearer   ")]) is None
    assert presented_key([(b"x-api-key", b" k ")]) == "k"
    assert presented_key([]) is None
