"""The rules and dashboards in observability/ against a real function scraped by a real Prometheus.

Starts `python -m functions.sentiment` and the Debian `prometheus` server on loopback (1 s scrape
and rule evaluation, the rule files loaded), drives traffic including bad requests and 429s, then
checks through the Prometheus HTTP API that every recording rule returns data, that every dashboard
query is valid PromQL for this Prometheus, that `promtool check metrics` has nothing to say about
the live scrape, and that every metric name used in rules and dashboards is either in the
function's own /metrics or on the explicit Knative/Kubernetes list below. A metric removed from
shared/metrics.py therefore fails this test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from loadtests.local import LocalFunction, free_port, model_override, running

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
OBS = ROOT / "observability"
RULE_FILES = sorted((OBS / "prometheus").glob("*.yml"))
DASHBOARDS = sorted((OBS / "grafana").glob("*.json"))

# Metrics that rules or dashboards may use although the function does not emit them. Knative
# Serving 1.19+ exports OpenTelemetry instruments, named here as Prometheus sees them (dots to
# underscores, unit suffix `_seconds`, histogram `_bucket`/`_count`); 1.18 and earlier export the
# OpenCensus names (docs "Serving metrics" and "Service metrics" of each release).
KNATIVE_1_19_OTEL = frozenset(
    {
        # autoscaler
        "kn_revision_pods_desired",
        "kn_revision_pods_requested",
        "kn_revision_pods_count",
        "kn_revision_pods_not_ready_count",
        "kn_revision_pods_pending_count",
        "kn_revision_concurrency_stable",
        "kn_revision_concurrency_panic",
        "kn_revision_concurrency_target",
        "kn_revision_capacity_excess",
        # activator
        "kn_revision_request_concurrency",
        # queue-proxy
        "kn_serving_queue_depth",
        "kn_serving_invocation_duration_seconds_bucket",
        "kn_serving_invocation_duration_seconds_count",
        "http_server_request_duration_seconds_bucket",
    }
)
KNATIVE_1_18_OPENCENSUS = frozenset(
    {
        # autoscaler
        "autoscaler_desired_pods",
        "autoscaler_requested_pods",
        "autoscaler_actual_pods",
        "autoscaler_not_ready_pods",
        "autoscaler_pending_pods",
        "autoscaler_stable_request_concurrency",
        "autoscaler_panic_request_concurrency",
        "autoscaler_target_concurrency_per_pod",
        "autoscaler_excess_burst_capacity",
        "autoscaler_panic_mode",
        # activator
        "activator_request_concurrency",
        # queue-proxy
        "revision_request_count",
        "revision_request_latencies_bucket",
        "revision_app_request_latencies_bucket",
        "revision_queue_depth",
    }
)
EXTERNAL_METRICS = KNATIVE_1_19_OTEL | KNATIVE_1_18_OPENCENSUS

PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
     "offset", "bool", "inf", "nan", "atan2"}
)  # fmt: skip
GRAFANA_VARS = {
    "$variant": ".*",
    "$knative_service": ".*",
    "$__rate_interval": "1m",
    "$__range": "5m",
}


# --- PromQL and dashboard parsing ------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """Metric and recording-rule names in a PromQL expression (functions and labels excluded)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"' + r"|'(?:\\.|[^'\\])*'", '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and template-variable query of every dashboard."""
    found: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
        for var in board["templating"]["list"]:
            query = var.get("query")
            text = query.get("query", "") if isinstance(query, dict) else ""
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", text)
            if match:
                found.append((f"{path.name}: ${var['name']}", match.group(1)))
    return found


def used_names() -> dict[str, set[str]]:
    """Every raw metric name (not a recording rule) used in rules and dashboards, by user."""
    used: dict[str, set[str]] = {}
    exprs = [(rule.get("record") or rule["alert"], rule["expr"]) for rule in rules()]
    for where, expr in exprs + dashboard_queries():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def sample_names(exposition: str) -> set[str]:
    """Every sample name a /metrics page declares, including families with no sample yet."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created", ""),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def unexplained(used: dict[str, set[str]], emitted: set[str], recorded: set[str]) -> list[str]:
    """Names that are neither emitted, recorded by a rule, nor on the external list."""
    return sorted(
        f"{name} (used by {', '.join(sorted(users))})"
        for name, users in used.items()
        if name not in emitted and name not in recorded and name not in EXTERNAL_METRICS
    )


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (variant, le) (rate(a_bucket{route!~"/x|y('
        'z)"}[$__rate_interval])))'
        " / on (variant) group_left (model) b:rec:ratio_rate5m offset 15m"
        " or max without (pod) (c_total) > 1e-3 * ignoring (x) d unless e"
    )
    assert metric_names(expr) == {"a_bucket", "b:rec:ratio_rate5m", "c_total", "d", "e"}


def test_external_list_is_used_and_never_names_our_metrics() -> None:
    used = used_names()
    assert not [n for n in EXTERNAL_METRICS if n.startswith("kubesentiment")]
    assert sorted(EXTERNAL_METRICS - set(used)) == [], "stale entries on the external list"


def test_recording_rules_used_by_alerts_and_dashboards_exist() -> None:
    recorded = recorded_names()
    exprs = [(r.get("alert") or r["record"], r["expr"]) for r in rules()] + dashboard_queries()
    missing = sorted(
        f"{name} ({where})"
        for where, expr in exprs
        for name in metric_names(expr)
        if ":" in name and name not in recorded
    )
    assert missing == []


# --- the live stack ---------------------------------------------------------------------------


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("prometheus is missing in CI: .ci/run must install the prometheus package")
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    return path


class Prometheus:
    """A real Prometheus on loopback scraping one target every second, with our rules loaded."""

    def __init__(self, target: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in RULE_FILES],
            "scrape_configs": [
                {"job_name": "kubesentiment", "static_configs": [{"targets": [target]}]}
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=5.0)

    def wait_ready(self, deadline_s: float = 30.0) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if self.client.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready:\n{self.log_path.read_text()[-3000:]}")

    def query(self, expr: str) -> dict[str, Any]:
        body: dict[str, Any] = self.client.get("/api/v1/query", params={"query": expr}).json()
        return body

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[LocalFunction, Prometheus]]:
    """A function that refuses a second concurrent request (to produce 429s) and a Prometheus."""
    prometheus_binary()
    env = {"MAX_CONCURRENCY": "1", "LOG_LEVEL": "warning", **model_override()}
    with running("cpu-int8", env=env, log_dir=tmp_path) as function:
        prom = Prometheus(function.base_url.removeprefix("http://"), tmp_path)
        try:
            prom.wait_ready()
            yield function, prom
        finally:
            prom.stop()


TEXTS = [
    "The battery lasts all day and the screen is gorgeous.",
    "Terrible support, I waited two weeks for a reply.",
    "It arrived on Tuesday.",
    "Not bad at all, though the manual is confusing.",
]


def drive_traffic(base_url: str) -> dict[str, int]:
    """Good, bad and refused requests over every inference route; counts by outcome."""
    counts: dict[str, int] = {}

    def note(key: str) -> None:
        counts[key] = counts.get(key, 0) + 1

    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        for text in TEXTS:
            note(f"predict {client.post('/predict', json={'text': text}).status_code}")
        note(f"batch {client.post('/predict', json={'texts': TEXTS * 4}).status_code}")
        note(f"long {client.post('/predict', json={'text': 'good ' * 400}).status_code}")
        event = client.post(
            "/",
            json={"texts": TEXTS},
            headers={
                "ce-specversion": "1.0",
                "ce-id": "consistency-1",
                "ce-source": "/tests/prometheus",
                "ce-type": "dev.kubesentiment.sentiment.requested",
            },
        )
        note(f"cloudevent {event.status_code}")
        v2 = client.post(
            "/v2/models/minilm-sentiment/infer",
            json={
                "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": TEXTS[:2]}]
            },
        )
        note(f"v2 {v2.status_code}")
        note(
            "bad-json "
            + str(
                client.post(
                    "/predict", content=b"{not json", headers={"content-type": "application/json"}
                ).status_code
            )
        )
        note(f"bad-input {client.post('/predict', json={'txt': 1}).status_code}")
        note(f"not-found {client.get('/nope').status_code}")
    return counts


def provoke_429(base_url: str, deadline_s: float = 20.0) -> int:
    """Hold the single concurrency slot with a large batch while small requests arrive."""
    refused = 0
    deadline = time.monotonic() + deadline_s
    big = {"texts": [" ".join(TEXTS * 6)] * 128}
    with httpx.Client(base_url=base_url, timeout=60.0) as client:
        while refused == 0 and time.monotonic() < deadline:
            holder = threading.Thread(target=client.post, args=("/predict",), kwargs={"json": big})
            holder.start()
            with ThreadPoolExecutor(4) as pool:
                codes = list(
                    pool.map(
                        lambda t: client.post("/predict", json={"text": t}).status_code, TEXTS * 3
                    )
                )
            holder.join()
            refused += codes.count(429)
    return refused


def test_rules_and_dashboards_match_a_live_function(
    stack: tuple[LocalFunction, Prometheus],
) -> None:
    function, prom = stack
    counts = drive_traffic(function.base_url)
    assert counts.get("predict 200") == len(TEXTS), counts
    assert counts.get("bad-json 400") == 1, counts
    assert counts.get("cloudevent 200") == 1, counts
    assert counts.get("v2 200") == 1, counts
    assert provoke_429(function.base_url) > 0, "MAX_CONCURRENCY=1 never answered 429"

    # Every recording rule returns data once Prometheus has scraped and evaluated a few times.
    recorded = recorded_names()
    empty = set(recorded)
    deadline = time.monotonic() + 30.0
    while empty and time.monotonic() < deadline:
        drive_traffic(function.base_url)  # keep counters moving so rate() has two points
        for name in sorted(empty):
            result = prom.query(name)
            if result["status"] == "success" and result["data"]["result"]:
                empty.discard(name)
    assert sorted(empty) == [], "recording rules without data"

    # Every metric name used anywhere is emitted by the function or is a Knative/k8s metric.
    exposition = httpx.get(f"{function.base_url}/metrics", timeout=5.0).text
    lint = subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert lint.stdout.strip() == "", lint.stdout
    emitted = sample_names(exposition)
    assert unexplained(used_names(), emitted, recorded) == []

    # And the check bites: without one of the function's metrics it reports that metric.
    without = {n for n in emitted if not n.startswith("kubesentiment_truncated_texts")}
    assert any(
        m.startswith("kubesentiment_truncated_texts_total")
        for m in unexplained(used_names(), without, recorded)
    )

    # Prometheus ingested what the function exposes (the scrape really worked).
    ingested = set(prom.client.get("/api/v1/label/__name__/values").json()["data"])
    assert {"kubesentiment_http_requests_total", "kubesentiment_model_ready"} <= ingested

    # Every dashboard query is valid PromQL here; those on ingested metrics only return data.
    for where, expr in dashboard_queries():
        concrete = expr
        for var, value in GRAFANA_VARS.items():
            concrete = concrete.replace(var, value)
        result = prom.query(concrete)
        assert result["status"] == "success", f"{where}: {result}"
        names = metric_names(expr)
        if names and all(n in ingested or n in recorded for n in names):
            assert result["data"]["result"], f"{where}: no data for {concrete}"
