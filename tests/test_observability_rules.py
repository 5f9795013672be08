"""Prometheus rules, alert unit tests, runbooks and the monitoring manifests in observability/.

Runs the real promtool (Debian `prometheus` package). Without promtool the promtool tests skip on
a developer machine but fail in CI (CI=true), where .ci/run installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
OBS = ROOT / "observability"
RULE_FILES = sorted((OBS / "prometheus").glob("*.yml"))
TEST_FILES = sorted((OBS / "prometheus" / "tests").glob("*.yml"))
RUNBOOKS = OBS / "runbooks.md"


def promtool() -> str:
    """Path of promtool; skip without it, except in CI where its absence is a failure."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool is missing in CI: .ci/run must install the prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerts() -> dict[str, dict[str, Any]]:
    """Every alerting rule by name."""
    found: dict[str, dict[str, Any]] = {}
    for path in RULE_FILES:
        for group in load(path)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["alert"] not in found, f"duplicate alert {rule['alert']}"
                    found[rule["alert"]] = rule
    return found


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_rule_and_test_files_exist() -> None:
    assert RULE_FILES, "no rule files in observability/prometheus"
    assert TEST_FILES, "no promtool unit tests in observability/prometheus/tests"
    assert len(alerts()) >= 7


def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", *map(str, RULE_FILES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", *(p.name for p in TEST_FILES)],
        cwd=OBS / "prometheus" / "tests",
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_has_runbook_severity_and_summary(name: str) -> None:
    rule = alerts()[name]
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    annotations = rule["annotations"]
    assert annotations.get("summary"), f"{name} has no summary"
    url = annotations.get("runbook_url", "")
    assert url.startswith("observability/runbooks.md#"), f"{name}: runbook_url {url!r}"
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("#")
    }
    assert url.split("#", 1)[1] in anchors, f"{name}: no heading for {url} in runbooks.md"


@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_has_a_firing_and_a_quiet_unit_test(name: str) -> None:
    fires = quiet = 0
    for path in TEST_FILES:
        for case in load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                if check["alertname"] != name:
                    continue
                if check.get("exp_alerts"):
                    fires += 1
                else:
                    quiet += 1
    assert fires >= 1, f"no unit test makes {name} fire"
    assert quiet >= 1, f"no unit test keeps {name} quiet"


def test_unit_tests_load_every_rule_file() -> None:
    for path in TEST_FILES:
        loaded = {(path.parent / f).resolve() for f in load(path)["rule_files"]}
        assert loaded == {p.resolve() for p in RULE_FILES}, path.name


def test_prometheusrule_manifest_matches_rule_files() -> None:
    """The PrometheusRule for the Prometheus Operator holds exactly the groups of the rule files."""
    manifest = load(OBS / "kubernetes" / "prometheusrule.yaml")
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    groups = [g for path in RULE_FILES for g in load(path)["groups"]]
    assert manifest["spec"]["groups"] == groups, (
        "out of date: run `python -m observability.prometheusrule > "
        "observability/kubernetes/prometheusrule.yaml`"
    )


def test_monitors_scrape_user_container_and_queue_proxy() -> None:
    docs = [d for d in yaml.safe_load_all((OBS / "kubernetes" / "podmonitor.yaml").read_text())]
    assert {d["kind"] for d in docs} == {"PodMonitor"}
    endpoints = {
        (ep["port"], ep.get("path", "/metrics"))
        for d in docs
        for ep in d["spec"]["podMetricsEndpoints"]
    }
    # Knative names the user container's port `user-port`; queue-proxy serves request metrics
    # on `http-usermetric` (9091) and autoscaling metrics on `http-autometric` (9090).
    assert ("user-port", "/metrics") in endpoints
    assert ("http-usermetric", "/metrics") in endpoints
    for d in docs:
        selector = d["spec"]["selector"]["matchExpressions"]
        assert any(e["key"] == "serving.knative.dev/service" for e in selector)


def test_otel_collector_pipelines_use_defined_components() -> None:
    config = load(OBS / "otel-collector.yaml")
    pipelines = config["service"]["pipelines"]
    assert {"traces", "metrics"} <= set(pipelines)
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{name}: {kind} {component} is not defined"
        # memory_limiter must run first and batch last (collector documentation).
        processors = pipeline.get("processors", [])
        assert processors[0] == "memory_limiter", name
        assert processors[-1] == "batch", name
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]


def test_dashboard_json_is_built_from_observability_dashboard() -> None:
    from observability.dashboard import dashboard

    committed = json.loads((OBS / "grafana" / "kubesentiment.json").read_text())
    assert committed == dashboard(), (
        "out of date: run `python -m observability.dashboard > "
        "observability/grafana/kubesentiment.json`"
    )


def test_dashboard_has_variant_variable_and_queries_everywhere() -> None:
    board = json.loads((OBS / "grafana" / "kubesentiment.json").read_text())
    names = {v["name"] for v in board["templating"]["list"]}
    assert {"variant", "datasource"} <= names
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), panel["title"]
    function_panels = [p for p in panels if "kubesentiment_" in json.dumps(p["targets"])]
    assert all("$variant" in json.dumps(p["targets"]) for p in function_panels)
    titles = " ".join(p["title"] for p in panels).lower()
    for topic in (
        "request rate",
        "errors",
        "duration",
        "stage latency",
        "batch size",
        "cold start",
        "pods: desired",
        "queue depth",
    ):
        assert topic in titles, topic


def test_alertmanager_config_is_valid_and_routes_every_severity() -> None:
    path = shutil.which("amtool")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("amtool is missing in CI: install prometheus-alertmanager")
        pytest.skip("amtool not installed (apt-get install prometheus-alertmanager)")
    config = OBS / "alertmanager.yml"
    result = subprocess.run(
        [path, "check-config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    severities = {rule["labels"]["severity"] for rule in alerts().values()}
    for severity in severities:
        routed = subprocess.run(
            [path, "config", "routes", "test", f"--config.file={config}", f"severity={severity}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert routed.returncode == 0, routed.stderr
        expected = "pager" if severity == "critical" else "tickets"
        assert routed.stdout.strip() == expected, (severity, routed.stdout)
