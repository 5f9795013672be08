"""Quotas per API key through a real uvicorn process, with the keys read from a real OpenBao.

The KV v2 secret holds the key entries as a JSON list beside the keys (shared/quotas.py); the
function reads it at start through `API_KEYS=vault:...`. A key over its quota gets 429 with
`Retry-After` and the RateLimit fields, and is served again once `Retry-After` has passed; a
Trigger's delivery at `/events/{key_id}` is counted under that key.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import LiveServer
from tests.openbao import OpenBao

pytestmark = pytest.mark.integration

KEY_A = "live-team-a-0123456789abcdef"
KEY_B = "live-team-b-fedcba9876543210"


def sample(scrape: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text scrape (0 when absent)."""
    for line in scrape.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_quota_from_openbao_refuses_then_recovers_after_retry_after(
    openbao: OpenBao, live_server: Callable[..., LiveServer]
) -> None:
    entries = [
        {"key": KEY_A, "id": "team-a", "rate": 0.5, "burst": 2, "events": True},
        {"key": KEY_B, "id": "team-b", "rate": 100},
    ]
    openbao.put("kubesentiment/quotas", {"keys": entries})  # a JSON list, not a string
    server = live_server(
        {
            "VAULT_ADDR": openbao.url,
            "VAULT_AUTH_METHOD": "token",
            "VAULT_TOKEN": openbao.token(),
            "API_KEYS": "vault:secret/kubesentiment/quotas#keys",
        }
    )
    a = {"Authorization": f"Bearer {KEY_A}"}
    with httpx.Client(base_url=server.url, timeout=10) as c:
        served = [c.post("/predict", json={"text": "Lovely"}, headers=a) for _ in range(2)]
        assert [r.status_code for r in served] == [200, 200]
        assert served[0].headers["ratelimit-policy"] == '"per-key";q=2;w=4'
        assert served[1].headers["ratelimit"] == '"per-key";r=0;t=2'
        refused = c.post("/predict", json={"text": "Lovely"}, headers=a)
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "quota_exceeded"
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 2  # one token at 0.5/s
        assert refused.headers["ratelimit"] == f'"per-key";r=0;t={retry_after}'
        assert refused.headers["ratelimit-policy"] == '"per-key";q=2;w=4'
        # Another key is served meanwhile.
        assert c.post("/predict", json={"text": "x"}, headers={"X-API-Key": KEY_B}).is_success
        # The advertised wait is the behaviour under test: a request after it is served.
        time.sleep(retry_after)
        again = c.post("/predict", json={"text": "Lovely"}, headers=a)
        assert again.status_code == 200, again.text
        assert again.headers["ratelimit"].startswith('"per-key";r=0;')
        # A Trigger's delivery (no key header) on team-a's path, counted under team-a.
        time.sleep(2)  # one more token
        ce = {
            "ce-specversion": "1.0",
            "ce-id": "live-1",
            "ce-source": "/tests/quotas",
            "ce-type": "dev.kubesentiment.sentiment.requested",
            "content-type": "application/json",
        }
        delivered = c.post("/events/team-a", content=json.dumps({"texts": ["a", "b"]}), headers=ce)
        assert delivered.status_code == 200, delivered.text
        assert c.post("/", content=json.dumps({"texts": ["a"]}), headers=ce).status_code == 401
        scrape = c.get("/metrics").text
    requests = "kubesentiment_key_requests_total"
    assert sample(scrape, requests, key_id="team-a", result="limited") == 1
    assert sample(scrape, requests, key_id="team-a", result="allowed") == 4
    assert sample(scrape, "kubesentiment_key_texts_total", key_id="team-a") == 5
    assert sample(scrape, "kubesentiment_key_model_cpu_seconds_total", key_id="team-a") > 0
    assert set(re.findall(r'key_id="([^"]*)"', scrape)) == {"team-a", "team-b"}
    logs = server.logs()
    for key in (KEY_A, KEY_B):
        assert key not in logs
        assert key not in scrape
    assert '"key_id": "team-a"' in logs  # the access log line of a team-a request
