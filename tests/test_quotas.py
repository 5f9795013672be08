"""Quotas per API key: the key entries, the token bucket (fake clock), the RateLimit fields, and
the in-process app: 429 quota_exceeded, RateLimit on keyed answers, usage metrics per key id,
CloudEvents at /events/{key_id}. The live checks with keys from OpenBao are in
test_quotas_live.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace

import pytest
import yaml
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from functions.sentiment.openapi import KEY_ID
from shared.config import ConfigError, Secret, Settings
from shared.quotas import (
    Decision,
    KeyEntry,
    Quotas,
    TokenBucket,
    digest_id,
    headers,
    limit_field,
    parse_entries,
    policy_field,
)
from shared.vault import _as_text
from tests.conftest import ROOT, model_dir

KEY_A = "team-a-key-0123456789abcdef"
KEY_B = "team-b-key-fedcba9876543210"
PLAIN = "plain-key-5555555555555555"
KEYS = [
    {"key": KEY_A, "id": "team-a", "rate": 1, "burst": 3, "events": True},
    {"key": KEY_B, "id": "team-b", "rate": 50},
    PLAIN,
]

# RFC 9651 sf-list of items: a quoted sf-string with integer parameters (the draft's syntax).
_ITEM = r'"[\x20-\x21\x23-\x5b\x5d-\x7e]*"(;[a-z*][a-z0-9_.*-]*=-?[0-9]{1,15})*'
SF_LIST = re.compile(rf"{_ITEM}(\s*,\s*{_ITEM})*")


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- key entries ----------------------------------------------------------------------------------


def test_plain_keys_keep_working_with_digest_ids() -> None:
    entries = parse_entries(f" {KEY_A} , {PLAIN},")
    assert [e.key for e in entries] == [KEY_A, PLAIN]
    assert entries[1].id == digest_id(PLAIN)
    assert re.fullmatch(r"key-[0-9a-f]{8}", entries[1].id)
    assert all(e.rate is None for e in entries)


def test_json_entries_with_ids_rates_and_bursts() -> None:
    a, b, plain = parse_entries(json.dumps(KEYS))
    assert (a.id, a.rate, a.burst, a.events) == ("team-a", 1.0, 3, True)
    assert (b.id, b.rate, b.burst, b.events) == ("team-b", 50.0, 50, False)  # burst = rate
    assert (plain.id, plain.rate) == (digest_id(PLAIN), None)
    slow = parse_entries('[{"key": "k-slow-0000000000", "rate": 0.2}]')[0]
    assert (slow.rate, slow.burst) == (0.2, 1)  # a burst of at least one request
    assert KEY_A not in repr(a)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param('[{"key": "SECRET-1", "rate": 0}]', "'rate' must be a positive", id="rate-0"),
        pytest.param('[{"key": "SECRET-1", "rate": "5"}]', "'rate' must be", id="rate-text"),
        pytest.param('[{"key": "SECRET-1", "rate": 5, "burst": 0}]', "'burst'", id="burst-0"),
        pytest.param('[{"key": "SECRET-1", "burst": 4}]', "needs a 'rate'", id="burst-alone"),
        pytest.param('[{"key": "SECRET-1", "id": "a b"}]', "'id' must match", id="bad-id"),
        pytest.param('[{"key": "SECRET-1", "limit": 3}]', "unknown field", id="unknown-field"),
        pytest.param('[{"id": "x"}]', "needs a non-empty string 'key'", id="no-key"),
        pytest.param(
            '[{"key": "SECRET-1", "id": "x"}, {"key": "SECRET-2", "id": "x"}]',
            "unique",
            id="same-id",
        ),
        pytest.param('["SECRET-1", "SECRET-1"]', "listed twice", id="same-key"),
        pytest.param('[{"key": "SECRET-1", "events": "yes"}]', "'events'", id="events-text"),
        pytest.param("[SECRET-1", "do not parse", id="broken-json"),
        pytest.param("[3]", "string or an object", id="number"),
    ],
)
def test_bad_entries_are_refused_without_showing_the_key(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_entries(raw)
    assert "SECRET-" not in str(caught.value)


def test_api_keys_setting_is_checked_at_start_and_masked() -> None:
    with pytest.raises(ConfigError, match=r"API_KEYS=\*+ is invalid: .*'rate'") as caught:
        Settings.from_env({"API_KEYS": '[{"key": "SECRET-1", "rate": -1}]'})
    assert "SECRET" not in str(caught.value)
    ok = Settings.from_env({"API_KEYS": json.dumps(KEYS)})
    assert ok.api_keys is not None


def test_a_vault_list_of_entries_stays_json() -> None:
    assert parse_entries(_as_text(KEYS)) == parse_entries(json.dumps(KEYS))
    assert _as_text(["k1", "k2"]) == "k1,k2"  # the plain list format is unchanged


# -- token bucket ---------------------------------------------------------------------------------


def test_bucket_allows_the_burst_then_refuses_until_a_token_is_back() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    taken = [bucket.take(0.0) for _ in range(3)]
    assert [d.allowed for d in taken] == [True, True, True]
    assert [d.remaining for d in taken] == [2, 1, 0]
    refused = bucket.take(0.1)  # 0.2 tokens back: 0.8 missing at 2/s = 0.4 s -> 1 s
    assert refused == Decision(False, 0, 1)
    assert bucket.take(0.49).allowed is False
    assert bucket.take(0.5).allowed is True  # 1 token back after 0.5 s
    assert bucket.take(100.0).remaining == 2  # refilled to the burst, never beyond, minus one


def test_bucket_reset_counts_whole_seconds_for_slow_rates() -> None:
    bucket = TokenBucket(rate=0.25, burst=1, now=0.0)
    first = bucket.take(0.0)
    assert first == Decision(True, 0, 4)  # the next token in 1 / 0.25 s
    second = bucket.take(1.0)
    assert second == Decision(False, 0, 3)  # 0.75 token missing at 0.25/s
    assert bucket.take(3.999).allowed is False
    assert bucket.take(4.0).allowed is True


def test_bucket_sustains_its_rate_over_time() -> None:
    bucket = TokenBucket(rate=10.0, burst=5, now=0.0)
    allowed = sum(bucket.take(t / 100).allowed for t in range(1000))  # 100/s for 9.99 s
    assert allowed == 5 + 99  # the burst, then the rate: 99 tokens refilled in 9.99 s


def test_quotas_keep_a_bucket_per_id_and_renew_it_when_the_rate_changes() -> None:
    clock = Clock()
    quotas = Quotas(clock)
    a = KeyEntry(KEY_A, "team-a", 1.0, 2)
    assert quotas.take(KeyEntry(PLAIN, "plain")) is None  # no rate: unlimited
    assert [quotas.take(a).allowed for _ in range(3)] == [True, True, False]  # type: ignore[union-attr]
    assert quotas.take(KeyEntry(KEY_B, "team-b", 1.0, 1)).allowed  # type: ignore[union-attr]
    rotated = replace(a, rate=5.0, burst=10)
    decision = quotas.take(rotated)
    assert decision is not None
    assert decision.allowed
    assert decision.remaining == 9


# -- header fields --------------------------------------------------------------------------------


def test_header_fields_follow_the_draft_syntax() -> None:
    entry = KeyEntry(KEY_A, "team-a", 20.0, 40)
    assert policy_field(entry) == '"per-key";q=40;w=2'
    assert policy_field(KeyEntry(KEY_A, "slow", 0.3, 1)) == '"per-key";q=1;w=4'
    assert limit_field(Decision(True, 39, 1)) == '"per-key";r=39;t=1'
    ok = headers(entry, Decision(True, 39, 1))
    assert set(ok) == {"RateLimit-Policy", "RateLimit"}
    refused = headers(entry, Decision(False, 0, 3))
    assert refused["Retry-After"] == "3"
    assert refused["RateLimit"] == '"per-key";r=0;t=3'  # Retry-After is the end of the window
    for value in (*ok.values(), refused["RateLimit"]):
        assert SF_LIST.fullmatch(value), value


# -- the app --------------------------------------------------------------------------------------


@pytest.fixture
def quota_client(settings: Settings, make_client: Callable[..., TestClient]) -> TestClient:
    """A started app with team-a (1/s, burst 3, events), team-b (50/s) and an unlimited key."""
    return make_client(
        replace(settings, api_keys=Secret(json.dumps(KEYS))), registry=CollectorRegistry()
    )


def sample(client: TestClient, name: str, **labels: str) -> float:
    """One sample of the app's registry (0 when absent)."""
    registry = client.app.state.kubesentiment.metrics.registry  # type: ignore[attr-defined]
    value = registry.get_sample_value(name, {**labels, "variant": "cpu-int8"})
    return 0.0 if value is None else float(value)


def key_requests(client: TestClient, key_id: str, result: str) -> float:
    return sample(client, "kubesentiment_key_requests_total", key_id=key_id, result=result)


def test_over_quota_gets_429_with_retry_after_and_ratelimit(quota_client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {KEY_A}"}
    answers = [quota_client.post("/predict", json={"text": "fine"}, headers=auth) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["ratelimit"] for r in answers[:3]] == [
        '"per-key";r=2;t=1',
        '"per-key";r=1;t=1',
        '"per-key";r=0;t=1',
    ]
    refused = answers[3]
    assert refused.json()["error"]["type"] == "quota_exceeded"
    assert "team-a" in refused.json()["error"]["message"]
    assert KEY_A not in refused.text
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit-policy"] == '"per-key";q=3;w=3'
    assert refused.headers["ratelimit"] == '"per-key";r=0;t=1'
    # The other keys are not affected by team-a's empty bucket.
    assert (
        quota_client.post("/predict", json={"text": "ok"}, headers={"X-API-Key": KEY_B}).status_code
        == 200
    )
    assert key_requests(quota_client, "team-a", "limited") == 1
    assert key_requests(quota_client, "team-a", "allowed") == 3
    rejected = {"route": "/predict", "reason": "quota_exceeded"}
    assert sample(quota_client, "kubesentiment_rejected_requests_total", **rejected) == 1


def test_v2_refusal_keeps_the_v2_error_shape(quota_client: TestClient) -> None:
    auth = {"X-API-Key": KEY_A}
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}]}
    codes = [
        quota_client.post("/v2/models/minilm-sentiment/infer", json=body, headers=auth)
        for _ in range(4)
    ]
    assert [r.status_code for r in codes] == [200, 200, 200, 429]
    assert set(codes[3].json()) == {"error"}
    assert "quota" in codes[3].json()["error"]
    assert "ratelimit" in codes[0].headers
    assert "retry-after" in codes[3].headers


def test_unlimited_and_keyless_answers_carry_no_ratelimit(
    quota_client: TestClient, client: TestClient
) -> None:
    r = quota_client.post("/predict", json={"text": "ok"}, headers={"X-API-Key": PLAIN})
    assert r.status_code == 200
    assert "ratelimit" not in r.headers
    r = client.post("/predict", json={"text": "ok"})  # API keys off
    assert r.status_code == 200
    assert "ratelimit" not in r.headers


def test_errors_of_keyed_requests_carry_ratelimit_too(quota_client: TestClient) -> None:
    r = quota_client.post("/predict", json={"nope": 1}, headers={"X-API-Key": KEY_B})
    assert r.status_code == 422
    assert r.headers["ratelimit"].startswith('"per-key";r=49;')


def test_usage_is_counted_per_key_id_never_per_key(quota_client: TestClient) -> None:
    auth = {"X-API-Key": KEY_B}
    texts = ["I loved every minute of it", "Terrible service, never again", "It was fine"]
    assert quota_client.post("/predict", json={"texts": texts}, headers=auth).status_code == 200
    assert quota_client.post("/predict", json={"text": "ok"}, headers=auth).status_code == 200
    assert key_requests(quota_client, "team-b", "allowed") == 2
    assert sample(quota_client, "kubesentiment_key_texts_total", key_id="team-b") == 4
    tokens = sample(quota_client, "kubesentiment_key_tokens_total", key_id="team-b")
    assert 4 * 3 <= tokens <= 4 * 16  # [CLS] ... [SEP] around a few word pieces each
    assert sample(quota_client, "kubesentiment_key_model_cpu_seconds_total", key_id="team-b") > 0
    scrape = quota_client.get("/metrics").text
    assert KEY_B not in scrape
    assert KEY_A not in scrape
    assert PLAIN not in scrape
    key_ids = set(re.findall(r'key_id="([^"]*)"', scrape))
    assert key_ids <= {"team-a", "team-b", digest_id(PLAIN)}


def event(event_id: str) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/tests/quotas",
        "ce-type": "dev.kubesentiment.sentiment.requested",
        "content-type": "application/json",
    }


def test_a_trigger_delivers_under_the_key_of_its_path(quota_client: TestClient) -> None:
    data = json.dumps({"texts": ["Great film", "Dull"]})
    first = quota_client.post("/events/team-a", content=data, headers=event("e1"))
    assert first.status_code == 200, first.text
    assert first.headers["ratelimit"] == '"per-key";r=2;t=1'
    assert sample(quota_client, "kubesentiment_key_texts_total", key_id="team-a") == 2
    # Over team-a's quota: 429 with Retry-After, which the Broker retries later.
    codes = [
        quota_client.post("/events/team-a", content=data, headers=event(f"e{n}")).status_code
        for n in range(2, 5)
    ]
    assert codes == [200, 200, 429]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/events/team-b", id="key-without-events"),
        pytest.param("/events/nobody", id="unknown-id"),
        pytest.param("/", id="root-still-needs-a-key"),
    ],
)
def test_event_paths_without_a_key_need_an_events_entry(
    quota_client: TestClient, path: str
) -> None:
    r = quota_client.post(path, content='{"texts": ["x"]}', headers=event("e9"))
    assert r.status_code == 401


def test_an_event_with_a_key_counts_under_that_key(quota_client: TestClient) -> None:
    headers_ = {**event("e10"), "X-API-Key": KEY_B}
    r = quota_client.post("/events/team-a", content='{"texts": ["x"]}', headers=headers_)
    assert r.status_code == 200
    assert r.headers["ratelimit"].startswith('"per-key";r=49;')
    assert sample(quota_client, "kubesentiment_key_texts_total", key_id="team-b") == 1


def test_readme_trigger_example_is_a_valid_trigger_for_an_events_path() -> None:
    from tests.schemas import validate

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quotas and usage per API key", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    trigger = yaml.safe_load(blocks[0])
    assert validate(trigger) == []
    key_id = trigger["spec"]["subscriber"]["uri"].removeprefix("/events/")
    assert re.fullmatch(KEY_ID.strip("^$"), key_id)
    # The README's secret example gives that key `events: true`.
    example = re.search(r"cat > api.json <<'JSON'\n(.*?)\nJSON", section, re.S)
    assert example is not None
    text = example.group(1).replace("...", "0123456789abcdef")
    entries = {e.id: e for e in parse_entries(json.dumps(json.loads(text)["keys"]))}
    assert entries[key_id].events


@pytest.mark.parametrize(
    ("api_keys", "loaded"),
    [pytest.param("", False, id="no-keys"), pytest.param(PLAIN, True, id="keys")],
)
def test_quota_modules_load_only_with_api_keys(api_keys: str, loaded: bool) -> None:
    # A fresh interpreter serves one request; the quota modules are imported only with keys.
    code = (
        "import sys\n"
        "from starlette.testclient import TestClient\n"
        "from shared.config import Settings\n"
        "from functions.sentiment.app import create_app\n"
        f"s = Settings.from_env({{'API_KEYS': {api_keys!r}, 'MODEL_DIR': {str(model_dir())!r}}})\n"
        "with TestClient(create_app(s)) as c:\n"
        "    while c.get('/health/readiness').status_code != 200: pass\n"
        f"    r = c.post('/predict', json={{'text': 'ok'}}, headers={{'X-API-Key': {PLAIN!r}}})\n"
        "    assert r.status_code == 200, r.text\n"
        "mods = ('shared.quotas', 'functions.sentiment.usage')\n"
        "print(sorted(m for m in mods if m in sys.modules))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    expected = ["functions.sentiment.usage", "shared.quotas"] if loaded else []
    assert out.stdout.strip() == str(expected)
