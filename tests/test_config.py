"""Settings: parsing, fail-fast errors naming the variable, masked secrets, README in sync."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from scripts.config_table import table
from shared.config import FIELDS, ConfigError, Secret, Settings
from shared.cpu import available_cpus, cgroup_quota
from tests.conftest import ROOT

V1_PERIOD = {"cpu/cpu.cfs_period_us": "100000"}


def test_defaults_match_the_declared_fields() -> None:
    assert Settings.from_env({}) == Settings()
    assert [f.name for f in fields(Settings)] == list(FIELDS)


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "PORT": "9000",
            "BATCHING": "off",
            "ORT_PROVIDERS": "CUDAExecutionProvider, CPUExecutionProvider",
            "BATCH_MAX_WAIT_MS": "0.5",
            "LONG_TEXT": "CHUNK",
            "K_SINK": "http://127.0.0.1:1/",
        }
    )
    assert s.port == 9000
    assert s.batching is False
    assert s.long_text == "chunk"
    assert s.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert s.batch_max_wait_ms == 0.5
    assert s.k_sink == "http://127.0.0.1:1/"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"PORT": "http"}, "PORT='http' is invalid", id="port-not-int"),
        pytest.param({"PORT": "70000"}, "PORT='70000' is invalid", id="port-range"),
        pytest.param({"BATCHING": "maybe"}, "BATCHING='maybe'", id="bool"),
        pytest.param({"LONG_TEXT": "drop"}, "LONG_TEXT='drop'", id="choice"),
        pytest.param({"MAX_TEXTS": "0"}, "MAX_TEXTS='0'", id="min"),
        pytest.param({"BATCH_MAX_WAIT_MS": "-1"}, "BATCH_MAX_WAIT_MS='-1'", id="negative"),
        pytest.param(
            {"MODEL_NAME": "{{.Name}}"}, "MODEL_NAME='{{.Name}}'", id="unfilled-kserve-template"
        ),
        pytest.param(
            {"VAULT_ADDR": "http://127.0.0.1:1", "VAULT_AUTH_METHOD": "token"},
            "VAULT_TOKEN is required",
            id="token-needed",
        ),
        pytest.param({"API_KEYS": "vault:kv/a#b"}, "VAULT_ADDR is empty", id="vault-ref-no-addr"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        Settings.from_env(env)


def test_secrets_are_masked() -> None:
    s = Settings.from_env({"API_KEYS": "k-123456789", "VAULT_TOKEN": "s.hunter2"})
    assert "k-123456789" not in repr(s)
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s)
    assert s.api_keys == Secret("k-123456789")
    assert s.api_keys is not None
    assert s.api_keys.get() == "k-123456789"
    with pytest.raises(ConfigError) as e:
        Settings.from_env({"VAULT_SECRET_ID": " ", "API_KEYS": "x", "PORT": "bad"})
    assert "x" not in str(e.value).replace("is invalid", "")


def test_readme_configuration_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    stale = "README configuration table is stale: run python -m scripts.config_table"
    assert table() in readme, stale


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param({"cpu.max": "200000 100000"}, 2.0, id="v2-two-cpus"),
        pytest.param({"cpu.max": "150000 100000"}, 1.5, id="v2-fraction"),
        pytest.param({"cpu.max": "max 100000"}, None, id="v2-unlimited"),
        pytest.param({"cpu/cpu.cfs_quota_us": "50000", **V1_PERIOD}, 0.5, id="v1"),
        pytest.param({"cpu/cpu.cfs_quota_us": "-1", **V1_PERIOD}, None, id="v1-unlimited"),
        pytest.param({}, None, id="none"),
    ],
)  # fmt: skip
def test_cgroup_quota(tmp_path: Path, files: dict[str, str], expected: float | None) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content + "\n")
    assert cgroup_quota(tmp_path) == expected
    cpus = available_cpus(tmp_path)
    assert cpus >= 1
    if expected is not None:
        assert cpus <= max(1, int(-(-expected // 1)))
