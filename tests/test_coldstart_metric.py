"""The cold start you can see in production (issue 26, item 6): seconds from process start to
ready per variant and revision, and the phases they went to.

Unit tests for the phase bookkeeping; a real `python -m functions.sentiment` with K_REVISION and
its API keys in a real OpenBao, whose /metrics must show every phase of its start-up adding up
to the total, within the time the test itself saw pass since it spawned the process.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from functions.sentiment.coldstart import PHASES, Phases, revision
from functions.sentiment.lifecycle import fetch_model, load_model, phase_of
from observability.dashboard import dashboard
from shared.secrets import SecretsHook
from tests.conftest import LiveServer
from tests.openbao import OpenBao
from tests.test_observability_rules import promtool


def ticking(*times: float) -> Callable[[], float]:
    it: Iterator[float] = iter(times)
    return lambda: next(it)


def test_phases_are_consecutive_and_add_up_to_the_total() -> None:
    phases = Phases(100.0, clock=ticking(100.4, 100.5, 101.25, 101.25, 101.3))
    for phase in ("imports", "model_load", "warmup", "other", "other"):
        phases.mark(phase)
    assert phases.seconds == pytest.approx(
        {"imports": 0.4, "model_load": 0.1, "warmup": 0.75, "other": 0.05}
    )
    assert phases.total == pytest.approx(1.3)
    assert sum(phases.seconds.values()) == pytest.approx(phases.total)


def test_a_clock_stepped_back_adds_nothing_and_unknown_phases_are_refused() -> None:
    phases = Phases(100.0, clock=ticking(100.5, 99.0, 100.7))
    phases.mark("imports")
    phases.mark("model_load")  # the wall clock went back: no negative phase
    phases.mark("warmup")
    assert phases.seconds == pytest.approx({"imports": 0.5, "model_load": 0.0, "warmup": 0.2})
    with pytest.raises(ValueError, match="unknown cold-start phase"):
        phases.mark("lunch")


def test_each_start_step_has_its_phase() -> None:
    async def start_sink(state: object) -> None:
        pass

    assert phase_of(SecretsHook.__new__(SecretsHook)) == "secrets"
    assert phase_of(fetch_model) == "model_pull"
    assert phase_of(load_model) == "other"  # it marks model_load and warmup itself
    assert phase_of(start_sink) == "other"
    assert set(PHASES) >= {"imports", "model_pull", "model_load", "warmup", "secrets", "other"}
    assert revision("") == "local"
    assert revision("sentiment-00002") == "sentiment-00002"


def gauges(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


@pytest.mark.integration
def test_cold_start_and_its_phases_by_revision_from_a_real_process(
    live_server: Callable[..., LiveServer], openbao: OpenBao
) -> None:
    openbao.put("kubesentiment/coldstart", {"keys": "cold-key"})
    server = live_server(
        {
            "K_REVISION": "sentiment-00002",
            "VAULT_ADDR": openbao.url,
            "VAULT_AUTH_METHOD": "token",
            "VAULT_TOKEN": openbao.token(),
            "API_KEYS": "vault:secret/kubesentiment/coldstart#keys",
            "LOG_FORMAT": "json",
        }
    )
    seen = time.time() - server.function.spawned_at  # the test's own bound: spawn to ready seen
    [(labels, total)] = gauges(server.url, "kubesentiment_cold_start_seconds")
    assert labels == {"variant": "cpu-int8", "revision": "sentiment-00002"}
    samples = gauges(server.url, "kubesentiment_cold_start_phase_seconds")
    assert {(s["variant"], s["revision"]) for s, _ in samples} == {("cpu-int8", "sentiment-00002")}
    phases = {s["phase"]: value for s, value in samples}
    # A model baked in (MODEL_DIR), secrets from Vault: every phase but the pull.
    assert set(phases) == {"imports", "model_load", "warmup", "secrets", "other"}
    assert sum(phases.values()) == pytest.approx(total, abs=1e-6)
    assert all(v >= 0 for v in phases.values()), phases
    assert phases["imports"] > 0.05  # an interpreter and the web stack never import faster
    assert phases["warmup"] > 0  # a real inference ran
    assert phases["secrets"] > 0  # a real login and read against OpenBao
    # Measured from the kernel's process start: not more than the test saw from its spawn call
    # (plus the clock tick of /proc's start time).
    assert 0.1 < total <= seen + 0.05, (total, seen)
    # The "ready" log line carries the same figures.
    ready = [
        json.loads(line)
        for line in server.logs().splitlines()
        if line.startswith("{") and '"ready"' in line
    ]
    [record] = [r for r in ready if r.get("message") == "ready"]
    assert record["cold_start_seconds"] == round(total, 3)
    assert record["cold_start_phases"] == {k: round(v, 3) for k, v in phases.items()}


def phase_panel() -> dict[str, Any]:
    panels: list[dict[str, Any]] = dashboard()["panels"]
    [panel] = [
        p
        for p in panels
        if "kubesentiment_cold_start_phase_seconds" in json.dumps(p.get("targets"))
    ]
    return panel


def test_dashboard_shows_the_cold_start_by_revision_and_phase() -> None:
    panel = phase_panel()
    assert panel["type"] == "table"
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"
    [target] = panel["targets"]
    assert (target["format"], target["instant"]) == ("table", True)
    assert "by (variant, revision, phase)" in target["expr"]
    assert '{variant=~"$variant"}[$__range]' in target["expr"]
    [per_pod] = [p for p in dashboard()["panels"] if p["title"].startswith("Cold start (process")]
    assert "{{revision}}" in per_pod["targets"][0]["legendFormat"]


def test_the_phase_panel_query_gives_each_revision_its_phases_and_total(tmp_path: Path) -> None:
    # The panel's own PromQL, evaluated by promtool on two pods of one revision and one of the
    # next (the first pod scaled away before the evaluation: the time range still holds it).
    expr = phase_panel()["targets"][0]["expr"]
    expr = expr.replace("$variant", ".*").replace("$__range", "30m")
    rev = {"1": 'revision="sentiment-00001"', "2": 'revision="sentiment-00002"'}
    series = {
        f'kubesentiment_cold_start_seconds{{variant="cpu-int8",{rev["1"]},pod="a"}}': "1.2x5",
        f'kubesentiment_cold_start_seconds{{variant="cpu-int8",{rev["1"]},pod="b"}}': "1.5x20",
        f'kubesentiment_cold_start_seconds{{variant="cpu-int8",{rev["2"]},pod="c"}}': "0.8x20",
        f'kubesentiment_cold_start_phase_seconds{{phase="imports",variant="cpu-int8",{rev["1"]},'
        'pod="a"}': "0.9x5",
        f'kubesentiment_cold_start_phase_seconds{{phase="imports",variant="cpu-int8",{rev["1"]},'
        'pod="b"}': "0.6x20",
        f'kubesentiment_cold_start_phase_seconds{{phase="warmup",variant="cpu-int8",{rev["2"]},'
        'pod="c"}': "0.1x20",
    }

    def row(revision: str, phase: str, value: float) -> dict[str, Any]:
        labels = f'{{phase="{phase}",revision="{revision}",variant="cpu-int8"}}'
        return {"labels": labels, "value": value}

    case = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "15m",
                        "exp_samples": [
                            row("sentiment-00001", "imports", 0.9),
                            row("sentiment-00001", "total", 1.5),
                            row("sentiment-00002", "warmup", 0.1),
                            row("sentiment-00002", "total", 0.8),
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "panel_test.yml"
    path.write_text(yaml.safe_dump(case))
    result = subprocess.run(
        [promtool(), "test", "rules", path.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
